//! Path normalisation: the one path that public routes are matched against, that the access log
//! shows and that the upstream receives. Ambiguous paths are refused, not guessed at.

/// Why a path was refused (answered `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("encoded '/' or '\\' in path")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("invalid percent-encoding in path")]
    BadPercent,
    #[error("encoded NUL in path")]
    EncodedNul,
    #[error("dot-segment with ';' parameters in path")]
    DotSegmentParameter,
}

/// The value of one hex digit (either case).
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters, upper-cases other escapes, refuses encoded
/// separators.
fn decode_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            else {
                return Err(PathError::BadPercent);
            };
            let v = h * 16 + l;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            if v == 0 {
                return Err(PathError::EncodedNul);
            }
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
        } else if b == b'\\' {
            return Err(PathError::Backslash);
        } else {
            out.push(b as char);
            i += 1;
        }
    }
    Ok(out)
}

/// True when nothing in `path` can change under normalisation (the common case).
pub fn is_plain(path: &str) -> bool {
    path.starts_with('/')
        && !path.bytes().any(|b| matches!(b, b'%' | b'\\' | b';'))
        && !path.contains("//")
        && !path.contains("/.")
}

/// Normalises a request path: percent-decoding of unreserved characters, dot-segments removed
/// (RFC 3986 §5.2.4), `//` folded. A trailing `/` is kept.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if is_plain(path) {
        return Ok(path.to_string());
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Vec<String> = Vec::new();
    let raw: Vec<&str> = path[1..].split('/').collect();
    let last = raw.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in raw.iter().enumerate() {
        let seg = decode_segment(seg)?;
        // `..;x` is `..` to servlet containers, and so is `..%3Bx` once they decode it:
        // refuse any dot-segment with parameters.
        let name = match (seg.find(';'), seg.to_ascii_uppercase().find("%3B")) {
            (Some(a), Some(b)) => &seg[..a.min(b)],
            (Some(a), None) | (None, Some(a)) => &seg[..a],
            (None, None) => seg.as_str(),
        };
        if name != seg && (name == "." || name == "..") {
            return Err(PathError::DotSegmentParameter);
        }
        match seg.as_str() {
            "" => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing_slash {
        s.push('/');
    }
    Ok(s)
}

/// The path routes are matched on: the normalised path with every `;…` segment parameter
/// removed (`/admin;x.css/users` → `/admin/users`), as servlet containers route it, and an
/// encoded `;` taken as one (`/admin%3Bx` → `/admin`: the same containers decode it before they
/// route, which is why `..%3B` is refused). The app still receives the normalised path with its
/// parameters.
pub fn route_path(normalised: &str) -> std::borrow::Cow<'_, str> {
    // Normalisation upper-cases escapes: `%3b` arrives as `%3B`.
    if !normalised.contains(';') && !normalised.contains("%3B") {
        return std::borrow::Cow::Borrowed(normalised);
    }
    let mut out = String::with_capacity(normalised.len());
    for (i, seg) in normalised.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let end = match (seg.find(';'), seg.find("%3B")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => seg.len(),
        };
        out.push_str(&seg[..end]);
    }
    std::borrow::Cow::Owned(out)
}

/// The path portcullis decided on, when it differs from the one the client sent; left in the
/// response's extensions for the access log.
#[derive(Debug, Clone)]
pub struct NormalizedPath(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_paths_drop_parameters_plain_or_encoded() {
        for (normalised, route) in [
            ("/admin", "/admin"),
            ("/admin;x.css", "/admin"),
            ("/admin%3Bx", "/admin"),
            ("/admin%3B", "/admin"),
            ("/a;v=1/b%3Bw/c", "/a/b/c"),
            ("/a%3Bx;y/b", "/a/b"),
            ("/a%3Cb", "/a%3Cb"),
            ("/%3Badmin", "/"),
        ] {
            assert_eq!(route_path(normalised), route, "{normalised}");
        }
        // what normalisation makes of a lower-case escape is what routes see
        assert_eq!(route_path(&normalize("/admin%3bx").unwrap()), "/admin");
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/a", "/a/b/", "/public/x.css", "/a-b_c~d"] {
            assert_eq!(normalize(p).unwrap(), p);
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_go() {
        assert_eq!(normalize("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize("/../../admin").unwrap(), "/admin");
        assert_eq!(normalize("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalize("//a///b//").unwrap(), "/a/b/");
        assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize("/a/.").unwrap(), "/a/");
        assert_eq!(normalize("/..").unwrap(), "/");
    }

    #[test]
    fn unreserved_escapes_decode_others_stay() {
        assert_eq!(normalize("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize("/a%3fb").unwrap(), "/a%3Fb");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/public%2f..%2fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/public%2F..%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/public/..%5cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/public/..\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize("/public/..;/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize("/public/.;x/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize("/public/%2e%2e;/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize("/public/..%3B/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize("/public/%2e%2e%3bx/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize("/public/..%00/admin"), Err(PathError::EncodedNul));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercent));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercent));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        // parameters on ordinary segments are left alone
        assert_eq!(normalize("/a;v=1/b").unwrap(), "/a;v=1/b");
    }

    /// Random paths from a hostile alphabet: whatever normalisation accepts is canonical
    /// (idempotent, absolute, no empty, `.` or `..` segments, no escaped unreserved byte),
    /// and no accepted path hides a dot-segment behind `;`.
    #[test]
    fn normalised_paths_are_canonical() {
        const PIECES: &[&str] = &[
            "/", "/", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%5c", "%41", "%20", ";", ";x",
            "\\", "%", "%g1", "~", "-", "%7e", "//", "/./", "/../", "%3b", "%3B", "%00",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let n = (next() % 10) as usize + 1;
            let mut p = String::from("/");
            for _ in 0..n {
                p.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let Ok(out) = normalize(&p) else { continue };
            accepted += 1;
            assert!(out.starts_with('/'), "{p:?} -> {out:?}");
            assert_eq!(normalize(&out).as_deref(), Ok(out.as_str()), "not idempotent: {p:?}");
            let inner = out.trim_end_matches('/');
            for seg in inner.split('/').skip(1) {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{p:?} -> {out:?}");
                let upper = seg.to_ascii_uppercase();
                let name = upper.split(';').next().unwrap_or_default();
                let name = name.split("%3B").next().unwrap_or_default();
                assert!(name != "." && name != "..", "{p:?} -> {out:?}");
                assert!(!upper.contains("%00"), "{p:?} -> {out:?}");
            }
            let lower = out.to_ascii_lowercase();
            for esc in ["%2e", "%41", "%7e", "%2f", "%5c"] {
                assert!(!lower.contains(esc), "{p:?} -> {out:?}");
            }
        }
        assert!(accepted > 1_000, "too few accepted paths to mean anything: {accepted}");
    }
}
