//! The ticket a browser holds for a Redis session, and the session as Redis stores it.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;

use super::super::cookie::Jar;
use super::super::store::StoreError;
use super::super::{Lifetimes, Session};

/// The purpose a ticket is sealed for (a session cookie of the cookie store does not open as a
/// ticket, nor the other way round).
pub const TICKET: &str = "ticket";

pub(super) const ID_LEN: usize = 16;
pub(super) const KEY_LEN: usize = 32;
pub(super) const TICKET_LEN: usize = ID_LEN + KEY_LEN + 8;
/// The refresh token's fingerprint before the encrypted session.
pub(super) const FP_LEN: usize = 16;

/// What the browser's cookie holds (sealed): which session, the key that opens it, and when it
/// was signed in (for the expiry `GETEX` sets without reading the session first).
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    pub(super) id: [u8; ID_LEN],
    pub(super) key: [u8; KEY_LEN],
    pub(super) created: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("created", &self.created).finish_non_exhaustive()
    }
}

impl Ticket {
    /// A new ticket: a new id and key from the system's randomness.
    pub fn new(created: u64) -> Result<Self, StoreError> {
        let mut id = [0u8; ID_LEN];
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut id)
            .and_then(|_| aws_lc_rs::rand::fill(&mut key))
            .map_err(|_| StoreError::Unavailable("no randomness for a session ticket".into()))?;
        Ok(Self { id, key, created })
    }

    pub(super) fn to_bytes(&self) -> [u8; TICKET_LEN] {
        let mut b = [0u8; TICKET_LEN];
        b[..ID_LEN].copy_from_slice(&self.id);
        b[ID_LEN..ID_LEN + KEY_LEN].copy_from_slice(&self.key);
        b[ID_LEN + KEY_LEN..].copy_from_slice(&self.created.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != TICKET_LEN {
            return None;
        }
        Some(Self {
            id: b[..ID_LEN].try_into().ok()?,
            key: b[ID_LEN..ID_LEN + KEY_LEN].try_into().ok()?,
            created: u64::from_be_bytes(b[ID_LEN + KEY_LEN..].try_into().ok()?),
        })
    }

    /// The ticket sealed for the cookie.
    pub fn seal(&self, jar: &Jar) -> String {
        jar.codec.seal(TICKET, &self.to_bytes())
    }

    /// The ticket in a cookie value: `None` when it was tampered with, truncated, or sealed
    /// for something else.
    pub fn open(jar: &Jar, value: &str) -> Result<Self, String> {
        let plain = jar.codec.open(TICKET, value).map_err(|e| format!("session ticket {e}"))?;
        Self::from_bytes(&plain).ok_or_else(|| "session ticket of the wrong length".to_string())
    }

    /// The id in hex, appended to `out`.
    pub(super) fn push_hex_id(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.id {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }

    /// The fingerprint of a refresh token under this session's key (none: of the empty one).
    pub(super) fn fingerprint(&self, refresh_token: Option<&str>) -> [u8; FP_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let tag = hmac::sign(&key, format!("refresh\n{}", refresh_token.unwrap_or("")).as_bytes());
        let mut fp = [0u8; FP_LEN];
        fp.copy_from_slice(&tag.as_ref()[..FP_LEN]);
        fp
    }

    fn aead(&self) -> Result<LessSafeKey, String> {
        UnboundKey::new(&AES_256_GCM, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| "session key unusable".to_string())
    }

    /// `session` as stored under `key_name`: the fingerprint, a nonce, the ciphertext.
    pub fn seal_session(&self, key_name: &str, session: &Session) -> Result<Vec<u8>, String> {
        let mut buf = serde_json::to_vec(session).map_err(|e| format!("session JSON: {e}"))?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce".to_string())?;
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_name)),
                &mut buf,
            )
            .map_err(|_| "session encryption failed".to_string())?;
        let mut out = Vec::with_capacity(FP_LEN + NONCE_LEN + buf.len());
        out.extend_from_slice(&self.fingerprint(session.refresh_token.as_deref()));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The session a stored value holds, if this ticket opens it.
    pub fn open_session(&self, key_name: &str, value: &[u8]) -> Result<Session, String> {
        if value.len() < FP_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("stored session too short".into());
        }
        let nonce: [u8; NONCE_LEN] = value[FP_LEN..FP_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| "stored session too short".to_string())?;
        let mut buf = value[FP_LEN + NONCE_LEN..].to_vec();
        let plain = self
            .aead()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(key_name)), &mut buf)
            .map_err(|_| "stored session does not open with its ticket".to_string())?;
        serde_json::from_slice(plain).map_err(|e| format!("stored session does not parse: {e}"))
    }
}

fn aad(key_name: &str) -> Vec<u8> {
    format!("portcullis redis session v1\n{key_name}").into_bytes()
}

/// When a session's entry expires if it is not used again: the end of its `max_lifetime`, or
/// `idle_timeout` after `now`, whichever comes first (seconds since the epoch).
pub fn expires_at(created: u64, now: u64, lifetimes: &Lifetimes) -> u64 {
    (created + lifetimes.max_lifetime.as_secs()).min(now + lifetimes.idle_timeout.as_secs())
}
