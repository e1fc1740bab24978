//! Talking to the provider for login: the `oauth2` client (through the redirect-less issuer
//! HTTP client), ID tokens, UserInfo and token revocation.

use super::*;

/// The token response's `id_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenField {}

pub(super) type TokenResp = StandardTokenResponse<IdTokenField, BasicTokenType>;
pub(super) type OidcClient = oauth2::Client<
    BasicErrorResponse,
    TokenResp,
    oauth2::basic::BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The HTTP error the `oauth2` adapter reports.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The login's client at the provider: its configuration, the provider's keys and metadata,
/// the ID-token verifier and the HTTP client every provider request goes through. It also
/// refreshes sessions ([`Refresher`]), for the session store to run.
pub struct Provider {
    pub(super) cfg: LoginConfig,
    pub(super) keys: Arc<IssuerKeys>,
    pub(super) id_tokens: Verifier,
    pub(super) http: reqwest::Client,
    /// Whether sessions keep the access token (`identity.pass_token` passes it on).
    pub(super) keep_access_token: bool,
    pub(super) clock: Clock,
    /// `bearer.leeway`, for ID tokens' times.
    pub(super) leeway: Duration,
    /// Refreshes that reached the provider (for the log and tests).
    pub refresh_count: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("issuer", &self.cfg.issuer).finish()
    }
}

impl Provider {
    pub(super) fn metadata(&self) -> Result<Arc<ProviderMetadata>, LoginError> {
        self.keys.metadata().ok_or_else(|| {
            LoginError::new(
                "login_unavailable",
                "the provider's discovery document is not loaded yet",
            )
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .message("Signing in is not available yet. Please try again in a moment.")
        })
    }

    /// The redirect URL: configured, or (on a loopback listener only) this host's callback, in
    /// the scheme of the connection the browser used.
    pub(super) fn redirect_url(&self, parts: &request::Parts) -> Result<Url, LoginError> {
        if let Some(u) = &self.cfg.redirect_url {
            return Ok(u.clone());
        }
        let req = crate::auth::RequestView::of(parts);
        let host = req.host.unwrap_or("");
        Url::parse(&format!("{}://{host}{}/callback", req.scheme, self.cfg.prefix))
            .map_err(|e| LoginError::new("bad_host", format!("cannot build the redirect URL: {e}")))
    }

