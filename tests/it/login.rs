//! Browser login end to end: Debian's Chromium (headless, driven by playwright-core) against
//! the real binary and the real oidc-provider, asserting what the app received.

use crate::common::*;
use crate::interop::{interop_dir, Op};
use std::time::Duration;

const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ3r4=";
/// Seconds an access token of the login client lives: the browser waits this long before the
/// dashboard burst that must refresh the session.
const ACCESS_TTL: u64 = 3;

pub fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "Chromium is not installed at {path}: `apt-get install chromium` (the README's test command does)"
    );
    path
}

#[tokio::test]
async fn a_real_browser_signs_in_refreshes_signs_out_and_is_refused_by_rules() {
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    // The provider must know portcullis's address (the client's redirect URI) and portcullis
    // the provider's, so both ports are chosen first; one taken meanwhile means trying again.
    let mut tries = 0;
    let (op, bin, app) = loop {
        tries += 1;
        assert!(tries <= 5, "no free pair of ports after 5 tries");
        let (op_port, app_port) = (closed_port(), closed_port());
        let app = format!("http://127.0.0.1:{app_port}");
        let op = Op::try_start(
            op_port,
            &dir.path().join("keys.json"),
            false,
            &[
                ("REDIRECT_URI", format!("{app}/oauth2/callback")),
                ("POST_LOGOUT_URI", format!("{app}/")),
                ("ACCESS_TTL", ACCESS_TTL.to_string()),
            ],
        )
        .await;
        let Ok(op) = op else { continue };
        let config = format!(
            r#"
[upstream]
url = "{upstream}"
[oidc]
issuer = "{issuer}"
client_id = "portcullis-web"
client_secret = "web-secret-not-for-production"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
post_logout_redirect_url = "{app}/"
[bearer]
audiences = ["{AUD}"]
[session]
secret = "{SECRET}"
[[authorization.rules]]
path = "/admin"
groups = ["admins"]
"#,
            upstream = upstream.url(),
            issuer = op.issuer,
        );
        match Binary::try_spawn_on(&config, app_port).await {
            Ok(bin) => break (op, bin, app),
            Err(e) if e.contains("in use") => op.stop().await,
            Err(e) => panic!("portcullis did not start: {e}"),
        }
    };
    bin.ready().await;
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/login");
    std::fs::create_dir_all(&shots).unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("browser.mjs")
            .current_dir(interop_dir())
            .env("APP", &app)
            .env("OP", &op.issuer)
            .env("SHOTS", &shots)
            .env("ACCESS_TTL", ACCESS_TTL.to_string())
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run finished within 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("no result from the browser:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && seen.get("error").is_none(),
        "browser run failed: {seen:#}\n{stderr}"
    );

    // back on the deep link, query intact; the app saw who it was, and none of our cookies
    assert_eq!(seen["deep_link"], format!("{app}/deep/link?x=1&y=two%20words"));
    let deep = upstream
        .seen()
        .into_iter()
        .find(|s| s.path_and_query == "/deep/link?x=1&y=two%20words")
        .expect("the app received the deep link");
    assert_eq!(deep.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(deep.one("x-forwarded-email").as_deref(), Some("alice@example.com"));
    assert_eq!(deep.one("x-forwarded-groups").as_deref(), Some("admins,staff"));
    assert_eq!(deep.one("x-forwarded-preferred-username").as_deref(), Some("alice"));
    assert!(
        deep.all("cookie").iter().all(|c| !c.contains("_portcullis")),
        "our cookies reached the app: {:?}",
        deep.all("cookie")
    );
    assert_eq!(seen["userinfo"]["email"], "alice@example.com");
    let cookies = seen["cookies"].as_array().unwrap();
    assert!(cookies.iter().any(|c| c["name"] == "_portcullis"), "{cookies:?}");
    assert!(
        cookies
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("_portcullis"))
            .all(|c| c["httpOnly"] == true && c["sameSite"] == "Lax"),
        "{cookies:?}"
    );

    // the dashboard burst after the access token expired: all pass, one refresh at the provider
    let burst = seen["burst"].as_array().unwrap();
    assert_eq!(burst.len(), 30);
    assert!(burst.iter().all(|s| s == 200), "{burst:?}");
    assert_eq!(seen["refreshes"], 1, "refreshes that reached the provider");
    assert_eq!(seen["url_after_burst"], format!("{app}/deep/link?x=1&y=two%20words"));
    assert_eq!(
        upstream.seen().iter().filter(|s| s.path_and_query.starts_with("/api/dash/")).count(),
        30
    );

    // CSRF: a post from another origin with the cookie never reaches the app; a same-origin
    // one does
    assert_eq!(seen["same_origin_post"], 200);
    assert_eq!(upstream.seen().iter().filter(|s| s.path_and_query == "/api/write").count(), 1);
    assert!(
        upstream.seen().iter().all(|s| !s.path_and_query.starts_with("/api/cross-")),
        "a cross-origin post reached the app"
    );
    assert!(
        seen["cross_site_form"].as_str().unwrap().contains("not allowed")
            || seen["cross_site_form"].as_str().unwrap().contains("Cross-site"),
        "{seen:#}"
    );

    // rules: alice in, sign-out asks for login next time, bob gets the forbidden page
    assert_eq!(seen["admin_alice"], 200);
    assert!(seen["after_sign_out"].as_str().unwrap().starts_with(&format!("{app}/oauth2/sign_in")));
    assert_eq!(seen["userinfo_after_sign_out"], "/oauth2/sign_in", "no session after sign-out");
    assert_eq!(seen["admin_bob"], 403);
    assert_eq!(seen["forbidden_heading"], "You are not allowed here");
    assert!(seen["forbidden_body"].as_str().unwrap().contains("bob@example.com"), "{seen:#}");
    let admin_hits: Vec<_> =
        upstream.seen().into_iter().filter(|s| s.path_and_query == "/admin/panel").collect();
    assert_eq!(admin_hits.len(), 1, "only alice's request reaches /admin");
    assert_eq!(admin_hits[0].one("x-forwarded-user").as_deref(), Some("alice"));
    for shot in
        ["01-sign-in.png", "02-provider-login.png", "03-after-sign-out.png", "04-forbidden.png"]
    {
        assert!(shots.join(shot).exists(), "screenshot {shot} missing");
    }

    let logs = bin.stop().await;
    let access = access_lines(&logs);
    assert_eq!(
        access.iter().filter(|v| v["reason"] == "session_refreshed").count(),
        1,
        "{access:#?}"
    );
    assert!(access.iter().any(|v| v["reason"] == "login_complete" && v["subject"] == "alice"));
    assert!(access.iter().any(|v| v["reason"] == "forbidden" && v["subject"] == "bob"));
    let text = serde_json::to_string(&logs).unwrap();
    assert!(!text.contains(SECRET), "the session secret was logged");
    op.stop().await;
}

