//! Browser login end to end: Debian's Chromium (headless, driven by playwright-core) against
//! the real binary and the real oidc-provider, asserting what the app received.

use crate::common::*;
use crate::interop::{interop_dir, Op};
use std::time::Duration;

const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ3r4=";
/// Seconds an access token of the login client lives: the browser waits this long before the
/// dashboard burst that must refresh the session.
const ACCESS_TTL: u64 = 3;

fn chromium() -> String {
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
    let (op_port, app_port) = (free_port(), free_port());
    let app = format!("http://127.0.0.1:{app_port}");
    let op = Op::start_with(
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
    let upstream = Upstream::start().await;
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
    let bin = Binary::start_on(&config, app_port).await;
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
