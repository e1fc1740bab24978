//! Start-up, readiness, key rotation, an issuer going away, and graceful shutdown.

use crate::common::*;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::time::Duration;

#[tokio::test]
async fn protected_requests_get_503_until_keys_load() {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    issuer.set_down(true);
    let upstream = Upstream::start().await;
    let proxy = start_proxy(&issuer.issuer(), &upstream.url(), Opts::default(), false).await;
    let token = issuer.token_for("alice", AUD);
    let api = format!("{}/api", proxy.url);
    let r = client().get(&api).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(status_of(&api, None).await, 503);
    let ready = client().get(format!("{}/readyz", proxy.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("keys"));
    assert_eq!(status_of(&format!("{}/healthz", proxy.admin), None).await, 200);
    // public routes do not need keys
    assert_eq!(status_of(&format!("{}/public/x", proxy.url), None).await, 200);
    assert_eq!(upstream.hits(), 1);

    issuer.set_down(false);
    assert_eq!(eventually_status(&api, Some(&token), 200).await, 200);
    assert_eq!(status_of(&format!("{}/readyz", proxy.admin), None).await, 200);
}

#[tokio::test]
async fn readyz_reports_an_unreachable_upstream() {
    let issuer = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
    let port = closed_port();
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://127.0.0.1:{port}"), Opts::default(), true)
            .await;
    let r = client().get(format!("{}/readyz", proxy.admin)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("upstream"));
    assert_eq!(
        client().get(format!("{}/healthz", proxy.admin)).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn rotation_is_followed_and_removed_keys_stop_working() {
    let w =
        World::with(Opts { bearer: "jwks_refresh_interval = \"100ms\"".into(), ..Opts::default() })
            .await;
    let old_kid = w.issuer.kids()[0].clone();
    let old_token = w.token("alice");
    assert_eq!(
        client().get(w.url("/a")).bearer_auth(&old_token).send().await.unwrap().status(),
        200
    );

    // a new key first in the JWKS: its tokens are accepted without a restart
    let new_kid = w.issuer.rotate(KeyAlg::Rs256);
    let new_token = w.token("bob");
    assert!(new_token.len() > 10 && w.issuer.kids()[0] == new_kid);
    assert_eq!(eventually_status(&w.url("/b"), Some(&new_token), 200).await, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("bob"));

    // the old key leaves the JWKS: its (cached) token stops working
    w.issuer.remove_key(&old_kid);
    assert_eq!(eventually_status(&w.url("/c"), Some(&old_token), 401).await, 401);
}

#[tokio::test]
async fn known_keys_keep_working_while_the_issuer_is_down() {
    let w =
        World::with(Opts { bearer: "jwks_refresh_interval = \"50ms\"".into(), ..Opts::default() })
            .await;
    let token = w.token("alice");
    w.issuer.set_down(true);
    let attempts = w.issuer.discovery_fetches();
    for _ in 0..40 {
        if w.issuer.discovery_fetches() >= attempts + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // refreshes failed meanwhile; a token never seen before still verifies with the kept keys
    assert!(w.issuer.discovery_fetches() >= attempts + 2, "no refresh was attempted");
    assert_eq!(client().get(w.url("/a")).bearer_auth(&token).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let w = World::new().await;
    let token = w.token("alice");
    let url = w.url("/stream");
    let addr = w.proxy.addr;
    let admin = w.proxy.admin.clone();
    let mut resp = client().get(&url).bearer_auth(&token).send().await.unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");

    let World { issuer: _issuer, upstream, proxy } = w;
    let shutdown = tokio::spawn(proxy.shutdown());
    // new connections are refused once the listener is closed
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");
    assert!(!shutdown.is_finished(), "shutdown did not wait for the in-flight request");
    // while draining, probes still answer: alive, but not ready
    let ready = client().get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("shutting down"));
    assert_eq!(status_of(&format!("{admin}/healthz"), None).await, 200);
    // the in-flight response completes
    upstream.release_stream();
    let rest = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&rest[..], b"second\n");
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn one_issuer_down_does_not_hold_back_the_others() {
    let a = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let b = DevIssuer::start(&[KeyAlg::Es256]).await.unwrap();
    b.set_down(true);
    let upstream = Upstream::start().await;
    let extra =
        format!("[[bearer.issuers]]\nissuer = \"{}\"\naudiences = [\"{AUD}\"]\n", b.issuer());
    let proxy =
        start_proxy(&a.issuer(), &upstream.url(), Opts { bearer: extra, ..Opts::default() }, false)
            .await;
    let ready = format!("{}/readyz", proxy.admin);
    assert_eq!(eventually_status(&ready, None, 200).await, 200);
    let body = client().get(&ready).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(&b.issuer()), "the missing issuer is named: {body}");

    let api = format!("{}/api", proxy.url);
    assert_eq!(status_of(&api, Some(&a.token_for("alice", AUD))).await, 200);
    assert_eq!(status_of(&api, Some(&b.token_for("bob", AUD))).await, 503);
    assert_eq!(status_of(&api, None).await, 401);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn connections_that_never_sent_a_byte_do_not_hold_up_shutdown() {
    let w = World::new().await;
    let addr = w.proxy.addr;
    // open and silent, and one that made a request and is now idle
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r =
        raw(addr, "GET /public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let World { issuer: _issuer, upstream: _upstream, proxy } = w;
    // shutdown_timeout is 5 s: a silent connection must not make the drain wait for it
    tokio::time::timeout(Duration::from_secs(2), proxy.shutdown())
        .await
        .expect("the drain waited for a connection that never sent a request");
    // and it was closed
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_serve_their_next_request() {
    use tokio::io::AsyncWriteExt;
    let w = World::new().await;
    let token = w.token("alice");
    let server = || w.proxy.server.as_ref().unwrap();
    let req = format!(
        "GET /api/a HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(server().connections(), (1, 0));
    // idle (two sweeps, a second apart; exactly when is the unit test's, on paused time):
    // parked, still open
    let parked = || async {
        for _ in 0..100 {
            if server().connections() == (1, 1) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(parked().await, "the idle connection was not parked: {:?}", server().connections());
    // the next request on the same connection is served as usual
    s.write_all(req.replace("/api/a", "/api/b").as_bytes()).await.unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.ends_with("upstream ok 0"), "{second}");
    assert_eq!(w.upstream.last().path_and_query, "/api/b");
    assert_eq!(server().connections(), (1, 0));
    // two requests in one write, after parking: both answered, in order
    assert!(parked().await, "not parked again: {:?}", server().connections());
    let two = format!("{}{}", req.replace("/api/a", "/api/c"), req.replace("/api/a", "/api/d"));
    s.write_all(two.as_bytes()).await.unwrap();
    let mut both = String::new();
    while both.matches("upstream ok").count() < 2 {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf));
        let n = read.await.expect("both answers within 10 s").unwrap();
        assert!(n > 0, "closed after {both:?}");
        both.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    let paths: Vec<String> = w.upstream.seen().iter().map(|x| x.path_and_query.clone()).collect();
    assert_eq!(paths[paths.len() - 2..], ["/api/c".to_string(), "/api/d".to_string()]);
    drop(s);
    let mut closed = false;
    for _ in 0..100 {
        closed = server().connections() == (0, 0);
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "still counted: {:?}", server().connections());
}

#[tokio::test]
async fn a_response_still_streaming_to_a_silent_client_is_not_parked() {
    let w = World::new().await;
    let token = w.token("alice");
    let mut resp = client().get(w.url("/stream")).bearer_auth(&token).send().await.unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    // neither side sends a byte for longer than parking takes
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(w.proxy.server.as_ref().unwrap().connections().1, 0);
    w.upstream.release_stream();
    let rest = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&rest[..], b"second\n");
}

/// GET `path` over `conn` with `token` (if any): the status.
async fn get_over(
    conn: &mut hyper::client::conn::http1::SendRequest<String>,
    path: &str,
    token: Option<&str>,
) -> u16 {
    conn.ready().await.expect("the connection stays open across the swap");
    let mut req = http::Request::get(path).header("host", "app.example");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = conn.send_request(req.body(String::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    status
}

#[tokio::test]
async fn a_swapped_pipeline_serves_the_next_request_on_an_open_connection() {
    let w = World::new().await;
    let server = w.proxy.server.as_ref().unwrap();
    let mut claims = w.issuer.claims_for("alice", AUD);
    claims["sub"] = "u-123".into();
    let token = w.issuer.mint(&claims);
    let mut conn = http1_sender(w.proxy.addr).await;
    assert_eq!(get_over(&mut conn, "/public/x", None).await, 200);
    assert_eq!(get_over(&mut conn, "/api", Some(&token)).await, 200);
    assert_eq!(get_over(&mut conn, "/api", Some(&token)).await, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("u-123"));

    // the next configuration: no public routes, the user named by another claim
    let next = Opts {
        bearer: "public_routes = []".into(),
        identity: "user_claim = \"preferred_username\"",
        ..Opts::default()
    };
    let text = config_text(&w.issuer.issuer(), &w.upstream.url(), &next);
    let cfg = portcullis::config::load_str(&text, std::iter::empty()).unwrap().config;
    assert_eq!(server.swap(&cfg).await.unwrap(), 2);

    let hits = w.upstream.hits();
    assert_eq!(get_over(&mut conn, "/public/x", None).await, 401);
    assert_eq!(w.upstream.hits(), hits, "a route no longer public reached the app");
    // the token verified (and cached) under the first configuration is the next one's to map
    assert_eq!(get_over(&mut conn, "/api", Some(&token)).await, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));

    // what needs a restart is refused, and the running pipeline stays
    let mut wider = cfg.clone();
    wider.server.workers += 1;
    let e = server.swap(&wider).await.unwrap_err().to_string();
    assert!(e.contains("server.workers"), "{e}");
    assert_eq!(get_over(&mut conn, "/public/x", None).await, 401);
}

#[tokio::test]
async fn shutdown_delay_keeps_serving_while_readyz_turns_503() {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let o = Opts { server: "shutdown_delay = \"60s\"", ..Opts::default() };
    let bin = Binary::start(&config_text(&issuer.issuer(), &upstream.url(), &o)).await;
    let token = issuer.token_for("alice", AUD);
    bin.terminate();
    let readyz = format!("http://{}/readyz", bin.admin);
    let mut status = 0;
    for _ in 0..200 {
        status = client().get(&readyz).send().await.unwrap().status().as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 503, "not unready after SIGTERM");
    let body = client().get(&readyz).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("shutting down"), "{body}");
    // within the delay (60 s: far longer than this takes), new connections are still served
    let r = client().get(format!("http://{}/api", bin.addr)).bearer_auth(&token).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(upstream.last().path_and_query, "/api");
    // (dropped: the process is killed)
}