// ----- the flow's refusals, against the built-in development issuer -----

use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::collections::BTreeMap;

/// A minimal browser: a cookie jar and manual redirects, navigating like a browser does.
pub struct Browser {
    pub http: reqwest::Client,
    pub jar: BTreeMap<String, String>,
    /// `Sec-Fetch-Site` to send, as a browser would (none: an old browser's request).
    pub fetch_site: Option<&'static str>,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Browser {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self { http, jar: BTreeMap::new(), fetch_site: None }
    }

    pub fn cookie_header(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub fn take_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") || value.is_empty() {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// One request as a navigation (or not), no redirect followed.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        navigate: bool,
        form: Option<&str>,
    ) -> Page {
        let mut req = self.http.request(method.parse().unwrap(), url);
        if navigate {
            req = req.header("sec-fetch-mode", "navigate").header("accept", "text/html");
        }
        if !self.jar.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        if let Some(site) = self.fetch_site {
            req = req.header("sec-fetch-site", site);
        }
        if let Some(f) = form {
            req =
                req.header("content-type", "application/x-www-form-urlencoded").body(f.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.take_cookies(&headers);
        let body = resp.text().await.unwrap_or_default();
        Page { status, headers, body }
    }
}

pub fn location(p: &Page) -> String {
    p.headers.get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

pub struct LoginWorld {
    pub issuer: DevIssuer,
    pub upstream: Upstream,
    pub proxy: Proxy,
    /// The configuration the proxy runs, for another replica of it.
    pub config: String,
}

impl LoginWorld {
    pub async fn new() -> Self {
        Self::with_session("").await
    }

    /// With extra `[session]` lines.
    pub async fn with_session(session: &str) -> Self {
        Self::with(session, "").await
    }

    /// With extra `[session]` and `[identity]` lines.
    pub async fn with(session: &str, identity: &'static str) -> Self {
        let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let upstream = Upstream::start().await;
        let o = Opts {
            oidc: "client_id = \"web\"\nclient_secret = \"s\"\nallowed_redirect_hosts = [\"allowed.example\"]".into(),
            extra: format!("[session]\nsecret = \"{SECRET}\"\n{session}\n[[authorization.rules]]\npath = \"/admin\"\ngroups = [\"admins\"]\n"),
            identity,
            ..Opts::default()
        };
        let config = config_text(&issuer.issuer(), &upstream.url(), &o);
        let proxy = start_proxy(&issuer.issuer(), &upstream.url(), o, true).await;
        Self { issuer, upstream, proxy, config }
    }

    /// Another replica: the same configuration, its own listener (its own workers, caches and
    /// connections), in front of the same app and issuer.
    pub async fn replica(&self) -> Proxy {
        let cfg = portcullis::config::load_str(&self.config, std::iter::empty()).unwrap().config;
        let server = portcullis::server::Server::start(cfg).await.unwrap();
        for _ in 0..200 {
            if server.keys.all_loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(server.keys.all_loaded(), "the replica's keys did not load");
        Proxy {
            url: format!("http://{}", server.addr),
            admin: format!("http://{}", server.admin_addr),
            addr: server.addr,
            server: Some(server),
        }
    }

    pub fn url(&self, p: &str) -> String {
        format!("{}{p}", self.proxy.url)
    }

    /// Starts a login for `rd` and returns the provider's authorization URL.
    pub async fn start(&self, b: &mut Browser, rd: &str) -> String {
        let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let p = b.request("GET", &self.url(&format!("/oauth2/start?rd={rd}")), true, None).await;
        assert_eq!(p.status, 302, "{}", p.body);
        location(&p)
    }

    /// Picks `user` on the provider's page; returns the callback URL the provider sends back.
    pub async fn pick(&self, b: &mut Browser, authorize_url: &str, user: &str) -> String {
        let q = reqwest::Url::parse(authorize_url).unwrap();
        let mut form: Vec<(String, String)> = q.query_pairs().into_owned().collect();
        form.push(("user".into(), user.into()));
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let p = b
            .request("POST", &format!("{}/authorize", self.issuer.issuer()), true, Some(&body))
            .await;
        assert!((300..400).contains(&p.status), "{} {}", p.status, p.body);
        location(&p)
    }

    /// A whole login; returns the page after the callback (not followed).
    pub async fn login(&self, b: &mut Browser, rd: &str, user: &str) -> Page {
        let auth = self.start(b, rd).await;
        let cb = self.pick(b, &auth, user).await;
        b.request("GET", &cb, true, None).await
    }
}

#[tokio::test]
async fn the_code_flow_with_the_development_issuer_and_its_refusals() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();

    // a navigation without a session goes into login, keeping path and query
    let p = b.request("GET", &w.url("/reports/q?year=2026&x=%2F"), true, None).await;
    assert_eq!(p.status, 302);
    assert_eq!(location(&p), "/oauth2/sign_in?rd=%2Freports%2Fq%3Fyear%3D2026%26x%3D%252F");
    // the authorization request: PKCE S256, state, nonce, the derived loopback callback
    let auth = w.start(&mut b, "/reports/q?year=2026").await;
    let q: BTreeMap<String, String> =
        reqwest::Url::parse(&auth).unwrap().query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 22 && q["nonce"].len() >= 22, "{q:?}");
    assert_eq!(q["redirect_uri"], w.url("/oauth2/callback"));
    assert_eq!(q["client_id"], "web");
    let cb = w.pick(&mut b, &auth, "alice").await;
    let done = b.request("GET", &cb, true, None).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(location(&done), "/reports/q?year=2026");
    let set: Vec<_> = done
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter().any(|c| c.starts_with("_portcullis=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Lax")
            && c.contains("Path=/")),
        "{set:?}"
    );
    // signed in: the app sees the identity, not our cookie; the app's own cookie passes
    b.jar.insert("app_pref".into(), "dark".into());
    let page = b.request("GET", &w.url("/reports/q?year=2026"), true, None).await;
    assert_eq!(page.status, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("alice@example.com"));
    assert_eq!(seen.one("cookie").as_deref(), Some("app_pref=dark"));

    // replaying the callback (same code, state and attempt cookie) fails cleanly
    let mut replay = Browser::new();
    let auth = w.start(&mut replay, "/").await;
    let cb = w.pick(&mut replay, &auth, "alice").await;
    let jar_before = replay.jar.clone();
    assert_eq!(replay.request("GET", &cb, true, None).await.status, 302);
    replay.jar = jar_before;
    let again = replay.request("GET", &cb, true, None).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("already used"), "{}", again.body);

    // a state that matches no attempt (another browser, or forged)
    let mut other = Browser::new();
    let auth = w.start(&mut b, "/").await;
    let cb = w.pick(&mut b, &auth, "alice").await;
    let p = other.request("GET", &cb, true, None).await;
    assert_eq!(p.status, 400);
    let forged = cb.replace("state=", "state=x");
    assert_eq!(b.request("GET", &forged, true, None).await.status, 400);

    // a provider error: the registered code only, never the provider's text
    let p = b
        .request("GET", &w.url("/oauth2/callback?error=access_denied&error_description=%3Cscript%3Eevil%3C%2Fscript%3E&state=x"), true, None)
        .await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("access_denied") && !p.body.contains("evil"), "{}", p.body);
    let p = b.request("GET", &w.url("/oauth2/callback?error=made_up&state=x"), true, None).await;
    assert!(!p.body.contains("made_up") && p.status == 403, "{}", p.body);

    // PKCE binds the code to its attempt: another attempt's verifier does not redeem it
    let auth_a = w.start(&mut b, "/").await;
    let auth_b = w.start(&mut b, "/").await;
    let cb_b = w.pick(&mut b, &auth_b, "alice").await;
    let state_a: String = reqwest::Url::parse(&auth_a)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut crossed = reqwest::Url::parse(&cb_b).unwrap();
    let pairs: Vec<(String, String)> = crossed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" { state_a.clone() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    crossed.query_pairs_mut().clear().extend_pairs(pairs);
    let p = b.request("GET", crossed.as_str(), true, None).await;
    assert_eq!(p.status, 502, "{}", p.body);

    // a wrong RFC 9207 iss parameter
    let auth = w.start(&mut b, "/").await;
    let cb = w.pick(&mut b, &auth, "alice").await;
    let wrong_iss = cb.replace("iss=http", "iss=https");
    assert_eq!(b.request("GET", &wrong_iss, true, None).await.status, 400);
    assert_eq!(w.upstream.hits(), 1, "no login step reaches the app");
}

