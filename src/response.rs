//! Every answer portcullis makes itself (as opposed to forwarding the app's) is built here, from
//! one [`Rejection`]: status, RFC 6750 challenge, and a short JSON body with the request id.
//! The log line has the full reason; the client gets a plain one.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::json;

use crate::auth::identity::Identity;
use crate::path::PathError;

/// The request id, set by the outermost layer and echoed in error bodies and logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// What authentication decided, left in the response's extensions for the access log.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Short code: `public_route`, `token_verified`, `token_cached`, `no_token`, `token_expired`, …
    pub reason: Cow<'static, str>,
    /// Longer detail for the log (never a token or secret).
    pub detail: Option<String>,
    pub identity: Option<Arc<Identity>>,
}

impl Decision {
    pub fn new(reason: &'static str) -> Self {
        Self { reason: Cow::Borrowed(reason), detail: None, identity: None }
    }

    /// A refusal with its reason for the log.
    pub fn refused(reason: &'static str, detail: String) -> Self {
        Self { reason: Cow::Borrowed(reason), detail: Some(detail), identity: None }
    }
}

/// A request portcullis answers itself.
#[derive(Debug)]
pub enum Rejection {
    /// No bearer token: `401` with a bare challenge (RFC 6750 §3.1).
    NoToken { realm: Arc<str> },
    /// A token that does not validate: `401`, `error="invalid_token"`.
    InvalidToken { realm: Arc<str>, description: &'static str },
    /// A malformed request (e.g. two `Authorization` headers): `400`, `error="invalid_request"`.
    InvalidRequest { realm: Arc<str>, description: &'static str },
    /// Keys not loaded yet: `503`.
    NotReady,
    /// An ambiguous path: `400`.
    BadPath(PathError),
    /// A request head over our limits: `431`.
    HeadTooLarge,
    /// A transfer coding other than `chunked`: `501` (RFC 9112 §6.1).
    UnsupportedTransferCoding,
    /// The client's request body broke off or was malformed: `400`, connection closed.
    BadRequestBody,
    /// The client stopped sending its request body for `server.request_body_idle_timeout`:
    /// `408`, connection closed.
    RequestBodyTimeout,
    /// `upstream.max_concurrent_requests` are in flight: `503` with `Retry-After`.
    Busy,
    /// The upstream refused, reset or broke the connection: `502`.
    BadGateway,
    /// No response head within `upstream.response_timeout`: `504`.
    GatewayTimeout,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoToken { .. } | Rejection::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            Rejection::InvalidRequest { .. }
            | Rejection::BadPath(_)
            | Rejection::BadRequestBody => StatusCode::BAD_REQUEST,
            Rejection::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Rejection::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::NotReady | Rejection::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::BadGateway => StatusCode::BAD_GATEWAY,
            Rejection::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn challenge(&self) -> Option<String> {
        match self {
            Rejection::NoToken { realm } => Some(format!("Bearer realm=\"{realm}\"")),
            Rejection::InvalidToken { realm, description } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
            )),
            Rejection::InvalidRequest { realm, description } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{description}\""
            )),
            _ => None,
        }
    }

    fn body(&self) -> (&'static str, Cow<'static, str>) {
        match self {
            Rejection::NoToken { .. } => ("unauthorized", "A bearer token is required".into()),
            Rejection::InvalidToken { description, .. } => ("invalid_token", (*description).into()),
            Rejection::InvalidRequest { description, .. } => {
                ("invalid_request", (*description).into())
            }
            Rejection::NotReady => {
                ("unavailable", "The proxy is starting; try again shortly".into())
            }
            Rejection::BadPath(e) => ("invalid_request", format!("Refused path: {e}").into()),
            Rejection::HeadTooLarge => ("invalid_request", "The request head is too large".into()),
            Rejection::UnsupportedTransferCoding => {
                ("not_implemented", "Only the chunked transfer coding is supported".into())
            }
            Rejection::BadRequestBody => {
                ("invalid_request", "The request body is malformed".into())
            }
            Rejection::RequestBodyTimeout => {
                ("request_timeout", "The request body stopped arriving".into())
            }
            Rejection::Busy => ("unavailable", "Too many requests in flight; try again".into()),
            Rejection::BadGateway => ("bad_gateway", "The app did not answer".into()),
            Rejection::GatewayTimeout => {
                ("gateway_timeout", "The app did not answer in time".into())
            }
        }
    }

    /// The response, with the request's id in its body.
    pub fn into_response<B>(self, req: &Request<B>) -> Response<Body> {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .and_then(|r| r.0.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (error, description) = self.body();
        let body =
            json!({"error": error, "error_description": description, "request_id": request_id});
        let mut resp = Response::new(Body::from(format!("{body}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if matches!(self, Rejection::NotReady | Rejection::Busy) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The connection is closed after these, and the client is told so: a body that broke
        // off or was never sent (a refused `Expect: 100-continue`) leaves the stream unusable.
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue
            || matches!(
                self,
                Rejection::UnsupportedTransferCoding
                    | Rejection::BadRequestBody
                    | Rejection::RequestBodyTimeout
            )
        {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
