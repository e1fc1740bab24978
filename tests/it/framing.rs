//! HTTP as portcullis reads it before anything else: framing it will not pass on, one valid
//! `Host`, HTTP/2 fields, request bodies that stop arriving; each refusal reaches nothing.

use crate::common::*;

fn says_close(r: &RawResponse) -> bool {
    r.head.to_ascii_lowercase().contains("\r\nconnection: close")
}

#[tokio::test]
async fn conflicting_framing_is_not_passed_on() {
    let w = World::new().await;
    // Content-Length says 5, the chunked body is 11 bytes: the encoding wins (hyper drops the
    // length on parsing), and the app gets exactly that body, nothing left over to smuggle.
    let req = format!(
        "POST /api HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         b\r\nhello world\r\n0\r\n\r\n",
        w.token("alice")
    );
    let r = raw(w.proxy.addr, &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.upstream.last();
    assert_eq!(seen.body_len, 11);
    assert_ne!(seen.one("content-length").as_deref(), Some("5"));
    assert_eq!(w.upstream.hits(), 1);
}

#[tokio::test]
async fn framing_the_proxy_cannot_pass_on_faithfully_is_refused() {
    let w = World::new().await;
    // a coding before chunked would reach the app as a body it cannot tell is compressed
    for te in ["gzip, chunked", "chunked, chunked", "deflate,chunked"] {
        let head = format!(
            "POST /public/x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: {te}\r\n\r\n"
        );
        let (r, closed) = raw_exchange(w.proxy.addr, &head, b"5\r\nhello\r\n0\r\n\r\n").await;
        assert_eq!(r.status, 501, "{te}: {r:?}");
        assert!(says_close(&r) && closed, "{te}: {r:?}");
    }
    assert_eq!(w.upstream.hits(), 0);
    // malformed chunked body: the client's fault, 400, not the app's 502
    let head = "POST /public/x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (r, closed) =
        raw_exchange(w.proxy.addr, head, b"5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(says_close(&r) && closed, "{r:?}");
    // a refused Expect: 100-continue closes the connection, and says so
    let head = "POST /api HTTP/1.1\r\nHost: app.example\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    let (r, closed) = raw_exchange(w.proxy.addr, head, b"").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.head.contains("100 Continue"), "{r:?}");
    assert!(says_close(&r) && closed, "{r:?}");
    // only the malformed-body request's head reached the app
    assert!(w.upstream.hits() <= 1);
}

#[tokio::test]
async fn one_valid_host_and_absolute_form_targets_agree() {
    let w = World::new().await;
    for (req, case) in [
        ("GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        ("GET /public/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n", "two Hosts"),
        ("GET /public/x HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n", "userinfo in Host"),
        ("GET /public/x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", "invalid Host"),
        ("GET http://user:pw@a.example/public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", "userinfo in target"),
    ] {
        let r = raw(w.proxy.addr, req).await;
        assert_eq!(r.status, 400, "{case}: {r:?}");
    }
    assert_eq!(w.upstream.hits(), 0);
    // an absolute-form target's authority wins, for the app and X-Forwarded-Host alike
    let r = raw(
        w.proxy.addr,
        "GET http://real.example:8443/public/x?q=1 HTTP/1.1\r\nHost: spoofed.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.upstream.last();
    assert_eq!(seen.one("host").as_deref(), Some("real.example:8443"));
    assert_eq!(seen.one("x-forwarded-host").as_deref(), Some("real.example:8443"));
    assert_eq!(seen.path_and_query, "/public/x?q=1");
    // HTTP/1.0 without Host is fine
    let r = raw(w.proxy.addr, "GET /public/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
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

#[tokio::test]
async fn an_h2_host_that_differs_from_the_authority_is_refused() {
    let w = World::new().await;
    let (status, _) =
        h2c_request(w.proxy.addr, "GET", "/public/x", &[("host", "evil.example")], None).await;
    assert_eq!(status, 400);
    assert_eq!(w.upstream.hits(), 0);
    let (status, _) =
        h2c_request(w.proxy.addr, "GET", "/public/x", &[("host", "APP.example:80")], None).await;
    assert_eq!(status, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-host").as_deref(), Some("app.example"));
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_and_frees_the_app() {
    let w =
        World::with(Opts { server: "request_body_idle_timeout = \"300ms\"", ..Opts::default() })
            .await;
    let t = w.token("alice");
    for (path, auth) in [
        ("/public/upload", String::new()),
        ("/api/upload", format!("Authorization: Bearer {t}\r\n")),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: app.example\r\n{auth}Content-Length: 100000\r\n\r\n"
        );
        let started = std::time::Instant::now();
        let (r, closed) = raw_exchange(w.proxy.addr, &head, &[b'x'; 1000]).await;
        assert_eq!(r.status, 408, "{path}: {r:?}");
        assert!(says_close(&r) && closed, "{path}: {r:?}");
        assert!(r.body.contains("request_timeout"), "{r:?}");
        // well before upstream.response_timeout (2 s here)
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
    }
    // a body that keeps arriving, slower than the idle timeout in total, is forwarded whole
    let head = "POST /public/upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 30\r\nConnection: close\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(w.proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        s.write_all(&[b'y'; 10]).await.unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(w.upstream.last().body_len, 30);
}
