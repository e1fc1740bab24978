//! Bearer credentials: the token an `Authorization` header carries, told by its scheme in any
//! spelling (RFC 6750 §2.1), kept out of every log.

use http::header::{self, HeaderMap, HeaderValue};

/// A bearer token. Its `Debug` never shows it; the header value is marked sensitive.
#[derive(Clone)]
pub struct Token {
    /// The header value the token came in (the whole `Authorization` value of a bearer
    /// request), marked sensitive; the token is `value[start..end]`.
    value: HeaderValue,
    start: usize,
    end: usize,
}

impl Token {
    /// A token that is the whole of `value` (a session's access token).
    pub(crate) fn new(value: HeaderValue) -> Self {
        let end = value.len();
        Self::within(value, 0, end)
    }

    /// The token at `start..end` of `value`, shared rather than copied.
    fn within(mut value: HeaderValue, start: usize, end: usize) -> Self {
        value.set_sensitive(true);
        Self { value, start, end }
    }

    /// The token's bytes; never for a log.
    pub fn as_bytes(&self) -> &[u8] {
        &self.value.as_bytes()[self.start..self.end]
    }

    /// The token alone as a header value, for passing it on (`identity.pass_token`), marked
    /// sensitive; never for a log.
    pub fn value(&self) -> HeaderValue {
        if self.start == 0 && self.end == self.value.len() {
            return self.value.clone();
        }
        let mut v = HeaderValue::from_bytes(self.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    /// `Bearer <token>`, marked sensitive: the header the token came in when it was exactly
    /// that (no copy), else built.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let v = self.value.as_bytes();
        if self.start == 7 && self.end == v.len() && v.starts_with(b"Bearer ") {
            return Some(self.value.clone());
        }
        crate::auth::inject::bearer_value(self.as_bytes())
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
    Bearer(Token),
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
    match bearer_credentials(value) {
        Some(t) if !t.is_empty() => {
            // where the token lies in the value: shared with it, not copied
            let start = t.as_ptr() as usize - value.as_bytes().as_ptr() as usize;
            Credentials::Bearer(Token::within(value.clone(), start, start + t.len()))
        }
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
        assert!(matches!(credentials(&h), Credentials::Bearer(t) if t.as_bytes() == b"abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer \t"));
        assert!(matches!(credentials(&h), Credentials::None));
    }

    #[test]
    fn a_token_is_handed_on_as_itself_or_as_a_canonical_bearer_value() {
        let token = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            match credentials(&h) {
                Credentials::Bearer(t) => t,
                _ => panic!("{v:?} is a bearer credential"),
            }
        };
        for v in ["Bearer abc", "bearer abc", " BEARER\tabc ", "Bearer  abc"] {
            let t = token(v);
            assert_eq!(t.as_bytes(), b"abc", "{v:?}");
            assert_eq!(t.value(), "abc", "{v:?}");
            assert_eq!(t.bearer().unwrap(), "Bearer abc", "{v:?}");
            assert!(t.value().is_sensitive() && t.bearer().unwrap().is_sensitive(), "{v:?}");
        }
        // a session's token is the whole value
        let t = Token::new(HeaderValue::from_static("xyz"));
        assert_eq!((t.as_bytes(), t.value()), (&b"xyz"[..], HeaderValue::from_static("xyz")));
        assert_eq!(t.bearer().unwrap(), "Bearer xyz");
        assert_eq!(format!("{t:?}"), "Token([redacted])");
    }
}
