//! Forwarding: identity headers, X-Forwarded-*, hop-by-hop, streaming, pooling, 502/504.

use crate::common::*;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn valid_token_reaches_the_app_with_identity_headers() {
    let w = World::new().await;
    let resp = client()
        .get(w.url("/api/items?limit=5&q=a%20b"))
        .bearer_auth(w.token("alice"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "https")
        .header("Forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let seen = w.upstream.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path_and_query, "/api/items?limit=5&q=a%20b");
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("alice@example.com"));
    assert_eq!(seen.one("x-forwarded-preferred-username").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-forwarded-groups").as_deref(), Some("admins,developers"));
    // the token is not passed on by default
    assert_eq!(seen.one("authorization"), None);
    // forwarding headers come from the connection, client-sent ones are replaced
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.all("x-forwarded-host"), vec![w.proxy.addr.to_string()]);
    assert_eq!(seen.one("forwarded"), None);
    // the Host header is the client's (pass_host_header)
    assert_eq!(seen.one("host"), Some(w.proxy.addr.to_string()));
    assert!(seen.one("x-request-id").is_some());
}

#[tokio::test]
async fn claim_map_and_pass_token_modes() {
    let w = World::with(Opts {
        identity: "claim_headers = { \"X-Forwarded-Tenant\" = \"tid\", \"X-Forwarded-Subject\" = \"sub\" }\npass_token = \"x-forwarded-access-token\"",
        ..Opts::default()
    })
    .await;
    let mut claims = w.issuer.claims_for("bob", AUD);
    claims["tid"] = serde_json::json!("tenant-7");
    let token = w.issuer.mint(&claims);
    let resp = client().get(w.url("/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-tenant").as_deref(), Some("tenant-7"));
    assert_eq!(seen.one("x-forwarded-subject").as_deref(), Some("bob"));
    assert_eq!(seen.one("x-forwarded-access-token").as_deref(), Some(token.as_str()));
    assert_eq!(seen.one("authorization"), None);

    let w =
        World::with(Opts { identity: "pass_token = \"authorization\"", ..Opts::default() }).await;
    let token = w.token("bob");
    client().get(w.url("/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(w.upstream.last().one("authorization"), Some(format!("Bearer {token}")));
    assert_eq!(w.upstream.last().one("x-forwarded-access-token"), None);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let w = World::new().await;
    let r = raw_get(
        w.proxy.addr,
        "/hop",
        &[
            ("Authorization", &format!("Bearer {}", w.token("alice"))),
            ("Connection", "close, X-Client-Private"),
            ("X-Client-Private", "secret"),
            ("Keep-Alive", "timeout=9"),
            ("TE", "deflate, trailers"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("X-Client-Public", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-client-private"), None);
    assert_eq!(seen.one("keep-alive"), None);
    // TE is hop-by-hop: only the trailers intent is stated again, by portcullis, which passes
    // trailers on
    assert_eq!(seen.one("te").as_deref(), Some("trailers"));
    assert_eq!(seen.one("proxy-authorization"), None);
    assert_eq!(seen.one("x-client-public").as_deref(), Some("yes"));
    let head = r.head.to_ascii_lowercase();
    assert!(!head.contains("x-upstream-private"), "{head}");
    assert!(!head.contains("keep-alive: timeout=5"), "{head}");
    assert!(head.contains("x-upstream-public: yes"), "{head}");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let w = World::new().await;
    let token = w.token("alice");
    // upload: 8 MiB arrives whole
    let body = vec![b'x'; 8 * 1024 * 1024];
    let resp = client().post(w.url("/upload")).bearer_auth(&token).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), format!("upstream ok {}", 8 * 1024 * 1024));
    assert_eq!(w.upstream.last().body_len, 8 * 1024 * 1024);

    // download: the first chunk reaches the client while the upstream is still holding the
    // rest, so the proxy does not buffer whole responses
    let mut resp = client().get(w.url("/stream")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let first =
        tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    w.upstream.release_stream();
    let second = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"second\n");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let w = World::with(Opts { server: "workers = 2", ..Opts::default() }).await;
    let token = w.token("alice");
    let peers = |w: &World| -> std::collections::HashSet<std::net::SocketAddr> {
        w.upstream.seen().iter().map(|s| s.peer).collect()
    };
    // one client connection: its worker reuses one upstream connection
    let c = client();
    for _ in 0..10 {
        let r = c.get(w.url("/pool")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // answers without a body (HEAD) hand their connection back too
    for _ in 0..5 {
        let r = c.head(w.url("/pool")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(peers(&w).len(), 1, "sequential requests should share one pooled connection");
    // a new client connection per request lands on either worker: at most one upstream
    // connection per worker, not one per request
    for _ in 0..10 {
        let r = client().get(w.url("/pool")).bearer_auth(&token).send().await.unwrap();
        r.bytes().await.unwrap();
    }
    assert!(peers(&w).len() <= 2, "{:?}", peers(&w));
}

#[tokio::test]
async fn a_half_read_body_or_a_connection_the_app_closed_is_never_reused() {
    let w = World::new().await;
    let token = w.token("alice");
    // the client stops reading a streamed answer half-way: that connection still has the
    // rest of it in flight, so the next request must not go there
    let mut resp = client().get(w.url("/stream")).bearer_auth(&token).send().await.unwrap();
    let first =
        tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    drop(resp);
    let streamed_on = w.upstream.last().peer;
    let r = client().get(w.url("/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream ok 0");
    assert_ne!(w.upstream.last().peer, streamed_on);

    // an app that closes every connection after one answer (without saying so): each request
    // still gets its answer, and reaches the app exactly once
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = app.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let issuer = &w.issuer;
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://{app_addr}"), Opts::default(), true).await;
    let c = client();
    for i in 0..5 {
        let r = c.get(format!("{}/x", proxy.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn refused_or_reset_upstream_is_502_and_slow_head_is_504() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Es256])
        .await
        .unwrap();
    let port = closed_port();
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://127.0.0.1:{port}"), Opts::default(), true)
            .await;
    let token = issuer.token_for("alice", AUD);
    let r = client().get(format!("{}/x", proxy.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("bad_gateway"));

    // an upstream that accepts, reads the request and resets the connection
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = resetter.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.set_zero_linger();
            drop(s); // linger 0: RST, not FIN
        }
    });
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://{reset_addr}"), Opts::default(), true).await;
    let r = client().get(format!("{}/x", proxy.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 502);

    let w = World::new().await;
    let r = client().get(w.url("/slow-head")).bearer_auth(w.token("alice")).send().await.unwrap();
    // response_timeout is 2s in the test config; the upstream would answer after 5s
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().contains("gateway_timeout"));
}

#[tokio::test]
async fn public_routes_skip_auth_but_still_strip_identity() {
    let w = World::new().await;
    let r = client()
        .get(w.url("/public/logo.svg"))
        .header("X-Forwarded-User", "mallory")
        .header("X-Auth-Request-Email", "mallory@evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = w.upstream.last();
    assert_eq!(seen.path_and_query, "/public/logo.svg");
    assert_eq!(seen.one("x-forwarded-user"), None);
    assert_eq!(seen.one("x-auth-request-email"), None);
    // method-restricted public route
    assert_eq!(client().get(w.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(client().post(w.url("/healthz")).send().await.unwrap().status(), 401);
    let hits = w.upstream.hits();
    for h in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"] {
        let r = client().get(w.url("/healthz")).header(h, "DELETE").send().await.unwrap();
        assert_eq!(r.status(), 401, "{h} turned a GET-only public route into DELETE");
    }
    assert_eq!(w.upstream.hits(), hits);
    // routes open to every method are not affected
    let r = client().get(w.url("/public/x")).header("X-HTTP-Method-Override", "PUT").send().await;
    assert_eq!(r.unwrap().status(), 200);
}

#[tokio::test]
async fn several_issuers_each_with_their_own_audiences_and_keys() {
    use portcullis::devissuer::{DevIssuer, KeyAlg};
    let a = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let b = DevIssuer::start(&[KeyAlg::Es256]).await.unwrap();
    let upstream = Upstream::start().await;
    let extra = format!(
        "[[bearer.issuers]]\nissuer = \"{}\"\naudiences = [\"api://b-only\"]\njwks_url = \"{}\"\n",
        b.issuer(),
        b.jwks_url()
    );
    let proxy =
        start_proxy(&a.issuer(), &upstream.url(), Opts { bearer: extra, ..Opts::default() }, true)
            .await;
    let get = |t: String| {
        let url = format!("{}/x", proxy.url);
        async move { client().get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(a.token_for("alice", AUD)).await, 200);
    // issuer B: keys straight from jwks_url, no discovery
    assert_eq!(get(b.token_for("bob", "api://b-only")).await, 200);
    assert_eq!(upstream.last().one("x-forwarded-user").as_deref(), Some("bob"));
    assert_eq!(b.discovery_fetches(), 0);
    // audiences are per issuer
    assert_eq!(get(b.token_for("bob", AUD)).await, 401);
    assert_eq!(get(a.token_for("alice", "api://b-only")).await, 401);
    // a token signed by B's key but claiming A as issuer: A's keys only
    let mut forged = a.claims_for("mallory", AUD);
    forged["iss"] = serde_json::json!(a.issuer());
    assert_eq!(get(b.mint(&forged)).await, 401);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn upstream_url_path_is_a_prefix_and_ipv6_loopback_works() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::EdDsa])
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let proxy = start_proxy(
        &issuer.issuer(),
        &format!("http://{}/app/", upstream.addr),
        Opts::default(),
        true,
    )
    .await;
    let token = issuer.token_for("alice", AUD);
    let r = client().get(format!("{}/x/y?z=1", proxy.url)).bearer_auth(&token).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(upstream.last().path_and_query, "/app/x/y?z=1");

    // an app on [::1]
    let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await else {
        panic!("IPv6 loopback is needed for this test");
    };
    let port = v6.local_addr().unwrap().port();
    drop(v6);
    let app = axum::Router::new().fallback(|| async { "v6 ok" });
    let listener = tokio::net::TcpListener::bind(("::1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://[::1]:{port}"), Opts::default(), true).await;
    let r = client().get(format!("{}/v6", proxy.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v6 ok");
    assert_eq!(status_of(&format!("{}/readyz", proxy.admin), None).await, 200);
}

/// The accept queue of the listener on 127.0.0.1:`port`: connections the kernel completed that
/// the app has not accepted yet (`/proc/net/tcp` shows it as a listener's `rx_queue`).
fn accept_queue(port: u16) -> usize {
    let want = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")).then(|| {
                let rx = f[4].split(':').nth(1).unwrap();
                usize::from_str_radix(rx, 16).unwrap()
            })
        })
        .sum()
}

#[tokio::test]
async fn beyond_max_concurrent_requests_the_answer_is_503_and_the_app_is_not_reached() {
    let w = World::with(Opts { upstream: "max_concurrent_requests = 2".into(), ..Opts::default() })
        .await;
    let t = w.token("alice");
    let c = client();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut r = c.get(w.url("/stream")).bearer_auth(&t).send().await.unwrap();
        assert_eq!(&r.chunk().await.unwrap().unwrap()[..], b"first\n");
        held.push(r);
    }
    let hits = w.upstream.hits();
    let r = c.get(w.url("/api")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(w.upstream.hits(), hits, "the app was reached beyond the limit");
    // a slot frees when a response body ends
    w.upstream.release_stream();
    let mut first = held.remove(0);
    while first.chunk().await.unwrap().is_some() {}
    drop(first);
    assert_eq!(eventually_status(&w.url("/api"), Some(&t), 200).await, 200);
    w.upstream.release_stream();
}

#[tokio::test]
async fn a_burst_of_new_clients_never_overfills_the_apps_accept_queue() {
    const CLIENTS: usize = 40;
    // an app that accepts nothing until told, on a listener deep enough to show any excess
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(1024).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
    let app_port = listener.local_addr().unwrap().port();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let open = gate.clone();
    tokio::spawn(async move {
        open.notified().await;
        let app = axum::Router::new().fallback(|| async { "ok" });
        axum::serve(listener, app).await.unwrap();
    });

    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let o =
        Opts { server: "workers = 2", upstream: "max_connecting = 8".into(), ..Opts::default() };
    let text = config_text(&issuer.issuer(), &format!("http://127.0.0.1:{app_port}"), &o)
        // waiting for the gate must not time out, whatever the machine's speed
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"60s\"")
        .replace("response_timeout = \"2s\"", "response_timeout = \"60s\"");
    let cfg = portcullis::config::load_str(&text, std::iter::empty()).unwrap().config;
    let server = portcullis::Server::start(cfg).await.unwrap();
    for _ in 0..400 {
        if server.keys.all_loaded() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(server.keys.all_loaded());
    let addr = server.addr;
    let token = issuer.token_for("alice", AUD);
    let requests: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let t = token.clone();
            tokio::spawn(async move {
                let auth = format!("Bearer {t}");
                raw_get(addr, &format!("/burst/{i}"), &[("Authorization", &auth)]).await.status
            })
        })
        .collect();
    // every client is in, and the app's queue holds what portcullis opened; it must never hold
    // more than upstream.max_connecting, however long we look
    let mut most = 0;
    let mut stable = 0;
    for _ in 0..3000 {
        let q = accept_queue(app_port);
        most = most.max(q);
        if server.connections().0 == CLIENTS && q == most && q > 0 {
            stable += 1;
            if stable == 50 {
                break;
            }
        } else {
            stable = 0;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(most, 8, "the app's accept queue held {most} connections");
    gate.notify_one();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    server.shutdown().await;
}
