//! What an outside security review of the bearer front door found, each closed with a test
//! that asserts what the app received (and, for refusals, that nothing reached it).

use crate::common::*;
use portcullis::headers::{PATH_OVERRIDE_HEADERS, TRUSTED_PROXY_HEADERS};
use serde_json::json;

/// Headers whose name, with `_` taken as `-`, is `name` (case-insensitive).
fn spelled(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test]
async fn configured_claim_headers_are_stripped_whatever_their_name() {
    let w = World::with(Opts {
        identity: r#"claim_headers = { "Remote-User" = "name", "Tenant_Id" = "tid" }"#,
        ..Opts::default()
    })
    .await;
    let spoof = [("Remote-User", "root"), ("remote_user", "root"), ("TENANT-ID", "t-evil")];
    // a public route: no identity, and none of the client's copies
    let r = raw_get(w.proxy.addr, "/public/x", &spoof).await;
    assert_eq!(r.status, 200);
    let seen = w.upstream.last();
    assert!(spelled(&seen, "remote-user").is_empty(), "{seen:?}");
    assert!(spelled(&seen, "tenant-id").is_empty(), "{seen:?}");
    // a verified token without those claims: still none of the client's copies
    let t = format!("Bearer {}", w.token("alice"));
    let mut headers = spoof.to_vec();
    headers.push(("Authorization", &t));
    let r = raw_get(w.proxy.addr, "/api", &headers).await;
    assert_eq!(r.status, 200);
    let seen = w.upstream.last();
    assert!(spelled(&seen, "remote-user").is_empty(), "{seen:?}");
    assert!(spelled(&seen, "tenant-id").is_empty(), "{seen:?}");
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    // a token with the claims: exactly the verified values
    let mut c = w.issuer.claims_for("alice", AUD);
    c["name"] = json!("Alice A");
    c["tid"] = json!("t1");
    let t = format!("Bearer {}", w.issuer.mint(&c));
    let mut headers = spoof.to_vec();
    headers.push(("Authorization", &t));
    raw_get(w.proxy.addr, "/api", &headers).await;
    let seen = w.upstream.last();
    assert_eq!(spelled(&seen, "remote-user"), vec!["Alice A"]);
    assert_eq!(spelled(&seen, "tenant-id"), vec!["t1"]);
}

/// Every override and forwarding header in two spellings, with recognisable values.
fn override_and_forwarding_headers() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in PATH_OVERRIDE_HEADERS.iter().chain(TRUSTED_PROXY_HEADERS) {
        out.push((n.to_string(), "/admin".to_string()));
        out.push((n.replace('-', "_").to_ascii_uppercase(), "/admin".to_string()));
    }
    out
}

