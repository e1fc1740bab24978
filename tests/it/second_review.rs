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
    let mut send = h2c_sender(addr).await;
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

use crate::login::{Browser, LoginWorld};

/// A GET with `cookie` as raw bytes (a browser sends what a page stored, UTF-8 included), as a
/// navigation: (status, Location, Set-Cookie values).
async fn with_cookie_bytes(w: &LoginWorld, path: &str, cookie: &[u8]) -> (u16, String) {
    let r = Browser::new()
        .http
        .get(w.url(path))
        .header("accept", "text/html")
        .header("sec-fetch-mode", "navigate")
        .header("cookie", reqwest::header::HeaderValue::from_bytes(cookie).unwrap())
        .send()
        .await
        .unwrap();
    let loc = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
    (r.status().as_u16(), loc.unwrap_or_default())
}

#[tokio::test]
async fn a_non_ascii_cookie_neither_hides_the_session_nor_lets_it_reach_the_app() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();
    // signing in works beside a non-ASCII cookie of the app's (the attempt cookie is found)
    let auth = w.start(&mut b, "/").await;
    let cb = w.pick(&mut b, &auth, "alice").await;
    let jar = b.cookie_header();
    let mut cookie = b"name=Zo\xc3\xab; ".to_vec();
    cookie.extend_from_slice(jar.as_bytes());
    let r = b
        .http
        .get(&cb)
        .header("cookie", reqwest::header::HeaderValue::from_bytes(&cookie).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the callback did not find its attempt");
    b.take_cookies(r.headers());
    let session = b.jar["_portcullis"].clone();

    let mut cookie = b"name=Zo\xc3\xab; _portcullis=".to_vec();
    cookie.extend_from_slice(session.as_bytes());
    cookie.extend_from_slice(b";  theme=dark");
    assert_eq!(with_cookie_bytes(&w, "/x", &cookie).await.0, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.all_raw("cookie"), vec![b"name=Zo\xc3\xab; theme=dark".to_vec()]);
    // a public route too: the app gets the identity and its cookies, not the session
    assert_eq!(with_cookie_bytes(&w, "/public/p", &cookie).await.0, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.all_raw("cookie"), vec![b"name=Zo\xc3\xab; theme=dark".to_vec()]);
}

#[tokio::test]
async fn the_session_under_another_spelling_opens_nothing_and_never_reaches_the_app() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    let session = b.jar["_portcullis"].clone();
    let hits = w.upstream.hits();
    for name in ["%5Fportcullis", "%5fportcullis", "_Portcullis", "%5F%5FHost-_portcullis"] {
        let cookie = format!("{name}={session}");
        let (status, loc) = with_cookie_bytes(&w, "/x", cookie.as_bytes()).await;
        assert_eq!(status, 302, "{name} opened the session");
        assert!(loc.starts_with("/oauth2/sign_in"), "{loc}");
    }
    assert_eq!(w.upstream.hits(), hits, "a request without a session reached the app");
    // beside the real session, every other spelling is stripped on the way to the app
    let cookie = format!(
        "_portcullis={session}; %5Fportcullis={session}; .portcullis={session}; __Secure-_portcullis=x; app=1"
    );
    assert_eq!(with_cookie_bytes(&w, "/x", cookie.as_bytes()).await.0, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.all("cookie"), vec!["app=1".to_string()]);
    // and on a public route, where no session is needed
    let cookie = format!("%5Fportcullis={session}; app=1");
    assert_eq!(with_cookie_bytes(&w, "/public/x", cookie.as_bytes()).await.0, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.all("cookie"), vec!["app=1".to_string()]);
    assert_eq!(seen.one("x-forwarded-user"), None);
}

