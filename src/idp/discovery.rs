//! OpenID Provider metadata (OpenID Connect Discovery 1.0): fetched from
//! `<issuer>/.well-known/openid-configuration`, its `issuer` checked, and kept whole for the
//! key cache (`jwks_uri`) and the browser login (the endpoints). Also the one HTTP `GET` that
//! portcullis makes to providers: bounded in size, no redirects (see [`idp_client`]).

use crate::error::error_chain;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Discovery documents and JWKS larger than this are refused.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a provider document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("could not reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not return a valid {what}: {detail}")]
    Invalid { url: String, what: &'static str, detail: String },
    #[error("discovery at {url} names issuer {found:?}, but the configured issuer is {expected:?}; they must be equal")]
    IssuerMismatch { url: String, found: String, expected: String },
    #[error("{url} has no usable signing keys")]
    NoKeys { url: String },
}

/// What portcullis uses of a provider's metadata. Endpoints that are absent or not valid URLs
/// are `None` (a provider may publish endpoints portcullis never calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: Url,
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub userinfo_endpoint: Option<Url>,
    pub end_session_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 9207: the provider sends `iss` with the authorization response.
    pub authorization_response_iss_parameter_supported: bool,
    /// How the token endpoint authenticates clients (`client_secret_basic` when absent).
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// `issuer` without a trailing `/`, then `/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// Parses a discovery document for `issuer`: its `issuer` must equal the configured one exactly,
/// and `jwks_uri` must be a URL portcullis may fetch (https, or http on loopback or with
/// `allow_http`).
pub fn parse_metadata(
    url: &str,
    body: &[u8],
    issuer: &str,
    allow_http: bool,
) -> Result<ProviderMetadata, FetchError> {
    let invalid = |what: &'static str, detail: String| FetchError::Invalid {
        url: url.to_string(),
        what,
        detail,
    };
    let raw: RawMetadata =
        serde_json::from_slice(body).map_err(|e| invalid("discovery document", e.to_string()))?;
    if raw.issuer != issuer {
        return Err(FetchError::IssuerMismatch {
            url: url.to_string(),
            found: raw.issuer,
            expected: issuer.to_string(),
        });
    }
    let jwks_uri = Url::parse(&raw.jwks_uri).map_err(|e| invalid("jwks_uri", e.to_string()))?;
    if let Some(problem) = crate::config::idp_url_problem(&jwks_uri, allow_http) {
        return Err(invalid("jwks_uri", problem));
    }
    let endpoint = |v: Option<String>| v.and_then(|s| Url::parse(&s).ok());
    Ok(ProviderMetadata {
        issuer: raw.issuer,
        jwks_uri,
        authorization_endpoint: endpoint(raw.authorization_endpoint),
        token_endpoint: endpoint(raw.token_endpoint),
        userinfo_endpoint: endpoint(raw.userinfo_endpoint),
        end_session_endpoint: endpoint(raw.end_session_endpoint),
        revocation_endpoint: endpoint(raw.revocation_endpoint),
        code_challenge_methods_supported: raw.code_challenge_methods_supported,
        authorization_response_iss_parameter_supported: raw
            .authorization_response_iss_parameter_supported,
        token_endpoint_auth_methods_supported: raw.token_endpoint_auth_methods_supported,
    })
}

/// Fetches and checks `issuer`'s discovery document.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    allow_http: bool,
) -> Result<ProviderMetadata, FetchError> {
    let url_s = discovery_url(issuer);
    let url = Url::parse(&url_s).map_err(|e| FetchError::Invalid {
        url: url_s.clone(),
        what: "URL",
        detail: e.to_string(),
    })?;
    let body = get(http, &url, "discovery document").await?;
    parse_metadata(&url_s, &body, issuer, allow_http)
}

/// `GET url` as JSON, at most [`MAX_DOCUMENT_BYTES`].
pub async fn get(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
) -> Result<Vec<u8>, FetchError> {
    Ok(get_cached(http, url, what).await?.0)
}

/// The `max-age` of a `Cache-Control` header (`no-store`/`no-cache` count as 0).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut out = None;
    for d in cache_control.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            out = v.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    out
}

/// Like [`get`], with how long the response may be cached (`Cache-Control: max-age`).
pub async fn get_cached(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let unreachable = |e: reqwest::Error| FetchError::Unreachable {
        url: url.to_string(),
        detail: error_chain(&e),
    };
    let mut resp = http
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status { url: url.to_string(), status: resp.status().as_u16() });
    }
    let cache = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = read_bounded(&mut resp).await.map_err(|e| match e {
        ReadError::Transport(e) => unreachable(e),
        ReadError::TooLarge => {
            FetchError::Invalid { url: url.to_string(), what, detail: "larger than 1 MiB".into() }
        }
    })?;
    Ok((body, cache))
}

/// Why a provider's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}", error_chain(.0))]
    Transport(reqwest::Error),
    /// More than [`MAX_DOCUMENT_BYTES`]: refused before it is held.
    #[error("larger than 1 MiB")]
    TooLarge,
}

/// A provider's answer body, read in chunks and refused past [`MAX_DOCUMENT_BYTES`].
pub async fn read_bounded(resp: &mut reqwest::Response) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client used to talk to providers: short timeouts, no redirects (a redirect could
/// take a key fetch to a host nobody configured).
pub fn idp_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://idp.example.com/realms/main";

    fn parse(doc: serde_json::Value) -> Result<ProviderMetadata, FetchError> {
        parse_metadata("u", doc.to_string().as_bytes(), ISS, false)
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("Max-Age=\"30\""), Some(Duration::from_secs(30)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("max-age=60, no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn keeps_what_login_needs() {
        let m = parse(json!({
            "issuer": ISS,
            "jwks_uri": format!("{ISS}/certs"),
            "authorization_endpoint": format!("{ISS}/auth"),
            "token_endpoint": format!("{ISS}/token"),
            "userinfo_endpoint": format!("{ISS}/userinfo"),
            "end_session_endpoint": format!("{ISS}/logout"),
            "revocation_endpoint": format!("{ISS}/revoke"),
            "code_challenge_methods_supported": ["plain", "S256"],
            "authorization_response_iss_parameter_supported": true,
            "something_else": 1,
        }))
        .unwrap();
        assert_eq!(m.token_endpoint.unwrap().as_str(), format!("{ISS}/token"));
        assert_eq!(m.end_session_endpoint.unwrap().path(), "/realms/main/logout");
        assert!(m.authorization_endpoint.is_some() && m.userinfo_endpoint.is_some());
        assert!(m.revocation_endpoint.is_some());
        assert_eq!(m.code_challenge_methods_supported, vec!["plain", "S256"]);
        assert!(m.authorization_response_iss_parameter_supported);
    }

    #[test]
    fn issuer_must_match_and_jwks_uri_must_be_fetchable() {
        let e = parse(json!({"issuer": format!("{ISS}/"), "jwks_uri": format!("{ISS}/certs")}));
        assert!(matches!(e, Err(FetchError::IssuerMismatch { .. })));
        let e = parse(json!({"issuer": ISS, "jwks_uri": "http://idp.example.com/certs"}));
        assert!(matches!(e, Err(FetchError::Invalid { what: "jwks_uri", .. })));
        let m = parse(json!({"issuer": ISS, "jwks_uri": format!("{ISS}/certs"),
                             "token_endpoint": "not a url"}))
        .unwrap();
        assert_eq!(m.token_endpoint, None);
        assert!(!m.authorization_response_iss_parameter_supported);
    }
}
