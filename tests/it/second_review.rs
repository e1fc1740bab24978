//! What the second outside review found, each as it was reproduced: the request as the attacker
//! sent it, and what reached the app (for a refusal: nothing).

use crate::common::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::net::SocketAddr;

/// A token with this world's issuer and audience, signed by an attacker's own key.
async fn forged(w: &World, user: &str) -> String {
    let attacker = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    attacker.mint(&w.issuer.claims_for(user, AUD))
}

/// One request over a fresh h2c (prior knowledge) connection; `trailers`, if given, follow a
/// small body. Returns the status (0 when the stream was reset) and the body.
async fn h2c_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    trailers: Option<&[(&str, &str)]>,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(format!("http://app.example{path}"));
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_str(v).unwrap());
    }
    let mut frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = Vec::new();
    if let Some(t) = trailers {
        frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"payload"))));
        let mut map = http::HeaderMap::new();
        for (k, v) in t {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        frames.push(Ok(http_body::Frame::trailers(map)));
    }
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let resp = match send.send_request(req.body(body).unwrap()).await {
        Ok(r) => r,
        Err(_) => return (0, String::new()),
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_bearer_token_in_any_spelling_on_a_public_route_is_verified_or_removed() {
    let w =
        World::with(Opts { identity: "pass_token = \"authorization\"", ..Opts::default() }).await;
    let bad = forged(&w, "mallory").await;
    for auth in [
        format!("Bearer\t{bad}"),
        format!("bearer\t\t{bad}"),
        format!("BEARER  {bad}"),
        format!("Bearer \t {bad}"),
        format!("\tBearer {bad}"),
    ] {
        let before = w.upstream.hits();
        let r = raw_get(w.proxy.addr, "/public/x", &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{auth:?}");
        assert_eq!(w.upstream.hits(), before + 1);
        let seen = w.upstream.last();
        assert!(seen.all("authorization").is_empty(), "{auth:?} reached the app");
        assert_eq!(seen.one("x-forwarded-user"), None);
    }
    // the same spellings of a valid token are verified: the app learns who it is
    let good = w.token("alice");
    let r =
        raw_get(w.proxy.addr, "/public/x", &[("Authorization", &format!("Bearer\t{good}"))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));
    // and on a protected route the forged one is refused before the app
    let before = w.upstream.hits();
    let r = raw_get(w.proxy.addr, "/x", &[("Authorization", &format!("Bearer\t{bad}"))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(w.upstream.hits(), before);
}

#[tokio::test]
async fn h2_fields_with_edge_whitespace_are_refused_and_never_forwarded() {
    let w = World::new().await;
    let bad = forged(&w, "mallory").await;
    for (name, value) in [
        ("authorization", format!(" Bearer {bad}")),
        ("authorization", format!("Bearer {bad} ")),
        ("authorization", format!("\tBearer {bad}")),
        ("x-app-header", "value ".to_string()),
        ("cookie", " theme=dark".to_string()),
    ] {
        let (status, _) =
            h2c_request(w.proxy.addr, "GET", "/public/x", &[(name, &value)], None).await;
        assert_eq!(status, 400, "{name}: {value:?}");
    }
    assert_eq!(w.upstream.hits(), 0, "a malformed h2 request reached the app");
    // trailers too: the app never gets a complete request
    let token = w.token("alice");
    let auth = format!("Bearer {token}");
    let (status, _) = h2c_request(
        w.proxy.addr,
        "POST",
        "/upload",
        &[("authorization", &auth), ("te", "trailers")],
        Some(&[("x-checksum", "abc ")]),
    )
    .await;
    assert_ne!(status, 200);
    assert!(
        w.upstream.seen().iter().all(|s| !s.body_complete),
        "a request with a malformed trailer arrived whole at the app"
    );
    // a clean one passes
    let (status, body) =
        h2c_request(w.proxy.addr, "GET", "/public/x", &[("x-app-header", "a b")], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.upstream.last().one("x-app-header").as_deref(), Some("a b"));
}

const REPORT_RULES: &str = r#"
[[authorization.rules]]
path = "/reports"
methods = ["POST", "DELETE"]
groups = ["admins"]

[[authorization.rules]]
path = "/dashboards"
methods = ["GET"]
groups = ["admins"]
"#;

/// `method path` sent raw with bob's (a non-admin's) token: (status, reached the app).
async fn as_bob(w: &World, method: &str, path: &str) -> (u16, bool) {
    let before = w.upstream.hits();
    let r = raw(
        w.proxy.addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            w.token("bob")
        ),
    )
    .await;
    (r.status, w.upstream.hits() > before)
}

#[tokio::test]
async fn methods_with_lower_case_letters_are_refused_before_any_rule() {
    let w = World::with(Opts { extra: REPORT_RULES.into(), ..Opts::default() }).await;
    for m in ["delete", "post", "Delete", "head", "get", "propfind"] {
        assert_eq!(as_bob(&w, m, "/reports").await, (400, false), "{m}");
        assert_eq!(as_bob(&w, m, "/public/x").await, (400, false), "{m} on a public route");
    }
    assert_eq!(as_bob(&w, "DELETE", "/reports").await, (403, false));
    // upper-case extension methods pass (WebDAV)
    assert_eq!(as_bob(&w, "PROPFIND", "/files/").await, (200, true));
    assert_eq!(w.upstream.last().method, "PROPFIND");
    // over h2c too
    let auth = format!("Bearer {}", w.token("bob"));
    let (status, _) =
        h2c_request(w.proxy.addr, "delete", "/reports", &[("authorization", &auth)], None).await;
    assert_eq!(status, 400);
    assert!(w.upstream.seen().iter().all(|s| s.path_and_query != "/reports"));
}

#[tokio::test]
async fn head_follows_get_in_rules_and_public_routes() {
    let w = World::with(Opts { extra: REPORT_RULES.into(), ..Opts::default() }).await;
    assert_eq!(as_bob(&w, "GET", "/dashboards").await, (403, false));
    assert_eq!(as_bob(&w, "HEAD", "/dashboards").await, (403, false));
    assert_eq!(as_bob(&w, "POST", "/dashboards").await, (200, true), "the rule is GET-only");
    // the public route "GET=^/healthz$" answers HEAD without a token
    let r = raw(
        w.proxy.addr,
        "HEAD /healthz HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.last().method, "HEAD");
}
