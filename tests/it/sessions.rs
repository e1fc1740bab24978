//! Browser sessions after sign-in: cookies read as bytes, cross-site requests, sign-out,
//! refreshes and the callback's parameters.

use crate::common::*;
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

/// A session's requests as a browser makes them from the app's own pages.
fn same_origin(b: &mut Browser) {
    b.fetch_site = Some("same-origin");
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

#[tokio::test]
async fn pass_id_token_sends_a_sessions_id_token_to_the_app_and_nothing_for_bearer_tokens() {
    use base64::Engine as _;
    let w = LoginWorld::with("", "pass_id_token = true").await;
    let mut b = Browser::new();
    let p = w.login(&mut b, "/", "alice").await;
    assert_eq!(p.status, 302, "{}", p.body);
    let page = b.request("GET", &w.url("/api/me"), true, None).await;
    assert_eq!(page.status, 200);
    let auth = w.upstream.last().one("authorization").expect("the ID token");
    let token = auth.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap();
    assert_eq!((claims["sub"].as_str(), claims["aud"].as_str()), (Some("alice"), Some("web")));
    // a bearer token is no session: pass_token (none) decides, nothing is sent
    let api = w.issuer.token_for("alice", AUD);
    let r = client().get(w.url("/api/x")).bearer_auth(&api).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(w.upstream.last().one("authorization"), None);
}

#[tokio::test]
async fn a_kept_cookie_session_is_dropped_when_its_secret_is_removed_by_a_new_configuration() {
    let w = LoginWorld::new().await;
    let mut b = Browser::new();
    assert_eq!(w.login(&mut b, "/", "alice").await.status, 302);
    same_origin(&mut b);
    // opened once, and kept
    for _ in 0..2 {
        assert_eq!(b.request("GET", &w.url("/x"), false, None).await.status, 200);
    }
    let server = w.proxy.server.as_ref().unwrap();
    let line = w.config.lines().find(|l| l.starts_with("secret = ")).unwrap().to_string();
    let old = line.trim_start_matches("secret = ").trim_matches('"').to_string();
    let dir = tempfile::tempdir().unwrap();
    let with_secrets = |secrets: &[&str]| {
        let f = dir.path().join(format!("secrets-{}", secrets.len()));
        std::fs::write(&f, secrets.join("\n")).unwrap();
        let text = w.config.replace(&line, &format!("secret_file = {:?}", f.display().to_string()));
        portcullis::config::load_str(&text, std::iter::empty()).unwrap().config
    };
    let new = "bmV3LXNlY3JldC0zMi1ieXRlcy1yb3RhdGVkLWluISE=";
    // rotation: a new first secret, the old one still opens
    server.swap(&with_secrets(&[new, &old])).await.unwrap();
    assert_eq!(b.request("GET", &w.url("/x"), false, None).await.status, 200);
    // the old secret removed: the session it sealed opens nowhere, kept or not
    server.swap(&with_secrets(&[new])).await.unwrap();
    let hits = w.upstream.hits();
    let p = b.request("GET", &w.url("/x"), false, None).await;
    assert_eq!(p.status, 401, "{}", p.body);
    assert_eq!(w.upstream.hits(), hits, "a session of a removed secret reached the app");
}
