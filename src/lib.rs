//! portcullis: an authentication sidecar. It listens where the app used to, validates each
//! request's bearer JWT against the issuer's JWKS, and forwards it with the verified identity
//! in `X-Forwarded-*` headers to the app on localhost.
//!
//! # Layout
//! The modules follow a request:
//! - [`config`]: the TOML file, `PORTCULLIS_*` overrides, validation naming the key at fault.
//! - [`server`]: worker threads and listeners, `/healthz` and `/readyz`, swapping the pipeline,
//!   graceful shutdown.
//! - [`pipeline`]: the middleware stack (and why each layer sits where it does), the router of
//!   portcullis's own endpoints with the protected chain as its fallback; built from one
//!   configuration and swapped whole, while [`pipeline::Shared`] (keys, verified tokens, login
//!   attempts, refreshes in flight) outlives it.
//! - [`conn`]: one client connection over any `Transport`: HTTP/1.1 or h2c, and idle HTTP/1.1
//!   connections parked without hyper's buffers; [`peer`]: who is on the other end (address,
//!   the connection's scheme, trusted proxy judged per request).
//! - [`telemetry`]: logging (one writer thread), request ids, the access log line.
//! - [`headers`]: what is stripped from a request before anything reads it, and why: hop-by-hop
//!   headers, identity headers, path overrides, forwarding headers from untrusted peers;
//!   methods and HTTP/2 fields refused before anything reads them.
//! - [`path`]: the one normalised path that routes match and the app receives.
//! - [`cookie_header`]: the one reader of `Cookie` headers, on bytes.
//! - [`idp`]: talking to providers: `discovery` (metadata, the bounded GET), `jwks` (key cache).
//! - [`auth`]: `decide(&RequestView)` (authentication and the rules as one decision, on a
//!   request given explicitly) and the `Authenticate` layer applying it; `bearer`, `csrf`,
//!   `token` (JWT validation, verified-token cache), `session` (sessions: their rules in
//!   `Sessions`, where they are kept behind `SessionStore`, sealed cookies the first store),
//!   `policy` (`[authorization]` rules, part of the decision), `inject` (the identity
//!   headers set on the request).
//! - [`forward_auth`]: `{prefix}/auth`, the same decision on the original request an ingress
//!   names (nginx, Traefik/Caddy or Envoy dialect, from trusted proxies only), answered with
//!   `X-Auth-Request-*` headers; nothing proxied.
//! - [`login`]: the browser flow: routes and handlers, `flow` (start, callback, sign-out),
//!   `provider` (oauth2 client, ID tokens, UserInfo, revocation, the refresh grant),
//!   `redirect` (safe redirects).
//! - [`identity`]: verified claims → the identity and the headers it becomes.
//! - [`proxy`]: `X-Forwarded-*`, the request to the app, `upstream.max_concurrent_requests`.
//! - [`upstream`]: each worker's own connections to the app (HTTP/1.1 kept alive and paced, or
//!   h2c).
//! - [`body`]: the client's request body (idle timeout, its faults told from the app's) and the
//!   app's response body (holding its concurrency slot, and its connection, until it ends).
//! - [`response`]: refusals, and `Answers`, the one place they become answers (401, 403, 502, ...);
//!   [`pages`]: the HTML pages browsers get.
//! - [`error`]: errors with their source chains, for logs.
//! - [`clock`]: Unix time, injectable, so expiry is tested with paused time.
//! - [`check`]: `portcullis check`, the config and issuer probe; [`probe`]: `portcullis probe`,
//!   the health check for images without curl.
//! - [`devissuer`], [`demo`]: the development-only issuer and echo app behind `portcullis demo`.

pub mod auth;
pub mod body;
pub mod check;
pub mod clock;
pub mod config;
pub mod conn;
pub mod cookie_header;
pub mod demo;
pub mod devissuer;
pub mod error;
pub mod forward_auth;
pub mod headers;
pub mod identity;
pub mod idp;
pub mod login;
pub mod pages;
pub mod path;
pub mod peer;
pub mod pipeline;
pub mod probe;
pub mod proxy;
pub mod response;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use config::Config;
pub use server::Server;
