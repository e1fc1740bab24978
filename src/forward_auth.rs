//! Forward-auth: `{prefix}/auth`, where an ingress (nginx `auth_request`, Traefik ForwardAuth,
//! Caddy `forward_auth`, Envoy `ext_authz`) asks whether to forward a request it holds. The
//! decision is the proxy's own ([`AuthSettings::decide`]) on the **original** request, which the
//! ingress names in one of three dialects; nothing is proxied.
//!
//! Only a peer in `server.trusted_proxies` may name an original request: from anyone else the
//! check is `403` (oauth2-proxy's GHSA-7x63-xv5r-3p2x let a client name the path the decision was
//! made on). And one dialect per request: a request naming its original in two ways, repeating a
//! header, lacking the method or carrying a `#` is `400`, so a client's copy of one dialect's
//! headers passed through by an ingress that speaks another can never choose the path.
//!
//! Allowed: `200` with `X-Auth-Request-User`, `-Email`, `-Groups`, `-Preferred-Username` and the
//! other identity headers the app would get under their own names (claim headers; each present,
//! empty when there is no such value), `X-Auth-Request-Access-Token` when
//! `identity.pass_token` passes the token on), the values the app would get as `X-Forwarded-*`,
//! and a refreshed session's cookies. Denied: `401` or `403`, answered plainly
//! (an ingress relays only the status; nginx turns anything else into a `500`), or, where the auth
//! URL asks for it (`?rd=1`, or `forward_auth.redirect_browsers`), a browser navigation sent into
//! login (Traefik and Caddy pass the answer to the browser).
//!
//! The auth URL may narrow the decision as oauth2-proxy's does (`?allowed_groups=a,b`,
//! `allowed_emails`, `allowed_email_domains`): read only from the auth URL the operator wrote,
//! never in the Envoy dialect (whose query is the client's), and never widening the rules.

use std::sync::Arc;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::auth::{Access, AuthSettings, Credential, RequestView};
use crate::config::{Dialect, ForwardAuthConfig, PassToken};
use crate::headers::OriginalRequest;
use crate::identity::{
    Identity, X_FORWARDED_EMAIL, X_FORWARDED_GROUPS, X_FORWARDED_PREFERRED_USERNAME,
    X_FORWARDED_USER,
};
use crate::peer::ClientAddr;
use crate::response::{Decision, Refusal, Rejection, SignIn};

/// The identity headers of an allowed check, from the `X-Forwarded-*` the app would get.
const ANSWER_HEADERS: [(HeaderName, HeaderName); 4] = [
    (X_FORWARDED_USER, HeaderName::from_static("x-auth-request-user")),
    (X_FORWARDED_EMAIL, HeaderName::from_static("x-auth-request-email")),
    (X_FORWARDED_GROUPS, HeaderName::from_static("x-auth-request-groups")),
    (X_FORWARDED_PREFERRED_USERNAME, HeaderName::from_static("x-auth-request-preferred-username")),
];
const X_AUTH_REQUEST_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-auth-request-access-token");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request an ingress asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub dialect: Dialect,
    pub method: Method,
    /// `http` or `https`.
    pub scheme: String,
    /// The authority the client asked for (`app.example.com`, `app.example.com:8443`).
    pub host: String,
    /// Normalised like any request path.
    pub path: String,
    pub query: Option<String>,
}

impl Original {
    /// The URL the client asked for (where to come back after signing in).
    pub fn url(&self) -> String {
        match &self.query {
            Some(q) => format!("{}://{}{}?{q}", self.scheme, self.host, self.path),
            None => format!("{}://{}{}", self.scheme, self.host, self.path),
        }
    }
}

/// The one value of `name` in `headers`: `Ok(None)` when absent, an error when repeated.
fn one(headers: &HeaderMap, name: HeaderName) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("a header naming the original request is repeated"),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| "a non-ASCII original-request header"),
    }
}

/// A `X-Forwarded-Proto` (or a URL's scheme) as `http` or `https`.
fn scheme_of(value: &str) -> Result<String, &'static str> {
    let s = value.trim().to_ascii_lowercase();
    match s.as_str() {
        "http" | "https" => Ok(s),
        _ => Err("the original scheme is neither http nor https"),
    }
}