#[tokio::test]
async fn the_apps_set_cookies_survive_a_session_rewrite_and_the_response_turns_private() {
    let w = LoginWorld::new().await;
    w.issuer.set_access_ttl(1);
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    // past the access token's expiry (a lower bound: a slow machine only waits longer)
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let before = w.issuer.refresh_grants();
    let p = b.request("GET", &w.url("/app-cookies"), true, None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(w.issuer.refresh_grants(), before + 1, "the session was refreshed");
    let set: Vec<String> =
        p.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(set.iter().any(|c| c.starts_with("_portcullis=")), "{set:?}");
    assert!(set.iter().any(|c| c == "app_session=rotated; Path=/; HttpOnly"), "{set:?}");
    assert!(set.iter().any(|c| c == "csrf=t0k3n; Path=/"), "{set:?}");
    assert_eq!(p.headers["cache-control"], "private, max-age=600");
    // without a rewrite, the app's response is untouched
    let p = b.request("GET", &w.url("/app-cookies"), true, None).await;
    let set: Vec<_> = p.headers.get_all("set-cookie").iter().collect();
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(p.headers["cache-control"], "public, max-age=600");
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

#[tokio::test]
async fn no_access_line_is_lost_or_torn_when_the_log_reader_stalls_through_shutdown() {
    const CLIENTS: usize = 200;
    const EACH: usize = 10;
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let text = config_text(&issuer.issuer(), &upstream.url(), &Opts::default())
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"60s\"");
    // nobody reads the binary's stdout until after SIGTERM: its pipe fills and stays full
    let bin = Binary::start(&text).await;
    let token = issuer.token_for("alice", AUD);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, t) = (bin.addr, token.clone());
            tokio::spawn(async move {
                let http = client();
                for i in 0..EACH {
                    let r = http
                        .get(format!("http://{addr}/api/{c}/{i}"))
                        .bearer_auth(&t)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(upstream.hits(), CLIENTS * EACH);
    // SIGTERM during the stall; the reader comes back a few seconds later (well within
    // shutdown_timeout)
    let lines = bin.stop_with_stalled_reader(std::time::Duration::from_secs(3)).await;
    let mut access = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("a torn log line: {l:?}"));
        if v["target"] == "portcullis::access" {
            access += 1;
        }
    }
    assert_eq!(access, CLIENTS * EACH, "access lines lost");
}

const ADMIN_RULE: &str = r#"
[[authorization.rules]]
path = "/admin"
groups = ["admins"]
[[authorization.rules]]
path_regex = "^/Exports/"
groups = ["admins"]
"#;

#[tokio::test]
async fn an_encoded_semicolon_is_a_parameter_to_rules_too() {
    let w = World::with(Opts { extra: ADMIN_RULE.into(), ..Opts::default() }).await;
    for path in ["/admin%3Bx", "/admin%3bx", "/admin;x", "/admin%3B.css/users"] {
        assert_eq!(as_bob(&w, "GET", path).await, (403, false), "{path}");
    }
    // matched like an app that routes case-sensitively (Flask, Rails, Go): other cases pass
    assert_eq!(as_bob(&w, "GET", "/ADMIN").await, (200, true));
}

#[tokio::test]
async fn case_insensitive_paths_cover_rules_and_public_routes_together() {
    let extra = format!("[authorization]\ncase_insensitive_paths = true\n{ADMIN_RULE}");
    let w = World::with(Opts { extra, ..Opts::default() }).await;
    for path in ["/ADMIN", "/Admin", "/%41dmin", "/aDmIn/x", "/EXPORTS/a", "/exports/a"] {
        assert_eq!(as_bob(&w, "GET", path).await, (403, false), "{path}");
    }
    assert_eq!(as_bob(&w, "GET", "/administrator").await, (200, true));
    // the public route "^/public/" answers /PUBLIC/ without a token, as the app would route it
    let before = w.upstream.hits();
    assert_eq!(raw_get(w.proxy.addr, "/PUBLIC/x", &[]).await.status, 200);
    assert_eq!(w.upstream.hits(), before + 1);
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

/// A session's requests as a browser makes them from the app's own pages.
fn same_origin(b: &mut Browser) {
    b.fetch_site = Some("same-origin");
}

#[tokio::test]
async fn another_site_cannot_sign_a_user_out() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    same_origin(&mut b);
    let signed_in = b.jar.clone();
    // a cross-site link, or a browser that does not say: a page that asks first
    for site in [Some("cross-site"), None] {
        b.fetch_site = site;
        let p = b.request("GET", &w.url("/oauth2/sign_out?rd=/bye"), true, None).await;
        assert_eq!(p.status, 200, "{site:?}");
        assert!(
            p.body.contains("method=\"post\"") && p.body.contains("sign_out?rd=%2Fbye"),
            "{}",
            p.body
        );
        assert!(
            p.headers.get_all("set-cookie").iter().next().is_none(),
            "{site:?} cleared cookies"
        );
        assert_eq!(b.jar, signed_in);
    }
    // a cross-site form post is refused
    b.fetch_site = Some("cross-site");
    let p = b.request("POST", &w.url("/oauth2/sign_out"), true, Some("")).await;
    assert_eq!(p.status, 403);
    assert_eq!(b.jar, signed_in);
    same_origin(&mut b);
    assert_eq!(b.request("GET", &w.url("/x"), true, None).await.status, 200, "still signed in");
    // the confirmation's own post, and same-site or typed navigations, do sign out
    for site in ["same-origin", "same-site", "none"] {
        let mut b = Browser::new();
        w.login(&mut b, "/", "alice").await;
        b.fetch_site = Some(site);
        let method = if site == "same-origin" { "POST" } else { "GET" };
        let p = b.request(method, &w.url("/oauth2/sign_out"), true, Some("")).await;
        assert_eq!(p.status, 302, "{site}: {}", p.body);
        assert!(!b.jar.keys().any(|k| k.starts_with("_portcullis")), "{site}: {:?}", b.jar);
    }
}

#[tokio::test]
async fn sign_out_revokes_the_refresh_token_so_a_copied_cookie_dies_at_its_next_refresh() {
    let w = LoginWorld::new().await;
    w.issuer.set_access_ttl(1);
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    same_origin(&mut b);
    let copy = b.jar.clone();
    let p = b.request("POST", &w.url("/oauth2/sign_out"), true, Some("")).await;
    assert_eq!(p.status, 302);
    assert_eq!(w.issuer.revocations(), 1, "the refresh token was revoked at the provider");
    // past the access token's expiry (a lower bound), the copy must refresh, and cannot
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let mut thief = Browser::new();
    thief.jar = copy;
    let hits = w.upstream.hits();
    let p = thief.request("GET", &w.url("/x"), true, None).await;
    assert_eq!(p.status, 302, "a copied cookie outlived its revoked refresh token");
    assert_eq!(w.upstream.hits(), hits);
}

#[tokio::test]
async fn a_refused_cross_origin_request_changes_nothing_about_the_session() {
    let w = LoginWorld::new().await;
    w.issuer.set_access_ttl(1);
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let grants = w.issuer.refresh_grants();
    let jar = b.jar.clone();
    b.fetch_site = Some("cross-site");
    let p = b.request("POST", &w.url("/api/transfer"), false, Some("to=mallory")).await;
    assert_eq!(p.status, 403);
    assert_eq!(w.issuer.refresh_grants(), grants, "a refused request refreshed the session");
    assert!(p.headers.get_all("set-cookie").iter().next().is_none());
    assert_eq!(b.jar, jar);
    // the user's own next request refreshes, once, and passes
    same_origin(&mut b);
    assert_eq!(b.request("GET", &w.url("/x"), true, None).await.status, 200);
    assert_eq!(w.issuer.refresh_grants(), grants + 1);
    assert!(w.upstream.seen().iter().all(|s| s.path_and_query != "/api/transfer"));
}

#[tokio::test]
async fn a_refresh_replaces_the_sessions_claims_with_what_the_provider_says_now() {
    let w = LoginWorld::new().await;
    w.issuer.set_access_ttl(1);
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    same_origin(&mut b);
    assert_eq!(b.request("GET", &w.url("/admin"), true, None).await.status, 200);
    // removed from every group: the provider leaves the claim out (as Entra does)
    w.issuer.set_groups("alice", None);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let hits = w.upstream.hits();
    let p = b.request("GET", &w.url("/admin"), true, None).await;
    assert_eq!(p.status, 403, "a user without groups kept /admin after a refresh");
    assert_eq!(w.upstream.hits(), hits);
    assert_eq!(b.request("GET", &w.url("/x"), true, None).await.status, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-groups"), None);
}

#[tokio::test]
async fn a_refreshed_id_token_for_another_client_ends_the_session() {
    for patch in [
        serde_json::json!({"azp": "another-client"}),
        serde_json::json!({"aud": "another-client"}),
        serde_json::json!({"iat": 1}),
    ] {
        let w = LoginWorld::new().await;
        w.issuer.set_access_ttl(1);
        let mut b = Browser::new();
        assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
        same_origin(&mut b);
        w.issuer.patch_id_tokens(Some(patch.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let hits = w.upstream.hits();
        let p = b.request("GET", &w.url("/x"), true, None).await;
        assert_eq!(p.status, 302, "{patch}");
        assert_eq!(w.upstream.hits(), hits, "{patch}");
    }
}

#[tokio::test]
async fn a_callback_with_a_repeated_code_or_state_is_refused() {
    let w = LoginWorld::new().await;
    for extra in ["&code=other", "&state=other", "&iss=http%3A%2F%2Fother"] {
        let mut b = Browser::new();
        let auth = w.start(&mut b, "/").await;
        let cb = w.pick(&mut b, &auth, "alice").await;
        let p = b.request("GET", &format!("{cb}{extra}"), true, None).await;
        assert_eq!(p.status, 400, "{extra}");
        assert!(!b.jar.contains_key("_portcullis"), "{extra} signed in");
    }
}
