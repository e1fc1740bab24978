//! What the app is told: every identity, override and forwarding header a client sent is gone
//! (in every spelling), and only verified values are set.

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
async fn identity_header_spoofing_in_every_spelling_is_replaced() {
    let w = World::new().await;
    let t = format!("Bearer {}", w.token("alice"));
    let r = raw_get(
        w.proxy.addr,
        "/api",
        &[
            ("Authorization", &t),
            ("X-Forwarded-User", "mallory"),
            ("x-forwarded-user", "mallory2"),
            ("X_Forwarded_User", "mallory3"),
            ("x_forwarded-user", "mallory4"),
            ("X-FORWARDED-USER", "mallory5"),
            ("X-Forwarded-Email", "mallory@evil.example"),
            ("X-Forwarded-Groups", "admins,root"),
            ("X_FORWARDED_GROUPS", "root"),
            ("X-Forwarded-Preferred-Username", "root"),
            ("X-Forwarded-Access-Token", "forged"),
            ("X-Auth-Request-User", "mallory"),
            ("x_auth_request_email", "mallory@evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = w.upstream.last();
    let spelled = |prefix: &str| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(spelled("x-forwarded-user"), vec!["alice"]);
    assert_eq!(spelled("x-forwarded-email"), vec!["alice@example.com"]);
    assert_eq!(spelled("x-forwarded-groups"), vec!["admins,developers"]);
    assert_eq!(spelled("x-forwarded-preferred-username"), vec!["alice"]);
    assert!(spelled("x-forwarded-access-token").is_empty());
    assert!(seen.headers.iter().all(|(k, _)| !k.replace('_', "-").starts_with("x-auth-request-")));
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
async fn connection_header_cannot_drop_verified_identity() {
    let w = World::new().await;
    let t = format!("Bearer {}", w.token("alice"));
    let r = raw_get(
        w.proxy.addr,
        "/api",
        &[("Authorization", &t), ("Connection", "close, X-Forwarded-Email, X-Forwarded-User")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("alice@example.com"));
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
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

#[tokio::test]
async fn claim_with_crlf_is_left_out() {
    let w = World::new().await;
    let mut c = w.issuer.claims_for("alice", AUD);
    c["email"] = json!("alice@example.com\r\nX-Admin: true");
    c["preferred_username"] = json!("Zoë");
    let r = client().get(w.url("/api")).bearer_auth(w.issuer.mint(&c)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-email"), None);
    assert_eq!(seen.one("x-admin"), None);
    assert_eq!(seen.one("x-forwarded-preferred-username").as_deref(), Some("Zo%C3%AB"));
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
