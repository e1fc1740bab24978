//! Forward-auth behind real ingresses: Debian's nginx (`auth_request`) and Caddy
//! (`forward_auth`), each in front of the recording app, with portcullis answering
//! `/oauth2/auth` and serving `/oauth2/*`. The configs are the snippets `docs/forward-auth.md`
//! shows (with the test's ports), so the docs are tested here.

use crate::common::*;
use crate::login::{location, Browser};
use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ3r4=";

/// A server the tests start (nginx, Caddy) on a port it cannot be given as 0: chosen free, and
/// chosen again when it was taken meanwhile. Stopped (by its id) when dropped.
pub struct Ingress {
    child: tokio::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Ingress {
    /// Starts `program args` with the config `make(port, dir)` wrote, until it listens.
    async fn start(
        program: &str,
        args: &[&str],
        make: impl Fn(u16, &Path) -> String,
        file: &str,
    ) -> Ingress {
        assert!(
            Path::new(program).exists(),
            "{program} is not installed: `apt-get install nginx caddy` (bash .ci/run does)"
        );
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = closed_port();
            std::fs::write(dir.path().join(file), make(port, dir.path())).unwrap();
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut up = false;
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    up = true;
                    break;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if up {
                return Ingress { child, port, _dir: dir };
            }
            let _ = child.kill().await;
            let out = child.wait_with_output().await.unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string()
                + &std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            assert!(err.contains("in use"), "{program} did not start: {err}");
        }
        panic!("no free port for {program} after 5 tries");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The nginx snippet of `docs/forward-auth.md`, with its ports and temp paths.
fn nginx_conf(port: u16, dir: &Path, portcullis: &str, app: &str) -> String {
    let d = dir.display();
    format!(
        r#"
# one process (no master): killing the test's child stops all of nginx, no worker is orphaned
worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream portcullis {{ server {portcullis}; }}
  server {{
    listen 127.0.0.1:{port};
{snippet}
    # API clients: the plain 401
    location /api/ {{
      auth_request /oauth2/auth;
{identity}
      proxy_pass http://{app};
    }}
    # browsers: without a session, into login
    location / {{
      auth_request /oauth2/auth;
{identity}
      error_page 401 = @sign_in;
      proxy_pass http://{app};
    }}
    location @sign_in {{
      return 302 /oauth2/start?rd=$request_uri;
    }}
  }}
}}
"#,
        snippet = snippet("nginx-auth"),
        identity = snippet("nginx-identity"),
    )
}

/// The fenced block after `<!-- snippet: name -->` in `docs/forward-auth.md`: the tests run
/// what the docs show.
fn snippet(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/forward-auth.md"))
        .unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &doc[doc.find(&marker).unwrap_or_else(|| panic!("no {marker} in the docs"))..];
    let fence = after.find("```").unwrap();
    let body = &after[fence..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

/// The docs' Caddyfile, on loopback over http, with the test's addresses.
fn caddyfile(port: u16, portcullis: &str, app: &str) -> String {
    let site = snippet("caddyfile")
        .replace("app.example.com {", &format!("http://127.0.0.1:{port} {{"))
        .replace("portcullis:4180", portcullis)
        .replace("app:8080", app);
    format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}")
}

/// portcullis with browser login, trusting loopback, and an app.
async fn portcullis() -> (DevIssuer, Upstream, Proxy) {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let o = Opts {
        server: "trusted_proxies = [\"127.0.0.1/32\"]",
        identity: "claim_headers = { \"X-Tenant\" = \"tid\" }",
        oidc: "client_id = \"web\"\nclient_secret = \"s\"\nskip_sign_in_page = true".into(),
        extra: format!(
            "[session]\nsecret = \"{SECRET}\"\n[[authorization.rules]]\npath = \"/admin\"\ngroups = [\"admins\"]\n"
        ),
        ..Opts::default()
    };
    let proxy = start_proxy(&issuer.issuer(), &upstream.url(), o, true).await;
    (issuer, upstream, proxy)
}

/// Every spelling of the identity headers a client might send, with recognisable values.
fn client_copies() -> Vec<(&'static str, &'static str)> {
    vec![
        ("X-Forwarded-User", "mallory"),
        ("X-Forwarded-Email", "mallory@evil.example"),
        ("X-Forwarded-Groups", "admins"),
        ("X-Forwarded-Preferred-Username", "mallory"),
        ("X_Forwarded_User", "mallory"),
        ("X-Auth-Request-User", "mallory"),
        ("X-Auth-Request-Email", "mallory@evil.example"),
        ("X-Auth-Request-Groups", "admins"),
        ("X_Auth_Request_User", "mallory"),
        ("X-Tenant", "evil-corp"),
        ("X_Tenant", "evil-corp"),
    ]
}

/// What the app saw of the identity headers, in any spelling.
fn identity_seen(seen: &Seen) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase().replace('_', "-");
            k.starts_with("x-forwarded-user")
                || k.starts_with("x-forwarded-email")
                || k.starts_with("x-forwarded-groups")
                || k.starts_with("x-forwarded-preferred")
                || k.starts_with("x-auth-request-")
                || k.starts_with("x-tenant")
        })
        // an empty value says "none" (Caddy copies portcullis's empty answer headers)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    out.sort();
    out
}