/// A `host[:port]` without userinfo.
fn host_of(value: &str) -> Result<String, &'static str> {
    let v = value.trim();
    let ok = !v.is_empty()
        && !v.contains('@')
        && v.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == v);
    if ok {
        Ok(v.to_string())
    } else {
        Err("the original host is not a host[:port]")
    }
}

/// What a trusted check sent: `kept`, the dialect headers [`crate::headers::StripUntrusted`] kept
/// aside; the check's own method, headers (with the generic `X-Forwarded-Host`/`-Proto` a trusted
/// proxy sent), path and query; `scheme`, its connection's.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub kept: &'a HeaderMap,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub scheme: &'a str,
}

/// The original request a trusted check names: `auth_path` is the endpoint's path
/// (`/oauth2/auth`), `fixed` the dialect the configuration insists on, if any.
pub fn original(
    asked: &Asked<'_>,
    auth_path: &str,
    fixed: Option<Dialect>,
) -> Result<Original, &'static str> {
    let Asked { kept: original, method, headers, path, query, scheme } = *asked;
    let nginx = original.contains_key(X_ORIGINAL_URI) || original.contains_key(X_ORIGINAL_URL);
    let forwarded =
        original.contains_key(X_FORWARDED_URI) || original.contains_key(X_FORWARDED_METHOD);
    let after = path.strip_prefix(auth_path).unwrap_or_default();
    let envoy = !after.is_empty();
    let dialect = match (nginx, forwarded, envoy) {
        (true, false, false) => Dialect::Nginx,
        (false, true, false) => Dialect::Forwarded,
        (false, false, true) => Dialect::Envoy,
        (false, false, false) => {
            return Err("no original request named (X-Original-URI, X-Forwarded-Uri, or a path \
                        after the auth path)")
        }
        _ => return Err("the original request is named in two ways"),
    };
    if fixed.is_some_and(|f| f != dialect) {
        return Err("the original request is named in another dialect than forward_auth.dialect");
    }
    // The generic forwarding headers a trusted proxy may send with any dialect.
    let forwarded_host = one(headers, X_FORWARDED_HOST)?.map(host_of).transpose()?;
    let forwarded_proto = one(headers, X_FORWARDED_PROTO)?.map(scheme_of).transpose()?;
    let default_scheme = || forwarded_proto.clone().unwrap_or_else(|| scheme.to_string());
    let (method, scheme, host, target) = match dialect {
        Dialect::Nginx => {
            let uri = match (one(original, X_ORIGINAL_URI)?, one(original, X_ORIGINAL_URL)?) {
                (Some(u), None) | (None, Some(u)) => u,
                _ => return Err("both X-Original-URI and X-Original-URL"),
            };
            let method = one(original, X_ORIGINAL_METHOD)?.ok_or("no X-Original-Method")?;
            if uri.starts_with('/') {
                let host = forwarded_host
                    .clone()
                    .ok_or("no original host (X-Forwarded-Host, or an absolute X-Original-URL)")?;
                (method, default_scheme(), host, uri.to_string())
            } else {
                let url: http::Uri = uri.parse().map_err(|_| "X-Original-URL is not a URL")?;
                let scheme = scheme_of(url.scheme_str().ok_or("X-Original-URL has no scheme")?)?;
                let host = host_of(url.authority().map_or("", |a| a.as_str()))?;
                let target = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
                (method, scheme, host, target)
            }
        }
        Dialect::Forwarded => {
            let method = one(original, X_FORWARDED_METHOD)?.ok_or("no X-Forwarded-Method")?;
            let uri = one(original, X_FORWARDED_URI)?.ok_or("no X-Forwarded-Uri")?;
            let host = forwarded_host.clone().ok_or("no X-Forwarded-Host")?;
            (method, default_scheme(), host, uri.to_string())
        }
        Dialect::Envoy => {
            let host = one(headers, header::HOST)?.ok_or("no Host")?;
            let target = match query {
                Some(q) => format!("{after}?{q}"),
                None => after.to_string(),
            };
            (method.as_str(), default_scheme(), host_of(host)?, target)
        }
    };
    if target.contains('#') {
        return Err("a fragment (#) in the original URI");
    }
    if !target.starts_with('/') {
        return Err("the original URI is not a path");
    }
    let method = Method::from_bytes(method.trim().as_bytes())
        .ok()
        .filter(crate::headers::is_canonical_method)
        .ok_or("the original method is not an upper-case method")?;
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target.as_str(), None),
    };
    let path = crate::path::normalize(raw_path).map_err(|_| "an ambiguous original path")?;
    Ok(Original { dialect, method, scheme, host, path, query })
}

