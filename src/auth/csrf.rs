//! Cross-site request forgery: a request that rides on the session cookie may have effects only
//! when it comes from the app's own origin.

use http::header;
use http::Method;

use super::RequestView;

/// Whether a cookie-authenticated request may have effects: safe methods always; others (and
/// WebSocket upgrades) only from the same origin (`Sec-Fetch-Site: same-origin`, or an `Origin`
/// whose host is this request's `Host`). `SameSite=Lax` alone lets sibling subdomains through.
pub(crate) fn same_origin_or_safe(req: &RequestView<'_>) -> bool {
    let safe = matches!(*req.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    if safe && !req.upgrade {
        return true;
    }
    if let Some(site) = req.headers.get("sec-fetch-site") {
        return site.as_bytes().eq_ignore_ascii_case(b"same-origin");
    }
    let host = req.host.and_then(|h| h.parse::<http::uri::Authority>().ok());
    let origin = req.headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (origin.and_then(|o| url::Url::parse(o).ok()), host) {
        // Compared canonically: host without case, the origin scheme's default port explicit.
        (Some(o), Some(host)) => {
            let (Some(o_host), Some(o_port)) = (o.host_str(), o.port_or_known_default()) else {
                return false;
            };
            // (A Host without a port came on the default port of the scheme the browser used.)
            let same_port = host.port_u16().map_or(o.port().is_none(), |p| p == o_port);
            o_host.eq_ignore_ascii_case(host.host()) && same_port
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn same_origin_or_safe_parts(parts: &http::request::Parts) -> bool {
        same_origin_or_safe(&RequestView::of(parts))
    }

    #[test]
    fn cookie_requests_with_effects_must_be_same_origin() {
        let parts = |method: &str, headers: &[(&str, &str)]| {
            let mut b =
                Request::builder().method(method).uri("/x").header("host", "app.example:8443");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(same_origin_or_safe_parts(&parts("GET", &[])));
        assert!(same_origin_or_safe_parts(&parts("HEAD", &[("sec-fetch-site", "cross-site")])));
        assert!(same_origin_or_safe_parts(&parts("POST", &[("sec-fetch-site", "same-origin")])));
        assert!(same_origin_or_safe_parts(&parts(
            "POST",
            &[("origin", "https://app.example:8443")]
        )));
        assert!(same_origin_or_safe_parts(&parts(
            "POST",
            &[("origin", "https://APP.example:8443")]
        )));
        let with_host = |host: &str, origin: &str| {
            let (p, _) = Request::post("/x")
                .header("host", host)
                .header("origin", origin)
                .body(())
                .unwrap()
                .into_parts();
            same_origin_or_safe_parts(&p)
        };
        assert!(with_host("app.example:443", "https://app.example"));
        assert!(with_host("app.example", "https://app.example:443"));
        assert!(with_host("[::1]:8080", "http://[::1]:8080"));
        assert!(!with_host("app.example:80", "https://app.example"));
        assert!(!with_host("app.example", "https://app.example:8443"));
        assert!(!with_host("app.example.evil", "https://app.example"));
        for bad in [
            parts("POST", &[]),
            parts("POST", &[("sec-fetch-site", "same-site")]),
            parts("DELETE", &[("origin", "https://evil.example")]),
            parts("PUT", &[("origin", "https://app.example")]),
            parts("POST", &[("origin", "null")]),
            parts(
                "POST",
                &[("sec-fetch-site", "cross-site"), ("origin", "https://app.example:8443")],
            ),
            parts("GET", &[("upgrade", "websocket"), ("origin", "https://evil.example")]),
        ] {
            assert!(!same_origin_or_safe_parts(&bad), "{:?}", bad.headers);
        }
        let mut marked = parts("GET", &[("origin", "https://evil.example")]);
        marked
            .extensions
            .insert(crate::headers::WebSocketUpgrade(http::HeaderValue::from_static("websocket")));
        assert!(
            !same_origin_or_safe_parts(&marked),
            "a marked WebSocket upgrade from another origin"
        );
    }
}
