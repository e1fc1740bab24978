//! `[identity]`: the claims that become identity headers, and what becomes of the token.

use super::*;

/// Default `identity.user_claim`.
pub const DEFAULT_USER_CLAIM: &str = "sub";

/// Default `identity.email_claim`.
pub const DEFAULT_EMAIL_CLAIM: &str = "email";

/// Default `identity.groups_claim`.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// Default `identity.preferred_username_claim`.
pub const DEFAULT_PREFERRED_USERNAME_CLAIM: &str = "preferred_username";

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Claim sent as `X-Forwarded-User`. Defaults to `sub`.
    pub user_claim: String,
    /// Claim sent as `X-Forwarded-Email`. Defaults to `email`.
    pub email_claim: String,
    /// Claim sent as `X-Forwarded-Groups`, comma-joined. Defaults to `groups`.
    pub groups_claim: String,
    /// Claim sent as `X-Forwarded-Preferred-Username`. Defaults to `preferred_username`.
    pub preferred_username_claim: String,
    /// Extra headers set from claims, in a stable order.
    pub claim_headers: Vec<(HeaderName, String)>,
    /// What happens to the bearer token. Defaults to `none`.
    pub pass_token: PassToken,
    /// Whether a token without `email_verified` counts as unverified (its email is then never
    /// sent, and refused as the user). `email_verified: false` always counts as unverified.
    /// Defaults to false for bearer tokens (access tokens rarely carry the claim) and true for
    /// browser sessions; set, it applies to both.
    pub require_verified_email: Option<bool>,
    /// Send the token's issuer as `X-Forwarded-Issuer` (`sub` is unique only per issuer).
    /// Defaults to true when more than one issuer is trusted.
    pub pass_issuer: bool,
    /// Send a browser session's ID token to the app as `Authorization: Bearer <id token>`
    /// (oauth2-proxy's `--set-authorization-header`; in forward-auth, an `Authorization` answer
    /// header). Not with `pass_token = "authorization"`. Defaults to false.
    pub pass_id_token: bool,
}

impl Default for IdentityConfig {
    /// The documented defaults: `sub`, `email`, `groups`, `preferred_username`, no claim map,
    /// `pass_token = "none"`.
    fn default() -> Self {
        Self {
            user_claim: DEFAULT_USER_CLAIM.to_string(),
            email_claim: DEFAULT_EMAIL_CLAIM.to_string(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_string(),
            preferred_username_claim: DEFAULT_PREFERRED_USERNAME_CLAIM.to_string(),
            claim_headers: Vec::new(),
            pass_token: PassToken::None,
            require_verified_email: None,
            pass_issuer: false,
            pass_id_token: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassToken {
    /// Remove `Authorization` before forwarding.
    None,
    /// Keep `Authorization` as the client sent it.
    Authorization,
    /// Remove `Authorization`, send the token as `X-Forwarded-Access-Token`.
    XForwardedAccessToken,
}

impl IdentityConfig {
    /// `issuers` is how many issuers are trusted (`pass_issuer` defaults to on with several).
    pub(crate) fn from_raw(id: RawIdentity, issuers: usize) -> Result<Self, ConfigError> {
        let claim = |key: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
            nonempty(key, v.unwrap_or_else(|| default.to_string()))
        };
        let mut claim_headers = Vec::new();
        for (name, claim_name) in id.claim_headers.unwrap_or_default() {
            let key = format!("identity.claim_headers.{name:?}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(key.clone(), "not a valid header name"))?;
            if is_reserved_request_header(&header) {
                return Err(ConfigError::new(
                    key,
                    "this header cannot carry a claim (it is hop-by-hop or framing)",
                ));
            }
            claim_headers.push((header, nonempty(&key, claim_name)?));
        }
        let pass_token = match id.pass_token.as_deref().unwrap_or("none") {
            "none" => PassToken::None,
            "authorization" => PassToken::Authorization,
            "x-forwarded-access-token" => PassToken::XForwardedAccessToken,
            other => {
                return Err(ConfigError::new(
                    "identity.pass_token",
                    format!("expected \"none\", \"authorization\" or \"x-forwarded-access-token\", got {other:?}"),
                ))
            }
        };
        let pass_id_token = id.pass_id_token.unwrap_or(false);
        if pass_id_token && pass_token == PassToken::Authorization {
            return Err(ConfigError::new(
                "identity.pass_id_token",
                "cannot be on with identity.pass_token = \"authorization\": both would be the app's Authorization header",
            ));
        }
        Ok(IdentityConfig {
            pass_id_token,
            user_claim: claim("identity.user_claim", id.user_claim, DEFAULT_USER_CLAIM)?,
            email_claim: claim("identity.email_claim", id.email_claim, DEFAULT_EMAIL_CLAIM)?,
            groups_claim: claim("identity.groups_claim", id.groups_claim, DEFAULT_GROUPS_CLAIM)?,
            preferred_username_claim: claim(
                "identity.preferred_username_claim",
                id.preferred_username_claim,
                DEFAULT_PREFERRED_USERNAME_CLAIM,
            )?,
            claim_headers,
            pass_token,
            require_verified_email: id.require_verified_email,
            pass_issuer: id.pass_issuer.unwrap_or(issuers > 1),
        })
    }
}

/// Headers a claim may never be mapped to: framing, hop-by-hop, credentials, forwarding.
pub fn is_reserved_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "authorization"
            | "cookie"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}