/// What the auth URL may add to the rules (oauth2-proxy's query parameters).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Constraints {
    pub groups: Vec<String>,
    pub emails: Vec<String>,
    pub email_domains: Vec<String>,
    /// `rd=1`: a browser navigation is sent into login instead of getting a plain `401`.
    pub redirect: bool,
}

impl Constraints {
    /// Read from the auth URL's query; each key at most once, no unknown key.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut c = Constraints::default();
        let mut seen = Vec::new();
        let list = |v: &str| -> Vec<String> {
            v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if seen.contains(&k) {
                return Err(format!("{k} appears twice in the auth URL"));
            }
            seen.push(k.clone());
            match &*k {
                "allowed_groups" => c.groups = list(&v),
                "allowed_emails" => c.emails = list(&v).iter().map(|e| e.to_lowercase()).collect(),
                "allowed_email_domains" => {
                    c.email_domains = list(&v)
                        .iter()
                        .map(|d| d.trim_start_matches('@').trim_start_matches('.').to_lowercase())
                        .collect()
                }
                "rd" => c.redirect = matches!(&*v, "1" | "true"),
                other => return Err(format!("unknown auth URL parameter {other:?}")),
            }
        }
        Ok(c)
    }

    /// Why `identity` does not meet them, if it does not. A verified email only counts: the
    /// identity carries an email only when it may be trusted (see [`crate::identity`]).
    pub fn unmet(&self, identity: &Identity) -> Option<String> {
        if !self.groups.is_empty() && !identity.groups.iter().any(|g| self.groups.contains(g)) {
            return Some(format!("not in any of allowed_groups {:?}", self.groups));
        }
        if self.emails.is_empty() && self.email_domains.is_empty() {
            return None;
        }
        let email = identity.email.as_deref().map(str::to_lowercase);
        let listed = email.as_ref().is_some_and(|e| self.emails.contains(e));
        let in_domain = email.as_ref().and_then(|e| e.rsplit_once('@')).is_some_and(|(_, d)| {
            self.email_domains.iter().any(|want| d == want || d.ends_with(&format!(".{want}")))
        });
        if listed || in_domain {
            None
        } else {
            Some("the email is not in allowed_emails or allowed_email_domains".into())
        }
    }
}

/// What the endpoint needs.
pub struct ForwardAuth {
    pub auth: Arc<AuthSettings>,
    pub settings: ForwardAuthConfig,
    /// `{prefix}/auth`.
    pub path: String,
    /// Where browsers sign in, when browser login is on.
    pub sign_in: Option<SignIn>,
    /// The other identity headers the app would get (`identity.claim_headers`, and
    /// `X-Forwarded-Issuer` with `pass_issuer`): answered under their own names.
    pub other_headers: Vec<HeaderName>,
}

/// A refusal answered plainly, with its reason for the log.
fn refuse(rejection: Rejection, reason: &'static str, detail: impl Into<String>) -> Response<Body> {
    Refusal::new(rejection, reason).detail(detail).plainly().response()
}