async fn send_with(w: &World, path: &str, extra: &[(String, String)], token: bool) -> Seen {
    let t = format!("Bearer {}", w.token("alice"));
    let mut headers: Vec<(&str, &str)> =
        extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if token {
        headers.push(("Authorization", &t));
    }
    let r = raw_get(w.proxy.addr, path, &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    w.upstream.last()
}

#[tokio::test]
async fn override_and_forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let w = World::new().await;
    let sent = override_and_forwarding_headers();
    for (path, token) in [("/public/x", false), ("/api", true)] {
        let seen = send_with(&w, path, &sent, token).await;
        assert_eq!(seen.path_and_query, path);
        for n in PATH_OVERRIDE_HEADERS {
            assert!(spelled(&seen, n).is_empty(), "{n} reached the app on {path}");
        }
        for n in TRUSTED_PROXY_HEADERS {
            let got = spelled(&seen, n);
            match *n {
                "x-forwarded-for" | "x-real-ip" => assert_eq!(got, vec!["127.0.0.1"], "{n}"),
                "x-forwarded-proto" => assert_eq!(got, vec!["http"], "{n}"),
                "x-forwarded-host" => assert_eq!(got, vec!["app.example"], "{n}"),
                _ => assert!(got.is_empty(), "{n} reached the app on {path}: {got:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarding_headers_but_never_overrides() {
    let w = World::with(Opts {
        server: r#"trusted_proxies = ["127.0.0.0/8", "::1/128"]"#,
        ..Opts::default()
    })
    .await;
    let sent: Vec<(String, String)> = vec![
        ("X-Forwarded-For".into(), "203.0.113.7, 10.0.0.2".into()),
        ("X-Forwarded-Proto".into(), "https".into()),
        ("X-Forwarded-Host".into(), "app.example.com".into()),
        ("X-Real-IP".into(), "203.0.113.7".into()),
        ("X-Forwarded-Prefix".into(), "/app".into()),
        ("X_Forwarded_For".into(), "6.6.6.6".into()),
        ("X-Original-URL".into(), "/admin".into()),
        ("X-Forwarded-Uri".into(), "/admin".into()),
        ("X-Original-Method".into(), "DELETE".into()),
    ];
    let seen = send_with(&w, "/public/x", &sent, false).await;
    assert_eq!(seen.all("x-forwarded-for"), vec!["203.0.113.7, 10.0.0.2, 127.0.0.1"]);
    assert_eq!(spelled(&seen, "x-forwarded-for").len(), 1, "the _ spelling passed: {seen:?}");
    assert_eq!(seen.one("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen.one("x-forwarded-host").as_deref(), Some("app.example.com"));
    assert_eq!(seen.one("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(seen.one("x-forwarded-prefix").as_deref(), Some("/app"));
    for n in PATH_OVERRIDE_HEADERS {
        assert!(spelled(&seen, n).is_empty(), "{n} reached the app from a trusted proxy");
    }
    // what a trusted proxy did not say is filled in
    let seen = send_with(&w, "/api", &[], true).await;
    assert_eq!(seen.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.one("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.one("x-forwarded-host").as_deref(), Some("app.example"));
}

#[tokio::test]
async fn connection_cannot_remove_host_request_id_or_forwarding_headers() {
    let w = World::new().await;
    let t = format!("Bearer {}", w.token("alice"));
    for (path, auth) in [("/public/x", None), ("/api", Some(t.as_str()))] {
        let mut headers = vec![
            ("Connection", "close, Host, X-Request-Id, X-Forwarded-Host, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto"),
            ("X-Request-Id", "req-from-client-1"),
        ];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = raw_get(w.proxy.addr, path, &headers).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.head.to_ascii_lowercase().contains("x-request-id: req-from-client-1"), "{r:?}");
        let seen = w.upstream.last();
        assert_eq!(seen.one("host").as_deref(), Some("app.example"));
        assert_eq!(seen.one("x-forwarded-host").as_deref(), Some("app.example"));
        assert_eq!(seen.one("x-request-id").as_deref(), Some("req-from-client-1"));
        assert_eq!(seen.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(seen.one("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(seen.one("x-forwarded-proto").as_deref(), Some("http"));
    }
}

/// GET `path` with `token` (if any); the status and whether the app was reached.
async fn get_with(w: &World, path: &str, token: Option<&str>) -> (u16, bool) {
    let before = w.upstream.hits();
    let status = status_of(&w.url(path), token).await;
    (status, w.upstream.hits() > before)
}

fn minted(w: &World, patch: serde_json::Value) -> String {
    let mut c = w.issuer.claims_for("alice", AUD);
    for (k, v) in patch.as_object().unwrap() {
        c[k] = v.clone();
    }
    w.issuer.mint(&c)
}

#[tokio::test]
async fn an_unverified_email_never_reaches_the_app() {
    let w = World::new().await;
    for v in [json!(false), json!("false")] {
        let t = minted(&w, json!({ "email_verified": v }));
        assert_eq!(get_with(&w, "/api", Some(&t)).await, (200, true));
        let seen = w.upstream.last();
        assert_eq!(seen.one("x-forwarded-email"), None, "email_verified {v}");
        assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    }
    for v in [json!(true), json!("true")] {
        let t = minted(&w, json!({ "email_verified": v }));
        assert_eq!(get_with(&w, "/api", Some(&t)).await, (200, true));
        assert_eq!(
            w.upstream.last().one("x-forwarded-email").as_deref(),
            Some("alice@example.com")
        );
    }
    // absent counts as verified by default for bearer tokens
    assert_eq!(get_with(&w, "/api", Some(&w.token("alice"))).await, (200, true));
    assert_eq!(w.upstream.last().one("x-forwarded-email").as_deref(), Some("alice@example.com"));

    // as the user: refused, nothing reaches the app
    let w = World::with(Opts {
        identity: "user_claim = \"email\"\nrequire_verified_email = true",
        ..Opts::default()
    })
    .await;
    assert_eq!(get_with(&w, "/api", Some(&w.token("alice"))).await, (401, false));
    let t = minted(&w, json!({ "email_verified": "false" }));
    assert_eq!(get_with(&w, "/api", Some(&t)).await, (401, false));
    let t = minted(&w, json!({ "email_verified": true }));
    assert_eq!(get_with(&w, "/api", Some(&t)).await, (200, true));
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice@example.com"));
}

#[tokio::test]
async fn with_several_issuers_the_app_learns_the_issuer() {
    let other = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Es256])
        .await
        .unwrap();
    let w = World::with(Opts {
        bearer: format!(
            "[[bearer.issuers]]\nissuer = \"{}\"\naudiences = [\"{AUD}\"]\n",
            other.issuer()
        ),
        ..Opts::default()
    })
    .await;
    let spoof = [("X-Forwarded-Issuer", "https://evil.example"), ("x_forwarded_issuer", "x")];
    let r = raw_get(w.proxy.addr, "/public/x", &spoof).await;
    assert_eq!(r.status, 200);
    assert!(spelled(&w.upstream.last(), "x-forwarded-issuer").is_empty());
    for (issuer, token) in
        [(w.issuer.issuer(), w.token("alice")), (other.issuer(), other.token_for("alice", AUD))]
    {
        let t = format!("Bearer {token}");
        let mut headers = spoof.to_vec();
        headers.push(("Authorization", &t));
        assert_eq!(raw_get(w.proxy.addr, "/api", &headers).await.status, 200);
        let seen = w.upstream.last();
        assert_eq!(spelled(&seen, "x-forwarded-issuer"), vec![issuer]);
        assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    }
    // one issuer: off by default
    let w = World::new().await;
    get_with(&w, "/api", Some(&w.token("alice"))).await;
    assert_eq!(w.upstream.last().one("x-forwarded-issuer"), None);
}

#[tokio::test]
async fn header_values_are_unambiguous_and_a_user_that_cannot_be_sent_is_refused() {
    let w = World::new().await;
    let t = minted(
        &w,
        json!({"preferred_username": " josé ", "email": "jos%C3%A9@example.com",
               "groups": ["a,b", "c"]}),
    );
    assert_eq!(get_with(&w, "/api", Some(&t)).await, (200, true));
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-preferred-username").as_deref(), Some("%20jos%C3%A9%20"));
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("jos%25C3%25A9@example.com"));
    assert_eq!(seen.one("x-forwarded-groups").as_deref(), Some("a%2Cb,c"));
    for sub in ["alice\r\nX-Admin: 1", "alice\u{0}", "alice\n"] {
        let t = minted(&w, json!({ "sub": sub }));
        assert_eq!(get_with(&w, "/api", Some(&t)).await, (401, false), "{sub:?}");
    }
}

#[tokio::test]
async fn a_token_on_a_public_route_is_verified_or_removed() {
    let down = closed_port();
    let w = World::with(Opts {
        // a second issuer whose keys never load
        bearer: format!(
            "[[bearer.issuers]]\nissuer = \"http://127.0.0.1:{down}\"\naudiences = [\"{AUD}\"]\n"
        ),
        identity: "pass_token = \"authorization\"",
        first_issuer_only: true,
        ..Opts::default()
    })
    .await;
    // valid: the identity, as on a protected route, and the token (pass_token)
    let good = format!("Bearer {}", w.token("alice"));
    assert_eq!(raw_get(w.proxy.addr, "/public/x", &[("Authorization", &good)]).await.status, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("authorization"), Some(good.clone()));
    // invalid, expired, or of an issuer whose keys are not loaded: neither identity nor token
    let now = jsonwebtoken::get_current_timestamp();
    let mut unloaded = w.issuer.claims_for("alice", AUD);
    unloaded["iss"] = json!(format!("http://127.0.0.1:{down}"));
    let bad = [
        "Bearer not.a.token".to_string(),
        format!("Bearer {}", minted(&w, json!({ "exp": now - 3600 }))),
        format!("Bearer {}", w.issuer.mint(&unloaded)),
        "Bearer ".to_string(),
        "bearer".to_string(),
    ];
    for b in &bad {
        let r = raw_get(
            w.proxy.addr,
            "/public/x",
            &[("Authorization", b), ("X-Forwarded-User", "mallory")],
        )
        .await;
        assert_eq!(r.status, 200, "{b}");
        let seen = w.upstream.last();
        assert_eq!(seen.one("authorization"), None, "{b}");
        assert_eq!(seen.one("x-forwarded-user"), None, "{b}");
    }
    // two Authorization headers, one of them a bearer token: neither passes
    let r = raw_get(
        w.proxy.addr,
        "/public/x",
        &[("Authorization", "Basic dTpw"), ("Authorization", &good)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(w.upstream.last().all("authorization").is_empty());
    // another scheme is the app's business
    let r = raw_get(w.proxy.addr, "/public/x", &[("Authorization", "Basic dTpw")]).await;
    assert_eq!(r.status, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("authorization").as_deref(), Some("Basic dTpw"));
    assert_eq!(seen.one("x-forwarded-user"), None);
}

#[tokio::test]
async fn only_access_token_types_are_bearer_credentials() {
    let w = World::new().await;
    let claims = w.issuer.claims_for("alice", AUD);
    let kid = w.issuer.kids()[0].clone();
    let key = w.issuer.key(&kid).unwrap();
    let with_typ = |typ: Option<&str>| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.typ = typ.map(str::to_string);
        key.sign(h, &claims)
    };
    for typ in [Some("logout+jwt"), Some("secevent+jwt"), Some("id_token"), Some("JOSE")] {
        assert_eq!(get_with(&w, "/api", Some(&with_typ(typ))).await, (401, false), "{typ:?}");
    }
    for typ in [None, Some("JWT"), Some("jwt"), Some("at+jwt"), Some("application/at+jwt")] {
        assert_eq!(get_with(&w, "/api", Some(&with_typ(typ))).await, (200, true), "{typ:?}");
    }
    // configurable
    let w =
        World::with(Opts { bearer: "token_types = [\"at+jwt\"]".into(), ..Opts::default() }).await;
    let key = w.issuer.key(&w.issuer.kids()[0]).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.typ = Some("JWT".into());
    let t = key.sign(h, &w.issuer.claims_for("alice", AUD));
    assert_eq!(get_with(&w, "/api", Some(&t)).await, (401, false));
}

#[tokio::test]
async fn method_overrides_in_every_spelling_defeat_a_method_restricted_public_route() {
    let w = World::new().await; // public: GET=^/healthz$ and ^/public/
    let post = |headers: &'static [(&'static str, &'static str)], path: &'static str| {
        let w = &w;
        async move {
            let mut req = format!("POST {path} HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\nConnection: close\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            raw(w.proxy.addr, &req).await.status
        }
    };
    assert_eq!(raw_get(w.proxy.addr, "/healthz", &[]).await.status, 200);
    let hits = w.upstream.hits();
    for h in
        ["X-HTTP-Method-Override", "X_HTTP_METHOD_OVERRIDE", "x_http_method", "X-Method_Override"]
    {
        let r = raw_get(w.proxy.addr, "/healthz", &[(h, "DELETE")]).await;
        assert_eq!(r.status, 401, "{h}");
    }
    for q in ["/healthz?_method=DELETE", "/healthz?a=1&%5Fmethod=PUT", "/healthz?_method"] {
        assert_eq!(raw_get(w.proxy.addr, q, &[]).await.status, 401, "{q}");
    }
    assert_eq!(post(&[], "/healthz").await, 401);
    assert_eq!(w.upstream.hits(), hits, "an override reached the app");
    // a route open to every method stays open
    assert_eq!(post(&[("X-HTTP-Method-Override", "DELETE")], "/public/x").await, 200);
}

#[tokio::test]
async fn matrix_parameters_do_not_open_public_routes() {
    let w = World::with(Opts {
        bearer: r#"public_routes = ["\\.css$", "^/assets/"]"#.into(),
        ..Opts::default()
    })
    .await;
    for p in ["/admin;x.css", "/admin;.css", "/admin/users;jsessionid=1.css"] {
        let r = raw_get(w.proxy.addr, p, &[]).await;
        assert_eq!(r.status, 401, "{p}");
    }
    assert_eq!(w.upstream.hits(), 0);
    // parameters are removed for matching only: the app gets the path as it came (normalised)
    let r = raw_get(w.proxy.addr, "/assets;v=2/app.js", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.last().path_and_query, "/assets;v=2/app.js");
    let r = raw_get(w.proxy.addr, "/site.css", &[]).await;
    assert_eq!(r.status, 200);
}

/// A raw request on its own connection; returns the response and whether the proxy closed the
/// connection after it.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (RawResponse, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (RawResponse { status, head: head.to_string(), body: body.to_string() }, closed)
}

fn says_close(r: &RawResponse) -> bool {
    r.head.to_ascii_lowercase().contains("\r\nconnection: close")
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
async fn only_short_safe_request_ids_are_kept() {
    let w = World::new().await;
    let long = "a".repeat(65);
    for (sent, kept) in [
        ("abc-123_x.y:z", true),
        ("a\"b", false),
        ("a b", false),
        ("a\\b", false),
        (long.as_str(), false),
    ] {
        let r = raw_get(w.proxy.addr, "/public/x", &[("X-Request-Id", sent)]).await;
        assert_eq!(r.status, 200);
        let got = w.upstream.last().one("x-request-id").unwrap();
        assert_eq!(got == sent, kept, "{sent:?} -> {got:?}");
        assert!(got.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b)));
    }
}

#[tokio::test]
async fn access_lines_record_the_decided_path_the_issuer_and_hypers_own_answers() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let bin =
        Binary::start(&config_text(&issuer.issuer(), &upstream.url(), &Opts::default())).await;
    // the path the decision was made on, and the raw one beside it
    let r = raw_get(bin.addr, "/%61dmin/../public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().path_and_query, "/public/x");
    let t = format!("Bearer {}", issuer.token_for("alice", AUD));
    assert_eq!(raw_get(bin.addr, "/api", &[("Authorization", &t)]).await.status, 200);
    // a refusal is logged with the decided path too
    assert_eq!(raw_get(bin.addr, "/%61pi/../private", &[]).await.status, 401);
    // too many headers: our 431, with a request id
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = raw_get(bin.addr, "/public/x", &many).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.head.to_ascii_lowercase().contains("x-request-id: "), "{r:?}");
    // a head hyper cannot parse: hyper's 400, and still an access line
    let r = raw(bin.addr, "GET / HTTP/1.1\r\nHost: app.example\r\nBad Header: x\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let hits = upstream.hits();
    let logs = bin.stop().await;
    assert_eq!(hits, 2);
    let access = access_lines(&logs);
    let public = access.iter().find(|v| v["reason"] == "public_route").expect("public line");
    assert_eq!(public["path"], "/public/x", "{public}");
    assert_eq!(public["raw_path"], "/%61dmin/../public/x", "{public}");
    let verified = access.iter().find(|v| v["reason"] == "token_verified").expect("token line");
    assert_eq!(verified["issuer"], issuer.issuer(), "{verified}");
    assert_eq!(verified["path"], "/api");
    assert!(verified.get("raw_path").is_none(), "{verified}");
    let refused = access.iter().find(|v| v["status"] == 401).expect("the refusal's line");
    assert_eq!(refused["path"], "/private", "{refused}");
    assert_eq!(refused["raw_path"], "/%61pi/../private", "{refused}");
    assert!(access.iter().any(|v| v["status"] == 431), "{access:?}");
    let bad = access.iter().find(|v| v["reason"] == "bad_request_head").expect("hyper's 400");
    assert_eq!(bad["status"], 400);
    assert!(bad["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn access_lines_are_written_while_serving_in_batches_and_none_is_lost() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let mut bin =
        Binary::start(&config_text(&issuer.issuer(), &upstream.url(), &Opts::default())).await;
    // one request: its line shows up shortly, without waiting for more or for shutdown
    assert_eq!(raw_get(bin.addr, "/public/first", &[]).await.status, 200);
    let mut first = None;
    while let Some(v) = bin.next_log_line(std::time::Duration::from_secs(30)).await {
        if v["target"] == "portcullis::access" {
            first = Some(v);
            break;
        }
    }
    let first = first.expect("the access line was written while the server ran");
    assert_eq!(first["path"], "/public/first", "{first}");
    // a burst from many connections at once: one line each, none lost or torn
    let t = format!("Bearer {}", issuer.token_for("alice", AUD));
    let burst: Vec<_> = (0..200)
        .map(|i| {
            let (addr, t) = (bin.addr, t.clone());
            tokio::spawn(async move {
                raw_get(addr, &format!("/api/{i}"), &[("Authorization", &t)]).await.status
            })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 200);
    }
    let logs = bin.stop().await;
    let access = access_lines(&logs);
    let mut paths: Vec<&str> = access.iter().filter_map(|v| v["path"].as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), 200, "{paths:?}");
    let mut ids: Vec<&str> = access.iter().filter_map(|v| v["request_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(upstream.hits(), 201);
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
