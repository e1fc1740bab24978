//! The login flow's steps: start (into the provider), callback (back, code exchanged, session
//! made) and sign-out.

use super::*;

/// Error codes a provider may send back (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6);
/// anything else is shown as `unknown_error`.
pub(super) const PROVIDER_ERRORS: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];

impl Login {
    /// Marks `state` used; false if it already was.
    pub(super) fn first_use(&self, state: &str) -> bool {
        let t = now(&self.clock);
        let Ok(mut used) = self.kept.used_states.lock() else {
            return false;
        };
        used.retain(|_, exp| *exp > t);
        if used.len() > 100_000 {
            used.clear();
        }
        used.insert(state.to_string(), t + ATTEMPT_LIFETIME.as_secs()).is_none()
    }

    pub(super) async fn start(&self, parts: &request::Parts) -> Result<Response<Body>, LoginError> {
        let rd = self.safe_rd(parts, query_param(parts, "rd").as_deref());
        let meta = self.provider.metadata()?;
        let redirect = self.provider.redirect_url(parts)?;
        let client = self.provider.client(&meta, Some(redirect))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = session::random_token();
        let nonce = session::random_token();
        let mut req = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .add_extra_param("nonce", nonce.clone())
            .set_pkce_challenge(challenge);
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        if self.cfg.scopes.iter().any(|s| s == "offline_access") {
            // Providers only grant offline_access with consent (OpenID Connect Core §11).
            req = req.add_extra_param("prompt", "consent");
        }
        let (url, _) = req.url();
        let attempt = Attempt {
            state: state.clone(),
            nonce,
            pkce_verifier: verifier.secret().clone(),
            rd,
            created: now(&self.clock),
        };
        let existing: Vec<(String, u64)> = self
            .jar
            .cookies
            .attempts_in(&parts.headers)
            .into_iter()
            .map(|(name, value)| {
                let created = self
                    .jar
                    .codec
                    .open_json::<Attempt>(session::ATTEMPT, &value)
                    .map(|a| a.created)
                    .unwrap_or(0);
                (name, created)
            })
            .collect();
        let sealed = self.jar.codec.seal_json(session::ATTEMPT, &attempt);
        let mut resp = redirect_to(url.as_str());
        for v in self.jar.cookies.set_attempt(&state, sealed, existing) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.extensions_mut().insert(Decision::new("login_start"));
        Ok(resp)
    }