#[tokio::test]
async fn forged_id_tokens_are_refused() {
    let w = LoginWorld::new().await;
    for (patch, case) in [
        (serde_json::json!({"nonce": "another"}), "nonce mismatch"),
        (serde_json::json!({"aud": "another-client"}), "for another client"),
        (serde_json::json!({"aud": ["web", "other"]}), "several audiences without azp"),
        (serde_json::json!({"aud": ["web", "other"], "azp": "other"}), "azp another client"),
        (serde_json::json!({"iss": "http://127.0.0.1:1"}), "from another issuer"),
        (serde_json::json!({"exp": 1}), "expired"),
        (serde_json::json!({"iat": null}), "no iat"),
    ] {
        w.issuer.patch_id_tokens(Some(patch));
        let mut b = Browser::new();
        let p = w.login(&mut b, "/", "alice").await;
        assert_eq!(p.status, 400, "{case}: {}", p.body);
        assert!(!b.jar.contains_key("_portcullis"), "{case}: a session was set");
    }
    // an ID token with several audiences and azp = our client is fine
    w.issuer.patch_id_tokens(Some(serde_json::json!({"aud": ["web", "other"], "azp": "web"})));
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    w.issuer.patch_id_tokens(None);
}

#[tokio::test]
async fn sessions_that_do_not_open_send_the_browser_to_login_and_api_clients_get_401() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    let good = b.jar["_portcullis"].clone();
    assert_eq!(b.request("GET", &w.url("/x"), true, None).await.status, 200);
    let hits = w.upstream.hits();
    // tampered, truncated, foreign
    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    for bad in
        [String::from_utf8(flipped).unwrap(), good[..good.len() - 10].to_string(), "garbage".into()]
    {
        b.jar.insert("_portcullis".into(), bad);
        let p = b.request("GET", &w.url("/x"), true, None).await;
        assert_eq!(p.status, 302, "a bad session must go to login");
        assert!(location(&p).starts_with("/oauth2/sign_in"));
        // and the broken cookie is cleared
        assert!(p
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("_portcullis=;")));
    }
    // a session sealed for another app with the same secret (another client id) is refused
    let other_app = LoginWorld::new().await;
    let mut ob = Browser::new();
    other_app.login(&mut ob, "/", "alice").await;
    b.jar.insert("_portcullis".into(), ob.jar["_portcullis"].clone());
    assert_eq!(b.request("GET", &w.url("/x"), true, None).await.status, 302);
    assert_eq!(w.upstream.hits(), hits, "a bad session reached the app");

    // without a session: XHR/fetch and API clients get 401, never a redirect; a navigating
    // POST gets the 401 page
    let mut anon = Browser::new();
    let p = anon.request("GET", &w.url("/x"), false, None).await;
    assert_eq!(p.status, 401);
    assert_eq!(p.headers["content-type"], "application/json");
    let r = client()
        .get(w.url("/x"))
        .header("sec-fetch-mode", "cors")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let p = anon.request("POST", &w.url("/x"), true, Some("a=1")).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("Sign in"), "{}", p.body);
    assert_eq!(w.upstream.hits(), hits);
}

