//! `portcullis check`: validates the config and, unless `--offline`, probes every issuer the way
//! the proxy will (discovery, then the JWKS), saying what failed in words a user can act on.

use crate::config::{Config, StoreConfig};
use crate::idp::discovery::{idp_client, FetchError};
use crate::idp::jwks::{IssuerKeys, KeyCacheSettings};

/// Exit code: all good.
pub const OK: u8 = 0;
/// Exit code: the config is valid but an issuer could not be probed.
pub const PROBE_FAILED: u8 = 1;
/// Exit code: the config is invalid.
pub const INVALID_CONFIG: u8 = 2;

fn hint(e: &FetchError, issuer: &str) -> String {
    match e {
        FetchError::Unreachable { .. } => "check the URL, and that this host can reach it (DNS, firewall, egress proxy)".into(),
        FetchError::Status { status: 404, .. } => format!(
            "nothing there: is {issuer:?} the exact issuer URL? (Keycloak: https://HOST/realms/NAME; Dex: the issuer in its config; Auth0: https://TENANT.auth0.com/ with the slash)"
        ),
        FetchError::Status { .. } => "the issuer answered with an error; look at its logs".into(),
        FetchError::IssuerMismatch { found, .. } => format!("set the issuer to exactly {found:?}"),
        FetchError::Invalid { .. } => "the URL does not point at an OpenID Provider's discovery document or JWKS".into(),
        FetchError::NoKeys { .. } => "the JWKS has no RSA, EC (P-256/P-384) or Ed25519 signing key".into(),
    }
}

/// Prints a summary of `config`; probes issuers unless `offline`. Returns the exit code.
pub async fn run(config: &Config, offline: bool) -> u8 {
    println!("config is valid");
    println!("  listen        {}", config.server.listen);
    println!("  admin_listen  {}", config.server.admin_listen);
    match &config.upstream {
        Some(u) => println!("  upstream      {}", u.url),
        None => {
            println!("  upstream      none: forward-auth checks only ({}/auth)", config.oidc.prefix)
        }
    }
    for i in &config.bearer.issuers {
        println!("  issuer        {} (audiences: {})", i.issuer, i.audiences.join(", "));
    }
    println!("  public routes {}", config.bearer.public_routes.len());
    match &config.login {
        Some(l) => println!(
            "  browser login client {} at {}, endpoints under {}, callback {}",
            l.client_id,
            l.issuer,
            l.prefix,
            l.redirect_url
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| format!("http://<Host>{}/callback (loopback)", l.prefix)),
        ),
        None => println!("  browser login off (set oidc.client_id and [session] to turn it on)"),
    }
    let redis = config.login.as_ref().and_then(|l| match &l.session.store {
        StoreConfig::Cookie => None,
        StoreConfig::Redis(r) => Some(r),
    });
    match (&config.login, redis) {
        (Some(_), Some(r)) => {
            println!("  sessions      in Redis at {} (keys {}*)", r.url, r.key_prefix)
        }
        (Some(_), None) => println!("  sessions      in encrypted cookies"),
        (None, _) => {}
    }
    let policy = &config.authorization;
    if policy.is_empty() {
        println!("  authorization any valid token (no [authorization] requirements or rules)");
    } else {
        println!("  authorization every protected request: {}", policy.base.describe());
        for r in &policy.rules {
            println!("                {}", r.describe());
        }
    }
    if offline {
        return OK;
    }
    let settings = KeyCacheSettings::new(&config.bearer, config.oidc.insecure_allow_http);
    let http = idp_client();
    let mut code = OK;
    let probed = config.key_issuers();
    for i in &probed {
        let keys = IssuerKeys::new(i, http.clone(), settings.clone());
        match keys.fetch_keys().await {
            Ok((set, skipped, url)) => {
                let kids: Vec<String> = set
                    .keys
                    .iter()
                    .map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into()))
                    .collect();
                println!(
                    "ok    {}: {} signing key(s) from {url}: {}",
                    i.issuer,
                    kids.len(),
                    kids.join(", ")
                );
                for s in skipped {
                    println!("      skipped {s}");
                }
            }
            Err(e) => {
                println!("FAIL  {}: {e}", i.issuer);
                println!("      hint: {}", hint(&e, &i.issuer));
                code = PROBE_FAILED;
            }
        }
    }
    if let Some(r) = redis {
        let answered = match crate::auth::session::redis::Redis::new(r) {
            Ok(client) => client.ping().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answered {
            Ok(()) => println!("ok    sessions: Redis at {} answers", r.url),
            Err(e) => {
                println!("FAIL  sessions: Redis at {}: {e}", r.url);
                println!("      hint: is it running and reachable from here, and are the user, password (session.redis_password_file) and CA (session.redis_ca_file) right?");
                code = PROBE_FAILED;
            }
        }
    }
    if let Some(upstream) = &config.upstream {
        let target = upstream.connect_target();
        match crate::proxy::upstream_reachable(&target, upstream.connect_timeout).await {
            Ok(()) => println!("ok    upstream {target} accepts connections"),
            Err(problem) => {
                println!("note  {problem} (fine if the app starts after the proxy)")
            }
        }
    }
    code
}
