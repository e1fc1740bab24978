//! One refresh per session at a time in this process: the requests of one session that find
//! its access token expired wait for the first one's refresh and share its outcome, and so do
//! those that still bring the old session within [`REFRESH_GRACE`]. Every store runs its
//! refreshes through these slots; a shared store adds its own lock across replicas inside.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::{Refreshed, SessionError};
use super::Session;

/// How long a refresh's outcome is handed to requests that still carry the old session.
pub const REFRESH_GRACE: Duration = Duration::from_secs(30);

type Outcome = Result<(Session, Refreshed), SessionError>;

/// A refresh in progress or just done, shared by the requests of one session.
struct RefreshSlot {
    started: tokio::time::Instant,
    outcome: tokio::sync::OnceCell<Outcome>,
}

impl std::fmt::Debug for RefreshSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshSlot").field("started", &self.started).finish()
    }
}

/// The refreshes in progress or just done (within the grace), by session and refresh token.
/// They outlive a pipeline swap: a refresh in flight when the configuration changes is still
/// the one every request of that session waits for.
#[derive(Debug, Default)]
pub struct RefreshSlots(Mutex<HashMap<String, Arc<RefreshSlot>>>);

impl RefreshSlots {
    /// Runs `refresh` for `s` unless a refresh of the same session and refresh token is in
    /// flight or just done: then its outcome, as [`Refreshed::Shared`].
    pub async fn run<F>(&self, s: &Session, refresh: impl FnOnce() -> F) -> Outcome
    where
        F: Future<Output = Outcome>,
    {
        let slot = self.slot(s)?;
        let mut ran = false;
        let (session, how) = slot
            .outcome
            .get_or_init(|| {
                ran = true;
                refresh()
            })
            .await
            .clone()?;
        Ok((session, if ran { how } else { Refreshed::Shared }))
    }

    /// The slot of the refresh of `s` (by its id and refresh token), made if there is none.
    fn slot(&self, s: &Session) -> Result<Arc<RefreshSlot>, SessionError> {
        let rt = s.refresh_token.as_deref().unwrap_or_default();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rt.as_bytes());
        let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}:{hex}", s.id);
        let mut map = self
            .0
            .lock()
            .map_err(|_| SessionError::Invalid("refresh lock poisoned".to_string()))?;
        map.retain(|_, v| v.started.elapsed() < REFRESH_GRACE);
        let slot = map.entry(key).or_insert_with(|| {
            Arc::new(RefreshSlot {
                started: tokio::time::Instant::now(),
                outcome: tokio::sync::OnceCell::new(),
            })
        });
        Ok(slot.clone())
    }
}
