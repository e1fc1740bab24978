//! `portcullis demo`, **for development only**: a built-in issuer, an echo app showing the
//! headers it receives, and the proxy in front of it, all on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config;
use crate::devissuer::{DevIssuer, KeyAlg, DEV_AUDIENCE};
use crate::server::{shutdown_signal, Server};

/// Echoes what it received: method, path, query and every header, as JSON.
async fn echo(req: Request) -> Json<Value> {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    Json(json!({
        "app": "portcullis demo echo app",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    }))
}

/// Starts the echo app on `127.0.0.1:0`.
pub async fn start_echo_app() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(any(echo));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// A fresh random session secret for this run of the demo.
fn demo_secret() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The demo's configuration, as TOML a newcomer could copy.
pub fn demo_config_toml(
    listen: SocketAddr,
    admin: SocketAddr,
    issuer: &str,
    upstream: &str,
    redis: Option<&str>,
) -> String {
    let store = match redis {
        // sessions on this Redis server (docs/sessions-in-redis.md)
        Some(url) => format!("store = \"redis\"\nredis_url = {url:?}\n"),
        None => String::new(),
    };
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"
shutdown_timeout = "5s"
# loopback may ask forward-auth checks (/oauth2/auth) and send forwarding headers: everything
# here is on this machine; in production, name your ingress's addresses
trusted_proxies = ["127.0.0.1/32", "::1/128"]

[upstream]
url = "{upstream}"

[oidc]
issuer = "{issuer}"
# browser login against the development issuer (its login page lists the demo users)
client_id = "portcullis-demo"
client_secret = "demo-secret-not-for-production"

[bearer]
audiences = ["{DEV_AUDIENCE}"]
public_routes = ["^/public/"]

[session]
# a throwaway secret for the demo; in production: `openssl rand -base64 32`, from a file
secret = "{secret}"
{store}
[[authorization.rules]]
path = "/admin"
groups = ["admins"]
"#,
        secret = demo_secret(),
    )
}

/// Runs the demo until Ctrl-C; `upstream` replaces the echo app (it must be on loopback).
/// `redis`: keep sessions on that Redis server instead of in cookies.
pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: Option<String>,
    redis: Option<String>,
) -> anyhow::Result<()> {
    for a in [listen, admin] {
        if !a.ip().is_loopback() {
            anyhow::bail!("the demo listens on loopback only; {a} is not a loopback address");
        }
    }
    let dev = DevIssuer::start(&[KeyAlg::Rs256]).await?;
    let app = match upstream {
        Some(u) => {
            let url = url::Url::parse(&u).map_err(|e| anyhow::anyhow!("--upstream {u:?}: {e}"))?;
            if !config::is_loopback_host(&url) {
                anyhow::bail!(
                    "--upstream must be on loopback (127.0.0.1, [::1] or localhost), got {u}"
                );
            }
            u
        }
        None => format!("http://{}", start_echo_app().await?),
    };
    let text = demo_config_toml(listen, admin, &dev.issuer(), &app, redis.as_deref());
    let cfg = config::load_str(&text, std::iter::empty())?.config;
    let server = Server::start(cfg).await?;
    for _ in 0..100 {
        if server.keys.all_loaded() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = dev.token_for("alice", DEV_AUDIENCE);
    let proxy = format!("http://{}", server.addr);
    println!(
        r#"
portcullis demo: FOR DEVELOPMENT ONLY. The issuer below has throwaway keys and gives a token to
anyone who asks. Everything listens on loopback.

  proxy      {proxy:<26} (what clients call)
  app        {app:<26} (the built-in echo app shows the headers it received)
  issuer     {issuer:<26} (discovery, JWKS, token endpoint)
  probes     http://{admin}/healthz   http://{admin}/readyz

In a browser (sign in as alice, in admins, or bob, in staff; only admins may open /admin):
  {proxy}/hello
  {proxy}/admin

With curl:
  curl -i {proxy}/hello                      # 401: no token
  curl -s {proxy}/public/info                # public route: no token needed
  curl -s -H "Authorization: Bearer $TOKEN" {proxy}/hello

with a token for alice (groups admins, developers), valid for an hour:
  TOKEN={token}

or mint one for bob:
  TOKEN=$(curl -s '{issuer}/dev/token?user=bob')

Ctrl-C stops everything.
"#,
        issuer = dev.issuer(),
        admin = server.admin_addr,
    );
    shutdown_signal().await;
    server.shutdown().await;
    drop(dev);
    Ok(())
}