/// `{prefix}/auth` and `{prefix}/auth/{*original path}` (Envoy), called by the pipeline's router
/// directly (no router lookup, no extractors: a check is as hot as a proxied request).
pub async fn check(fa: Arc<ForwardAuth>, req: http::Request<Body>) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let trusted = parts.extensions.get::<ClientAddr>().is_some_and(|c| c.trusted);
    if !trusted {
        tracing::warn!(
            client = %parts.extensions.get::<ClientAddr>().map(|c| c.addr.to_string()).unwrap_or_default(),
            "forward-auth check from a peer outside server.trusted_proxies; refused"
        );
        let why = "the caller is not in server.trusted_proxies";
        return refuse(Rejection::ForwardAuthCaller, "forward_auth_untrusted", why);
    }
    let kept = parts.extensions.get::<OriginalRequest>().map(|o| &o.0);
    let empty = HeaderMap::new();
    let scheme = parts.extensions.get::<ClientAddr>().map_or("http", |c| c.scheme);
    let asked = Asked {
        kept: kept.unwrap_or(&empty),
        method: &parts.method,
        headers: &parts.headers,
        path: parts.uri.path(),
        query: parts.uri.query(),
        scheme,
    };
    let found = original(&asked, &fa.path, fa.settings.dialect);
    let orig = match found {
        Ok(o) => o,
        Err(why) => {
            tracing::debug!(reason = why, "forward-auth check names no usable original request");
            return refuse(Rejection::BadRequest(why), "forward_auth_bad_original", why);
        }
    };
    // The auth URL's own query only: in the Envoy dialect the query is the client's.
    let constraints = match orig.dialect {
        Dialect::Envoy => Ok(Constraints::default()),
        _ => Constraints::parse(parts.uri.query()),
    };
    let constraints = match constraints {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(reason = %why, "forward-auth URL with bad parameters");
            let r = Rejection::BadRequest("bad auth URL parameters");
            return refuse(r, "forward_auth_bad_url", why);
        }
    };
    let view = RequestView {
        method: &orig.method,
        scheme: &orig.scheme,
        host: Some(&orig.host),
        path: &orig.path,
        query: orig.query.as_deref(),
        headers: &parts.headers,
        upgrade: parts.headers.contains_key(header::UPGRADE),
    };
    let named = format!("{} {}://{}{}", orig.method, orig.scheme, orig.host, orig.path);
    let decided = match fa.auth.decide(&view).await {
        Ok(access) => match narrowed(&access, &constraints, &fa.auth.realm) {
            Some(refusal) => Err(refusal),
            None => Ok(access),
        },
        Err(refusal) => Err(refusal),
    };
    match decided {
        Ok(access) => allowed(access, &fa, &named),
        Err(mut refusal) => {
            let detail = refusal.decision.detail.take();
            refusal.decision.detail =
                Some(format!("{named}: {}", detail.as_deref().unwrap_or_default()));
            let unauthenticated = refusal.rejection.status() == StatusCode::UNAUTHORIZED;
            let wants_redirect = constraints.redirect || fa.settings.redirect_browsers;
            match &fa.sign_in {
                Some(sign_in)
                    if unauthenticated
                        && wants_redirect
                        && crate::response::may_send_into_login(&orig.method, &parts.headers) =>
                {
                    let mut resp = crate::response::redirect(&sign_in.location(&orig.url()));
                    for v in refusal.set_cookies {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                    resp.extensions_mut().insert(refusal.decision);
                    resp
                }
                _ => refusal.plainly().response(),
            }
        }
    }
}

/// The refusal when the auth URL's constraints are not met by who is calling (public routes
/// stay public: constraints only narrow what the rules allow).
fn narrowed(access: &Access, constraints: &Constraints, realm: &Arc<str>) -> Option<Refusal> {
    let auth = access.authenticated.as_ref().filter(|_| !access.public)?;
    let why = constraints.unmet(&auth.identity)?;
    Some(auth.forbidden(realm, None, format!("auth URL: {why}")))
}