#[tokio::test]
async fn redirects_after_login_and_sign_out_stay_on_allowed_hosts() {
    let w = LoginWorld::new().await;
    let host = w.proxy.url.trim_start_matches("http://").to_string();
    for (rd, want) in [
        ("https://evil.com/", "/".to_string()),
        ("//evil.com", "/".to_string()),
        ("/%2F%2Fevil.com", "/".to_string()),
        ("https://allowed.example/x", "https://allowed.example/x".to_string()),
        (&format!("http://{host}/here?x=1") as &str, format!("http://{host}/here?x=1")),
        ("/deep?q=1", "/deep?q=1".to_string()),
    ] {
        let mut b = Browser::new();
        let p = w.login(&mut b, rd, "alice").await;
        assert_eq!(location(&p), want, "rd {rd:?}");
    }
    // sign-out: every cookie of ours cleared, then the provider's end_session with the hint
    let mut b = Browser::new();
    w.login(&mut b, "/", "alice").await;
    b.fetch_site = Some("same-origin");
    let p = b.request("GET", &w.url("/oauth2/sign_out?rd=https://evil.com/"), true, None).await;
    assert_eq!(p.status, 302);
    let loc = location(&p);
    assert!(loc.starts_with(&format!("{}/logout?", w.issuer.issuer())), "{loc}");
    assert!(loc.contains("id_token_hint=") && loc.contains("client_id=web"), "{loc}");
    assert!(!b.jar.keys().any(|k| k.starts_with("_portcullis")), "{:?}", b.jar);
    let p = b.request("GET", &w.url("/x"), true, None).await;
    assert_eq!(p.status, 302, "signed out");
}

