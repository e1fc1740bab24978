//! Integration tests: the proxy on 127.0.0.1:0 with real upstreams and issuers, asserting
//! what the upstream actually received. One crate, so it links once.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod deploy;
mod forward_auth;
mod framing;
mod hostile_app;
mod identity_headers;
mod ingress;
mod interop;
mod layout;
mod lifecycle;
mod login;
mod logs;
mod protocols;
mod proxy;
mod redis;
mod rules;
mod sessions;
mod tokens;