/// `200` with the identity headers and a refreshed session's cookies.
fn allowed(access: Access, fa: &ForwardAuth, named: &str) -> Response<Body> {
    let pass_token = fa.auth.pass_token;
    let mut resp = Response::new(Body::empty());
    let mut decision = access.decision;
    decision.detail = Some(match decision.detail.take() {
        Some(d) => format!("{named}: {d}"),
        None => named.to_string(),
    });
    let h = resp.headers_mut();
    // Each of them, empty when there is no such value (or no one signed in, on a public route):
    // Caddy before 2.10 copies a header the answer lacks as the literal text of its placeholder.
    let identity = access.authenticated.as_ref().map(|a| &a.identity);
    let value = |name: &HeaderName| {
        let found = identity.and_then(|i| i.headers.iter().find(|(n, _)| n == name));
        found.map_or(HeaderValue::from_static(""), |(_, v)| v.clone())
    };
    for (from, to) in &ANSWER_HEADERS {
        h.insert(to.clone(), value(from));
    }
    for name in &fa.other_headers {
        h.insert(name.clone(), value(name));
    }
    if let Some(auth) = access.authenticated {
        let (token, id_token) = match &auth.credential {
            Credential::Bearer(t) => (Some(t), None),
            Credential::Session { access_token, id_token } => {
                (access_token.as_ref(), id_token.as_ref())
            }
        };
        if let (Some(t), true) = (token, pass_token != PassToken::None) {
            h.insert(X_AUTH_REQUEST_ACCESS_TOKEN, t.value());
        }
        // identity.pass_id_token: for `auth_request_set $authorization
        // $upstream_http_authorization` (oauth2-proxy's --set-authorization-header)
        if let Some(v) = id_token.and_then(|t| t.bearer()) {
            h.insert(header::AUTHORIZATION, v);
        }
        for v in auth.response_headers.get_all(header::SET_COOKIE) {
            h.append(header::SET_COOKIE, v.clone());
        }
    }
    // an answer about one request, for one caller
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    resp.extensions_mut().insert::<Decision>(decision);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    /// The original named by a check with `kept` dialect headers, `sent` other headers, to
    /// `path` (and `query`), by GET over http.
    fn named(
        kept: &[(&str, &str)],
        sent: &[(&str, &str)],
        path: &str,
        query: Option<&str>,
    ) -> Result<Original, &'static str> {
        let (kept, sent) = (headers(kept), headers(sent));
        let asked = Asked {
            kept: &kept,
            method: &Method::GET,
            headers: &sent,
            path,
            query,
            scheme: "http",
        };
        original(&asked, "/oauth2/auth", None)
    }

    const HOST: (&str, &str) = ("x-forwarded-host", "App.example.com");

    #[test]
    fn each_dialect_names_method_scheme_host_and_path() {
        let nginx = named(
            &[("x-original-uri", "/a/../b?x=1"), ("x-original-method", "POST")],
            &[HOST, ("x-forwarded-proto", "https")],
            "/oauth2/auth",
            Some("allowed_groups=admins"),
        )
        .unwrap();
        assert_eq!(
            nginx,
            Original {
                dialect: Dialect::Nginx,
                method: Method::POST,
                scheme: "https".into(),
                host: "App.example.com".into(),
                path: "/b".into(),
                query: Some("x=1".into()),
            }
        );
        assert_eq!(nginx.url(), "https://App.example.com/b?x=1");
        // ingress-nginx: the whole URL, its host and scheme
        let url = named(
            &[("x-original-url", "https://app.example.com:8443/p"), ("x-original-method", "GET")],
            &[],
            "/oauth2/auth",
            None,
        )
        .unwrap();
        assert_eq!((url.scheme.as_str(), url.host.as_str()), ("https", "app.example.com:8443"));
        assert_eq!((url.path.as_str(), url.query), ("/p", None));
        // Traefik and Caddy
        let fwd = named(
            &[("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/items/7")],
            &[HOST],
            "/oauth2/auth",
            None,
        )
        .unwrap();
        assert_eq!(
            (fwd.dialect, fwd.method, fwd.scheme.as_str()),
            (Dialect::Forwarded, Method::DELETE, "http")
        );
        // Envoy: the method, the path after the auth path, the Host
        let envoy =
            named(&[], &[("host", "api.example.com")], "/oauth2/auth/v1/x", Some("q=1")).unwrap();
        assert_eq!(envoy.dialect, Dialect::Envoy);
        assert_eq!((envoy.host.as_str(), envoy.path.as_str()), ("api.example.com", "/v1/x"));
        assert_eq!(envoy.query.as_deref(), Some("q=1"));
    }

    #[test]
    fn mixed_repeated_incomplete_or_fragmented_originals_are_refused() {
        let nginx = [("x-original-uri", "/a"), ("x-original-method", "GET")];
        type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case<'_>> = vec![
            // two dialects: a client's X-Forwarded-Uri beside nginx's X-Original-URI
            (
                [&nginx[..], &[("x-forwarded-uri", "/admin")]].concat(),
                vec![HOST],
                "/oauth2/auth",
                "two ways",
            ),
            (vec![("x-forwarded-method", "GET")], vec![HOST], "/oauth2/auth/x", "two ways"),
            (nginx.to_vec(), vec![HOST], "/oauth2/auth/admin", "two ways"),
            (
                [&nginx[..], &[("x-original-url", "http://h/b")]].concat(),
                vec![HOST],
                "/oauth2/auth",
                "both",
            ),
            // repeated
            (
                [&nginx[..], &[("x-original-uri", "/b")]].concat(),
                vec![HOST],
                "/oauth2/auth",
                "repeated",
            ),
            (nginx.to_vec(), vec![HOST, ("x-forwarded-host", "b")], "/oauth2/auth", "repeated"),
            // missing method, host, anything
            (vec![("x-original-uri", "/a")], vec![HOST], "/oauth2/auth", "X-Original-Method"),
            (vec![("x-forwarded-uri", "/a")], vec![HOST], "/oauth2/auth", "X-Forwarded-Method"),
            (vec![("x-forwarded-method", "GET")], vec![HOST], "/oauth2/auth", "X-Forwarded-Uri"),
            (nginx.to_vec(), vec![], "/oauth2/auth", "original host"),
            (vec![], vec![HOST], "/oauth2/auth", "no original"),
            // a fragment, a lower-case method, an ambiguous path, a bad scheme
            (
                vec![("x-original-uri", "/a#b"), ("x-original-method", "GET")],
                vec![HOST],
                "/oauth2/auth",
                "fragment",
            ),
            (
                vec![("x-original-uri", "/a"), ("x-original-method", "get")],
                vec![HOST],
                "/oauth2/auth",
                "method",
            ),
            (
                vec![("x-original-uri", "/a%2Fb"), ("x-original-method", "GET")],
                vec![HOST],
                "/oauth2/auth",
                "ambiguous",
            ),
            (nginx.to_vec(), vec![HOST, ("x-forwarded-proto", "gopher")], "/oauth2/auth", "scheme"),
            (
                vec![("x-original-url", "https://u@h/a"), ("x-original-method", "GET")],
                vec![],
                "/oauth2/auth",
                "host",
            ),
        ];
        for (kept, sent, path, why) in cases {
            let e = named(&kept, &sent, path, None).unwrap_err();
            assert!(e.contains(why), "{kept:?} {sent:?} {path}: {e}");
        }
        // a configured dialect refuses the others
        let (kept, sent) = (headers(&nginx), headers(&[HOST]));
        let fixed = Some(Dialect::Forwarded);
        let asked = Asked {
            kept: &kept,
            method: &Method::GET,
            headers: &sent,
            path: "/oauth2/auth",
            query: None,
            scheme: "http",
        };
        let e = original(&asked, "/oauth2/auth", fixed);
        assert!(e.unwrap_err().contains("forward_auth.dialect"));
    }

    #[test]
    fn constraints_come_once_each_and_narrow_by_group_and_verified_email() {
        assert!(Constraints::parse(Some("allowed_groups=a&allowed_groups=b")).is_err());
        assert!(Constraints::parse(Some("allowed_group=a")).is_err());
        let c = Constraints::parse(Some(
            "allowed_groups=admins,%20ops&allowed_email_domains=@Example.com&rd=1",
        ))
        .unwrap();
        assert_eq!(c.groups, ["admins", "ops"]);
        assert!(c.redirect);
        let who = |groups: &[&str], email: Option<&str>| Identity {
            subject: "u".into(),
            issuer: "i".into(),
            claims: Default::default(),
            email: email.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: Vec::new(),
            headers: Vec::new(),
        };
        assert_eq!(c.unmet(&who(&["ops"], Some("a@example.com"))), None);
        assert_eq!(c.unmet(&who(&["ops"], Some("a@eu.EXAMPLE.com"))), None);
        assert!(c.unmet(&who(&["staff"], Some("a@example.com"))).is_some());
        assert!(c.unmet(&who(&["ops"], Some("a@notexample.com"))).is_some());
        assert!(c.unmet(&who(&["ops"], None)).is_some());
        let c = Constraints::parse(Some("allowed_emails=Bob@Example.com")).unwrap();
        assert_eq!(c.unmet(&who(&[], Some("bob@example.com"))), None);
        assert!(c.unmet(&who(&[], Some("alice@example.com"))).is_some());
        assert_eq!(Constraints::parse(None).unwrap(), Constraints::default());
    }
}
