//! Unix time, injectable. Token expiry is checked against a [`Clock`]: the system clock in
//! production, or one that follows tokio's time, so tests move it with `tokio::time::pause()`
//! and `advance()` instead of sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where "now" comes from, in whole seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// `start_unix` plus the tokio time elapsed since `start` (pausable and advanceable).
    Tokio { start_unix: u64, start: tokio::time::Instant },
}

/// Seconds since the Unix epoch on the system clock (0 before 1970).
pub fn system_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Clock {
    /// A clock that starts at the system's "now" and then follows tokio's time.
    pub fn tokio() -> Self {
        Clock::Tokio { start_unix: system_now(), start: tokio::time::Instant::now() }
    }

    /// Now, in seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => system_now(),
            Clock::Tokio { start_unix, start } => start_unix + start.elapsed().as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = Clock::tokio();
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(c.now(), t0 + 3600);
        let sys = Clock::System.now();
        assert!(sys.abs_diff(system_now()) <= 1 && sys > 1_700_000_000);
    }
}
