//! A browser's session as the login keeps it: opened and checked for `max_lifetime` and
//! `idle_timeout` (activity in its own cookie), refreshed when its access token expired (one
//! refresh per session at a time), resealed.

use super::*;

/// How long a refresh's outcome is handed to requests that still carry the old cookie.
pub const REFRESH_GRACE: Duration = Duration::from_secs(30);
/// Activity is recorded (a new activity cookie) at most once in this part of
/// `session.idle_timeout`, and at least once a minute: an active session is never taken for an
/// idle one by more than a tenth of the timeout.
pub(super) const ACTIVITY_PARTS: u64 = 10;
pub(super) const ACTIVITY_MAX_INTERVAL: u64 = 60;

/// Whether a session check refreshed the session (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    No,
    /// This request's refresh reached the provider.
    Here,
    /// This request got the outcome of another request's refresh.
    Shared,
}

/// A refresh in progress or just done, shared by the requests of one session.
pub(super) struct RefreshSlot {
    started: tokio::time::Instant,
    outcome: tokio::sync::OnceCell<Result<Session, String>>,
}

impl Login {
    pub(super) fn seal_session(
        &self,
        s: &Session,
        request: &HeaderMap,
    ) -> Option<Vec<HeaderValue>> {
        let sealed = self.codec.seal_json(session::SESSION, s);
        let out = self.cookies.set_session(&sealed, self.time_left(s), request);
        if out.is_none() {
            tracing::warn!(bytes = sealed.len(), "session too large for its cookies; not stored");
        }
        out
    }

