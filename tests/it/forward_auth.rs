//! Forward-auth (`/oauth2/auth`) through the real server, in each dialect an ingress speaks:
//! what the check answers, and that nothing is ever proxied. The real nginx and Caddy in front
//! are in `ingress.rs`.

use crate::common::*;

const RULES: &str = r#"
[[authorization.rules]]
path = "/admin"
groups = ["admins"]
"#;

/// A world whose loopback peer is a trusted proxy.
async fn trusted() -> World {
    World::with(Opts {
        server: "trusted_proxies = [\"127.0.0.1/32\", \"::1/128\"]",
        extra: RULES.into(),
        ..Opts::default()
    })
    .await
}

/// A raw check: `target` (`/oauth2/auth...`), by `method`, with `headers`.
async fn check(w: &World, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: auth.internal\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(w.proxy.addr, &req).await
}

/// The value of `name` in a raw response's head.
fn header(r: &RawResponse, name: &str) -> Option<String> {
    r.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// nginx's dialect for `GET uri` on app.example.com, with `auth` as Authorization.
fn nginx(uri: &str, auth: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-Original-URI", uri.to_string()),
        ("X-Original-Method", "GET".to_string()),
        ("X-Forwarded-Host", "app.example.com".to_string()),
        ("X-Forwarded-Proto", "https".to_string()),
    ];
    if let Some(t) = auth {
        h.push(("Authorization", format!("Bearer {t}")));
    }
    h
}

fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn each_dialect_is_answered_with_the_identity_and_nothing_is_proxied() {
    let w = trusted().await;
    let alice = w.token("alice");
    // nginx
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/api/x?y=1", Some(&alice)))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(header(&r, "x-auth-request-email").as_deref(), Some("alice@example.com"));
    assert_eq!(header(&r, "x-auth-request-groups").as_deref(), Some("admins,developers"));
    assert_eq!(header(&r, "x-auth-request-preferred-username").as_deref(), Some("alice"));
    assert_eq!(header(&r, "x-auth-request-access-token"), None, "pass_token is none");
    // Traefik and Caddy
    let bearer = format!("Bearer {alice}");
    let traefik = [
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Uri", "/admin/users/7"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Proto", "https"),
        ("Authorization", bearer.as_str()),
    ];
    let r = check(&w, "GET", "/oauth2/auth", &traefik).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-user").as_deref(), Some("alice"));
    // Envoy: the original method and path after the auth path, its Host
    let envoy = [("Host", "app.example.com"), ("Authorization", bearer.as_str())];
    let mut req = "POST /oauth2/auth/admin/x?z=1 HTTP/1.1\r\nConnection: close\r\n".to_string();
    for (k, v) in envoy {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let r = raw(w.proxy.addr, &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(w.upstream.hits(), 0, "a check proxies nothing");
}

#[tokio::test]
async fn refusals_are_plain_401_and_403_decided_on_the_original_request() {
    let w = trusted().await;
    let bob = w.token("bob");
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/api", None))).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer realm=\"portcullis\""));
    // the rule of the original path, not of /oauth2/auth
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/admin/x", Some(&bob)))).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(header(&r, "www-authenticate").unwrap().contains("insufficient_scope"));
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/api", Some(&bob)))).await;
    assert_eq!(r.status, 200);
    // a browser navigating still gets a plain 401 (nginx turns a redirect into a 500)
    let mut nav = nginx("/api", None);
    nav.push(("Accept", "text/html".into()));
    nav.push(("Sec-Fetch-Mode", "navigate".into()));
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nav)).await;
    assert_eq!(r.status, 401);
    // a public route of the original path: allowed without a token, no identity
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/public/x", None))).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user").as_deref(), Some(""), "present and empty");
    // an original path that normalises onto a protected one is that one
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/public/../admin", Some(&bob)))).await;
    assert_eq!(r.status, 403);
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn only_a_trusted_proxy_may_ask_and_it_names_the_original_one_way() {
    // not trusted: 403, whatever it names
    let w = World::with(Opts { extra: RULES.into(), ..Opts::default() }).await;
    let alice = w.token("alice");
    let r = check(&w, "GET", "/oauth2/auth", &refs(&nginx("/api", Some(&alice)))).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("trusted proxy"), "{}", r.body);

    let w = trusted().await;
    let bob = w.token("bob");
    // a client's X-Forwarded-Uri passed through beside nginx's X-Original-URI
    let mut mixed = nginx("/api", Some(&bob));
    mixed.push(("X-Forwarded-Uri", "/admin".into()));
    let r = check(&w, "GET", "/oauth2/auth", &refs(&mixed)).await;
    assert_eq!(r.status, 400, "{r:?}");
    // nginx's headers beside a path after the auth path
    let r = check(&w, "GET", "/oauth2/auth/admin", &refs(&nginx("/api", Some(&bob)))).await;
    assert_eq!(r.status, 400);
    // repeated, without a method, with a fragment, naming nothing
    let mut twice = nginx("/api", Some(&bob));
    twice.push(("X-Original-URI", "/admin".into()));
    assert_eq!(check(&w, "GET", "/oauth2/auth", &refs(&twice)).await.status, 400);
    let no_method: Vec<_> =
        nginx("/api", None).into_iter().filter(|(k, _)| *k != "X-Original-Method").collect();
    assert_eq!(check(&w, "GET", "/oauth2/auth", &refs(&no_method)).await.status, 400);
    assert_eq!(check(&w, "GET", "/oauth2/auth", &refs(&nginx("/api#x", None))).await.status, 400);
    assert_eq!(
        check(&w, "GET", "/oauth2/auth", &[("X-Forwarded-Host", "a.example")]).await.status,
        400
    );
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn the_auth_url_narrows_the_rules_and_never_widens_them() {
    let w = trusted().await;
    let (alice, bob) = (w.token("alice"), w.token("bob"));
    let url = "/oauth2/auth?allowed_groups=developers";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&alice)))).await.status, 200);
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&bob)))).await.status, 403);
    // bob is in staff: a constraint naming staff does not lift the /admin rule
    let url = "/oauth2/auth?allowed_groups=staff";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/admin", Some(&bob)))).await.status, 403);
    let url = "/oauth2/auth?allowed_email_domains=example.com";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&bob)))).await.status, 200);
    let url = "/oauth2/auth?allowed_emails=alice@example.com";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&bob)))).await.status, 403);
    // written twice, or misspelt: the operator's mistake, said plainly
    let url = "/oauth2/auth?allowed_groups=a&allowed_groups=b";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&alice)))).await.status, 400);
    let url = "/oauth2/auth?allowed_group=a";
    assert_eq!(check(&w, "GET", url, &refs(&nginx("/api", Some(&alice)))).await.status, 400);
    // Envoy appends the client's query: never read as constraints
    let bearer = format!("Bearer {alice}");
    let h = [("Host", "app.example.com"), ("Authorization", bearer.as_str())];
    let r = check(&w, "GET", "/oauth2/auth/api?allowed_groups=nobody", &h).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn without_an_upstream_only_checks_are_answered_and_readyz_waits_for_no_app() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\ntrusted_proxies = [\"127.0.0.1/32\"]\n[oidc]\nissuer = \"{}\"\n[bearer]\naudiences = [\"{AUD}\"]\n",
        issuer.issuer()
    );
    let cfg = portcullis::config::load_str(&text, std::iter::empty()).unwrap().config;
    assert!(cfg.upstream.is_none());
    let server = portcullis::Server::start(cfg).await.unwrap();
    let admin = format!("http://{}", server.admin_addr);
    wait_ready(&format!("{admin}/readyz"), "a forward-auth-only portcullis").await;
    let body = client().get(format!("{admin}/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(!body.contains("upstream"), "{body}");
    let token = issuer.token_for("alice", AUD);
    let auth = format!("Bearer {token}");
    let mut h = nginx("/api", None);
    h.push(("Authorization", auth));
    let mut req =
        "GET /oauth2/auth HTTP/1.1\r\nHost: auth.internal\r\nConnection: close\r\n".to_string();
    for (k, v) in &h {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw(server.addr, &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-user").as_deref(), Some("alice"));
    // anything else is not served, whoever asks
    let r = raw_get(server.addr, "/api", &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(r.status, 404, "{r:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn rules_and_public_routes_apply_to_the_hosts_they_name() {
    let w = World::with(Opts {
        server: "trusted_proxies = [\"127.0.0.1/32\"]",
        bearer: "public_routes = [\"GET=^/healthz$\", { route = \"^/docs/\", hosts = [\"docs.example.com\"] }]".into(),
        extra: "[[authorization.rules]]\npath = \"/admin\"\nhosts = [\"app.example.com\", \".corp.example\"]\ngroups = [\"admins\"]\n".into(),
        ..Opts::default()
    })
    .await;
    let bob = format!("Bearer {}", w.token("bob"));
    let on = |host: &str, uri: &str, auth: Option<&str>| {
        let mut h = vec![
            ("X-Original-URI", uri.to_string()),
            ("X-Original-Method", "GET".to_string()),
            ("X-Forwarded-Host", host.to_string()),
            ("X-Forwarded-Proto", "https".to_string()),
        ];
        if let Some(a) = auth {
            h.push(("Authorization", a.to_string()));
        }
        h
    };
    let status = |h: Vec<(&'static str, String)>| {
        let w = &w;
        async move { check(w, "GET", "/oauth2/auth", &refs(&h)).await.status }
    };
    // public on its host only
    assert_eq!(status(on("docs.example.com", "/docs/x", None)).await, 200);
    assert_eq!(status(on("DOCS.example.com:443", "/docs/x", None)).await, 200);
    assert_eq!(status(on("app.example.com", "/docs/x", None)).await, 401);
    // the rule on its hosts only
    assert_eq!(status(on("app.example.com", "/admin", Some(&bob))).await, 403);
    assert_eq!(status(on("eu.corp.example", "/admin", Some(&bob))).await, 403);
    assert_eq!(status(on("blog.example.com", "/admin", Some(&bob))).await, 200);
    // the proxy reads its own Host the same way
    assert_eq!(
        raw(
            w.proxy.addr,
            "GET /docs/x HTTP/1.1\r\nHost: docs.example.com\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        200
    );
    assert_eq!(w.upstream.hits(), 1);
    assert_eq!(
        raw(
            w.proxy.addr,
            "GET /docs/x HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        401
    );
    let r = raw_get(w.proxy.addr, "/admin", &[("Authorization", &bob)]).await;
    assert_eq!(r.status, 200, "app.example is not a host the rule names");
    assert_eq!(w.upstream.hits(), 2);
}
