//! Talking to identity providers: `discovery` (provider metadata, the bounded GET every
//! provider answer is read with) and `jwks` (the key cache: fetch, refresh, rotation, lookup by
//! `kid`). Nothing here decides who a caller is; [`crate::auth`] does, with these keys.

pub mod discovery;
pub mod jwks;