#[tokio::test]
async fn a_refresh_keeps_the_session_and_rule_denials_show_the_forbidden_page() {
    let w = LoginWorld::new().await;
    w.issuer.set_access_ttl(1);
    let mut b = Browser::new();
    w.login(&mut b, "/", "bob").await;
    let page = b.request("GET", &w.url("/admin"), true, None).await;
    assert_eq!(page.status, 403);
    assert!(
        page.body.contains("not allowed") && page.body.contains("id=\"sign-out\""),
        "{}",
        page.body
    );
    let api = b.request("GET", &w.url("/admin"), false, None).await;
    assert_eq!(api.status, 403);
    assert!(api.headers["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    // the access token expires: the next request refreshes once, without a login
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = w.issuer.refresh_grants();
    let p = b.request("GET", &w.url("/x"), true, None).await;
    assert_eq!(p.status, 200);
    assert_eq!(w.issuer.refresh_grants(), before + 1);
    assert!(
        p.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("_portcullis=")),
        "the refreshed session is stored"
    );
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("bob"));
    // userinfo shows the session's identity
    let p = b.request("GET", &w.url("/oauth2/userinfo"), false, None).await;
    let v: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["email"], "bob@example.com");
    assert_eq!(v["groups"], serde_json::json!(["staff"]));
    // nothing under the prefix reaches the app
    let hits = w.upstream.hits();
    assert_eq!(b.request("GET", &w.url("/oauth2/nothing-here"), false, None).await.status, 404);
    assert_eq!(w.upstream.hits(), hits);
}
