//! Request headers portcullis removes before anything reads them, and why, in one place:
//! hop-by-hop headers (and whatever `Connection` names, except what portcullis guarantees),
//! every identity header portcullis can set, the headers frameworks read as the request's real
//! path or method, and the forwarding headers only a trusted proxy may send.
//!
//! Names are compared case-insensitively with `_` taken as `-` (`X_Forwarded_For` is
//! `X-Forwarded-For` to a CGI, WSGI or Rack app).

//!
//! - here: the names, hop-by-hop removal and trailers;
//! - `checks`: what refuses a request before anything reads it (methods, HTTP/2 fields,
//!   framing, `Host`, paths) and the layers that apply those checks;
//! - `untrusted`: the headers only portcullis or a trusted proxy may set, removed per request.

mod checks;
mod untrusted;

pub use checks::{
    framing_problem, has_edge_whitespace, is_canonical_method, malformed_h2_field, settle_host,
    NormalizePath, NormalizePathLayer, StripHopByHop, StripHopByHopLayer, TeTrailers,
    WebSocketUpgrade, MAX_REQUEST_HEADERS, MAX_REQUEST_HEAD_BYTES,
};
pub use untrusted::{OriginalRequest, StripUntrusted, StripUntrustedLayer, UntrustedHeaders};

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1), removed in both directions. (`Trailer` is not one: it
/// declares the trailer fields to come, and is cleaned like them, see [`clean_trailers`].)
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields that never travel in trailers through portcullis (RFC 9110 §6.5.1 forbids framing,
/// routing, authentication and control fields there; portcullis adds its own).
fn forbidden_in_trailers(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "content-encoding"
            | "content-range"
            | "trailer"
            | "authorization"
            | "cookie"
            | "set-cookie"
            | "x-request-id"
            | "www-authenticate"
            | "expect"
            | "cache-control"
            | "location"
    ) || HOP_BY_HOP.iter().any(|h| h.as_str() == name)
        || has_prefix(name, "x-forwarded-")
}

/// Removes from trailer fields everything that must not travel there: hop-by-hop, framing and
/// credential fields, and (with `untrusted`, for requests) every header only portcullis or a
/// trusted proxy may set.
pub fn clean_trailers(trailers: &mut HeaderMap, untrusted: Option<&UntrustedHeaders>) {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| {
            forbidden_in_trailers(n.as_str())
                || untrusted.is_some_and(|u| u.removes(n.as_str(), false))
        })
        .cloned()
        .collect();
    for n in doomed {
        tracing::debug!(trailer = %n, "removed trailer field");
        trailers.remove(&n);
    }
}

/// Rewrites a `Trailer` header to declare only the fields [`clean_trailers`] lets through.
pub fn clean_trailer_declaration(headers: &mut HeaderMap, untrusted: Option<&UntrustedHeaders>) {
    if !headers.contains_key(header::TRAILER) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        // only names a field can have (lower case, as HeaderName keeps them)
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .map(|n| n.as_str().to_string())
        .filter(|n| {
            !n.is_empty()
                && !forbidden_in_trailers(n)
                && !untrusted.is_some_and(|u| u.removes(n, false))
        })
        .collect();
    headers.remove(header::TRAILER);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::TRAILER, v);
        }
    }
}

/// Headers that Symfony, IIS, Spring filters and others take as the request's real path or
/// method. Removed from every peer, trusted or not: ingresses pass a client's copy through.
pub const PATH_OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-method",
];

/// Headers that say where a request came from or how it arrived. Only a peer in
/// `server.trusted_proxies` may send them; from anyone else they are removed, and
/// `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` are set by portcullis.
pub const TRUSTED_PROXY_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-proxyuser-ip",
    "x-host",
    "x-forwarded-scheme",
    "front-end-https",
    "x-url-scheme",
    "x-forwarded-ssl",
];

/// Every header with this prefix is an identity header (oauth2-proxy's `auth_request` response
/// headers): an app behind portcullis must never see a client-made one.
pub const IDENTITY_PREFIX: &str = "x-auth-request-";

/// `a == b` with ASCII case ignored and `_` taken as `-` (`b` must be lower-case with `-`).
pub fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let x = x.to_ascii_lowercase();
            x == y || (x == b'_' && y == b'-')
        })
}

fn has_prefix(a: &str, prefix: &str) -> bool {
    a.len() >= prefix.len() && same_header(&a[..prefix.len()], prefix)
}

/// Headers that naming them in `Connection` cannot remove: the request's `Host`, the request
/// id and the forwarding headers portcullis sets or vouches for.
fn is_guaranteed(name: &str) -> bool {
    name == "host"
        || name == "x-request-id"
        || name == "x-real-ip"
        || has_prefix(name, "x-forwarded-")
}