    pub(super) async fn callback(
        &self,
        parts: &request::Parts,
    ) -> Result<Response<Body>, LoginError> {
        // Parsers disagree on which of two `code`s or `state`s counts: refuse the question.
        for name in ["code", "state", "iss", "error"] {
            if query_count(parts, name) > 1 {
                return Err(LoginError::new(
                    "login_duplicate_parameter",
                    format!("the callback has {name} more than once"),
                ));
            }
        }
        let state = query_param(parts, "state").unwrap_or_default();
        let attempt_cookie = self.jar.cookies.attempt_name(&state);
        let clear_attempt = self.jar.cookies.remove(&attempt_cookie);
        if let Some(err) = query_param(parts, "error") {
            let code =
                if PROVIDER_ERRORS.contains(&err.as_str()) { err } else { "unknown_error".into() };
            let mut e =
                LoginError::new("provider_error", format!("the provider answered error={code}"))
                    .status(StatusCode::FORBIDDEN);
            e.message = provider_error_message(&code);
            return Err(e);
        }
        let attempt_value = self
            .jar
            .cookies
            .attempts_in(&parts.headers)
            .into_iter()
            .find(|(n, _)| *n == attempt_cookie)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                LoginError::new(
                    "login_state_unknown",
                    "no login attempt matches this state (expired, replayed, or another browser)",
                )
                .message("This sign-in link has expired or was already used. Please sign in again.")
            })?;
        let attempt: Attempt =
            self.jar.codec.open_json(session::ATTEMPT, &attempt_value).map_err(|e| {
                LoginError::new("login_state_unknown", format!("attempt cookie {e}"))
            })?;
        if attempt.state != state || state.is_empty() {
            return Err(LoginError::new(
                "login_state_mismatch",
                "state does not match the attempt",
            ));
        }
        if now(&self.clock) > attempt.created + ATTEMPT_LIFETIME.as_secs() {
            return Err(LoginError::new("login_state_expired", "the login attempt expired")
                .message("This sign-in took too long. Please sign in again."));
        }
        if !self.first_use(&state) {
            return Err(LoginError::new("login_replayed", "this callback was already used")
                .message("This sign-in link was already used. Please sign in again."));
        }
        let meta = self.provider.metadata()?;
        // RFC 9207: the issuer of the response, checked when sent, required when advertised.
        match query_param(parts, "iss") {
            Some(iss) if iss != self.cfg.issuer => {
                return Err(LoginError::new(
                    "login_wrong_issuer",
                    format!("iss parameter {iss:?} is not oidc.issuer"),
                ));
            }
            None if meta.authorization_response_iss_parameter_supported => {
                return Err(LoginError::new(
                    "login_wrong_issuer",
                    "the provider advertises the iss parameter but sent none",
                ));
            }
            _ => {}
        }
        let code = query_param(parts, "code")
            .ok_or_else(|| LoginError::new("login_no_code", "the callback has no code"))?;
        let redirect = self.provider.redirect_url(parts)?;
        let client = self.provider.client(&meta, Some(redirect))?;
        let http = self.provider.http_client();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(attempt.pkce_verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| {
                LoginError::new("login_code_exchange", token_error(&e))
                    .status(StatusCode::BAD_GATEWAY)
            })?;
        let id_token = tokens.extra_fields().id_token.clone().ok_or_else(|| {
            LoginError::new("login_no_id_token", "the token response has no id_token")
        })?;
        let mut claims = self.provider.verify_id_token(&id_token, &attempt.nonce).await?;
        if let Some(ui) = &meta.userinfo_endpoint {
            let info = self.provider.userinfo_claims(ui, tokens.access_token().secret()).await?;
            if info.get("sub") != claims.get("sub") {
                return Err(LoginError::new(
                    "login_userinfo_sub",
                    "UserInfo's sub differs from the ID token's",
                ));
            }
            for (k, v) in info {
                if !PROTOCOL_CLAIMS.contains(&k.as_str()) && k != "iss" {
                    claims.insert(k, v);
                }
            }
        }
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_string);
        claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
        let t = now(&self.clock);
        let session = Session {
            id: session::random_token(),
            iss: self.cfg.issuer.clone(),
            claims,
            created: t,
            seen: t,
            at_exp: tokens.expires_in().map(|d| t + d.as_secs()),
            refresh_token: tokens.refresh_token().map(|r| r.secret().clone()),
            id_token: Some(id_token),
            sid,
            access_token: self
                .provider
                .keep_access_token
                .then(|| tokens.access_token().secret().clone()),
        };
        let identity = self.mapper.identity(&session.iss, session.claims.clone()).map_err(|e| {
            LoginError::new("login_identity", e.to_string())
                .status(StatusCode::FORBIDDEN)
                .message("Your account cannot be used here (for example, its email address is not verified).")
        })?;
        let cookies = self.sessions.open(&session, &parts.headers).await.map_err(|e| match e {
            StoreError::Unavailable(_) => {
                LoginError::new("session_store_unavailable", e.to_string())
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .message("Sessions are unavailable for a moment. Please try again shortly.")
            }
            _ => LoginError::new("session_too_large", e.to_string())
                .status(StatusCode::INTERNAL_SERVER_ERROR),
        })?;
        let mut resp = redirect_to(&attempt.rd);
        for v in cookies {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.headers_mut().append(header::SET_COOKIE, clear_attempt);
        let mut d = Decision::new("login_complete");
        d.identity = Some(Arc::new(identity));
        resp.extensions_mut().insert(d);
        Ok(resp)
    }

    /// Signing out ends the session here (every cookie of ours cleared), at the provider's
    /// revocation endpoint (RFC 7009: its refresh token, and with it the grant's access tokens,
    /// so a copied cookie dies at its next refresh) and, when it has one, at its end-session
    /// endpoint. Another site cannot do it for the user: a `POST` must be same-origin, and a
    /// `GET` that is not same-origin, same-site or typed by the user (`Sec-Fetch-Site`) gets a
    /// page asking first.
    pub(super) async fn sign_out(&self, parts: &request::Parts) -> Response<Body> {
        if parts.method == Method::POST {
            if !crate::auth::same_origin_or_safe(&crate::auth::RequestView::of(parts)) {
                return Refusal::new(Rejection::CrossSite, "cross_site")
                    .detail("a sign-out POST from another origin")
                    .response();
            }
        } else {
            let site = parts.headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
            let asked_here = site.is_some_and(|s| {
                [&b"same-origin"[..], b"same-site", b"none"]
                    .iter()
                    .any(|v| s.eq_ignore_ascii_case(v))
            });
            if !asked_here {
                return self.confirm_sign_out(parts);
            }
        }
        let session = self.sessions.peek(&parts.headers).await;
        if let Some(rt) = session.as_ref().and_then(|s| s.refresh_token.clone()) {
            self.provider.revoke(rt).await;
        }
        let rd = query_param(parts, "rd").map(|rd| self.safe_rd(parts, Some(&rd)));
        let end_session =
            self.provider.keys.metadata().and_then(|m| m.end_session_endpoint.clone());
        let mut resp = match (end_session, session.as_ref().and_then(|s| s.id_token.clone())) {
            (Some(mut url), Some(hint)) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("id_token_hint", &hint);
                    q.append_pair("client_id", &self.cfg.client_id);
                    if let Some(p) = &self.cfg.post_logout_redirect_url {
                        q.append_pair("post_logout_redirect_uri", p.as_str());
                    }
                }
                redirect_to(url.as_str())
            }
            _ => match rd {
                Some(rd) => redirect_to(&rd),
                None => self.pages.render(
                    "signed_out.html",
                    StatusCode::OK,
                    json!({"app_name": app_name(parts), "sign_in_url": format!("{}/sign_in", self.cfg.prefix)}),
                ),
            },
        };
        let cleared = self.sessions.clear(&parts.headers).await;
        if let Err(e) = cleared.ended {
            // The browser keeps its cookie to try again: a sign-out that only forgot the
            // cookie here would leave every copy of it signed in.
            tracing::warn!(error = %e, "sign-out could not end the session in its store");
            return Refusal::new(Rejection::SessionsUnavailable, "session_store_unavailable")
                .detail(e.to_string())
                .response();
        }
        for v in cleared.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.extensions_mut().insert(Decision::new("sign_out"));
        resp
    }

    /// The page that asks before signing out (a same-origin form `POST`s it).
    pub(super) fn confirm_sign_out(&self, parts: &request::Parts) -> Response<Body> {
        let mut action = format!("{}/sign_out", self.cfg.prefix);
        if let Some(rd) = query_param(parts, "rd") {
            let rd: String =
                url::form_urlencoded::byte_serialize(self.safe_rd(parts, Some(&rd)).as_bytes())
                    .collect();
            action.push_str("?rd=");
            action.push_str(&rd);
        }
        let mut resp = self.pages.render(
            "sign_out.html",
            StatusCode::OK,
            json!({"app_name": app_name(parts), "sign_out_url": action}),
        );
        resp.extensions_mut().insert(Decision::new("sign_out_confirm"));
        resp
    }
}

pub(super) fn provider_error_message(code: &str) -> &'static str {
    match code {
        "access_denied" => "The sign-in was cancelled or refused (access_denied).",
        "login_required" | "interaction_required" | "consent_required" => {
            "The provider needs you to sign in again."
        }
        "temporarily_unavailable" | "server_error" => {
            "The identity provider is having trouble. Please try again later."
        }
        _ => "The identity provider refused the sign-in.",
    }
}
