//! The Redis side of the store: connections (one per worker), bounded commands, and the three
//! scripts of the refresh lock.

use std::sync::RwLock;
use std::thread::ThreadId;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::super::store::StoreError;
use super::ticket::{Ticket, ID_LEN};
use crate::config::RedisConfig;

/// Renews the lock for its owner only (`PEXPIRE`): 1 if it still was the owner's.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Releases the lock for its owner only: 1 if it still was the owner's.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Writes the refreshed session (keeping its expiry) only if the stored one still has the
/// refresh token that was used, then releases the lock if it is still the owner's: 1 if
/// written, 0 if another refresh got there first, -1 if the session is gone.
const COMPARE_AND_SET: &str = r"local v = redis.call('GET', KEYS[1])
local written = -1
if v then
  if string.sub(v, 1, 16) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    written = 1
  else
    written = 0
  end
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return written";

/// Connections, commands and scripts: the Redis side of the store, usable on its own (the
/// tests drive the lock through it).
pub struct Redis {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// One connection per worker thread (each worker has its own runtime).
    connections: RwLock<Vec<(ThreadId, ConnectionManager)>>,
    timeout: Duration,
    prefix: String,
    renew: redis::Script,
    release: redis::Script,
    compare_and_set: redis::Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Redis {
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<Self> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.expose().as_str())
            .map_err(|e| anyhow::anyhow!("session.redis_url: {}", e.category()))?;
        if let Some(p) = &cfg.password {
            let settings = info.redis_settings().clone().set_password(p.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &cfg.ca_pem {
            Some(pem) if cfg.url.is_tls() => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            ),
            _ => redis::Client::open(info),
        }
        .map_err(|e| anyhow::anyhow!("session.redis_url: {}", e.category()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            // Each command is bounded by one timer of ours (connecting included); a second one
            // in the client cost about 700 instructions per request (two timer entries).
            .set_response_timeout(None)
            // a command during an outage fails at once; the next one tries again
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            client,
            config,
            connections: RwLock::new(Vec::new()),
            timeout: cfg.timeout + cfg.connect_timeout,
            prefix: cfg.key_prefix.clone(),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            compare_and_set: redis::Script::new(COMPARE_AND_SET),
        })
    }

    /// The session's key and its lock's, under one hash tag (one Cluster slot).
    pub fn keys(&self, ticket: &Ticket) -> (String, String) {
        let mut key = String::with_capacity(self.prefix.len() + 10 + 2 * ID_LEN);
        key.push_str(&self.prefix);
        key.push_str("session:{");
        ticket.push_hex_id(&mut key);
        key.push('}');
        let lock = format!("{key}:lock");
        (key, lock)
    }

    /// This worker's connection, made (lazily: it connects on first use) on its runtime.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let me = std::thread::current().id();
        if let Ok(c) = self.connections.read() {
            if let Some((_, conn)) = c.iter().find(|(t, _)| *t == me) {
                return Ok(conn.clone());
            }
        }
        let conn =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(unavailable)?;
        if let Ok(mut c) = self.connections.write() {
            c.push((me, conn.clone()));
        }
        Ok(conn)
    }

    /// Runs `cmd`, bounded by the command timeout (and the connect timeout, for a reconnect).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(redis_error(&e))),
            Err(_) => Err(StoreError::Unavailable("Redis did not answer in time".into())),
        }
    }

    async fn script(&self, inv: &redis::ScriptInvocation<'_>) -> Result<i64, StoreError> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(redis_error(&e))),
            Err(_) => Err(StoreError::Unavailable("Redis did not answer in time".into())),
        }
    }

    /// Whether Redis answers (`portcullis check`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    /// The stored value, its expiry slid to `expire_at` in the same round trip.
    pub async fn get_and_slide(
        &self,
        key: &str,
        expire_at: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GETEX").arg(key).arg("EXAT").arg(expire_at)).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub async fn set(&self, key: &str, value: &[u8], expire_at: u64) -> Result<(), StoreError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("EXAT").arg(expire_at)).await
    }

    pub async fn delete(&self, keys: &[&str]) -> Result<u64, StoreError> {
        self.query(redis::cmd("DEL").arg(keys)).await
    }

    /// Takes the lock for `owner` for `lease` if nobody holds it.
    pub async fn lock(&self, lock: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(lock)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease.as_millis() as u64),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Renews the lock for another `lease`, if `owner` still holds it.
    pub async fn renew(
        &self,
        lock: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let n = self.script(self.renew.key(lock).arg(owner).arg(lease.as_millis() as u64)).await?;
        Ok(n == 1)
    }

    /// Releases the lock, if `owner` still holds it.
    pub async fn unlock(&self, lock: &str, owner: &str) -> Result<bool, StoreError> {
        Ok(self.script(self.release.key(lock).arg(owner)).await? == 1)
    }

    /// Writes `value` over the session at `key` only if it still starts with `expected` (the
    /// fingerprint of the refresh token that was used); releases the lock for `owner`.
    pub async fn compare_and_set(
        &self,
        key: &str,
        lock: &str,
        expected: &[u8],
        value: &[u8],
        owner: &str,
    ) -> Result<Cas, StoreError> {
        let n = self
            .script(self.compare_and_set.key(key).key(lock).arg(expected).arg(value).arg(owner))
            .await?;
        Ok(match n {
            1 => Cas::Written,
            0 => Cas::Changed,
            _ => Cas::Gone,
        })
    }
}

/// What [`Redis::compare_and_set`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    Written,
    /// Another refresh wrote first.
    Changed,
    /// The session was ended (signed out, or expired).
    Gone,
}

/// A Redis error for the log: its kind and what it says, never the command's arguments.
fn redis_error(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "Redis did not answer in time".into()
    } else if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
        format!("cannot reach Redis ({})", e.category())
    } else {
        // the server's own words (NOAUTH, WRONGPASS, READONLY, ...), never our arguments
        format!(
            "Redis answered an error: {} {}",
            e.code().unwrap_or(e.category()),
            e.detail().unwrap_or("")
        )
    }
}