    /// The `oauth2` client for the provider; `redirect` for the code flow (a refresh needs none).
    pub(super) fn client(
        &self,
        meta: &ProviderMetadata,
        redirect: Option<Url>,
    ) -> Result<OidcClient, LoginError> {
        let unavailable = |what: &str| {
            LoginError::new("login_unavailable", format!("the provider publishes no {what}"))
                .status(StatusCode::SERVICE_UNAVAILABLE)
        };
        let auth = meta
            .authorization_endpoint
            .clone()
            .ok_or_else(|| unavailable("authorization_endpoint"))?;
        let token = meta.token_endpoint.clone().ok_or_else(|| unavailable("token_endpoint"))?;
        let mut c = oauth2::Client::new(ClientId::new(self.cfg.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(auth))
            .set_token_uri(TokenUrl::from_url(token))
            .set_auth_type(auth_type(meta));
        if let Some(r) = redirect {
            c = c.set_redirect_uri(RedirectUrl::from_url(r));
        }
        if let Some(s) = &self.cfg.client_secret {
            c = c.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        Ok(c)
    }

    /// Calls the provider through the issuer HTTP client (no redirects, bounded timeouts).
    pub(super) fn http_client(
        &self,
    ) -> impl Fn(oauth2::HttpRequest) -> BoxFuture<'static, Result<oauth2::HttpResponse, HttpError>> + '_
    {
        move |req: oauth2::HttpRequest| {
            let http = self.http.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let url = parts.uri.to_string();
                let resp = http
                    .request(parts.method, url)
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| HttpError(error_chain(&e)))?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let mut resp = resp;
                let body = read_bounded(&mut resp).await.map_err(|e| HttpError(e.to_string()))?;
                let mut out = http::Response::new(body);
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok(out)
            })
        }
    }

    pub(super) async fn verify_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, LoginError> {
        let claims = self
            .id_tokens
            .verify_claims(token)
            .await
            .map_err(|e| LoginError::new("login_bad_id_token", format!("ID token: {e}")))?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(LoginError::new(
                "login_bad_id_token",
                "ID token nonce does not match the attempt",
            ));
        }
        self.check_azp(&claims).map_err(|e| LoginError::new("login_bad_id_token", e))?;
        Ok(claims)
    }

    /// The ID token was issued to this client (OpenID Connect Core §3.1.3.7): `azp`, when
    /// present, is our client id, and there is one when there are several audiences.
    pub(super) fn check_azp(&self, claims: &Map<String, Value>) -> Result<(), &'static str> {
        let multiple = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
        match claims.get("azp") {
            Some(Value::String(azp)) if *azp != self.cfg.client_id => {
                Err("ID token azp is another client")
            }
            Some(Value::String(_)) => Ok(()),
            Some(_) => Err("ID token azp is not a string"),
            None if multiple => Err("ID token has several audiences and no azp"),
            None => Ok(()),
        }
    }

    pub(super) async fn userinfo_claims(
        &self,
        url: &Url,
        access_token: &str,
    ) -> Result<Map<String, Value>, LoginError> {
        let fail = |d: String| LoginError::new("login_userinfo", d).status(StatusCode::BAD_GATEWAY);
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(access_token)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("UserInfo answered HTTP {}", resp.status().as_u16())));
        }
        let mut resp = resp;
        let body = read_bounded(&mut resp).await.map_err(|e| fail(format!("UserInfo: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| fail(format!("UserInfo is not a JSON object: {e}")))
    }

    /// Revokes a refresh token at the provider's revocation endpoint (RFC 7009 §2.1), when it
    /// has one, authenticating as at the token endpoint. A failure is logged; the sign-out goes
    /// on. (The `oauth2` crate would refuse an `http` endpoint, which a loopback provider has.)
    pub(super) async fn revoke(&self, refresh_token: String) {
        let Some(meta) = self.keys.metadata() else { return };
        let Some(url) = meta.revocation_endpoint.clone() else { return };
        let mut form =
            vec![("token", refresh_token), ("token_type_hint", "refresh_token".to_string())];
        let mut req = self.http.post(url);
        match (&self.cfg.client_secret, auth_type(&meta)) {
            (Some(secret), AuthType::BasicAuth) => {
                // RFC 6749 §2.3.1: both form-encoded before Basic
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.cfg.client_id), Some(enc(secret.expose())));
            }
            (Some(secret), _) => {
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", secret.expose().to_string()));
            }
            (None, _) => form.push(("client_id", self.cfg.client_id.clone())),
        }
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let req = req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body);
        match req.send().await {
            Ok(r) if r.status().is_success() => tracing::info!("refresh token revoked at sign-out"),
            Ok(r) => tracing::warn!(
                status = r.status().as_u16(),
                "the provider did not revoke the refresh token"
            ),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "the provider did not revoke the refresh token")
            }
        }
    }
}

impl Refresher for Provider {
    fn refresh(&self, session: Session) -> BoxFuture<'_, Result<Session, String>> {
        Box::pin(self.refresh_now(session))
    }
}

impl Provider {
    /// The refresh grant; then what the provider says about the user now replaces the
    /// session's claims.
    async fn refresh_now(&self, mut s: Session) -> Result<Session, String> {
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

/// `client_secret_basic` unless the provider only takes `client_secret_post`.
pub(super) fn auth_type(meta: &ProviderMetadata) -> AuthType {
    let m = &meta.token_endpoint_auth_methods_supported;
    if !m.is_empty()
        && !m.iter().any(|x| x == "client_secret_basic")
        && m.iter().any(|x| x == "client_secret_post")
    {
        AuthType::RequestBody
    } else {
        AuthType::BasicAuth
    }
}

/// Why the provider's token endpoint refused, without the provider's free text.
pub(super) fn token_error<E: std::error::Error>(
    e: &oauth2::RequestTokenError<E, BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            format!("the provider answered {}", r.error())
        }
        other => error_chain(other),
    }
}
