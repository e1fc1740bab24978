//! Bearer credentials: the token an `Authorization` header carries, told by its scheme in any
//! spelling (RFC 6750 §2.1), kept out of every log.

use http::header::{self, HeaderMap, HeaderValue};

/// A bearer token. Its `Debug` never shows it; the header value is marked sensitive.
#[derive(Clone)]
pub struct Token(HeaderValue);

impl Token {
    pub(crate) fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Self(value)
    }

    /// The token, for passing it on (`identity.pass_token`); never for a log.
    pub fn expose(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// The credentials of an `Authorization` value whose scheme is `Bearer` (RFC 6750 §2.1: in
/// any case), or `None` for another scheme. Whitespace around the value is not part of it (RFC
/// 9110 §5.5), and SP or HTAB after the scheme both end it: `Bearer<TAB>token` is a bearer
/// token to parsers that split on any whitespace, so it is one here too. The token may be empty.
pub(crate) fn bearer_credentials(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes().trim_ascii();
    let end = v.iter().position(|b| matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let (scheme, rest) = v.split_at(end);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

/// Whether an `Authorization` value uses the `Bearer` scheme, however it is spelled.
pub(crate) fn is_bearer(value: &HeaderValue) -> bool {
    bearer_credentials(value).is_some()
}

/// The bearer token in a request head, if any.
pub(crate) enum Credentials {
    None,
    Bearer(HeaderValue),
    /// More than one `Authorization` header.
    Ambiguous,
}

pub(crate) fn credentials(headers: &HeaderMap) -> Credentials {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::None;
    };
    if values.next().is_some() {
        return Credentials::Ambiguous;
    }
    match bearer_credentials(value).map(HeaderValue::from_bytes) {
        Some(Ok(t)) if !t.is_empty() => Credentials::Bearer(t),
        _ => Credentials::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_told_by_its_scheme_whatever_the_case_and_whitespace() {
        let creds =
            |v: &str| bearer_credentials(&HeaderValue::from_str(v).unwrap()).map(|t| t.to_vec());
        for v in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "Bearer\tt",
            "Bearer \t t ",
            " Bearer t",
            "\tbEaReR\t\tt\t",
        ] {
            assert_eq!(creds(v).as_deref(), Some(&b"t"[..]), "{v:?}");
        }
        // a bearer scheme without a token is still a bearer credential (then removed)
        for v in ["Bearer", "bearer ", " BEARER\t"] {
            assert_eq!(creds(v).as_deref(), Some(&b""[..]), "{v:?}");
        }
        for v in ["Basic dTpw", "Bearerx t", "Bearer_t", "Bear t", "", " ", "Token Bearer t"] {
            assert_eq!(creds(v), None, "{v:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer\tabc"));
        assert!(matches!(credentials(&h), Credentials::Bearer(t) if t == "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer \t"));
        assert!(matches!(credentials(&h), Credentials::None));
    }
}