/// The headers one `Connection` value names for removal: its options but `close`, those that
/// are hop-by-hop anyway and the guaranteed ones. Split on bytes: one option that is not ASCII
/// must not hide the others.
pub fn connection_named(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|n| {
            !n.eq_ignore_ascii_case(b"close")
                && !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h.as_str().as_bytes()))
        })
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .filter(|n| !is_guaranteed(n.as_str()))
}

/// Which of the [`HOP_BY_HOP`] headers a head holds, noted name by name in a pass over it (most
/// names are none of them, told by their length alone), so that the checks and the removal
/// after it look up only those present (a lookup of an absent name still hashes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopByHop([bool; HOP_BY_HOP.len()]);

impl HopByHop {
    /// The hop-by-hop headers in `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            present.note(name);
        }
        present
    }

    /// Notes `name` if it is one of them.
    pub fn note(&mut self, name: &HeaderName) {
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
            return;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            self.0[i] = true;
        }
    }

    /// Whether `name` (one of [`HOP_BY_HOP`]) is present.
    pub fn has(&self, name: &HeaderName) -> bool {
        HOP_BY_HOP.iter().zip(self.0).any(|(h, p)| p && h == name)
    }

    pub fn any(&self) -> bool {
        self.0.contains(&true)
    }
}

/// Removes hop-by-hop headers, and every header named in `Connection` except the guaranteed
/// ones: `Host`, `X-Request-Id`, `X-Real-IP` and `X-Forwarded-*`. One pass over the names
/// finds which are there (usually none in a request, `Connection` in a response).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_present(headers, HopByHop::of(headers));
}

/// [`remove_hop_by_hop`] for a head whose hop-by-hop headers are known to be `present`.
pub fn remove_present(headers: &mut HeaderMap, present: HopByHop) {
    if !present.any() {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`
    if present.0[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| connection_named(v.as_bytes()))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present.0).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_spellings_are_compared_loosely() {
        assert!(same_header("X_Forwarded_User", "x-forwarded-user"));
        assert!(same_header("x-forwarded_user", "x-forwarded-user"));
        assert!(!same_header("x-forwarded-users", "x-forwarded-user"));
        // `_` stands for `-` only, and only in that place
        assert!(!same_header("xaforwarded-user", "x-forwarded-user"));
        assert!(!same_header("x_forwarded_usex", "x-forwarded-user"));
        assert!(!same_header("x-forwarded-user", "x-forwarded_user".replace('_', "a").as_str()));
        assert!(has_prefix("x_auth_request_user", "x-auth-request-"));
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_in_any_case() {
        for h in &HOP_BY_HOP {
            for spelled in [h.as_str().to_string(), h.as_str().to_ascii_uppercase()] {
                let mut m = HeaderMap::new();
                m.insert(HeaderName::from_bytes(spelled.as_bytes()).unwrap(), "1".parse().unwrap());
                m.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
                remove_hop_by_hop(&mut m);
                assert_eq!(m.len(), 1, "{spelled} stayed");
                assert!(m.contains_key(header::ACCEPT));
            }
        }
    }

    #[test]
    fn connection_named_headers_are_removed_but_not_guaranteed_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "keep-alive, X-Secret , close, host, x-request-id, x-forwarded-host, X_Forwarded_For, x-real-ip",
            ),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("app"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "host", "x-forwarded-host", "x-real-ip", "x-request-id"]);
        // an option that is not ASCII hides nothing
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_bytes(b"x-secret, \xc3\xa9").unwrap());
        h.insert("x-secret", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // one without `Connection`, and one with none at all
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn trailer_declarations_keep_only_what_may_travel() {
        let untrusted = UntrustedHeaders::new(&[HeaderName::from_static("x-forwarded-user")]);
        let mut h = HeaderMap::new();
        h.insert(
            header::TRAILER,
            HeaderValue::from_bytes(
                b"grpc-status, Authorization,X-Forwarded-User , x-checksum, , set-cookie, \xc3\xa9",
            )
            .unwrap(),
        );
        h.append(header::TRAILER, HeaderValue::from_static("x_auth_request_user, Grpc-Message"));
        clean_trailer_declaration(&mut h, Some(&untrusted));
        let left: Vec<_> = h.get_all(header::TRAILER).iter().collect();
        assert_eq!(left, ["grpc-status, x-checksum, grpc-message"]);
        // responses (no untrusted list): identity names may be declared by the app
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-forwarded-user, content-length"));
        clean_trailer_declaration(&mut h, None);
        assert!(h.get(header::TRAILER).is_none(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-app-sum"));
        clean_trailer_declaration(&mut h, None);
        assert_eq!(h[header::TRAILER], "x-app-sum");
        // nothing left to declare: no Trailer at all; none at all: none added
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("cookie"));
        clean_trailer_declaration(&mut h, None);
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        clean_trailer_declaration(&mut h, None);
        assert!(h.is_empty());
    }
}