/// GET `url` with `token` and the client's copies of the identity headers: the status.
async fn get_spoofing(url: &str, token: Option<&str>) -> u16 {
    let mut req = client().get(url);
    for (k, v) in client_copies() {
        req = req.header(k, v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

/// The behaviour both ingresses must show.
async fn guards(ingress: &Ingress, issuer: &DevIssuer, upstream: &Upstream) {
    let mut claims = issuer.claims_for("alice", AUD);
    claims["tid"] = "t-1".into();
    let (alice, bob) = (issuer.mint(&claims), issuer.token_for("bob", AUD));
    // a valid token: 200, and the user at the app, from portcullis's answer only
    assert_eq!(get_spoofing(&ingress.url("/api/x"), Some(&alice)).await, 200);
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/api/x");
    assert_eq!(
        identity_seen(&seen),
        [
            ("x-forwarded-email".to_string(), "alice@example.com".to_string()),
            ("x-forwarded-groups".into(), "admins,developers".into()),
            ("x-forwarded-preferred-username".into(), "alice".into()),
            ("x-forwarded-user".into(), "alice".into()),
            ("x-tenant".into(), "t-1".into()),
        ]
    );
    // no token: 401, a rule's 403; nothing reaches the app
    let hits = upstream.hits();
    let api = client().get(ingress.url("/api/x")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(get_spoofing(&ingress.url("/admin/x"), Some(&bob)).await, 403);
    assert_eq!(upstream.hits(), hits);
    // a user without email or groups: the client's copies are gone, none of them filled in
    let mut claims = issuer.claims_for("svc-7", AUD);
    claims.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "email" | "groups"));
    let bare = issuer.mint(&claims);
    assert_eq!(get_spoofing(&ingress.url("/api/y"), Some(&bare)).await, 200);
    assert_eq!(
        identity_seen(&upstream.last()),
        [("x-forwarded-user".to_string(), "svc-7".to_string())]
    );
    // a public route: no identity, no client copy
    assert_eq!(get_spoofing(&ingress.url("/public/z"), None).await, 200);
    assert_eq!(identity_seen(&upstream.last()), []);
}

/// A browser signs in through the ingress and then reaches the app with its session; with
/// `refresh`, its access token expires and the check's refreshed cookie reaches the browser.
async fn browser_signs_in(
    ingress: &Ingress,
    issuer: &DevIssuer,
    upstream: &Upstream,
    refresh: bool,
) {
    if refresh {
        issuer.set_access_ttl(1);
    }
    let mut b = Browser::new();
    let first = b.request("GET", &ingress.url("/app/page?x=1"), true, None).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let mut next = location(&first);
    // into login, through the ingress, to the provider
    for _ in 0..3 {
        if next.starts_with(&issuer.issuer()) {
            break;
        }
        let url = if next.starts_with('/') { ingress.url(&next) } else { next.clone() };
        let p = b.request("GET", &url, true, None).await;
        assert_eq!(p.status, 302, "{url}: {}", p.body);
        next = location(&p);
    }
    assert!(next.starts_with(&issuer.issuer()), "not sent to the provider: {next}");
    let q = reqwest::Url::parse(&next).unwrap();
    let mut form: Vec<(String, String)> = q.query_pairs().into_owned().collect();
    form.push(("user".into(), "alice".into()));
    let body: String =
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let p = b.request("POST", &format!("{}/authorize", issuer.issuer()), true, Some(&body)).await;
    let callback = location(&p);
    assert!(callback.starts_with(&ingress.url("/oauth2/callback")), "{callback}");
    let p = b.request("GET", &callback, true, None).await;
    assert_eq!(p.status, 302, "{}", p.body);
    let back = location(&p);
    assert!(back.ends_with("/app/page?x=1"), "{back}");
    let page = b.request("GET", &ingress.url("/app/page?x=1"), true, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    if refresh {
        // past the access token's second (a lower bound: a busy machine only waits longer)
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let before = issuer.refresh_grants();
        let page = b.request("GET", &ingress.url("/app/page?x=1"), true, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(issuer.refresh_grants(), before + 1);
        let set: Vec<_> = page.headers.get_all("set-cookie").iter().collect();
        assert!(set.iter().any(|v| v.to_str().unwrap().starts_with("_portcullis=")), "{set:?}");
        // the browser holds the refreshed session: the next request needs no refresh
        let page = b.request("GET", &ingress.url("/app/page?x=1"), true, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(issuer.refresh_grants(), before + 1);
    }
    let seen = upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("alice@example.com"));
    // The ingress forwards the browser's Cookie header as sent: the app gets the session cookie
    // too (docs/forward-auth.md says so), sealed: nothing of the session readable in it.
    let cookies = seen.all("cookie").join("; ");
    assert!(cookies.contains("_portcullis="), "{cookies}");
    assert!(!cookies.contains("alice") && !cookies.contains("eyJ"), "{cookies}");
    // a cross-site POST with the session: refused on the original request's origin, before the app
    let hits = upstream.hits();
    let r = b
        .http
        .post(ingress.url("/app/form"))
        .header("cookie", b.cookie_header())
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(upstream.hits(), hits);
    // the same from the app's own page passes
    let own = ingress.url("");
    let r = b
        .http
        .post(ingress.url("/app/form"))
        .header("cookie", b.cookie_header())
        .header("origin", own.trim_end_matches('/'))
        .header("sec-fetch-site", "same-origin")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().method, "POST");
    // sign-out through the ingress (a same-origin POST): the next visit is sent into login
    b.fetch_site = Some("same-origin");
    let out = b.request("POST", &ingress.url("/oauth2/sign_out"), true, Some("")).await;
    assert!((300..400).contains(&out.status), "{} {}", out.status, out.body);
    assert!(!b.jar.keys().any(|k| k == "_portcullis"), "{:?}", b.jar);
    let hits = upstream.hits();
    let again = b.request("GET", &ingress.url("/app/page?x=1"), true, None).await;
    assert_eq!(again.status, 302, "{}", again.body);
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test]
async fn behind_a_real_nginx_auth_request() {
    let (issuer, upstream, proxy) = portcullis().await;
    let (p, app) = (proxy.addr.to_string(), upstream.addr.to_string());
    let nginx = Ingress::start(
        "/usr/sbin/nginx",
        &["-c", "nginx.conf", "-p", "."],
        |port, dir| nginx_conf(port, dir, &p, &app),
        "nginx.conf",
    )
    .await;
    guards(&nginx, &issuer, &upstream).await;
    browser_signs_in(&nginx, &issuer, &upstream, true).await;
}

#[tokio::test]
async fn behind_a_real_caddy_forward_auth() {
    let (issuer, upstream, proxy) = portcullis().await;
    let (p, app) = (proxy.addr.to_string(), upstream.addr.to_string());
    let caddy = Ingress::start(
        "/usr/bin/caddy",
        &["run", "--config", "Caddyfile", "--adapter", "caddyfile"],
        |port, _| caddyfile(port, &p, &app),
        "Caddyfile",
    )
    .await;
    guards(&caddy, &issuer, &upstream).await;
    // Caddy's forward_auth does not pass the check's Set-Cookie on (docs/forward-auth.md)
    browser_signs_in(&caddy, &issuer, &upstream, false).await;
}
