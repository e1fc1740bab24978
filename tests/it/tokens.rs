//! Bearer tokens: what is accepted, what is refused and how (RFC 6750), and that a refused
//! request never reached the app.

use crate::common::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::devissuer::{DevKey, KeyAlg};
use serde_json::{json, Value};

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Sends `token`; asserts 401 invalid_token and an untouched upstream.
async fn assert_refused(w: &World, token: &str, case: &str) {
    let before = w.upstream.hits();
    let r = client().get(w.url("/api/secret")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 401, "{case}");
    let challenge = r.headers().get("www-authenticate").unwrap().to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer realm=\"portcullis\""), "{case}: {challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
    assert!(challenge.contains("error_description="), "{case}: {challenge}");
    assert_eq!(w.upstream.hits(), before, "{case}: the upstream was reached");
}

fn patched(w: &World, patch: Value) -> Value {
    let mut c = w.issuer.claims_for("alice", AUD);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[tokio::test]
async fn missing_token_is_401_with_a_bare_challenge() {
    let w = World::new().await;
    let r = client().get(w.url("/api/secret")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"portcullis\"");
    // another scheme is no bearer token
    let r = client().get(w.url("/api/secret")).basic_auth("u", Some("p")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn claim_and_signature_failures_are_refused() {
    let w = World::new().await;
    let now = jsonwebtoken::get_current_timestamp();
    let kid = w.issuer.kids()[0].clone();
    let key = w.issuer.key(&kid).unwrap();
    let claims = w.issuer.claims_for("alice", AUD);
    let payload = b64(claims.to_string().as_bytes());

    assert_refused(
        &w,
        &format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
        "alg none",
    )
    .await;
    assert_refused(&w, &format!("{}.{payload}.", b64(br#"{"alg":"None"}"#)), "alg None").await;

    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.clone());
    let hs =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&key.public_bytes)).unwrap();
    assert_refused(&w, &hs, "HS256 with the RSA public key as secret").await;
    let jwk_secret = key.jwk.to_string();
    let hs = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(jwk_secret.as_bytes()))
        .unwrap();
    assert_refused(&w, &hs, "HS256 with the JWK text as secret").await;

    let good = w.issuer.mint(&claims);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[0] ^= 0x01;
    assert_refused(&w, &format!("{head}.{}", b64(&raw)), "flipped signature byte").await;

    let cases = [
        (json!({"iss": "https://evil.example"}), "wrong iss"),
        (json!({"aud": "api://someone-else"}), "wrong aud"),
        (json!({"aud": null}), "missing aud"),
        (json!({"exp": now - 3600}), "expired"),
        (json!({"exp": null}), "no exp"),
        (json!({"nbf": now + 3600}), "nbf ahead"),
        (json!({"iat": now + 3600}), "iat ahead"),
        (json!({"sub": null}), "required sub missing"),
    ];
    for (patch, case) in cases {
        assert_refused(&w, &w.issuer.mint(&patched(&w, patch)), case).await;
    }

    let r = client()
        .get(w.url("/x"))
        .bearer_auth(w.issuer.mint(&patched(&w, json!({"exp": now - 3600}))))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn header_tricks_are_refused() {
    let w = World::new().await;
    let claims = w.issuer.claims_for("alice", AUD);
    let kid = w.issuer.kids()[0].clone();
    let key = w.issuer.key(&kid).unwrap();

    // jku pointing at an attacker's JWKS that really serves the attacker's key
    let attacker_idp = portcullis::devissuer::DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let attacker_kid = attacker_idp.kids()[0].clone();
    let attacker_key = attacker_idp.key(&attacker_kid).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.jku = Some(attacker_idp.jwks_url());
    assert_refused(&w, &attacker_key.sign(h.clone(), &claims), "jku to attacker JWKS").await;
    h.kid = Some(kid.clone());
    assert_refused(&w, &attacker_key.sign(h, &claims), "jku with a trusted kid").await;
    assert_eq!(attacker_idp.jwks_fetches(), 0, "the attacker's JWKS was fetched");

    let attacker = DevKey::generate(KeyAlg::Rs256).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
    h.kid = None;
    let mut t_header = h.clone();
    t_header.kid = None;
    let token = jsonwebtoken::encode(&t_header, &claims, &attacker.encoding).unwrap();
    assert_refused(&w, &token, "embedded jwk").await;

    let mut h = Header::new(Algorithm::RS256);
    h.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    h.kid = Some("not-a-key".into());
    assert_refused(&w, &attacker.sign(h, &claims), "x5u").await;

    let mut h = Header::new(Algorithm::RS256);
    h.crit = Some(vec!["http://example.invalid/ext".into()]);
    h.extras.insert("http://example.invalid/ext", true);
    assert_refused(&w, &key.sign(h, &claims), "unknown crit").await;

    // an ES256 token claiming our RSA key's kid
    let ec = DevKey::generate(KeyAlg::Es256).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.clone());
    assert_refused(&w, &ec.sign(h, &claims), "alg that does not fit the key").await;

    let big = w.issuer.mint(&patched(&w, json!({"pad": "x".repeat(17 * 1024)})));
    assert_refused(&w, &big, "oversize token").await;

    assert_refused(&w, "eyJhbGciOiJSUzI1NiJ9.!!!not-base64!!!.c2ln", "malformed base64").await;
    assert_refused(&w, "a.b", "two segments").await;
    assert_refused(&w, &format!("{}.e30.", b64(b"{not json")), "header not JSON").await;
}

#[tokio::test]
async fn huge_authorization_header_is_refused_before_parsing() {
    let w = World::new().await;
    let r = raw_get(
        w.proxy.addr,
        "/api",
        &[("Authorization", &format!("Bearer {}", "a".repeat(600 * 1024)))],
    )
    .await;
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn two_authorization_headers_are_a_bad_request() {
    let w = World::new().await;
    let t = format!("Bearer {}", w.token("alice"));
    let r =
        raw_get(w.proxy.addr, "/api", &[("Authorization", &t), ("Authorization", "Bearer other")])
            .await;
    assert_eq!(r.status, 400);
    assert!(r.head.to_ascii_lowercase().contains("error=\"invalid_request\""));
    assert_eq!(w.upstream.hits(), 0);
}

#[tokio::test]
async fn unknown_kid_flood_over_http_causes_one_fetch() {
    let w = World::with(Opts { min_refetch: "2s", ..Opts::default() }).await;
    // let the start-up fetch's rate limit pass so that one refetch is allowed; the flood then
    // has two seconds of rate limit, far more than it takes
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let attacker = DevKey::generate(KeyAlg::Rs256).unwrap();
    let claims = w.issuer.claims_for("alice", AUD);
    let before = w.issuer.jwks_fetches();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("flood-{i}"));
        let token = attacker.sign(h, &claims);
        let url = w.url("/api");
        tasks.push(tokio::spawn(async move {
            // a client per task: one connection each
            let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
            c.get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let fetches = w.issuer.jwks_fetches() - before;
    assert_eq!(fetches, 1, "JWKS fetches for 100 concurrent unknown kids");
    assert_eq!(w.upstream.hits(), 0);
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