    /// The session a request carries, checked for lifetime and refreshed when its access token
    /// expired: the identity and the cookies to set, or why there is none (logged at debug).
    pub async fn session_of(
        &self,
        parts: &request::Parts,
    ) -> Option<Result<(Session, Identity, HeaderMap, Refreshed), String>> {
        let value = match self.cookies.session_value(&parts.headers)? {
            Ok(v) => v,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(self.check_session(&value, &parts.headers).await)
    }

    /// How often activity is recorded: a tenth of the idle timeout, at most a minute.
    pub(super) fn activity_interval(&self) -> u64 {
        (self.cfg.session.idle_timeout.as_secs() / ACTIVITY_PARTS).clamp(1, ACTIVITY_MAX_INTERVAL)
    }

    /// Opens the sealed session `value`, checks `max_lifetime` and `idle_timeout` (the last
    /// activity is the later of the session's and its activity cookie's), refreshes it when its
    /// access token expired, and records activity: the session, its identity, the cookies to
    /// set, and whether it was refreshed.
    pub async fn check_session(
        &self,
        value: &str,
        request: &HeaderMap,
    ) -> Result<(Session, Identity, HeaderMap, Refreshed), String> {
        let mut s: Session = self
            .codec
            .open_json(session::SESSION, value)
            .map_err(|e| format!("session cookie {e}"))?;
        let t = now(&self.clock);
        if t >= s.created + self.cfg.session.max_lifetime.as_secs() {
            return Err("session reached session.max_lifetime".into());
        }
        let recorded = self
            .cookies
            .activity_value(request)
            .and_then(|v| self.codec.open_json::<Activity>(session::ACTIVITY, &v).ok())
            .filter(|a| a.id == s.id)
            .map_or(0, |a| a.seen);
        let last = s.seen.max(recorded);
        if t >= last + self.cfg.session.idle_timeout.as_secs() {
            return Err("session idle longer than session.idle_timeout".into());
        }
        let mut refreshed = Refreshed::No;
        if s.at_exp.is_some_and(|exp| exp <= t) && s.refresh_token.is_some() {
            (s, refreshed) = self.refresh_once(s).await?;
        }
        let identity = self
            .mapper
            .identity(&s.iss, s.claims.clone())
            .map_err(|e| format!("session identity: {e}"))?;
        let mut set = HeaderMap::new();
        if refreshed != Refreshed::No {
            s.seen = t;
            for v in self.seal_session(&s, request).unwrap_or_default() {
                set.append(header::SET_COOKIE, v);
            }
        } else if t.saturating_sub(last) >= self.activity_interval() {
            let sealed =
                self.codec.seal_json(session::ACTIVITY, &Activity { id: s.id.clone(), seen: t });
            set.append(header::SET_COOKIE, self.cookies.set_activity(sealed, self.time_left(&s)));
        }
        Ok((s, identity, set, refreshed))
    }

    /// What is left of a session's `max_lifetime`.
    pub(super) fn time_left(&self, s: &Session) -> Duration {
        Duration::from_secs(
            (s.created + self.cfg.session.max_lifetime.as_secs()).saturating_sub(now(&self.clock)),
        )
    }

    /// One refresh per session at a time in the process; requests of that moment, and those
    /// arriving with the old cookie within [`REFRESH_GRACE`], get its outcome.
    pub(super) async fn refresh_once(&self, s: Session) -> Result<(Session, Refreshed), String> {
        let key = {
            let rt = s.refresh_token.as_deref().unwrap_or_default();
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rt.as_bytes());
            format!(
                "{}:{}",
                s.id,
                d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        let slot = {
            let mut map = self.refreshes.lock().map_err(|_| "refresh lock poisoned".to_string())?;
            map.retain(|_, v| v.started.elapsed() < REFRESH_GRACE);
            map.entry(key)
                .or_insert_with(|| {
                    Arc::new(RefreshSlot {
                        started: tokio::time::Instant::now(),
                        outcome: tokio::sync::OnceCell::new(),
                    })
                })
                .clone()
        };
        let mut ran = false;
        let outcome = slot
            .outcome
            .get_or_init(|| {
                ran = true;
                self.refresh(s)
            })
            .await
            .clone()?;
        Ok((outcome, if ran { Refreshed::Here } else { Refreshed::Shared }))
    }

    pub(super) async fn refresh(&self, mut s: Session) -> Result<Session, String> {
        let meta = self.metadata().map_err(|e| e.detail)?;
        let client = self.client(&meta, None).map_err(|e| e.detail)?;
        let rt = RefreshToken::new(s.refresh_token.clone().unwrap_or_default());
        self.refresh_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http = self.http_client();
        let resp = client
            .exchange_refresh_token(&rt)
            .request_async(&http)
            .await
            .map_err(|e| format!("refresh failed: {}", token_error(&e)))?;
        let t = now(&self.clock);
        s.at_exp = resp.expires_in().map(|d| t + d.as_secs());
        if let Some(new_rt) = resp.refresh_token() {
            s.refresh_token = Some(new_rt.secret().clone());
        }
        if self.keep_access_token {
            s.access_token = Some(resp.access_token().secret().clone());
        }
        // What the provider says about the user now: a refreshed ID token (OpenID Connect Core
        // §12.2: same issuer, subject and client, newly issued) and a fresh UserInfo. Together
        // they replace the session's claims, so a group the user lost is gone too.
        let sub = s.claims.get("sub").cloned();
        let mut fresh: Option<Map<String, Value>> = None;
        if let Some(id_token) = resp.extra_fields().id_token.clone() {
            let claims = self
                .id_tokens
                .verify_claims(&id_token)
                .await
                .map_err(|e| format!("refreshed ID token: {e}"))?;
            if claims.get("sub") != sub.as_ref() {
                return Err("refreshed ID token is for another subject".into());
            }
            self.check_azp(&claims).map_err(|e| format!("refreshed ID token: {e}"))?;
            let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
            if iat + self.leeway.as_secs() < s.created {
                return Err("refreshed ID token was issued before the session began".into());
            }
            fresh = Some(claims);
            s.id_token = Some(id_token);
        }
        let mut userinfo_failed = false;
        if let Some(ui) = &meta.userinfo_endpoint {
            match self.userinfo_claims(ui, resp.access_token().secret()).await {
                Ok(info) => {
                    if info.get("sub") != sub.as_ref() {
                        return Err("UserInfo after a refresh is for another subject".into());
                    }
                    let claims = fresh.get_or_insert_with(Map::new);
                    for (k, v) in info {
                        if !PROTOCOL_CLAIMS.contains(&k.as_str()) && k != "iss" {
                            claims.insert(k, v);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(reason = e.reason, detail = %e.detail, "UserInfo failed after a refresh; the session keeps its claims");
                    userinfo_failed = true;
                }
            }
        }
        match fresh {
            Some(mut claims) if !userinfo_failed => {
                claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
                s.claims = claims;
            }
            Some(_) => {}
            None => tracing::info!(
                sub = ?sub,
                "the refresh brought neither an ID token nor UserInfo; the session keeps its claims"
            ),
        }
        tracing::info!(sub = ?sub, "session refreshed");
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idp::jwks::KeyStore;

    /// A login (no provider is asked) whose clock follows paused tokio time.
    fn paused_login(session: &str) -> Login {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"web\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{session}\n"
        );
        let cfg = crate::config::load_str(&text, std::iter::empty()).unwrap().config;
        let store = Arc::new(KeyStore::new(
            &cfg.key_issuers(),
            crate::idp::jwks::KeyCacheSettings::new(&cfg.bearer, false),
        ));
        let pages = Arc::new(Pages::load(None).unwrap());
        Login::new(cfg.login.unwrap(), &store, &cfg.bearer, &cfg.identity, pages)
            .unwrap()
            .with_clock(Clock::tokio())
    }

    /// A browser's cookie jar: what `Set-Cookie` values leave in it, as a request's headers.
    #[derive(Default)]
    struct Jar(std::collections::BTreeMap<String, String>);

    impl Jar {
        fn take(&mut self, set: impl IntoIterator<Item = HeaderValue>) {
            for v in set {
                let v = v.to_str().unwrap().to_string();
                let pair = v.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if v.contains("Max-Age=0") {
                    self.0.remove(name);
                } else {
                    self.0.insert(name.into(), value.into());
                }
            }
        }
        fn headers(&self) -> HeaderMap {
            let mut h = HeaderMap::new();
            let c: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            h.insert(header::COOKIE, HeaderValue::from_str(&c.join("; ")).unwrap());
            h
        }
    }

    /// A signed-in browser's jar, as the callback leaves it (no tokens to refresh).
    fn signed_in(login: &Login) -> Jar {
        let t = login.clock.now();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let s = Session {
            id: session::random_token(),
            iss: "https://idp.example.com".into(),
            claims,
            created: t,
            seen: t,
            at_exp: None,
            refresh_token: None,
            id_token: None,
            access_token: None,
        };
        let mut jar = Jar::default();
        jar.take(login.seal_session(&s, &HeaderMap::new()).unwrap());
        jar
    }

    /// One request of the browser: whether its session held, and the cookies it got.
    async fn visit(login: &Login, jar: &mut Jar) -> Result<(), String> {
        let h = jar.headers();
        let value = login.cookies.session_value(&h).ok_or("no session cookie")?.unwrap();
        let (_, _, set, _) = login.check_session(&value, &h).await?;
        jar.take(set.get_all(header::SET_COOKIE).iter().cloned());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_session_outlives_the_idle_timeout_and_an_idle_one_does_not() {
        let login = paused_login("idle_timeout = \"1m\"\nmax_lifetime = \"1h\"");
        let mut jar = signed_in(&login);
        let session_cookie = jar.0["_portcullis"].clone();
        // a request every 11 s for five minutes: never idle
        for i in 0..30 {
            tokio::time::advance(Duration::from_secs(11)).await;
            visit(&login, &mut jar).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        }
        // activity went into its own cookie; the session (and its tokens) was never resealed
        assert_eq!(jar.0["_portcullis"], session_cookie);
        assert!(jar.0.contains_key("_portcullis_seen"), "{:?}", jar.0.keys());
        // then a minute without a request: signed out
        tokio::time::advance(Duration::from_secs(60)).await;
        let err = visit(&login, &mut jar).await.unwrap_err();
        assert!(err.contains("idle_timeout"), "{err}");
        // a fresher activity cookie of another session does not keep this one alive
        let mut other = signed_in(&login);
        let mut third = signed_in(&login);
        tokio::time::advance(Duration::from_secs(50)).await;
        visit(&login, &mut third).await.unwrap();
        other.0.insert("_portcullis_seen".into(), third.0["_portcullis_seen"].clone());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(visit(&login, &mut other).await.unwrap_err().contains("idle_timeout"));
        assert!(visit(&login, &mut third).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn max_lifetime_ends_even_an_active_session() {
        let login = paused_login("idle_timeout = \"1m\"\nmax_lifetime = \"5m\"");
        let mut jar = signed_in(&login);
        for _ in 0..29 {
            tokio::time::advance(Duration::from_secs(10)).await;
            visit(&login, &mut jar).await.unwrap();
        }
        // 290 s in: still fine; at 300 s: over
        tokio::time::advance(Duration::from_secs(10)).await;
        let err = visit(&login, &mut jar).await.unwrap_err();
        assert!(err.contains("max_lifetime"), "{err}");
    }

    #[test]
    fn activity_is_recorded_often_enough_for_the_idle_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        for (idle, every) in [("1m", 6), ("5m", 30), ("10m", 60), ("12h", 60)] {
            let login = paused_login(&format!("idle_timeout = \"{idle}\""));
            assert_eq!(login.activity_interval(), every, "{idle}");
        }
    }
}
