//! Per-route authorization rules through the real server: what the app received when allowed,
//! and that a denied request never reached it.

use crate::common::*;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use serde_json::{json, Value};

const RULES: &str = r#"
[authorization]
email_domains = ["example.com"]

[[authorization.rules]]
path = "/admin"
groups = ["admins"]

[[authorization.rules]]
path = "/admin/reports"
claims = { "realm_access.roles" = ["auditor"] }

[[authorization.rules]]
path_regex = "^/admin/.*\\.csv$"
claims = { "https://example.com/roles" = ["exporter"] }

[[authorization.rules]]
path = "/orders"
methods = ["POST", "DELETE"]
scopes = ["orders:write"]

[[authorization.rules]]
path = "/ops"
emails = ["ops@example.com"]
"#;

struct Rules {
    w: World,
}

impl Rules {
    async fn new() -> Self {
        Self { w: World::with(Opts { extra: RULES.into(), ..Opts::default() }).await }
    }

    fn token(&self, user: &str, patch: Value) -> String {
        let mut c = self.w.issuer.claims_for(user, AUD);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.w.issuer.mint(&c)
    }

    /// (status, reached the app, WWW-Authenticate)
    async fn send(&self, method: &str, path: &str, token: &str) -> (u16, bool, String) {
        let before = self.w.upstream.hits();
        let r = raw(
            self.w.proxy.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let challenge = r
            .head
            .lines()
            .find_map(|l| l.strip_prefix("www-authenticate: "))
            .unwrap_or_default()
            .to_string();
        (r.status, self.w.upstream.hits() > before, challenge)
    }

    async fn status(&self, method: &str, path: &str, token: &str) -> (u16, bool) {
        let (s, reached, _) = self.send(method, path, token).await;
        (s, reached)
    }
}

#[tokio::test]
async fn groups_rule_with_segment_boundaries_and_parameters() {
    let r = Rules::new().await;
    let alice = r.token("alice", json!({})); // admins, developers
    let bob = r.token("bob", json!({})); // staff
    assert_eq!(r.status("GET", "/admin", &alice).await, (200, true));
    assert_eq!(r.w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(r.status("GET", "/admin/users", &alice).await, (200, true));
    let (status, reached, challenge) = r.send("GET", "/admin/users", &bob).await;
    assert_eq!((status, reached), (403, false));
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(!challenge.contains(", scope="), "no scope was missing: {challenge}");
    for p in ["/admin", "/admin/", "/admin;jsessionid=1/users", "/x/../admin", "/%61dmin"] {
        assert_eq!(r.status("GET", p, &bob).await, (403, false), "{p}");
    }
    // not under /admin
    assert_eq!(r.status("GET", "/administrator", &bob).await, (200, true));
    assert_eq!(r.status("GET", "/other", &bob).await, (200, true));
    // a cache hit is judged the same way
    assert_eq!(r.status("GET", "/admin", &bob).await, (403, false));
    assert_eq!(r.status("GET", "/admin", &alice).await, (200, true));
}

#[tokio::test]
async fn the_longest_prefix_and_then_the_first_regex_decide() {
    let r = Rules::new().await;
    // /admin/reports: only its own rule (auditor role in a nested claim), not /admin's group
    let auditor = r.token("bob", json!({"realm_access": {"roles": ["auditor"]}}));
    let admin = r.token("alice", json!({}));
    assert_eq!(r.status("GET", "/admin/reports/q1", &auditor).await, (200, true));
    assert_eq!(r.status("GET", "/admin/reports/q1", &admin).await, (403, false));
    // a regex rule beats every prefix: .csv needs the namespaced claim
    let exporter = r.token("bob", json!({"https://example.com/roles": ["exporter"]}));
    assert_eq!(r.status("GET", "/admin/reports/q1.csv", &auditor).await, (403, false));
    assert_eq!(r.status("GET", "/admin/reports/q1.csv", &exporter).await, (200, true));
    assert_eq!(r.status("GET", "/admin/x.csv", &admin).await, (403, false));
}

#[tokio::test]
async fn scopes_rule_applies_to_its_methods_and_names_the_missing_scope() {
    let r = Rules::new().await;
    let reader = r.token("bob", json!({"scope": "orders:read"}));
    let writer = r.token("bob", json!({"scope": "orders:read orders:write"}));
    let scp = r.token("bob", json!({"scp": ["orders:write"]}));
    assert_eq!(r.status("GET", "/orders", &reader).await, (200, true));
    let (status, reached, challenge) = r.send("POST", "/orders", &reader).await;
    assert_eq!((status, reached), (403, false));
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
    assert_eq!(r.status("DELETE", "/orders/7", &reader).await, (403, false));
    assert_eq!(r.status("POST", "/orders", &writer).await, (200, true));
    assert_eq!(r.status("POST", "/orders", &scp).await, (200, true));
}

#[tokio::test]
async fn email_requirements_use_the_verified_email_only() {
    let r = Rules::new().await;
    // the base requirement: example.com, everywhere protected
    let outsider = r.token("eve", json!({"email": "eve@evil.example"}));
    assert_eq!(r.status("GET", "/anything", &outsider).await, (403, false));
    let unverified = r.token("alice", json!({"email_verified": false}));
    assert_eq!(r.status("GET", "/anything", &unverified).await, (403, false));
    // public routes are public
    let resp = raw_get(r.w.proxy.addr, "/public/x", &[]).await;
    assert_eq!(resp.status, 200);
    let ops = r.token("ops", json!({"email": "ops@example.com"}));
    let alice = r.token("alice", json!({}));
    assert_eq!(r.status("GET", "/ops/deploy", &ops).await, (200, true));
    assert_eq!(r.status("GET", "/ops/deploy", &alice).await, (403, false));
}

#[tokio::test]
async fn a_rule_naming_issuers_refuses_the_other_issuers_tokens() {
    let other = DevIssuer::start(&[KeyAlg::Es256]).await.unwrap();
    // the rule names the first issuer, which is only known once it runs: build the world by hand
    let first = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let extra = format!(
        "{RULES}\n[[authorization.rules]]\npath = \"/tenant\"\nissuers = [\"{}\"]\n",
        first.issuer()
    );
    let o = Opts {
        bearer: format!(
            "[[bearer.issuers]]\nissuer = \"{}\"\naudiences = [\"{AUD}\"]\n",
            other.issuer()
        ),
        extra,
        ..Opts::default()
    };
    let proxy = start_proxy(&first.issuer(), &upstream.url(), o, true).await;
    let url = |p: &str| format!("{}{p}", proxy.url);
    // same user, same groups: only the named issuer's token passes the rule
    let t1 = first.token_for("alice", AUD);
    let t2 = other.token_for("alice", AUD);
    assert_eq!(status_of(&url("/tenant/x"), Some(&t1)).await, 200);
    let hits = upstream.hits();
    assert_eq!(status_of(&url("/tenant/x"), Some(&t2)).await, 403);
    assert_eq!(upstream.hits(), hits);
    // a rule without issuers applies to every issuer's tokens alike
    assert_eq!(status_of(&url("/admin"), Some(&t2)).await, 200);
    assert_eq!(status_of(&url("/admin"), Some(&other.token_for("bob", AUD))).await, 403);
}

#[tokio::test]
async fn denials_are_logged_with_the_rule_and_check_prints_the_rules() {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let mut text = config_text(&issuer.issuer(), &upstream.url(), &Opts::default());
    text.push_str(RULES);
    let bin = Binary::start(&text).await;
    let bob = issuer.token_for("bob", AUD);
    let r = raw_get(bin.addr, "/admin/x", &[("Authorization", &format!("Bearer {bob}"))]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("insufficient_scope"), "{r:?}");
    let logs = bin.stop().await;
    let access = access_lines(&logs);
    let denied = access.iter().find(|v| v["status"] == 403).expect("an access line for the 403");
    assert_eq!(denied["reason"], "forbidden", "{denied}");
    assert_eq!(denied["subject"], "bob", "{denied}");
    let detail = denied["detail"].as_str().unwrap();
    assert!(detail.contains("authorization.rules[0]") && detail.contains("admins"), "{detail}");
    assert_eq!(upstream.hits(), 0);

    // `check` prints the rules as understood
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, &text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("verified email domain one of [example.com]"), "{stdout}");
    assert!(stdout.contains("authorization.rules[0]: path /admin (prefix), any method: requires a group of [admins]"), "{stdout}");
    assert!(stdout.contains("authorization.rules[3]: path /orders (prefix), POST, DELETE: requires all scopes [orders:write]"), "{stdout}");
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

const ADMIN_RULE: &str = r#"
[[authorization.rules]]
path = "/admin"
groups = ["admins"]
[[authorization.rules]]
path_regex = "^/Exports/"
groups = ["admins"]
"#;

#[tokio::test]
async fn public_route_traversals_do_not_reach_protected_paths() {
    let w = World::new().await;
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/./../admin",
        "/public//../../admin",
    ] {
        let r = raw_get(w.proxy.addr, path, &[]).await;
        assert_eq!(r.status, 401, "{path} should need a token: {r:?}");
    }
    for path in [
        "/public/..;/admin",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public/%2e%2e;/admin",
        "/public/..%3B/admin",
        "/public/..%3bx/admin",
        "/public/..%00/admin",
    ] {
        let r = raw_get(w.proxy.addr, path, &[]).await;
        assert_eq!(r.status, 400, "{path} should be refused: {r:?}");
        assert!(r.body.contains("invalid_request"), "{path}: {}", r.body);
    }
    assert_eq!(w.upstream.hits(), 0, "a traversal reached the upstream");

    // normalised public paths are forwarded as matched
    let r = raw_get(w.proxy.addr, "/public/a/./b/../%63ss/x.css?v=1", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.last().path_and_query, "/public/a/css/x.css?v=1");
    // and a valid token on a traversal gets the normalised path
    let t = format!("Bearer {}", w.token("alice"));
    let r = raw_get(w.proxy.addr, "/public/../admin", &[("Authorization", &t)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.last().path_and_query, "/admin");
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
async fn cors_preflights_pass_only_when_skip_auth_preflight_is_on() {
    let preflight = "OPTIONS /api/x HTTP/1.1\r\nHost: app.example\r\nOrigin: https://web.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n";
    let origin_only = "OPTIONS /api/x HTTP/1.1\r\nHost: app.example\r\nOrigin: https://web.example\r\nConnection: close\r\n\r\n";
    let off = World::new().await;
    assert_eq!(raw(off.proxy.addr, preflight).await.status, 401);
    assert_eq!(off.upstream.hits(), 0);
    let on =
        World::with(Opts { bearer: "skip_auth_preflight = true".into(), ..Opts::default() }).await;
    assert_eq!(raw(on.proxy.addr, preflight).await.status, 200);
    assert_eq!(on.upstream.last().method, "OPTIONS");
    assert_eq!(on.upstream.last().one("x-forwarded-user"), None);
    // an OPTIONS that is no preflight still needs a token
    assert_eq!(raw(on.proxy.addr, origin_only).await.status, 401);
    let get = "GET /api/x HTTP/1.1\r\nHost: app.example\r\nOrigin: https://web.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(on.proxy.addr, get).await.status, 401);
    assert_eq!(on.upstream.hits(), 1);
}
