//! The one reader of request `Cookie` headers, on bytes: a browser sends whatever a page stored
//! (`document.cookie = 'name=Zoë'` arrives as raw UTF-8), so nothing here needs the header to
//! be a string, and the app's cookies are passed on byte for byte.
//!
//! Two ways to compare a name, on purpose:
//! - **finding** our cookies uses the exact raw name: a decoded spelling must never open a
//!   session (`%5F%5FHost-x` planted by a sibling subdomain would pass for `__Host-x`);
//! - **stripping** uses [`fold_name`], every spelling some framework reads as that name
//!   (percent-decoded, PHP's `.`/space/`[` as `_`, any case, with or without `__Host-` /
//!   `__Secure-`): whatever the app could take for one of our cookies never reaches it.

use http::header::{self, HeaderMap, HeaderValue};

use crate::path::hex;

/// One cookie of a `Cookie` header (RFC 6265 §5.4 `cookie-pair`, read leniently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// Before the first `=`, without surrounding whitespace; the whole piece when there is no
    /// `=`.
    pub name: &'a [u8],
    /// After the first `=`, without surrounding whitespace; empty when there is no `=`.
    pub value: &'a [u8],
    /// The piece between `;`s without surrounding whitespace: what the app is given.
    pub raw: &'a [u8],
    /// Whether the piece has an `=` (RFC 6265bis: without one, the piece is a value with an
    /// empty name).
    pub has_value: bool,
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// The pieces of a `Cookie` header value between `;`s (what `split` gives), found with
/// `memchr`: a session cookie's value is kilobytes long, and a byte at a time is most of what
/// reading it costs.
fn pieces(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The cookies of one `Cookie` header value, in order; empty pieces are skipped.
pub fn pairs(value: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    pieces(value).filter_map(|piece| {
        let raw = trim(piece);
        if raw.is_empty() {
            return None;
        }
        Some(match raw.iter().position(|b| *b == b'=') {
            Some(eq) => {
                Pair { name: trim(&raw[..eq]), value: trim(&raw[eq + 1..]), raw, has_value: true }
            }
            None => Pair { name: raw, value: b"", raw, has_value: false },
        })
    })
}

/// The cookies of every `Cookie` header of a request.
pub fn request_pairs(headers: &HeaderMap) -> impl Iterator<Item = Pair<'_>> {
    headers.get_all(header::COOKIE).iter().flat_map(|v| pairs(v.as_bytes()))
}

/// `%XX` decoded once; a `%` not followed by two hex digits stays.
fn percent_decode_once(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) =
                (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
            {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A cookie name as loosely as any framework reads it: percent-decoded (until nothing changes;
/// `%255F` is `_` to an app that decodes twice), `+`, space, `.` and `[` as `_` (PHP), lower
/// case, without a `__host-` or `__secure-` prefix.
pub fn fold_name(name: &[u8]) -> Vec<u8> {
    let mut n = name.to_vec();
    for _ in 0..4 {
        if !n.contains(&b'%') {
            break;
        }
        let next = percent_decode_once(&n);
        if next == n {
            break;
        }
        n = next;
    }
    for b in &mut n {
        *b = match b.to_ascii_lowercase() {
            b'+' | b' ' | b'.' | b'[' => b'_',
            other => other,
        };
    }
    for prefix in [&b"__host-"[..], b"__secure-"] {
        if n.starts_with(prefix) {
            n.drain(..prefix.len());
            break;
        }
    }
    n
}

/// Removes from a request's `Cookie` headers every cookie `doomed` says is ours, given the
/// cookie; the others are passed on byte for byte, in one `Cookie` header (RFC 9113 §8.2.3: an
/// HTTP/1.1 app reads one). Returns whether anything was removed. Headers with nothing to
/// remove are left exactly as they came.
pub fn strip(headers: &mut HeaderMap, doomed: impl Fn(&Pair<'_>) -> bool) -> bool {
    // Each cookie judged once (folding a name allocates).
    let judged: Vec<(Pair<'_>, bool)> = request_pairs(headers)
        .map(|p| {
            let d = doomed(&p);
            (p, d)
        })
        .collect();
    let removed = judged.iter().any(|(_, d)| *d);
    if judged.is_empty() || (!removed && headers.get_all(header::COOKIE).iter().count() == 1) {
        return removed;
    }
    let mut kept: Vec<u8> = Vec::new();
    for (p, _) in judged.iter().filter(|(_, d)| !*d) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(p.raw);
    }
    drop(judged);
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        // Every byte came from valid header values, and `; ` is valid: this cannot fail.
        match HeaderValue::from_bytes(&kept) {
            Ok(v) => {
                headers.insert(header::COOKIE, v);
            }
            Err(_) => tracing::warn!("could not rebuild the Cookie header; sent none"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(v: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
        pairs(v).map(|p| (p.name.to_vec(), p.value.to_vec(), p.has_value)).collect()
    }

    #[test]
    fn pieces_are_what_split_gives_on_every_short_header() {
        // every string of up to 7 bytes over an alphabet with the separator
        let alphabet = [b'a', b';', b' ', b'='];
        let mut n = 0;
        for len in 0..=7u32 {
            for code in 0..4usize.pow(len) {
                let s: Vec<u8> = (0..len).map(|i| alphabet[(code / 4usize.pow(i)) % 4]).collect();
                let ours: Vec<&[u8]> = pieces(&s).collect();
                let std: Vec<&[u8]> = s.split(|b| *b == b';').collect();
                assert_eq!(ours, std, "{:?}", String::from_utf8_lossy(&s));
                n += 1;
            }
        }
        assert_eq!(n, (0..=7).map(|l| 4usize.pow(l)).sum::<usize>());
    }

    #[test]
    fn pairs_are_split_on_semicolons_and_trimmed() {
        assert_eq!(
            all(b" a=1;b = 2 ;;\tc=;d; e=x=y "),
            vec![
                (b"a".to_vec(), b"1".to_vec(), true),
                (b"b".to_vec(), b"2".to_vec(), true),
                (b"c".to_vec(), b"".to_vec(), true),
                (b"d".to_vec(), b"".to_vec(), false),
                (b"e".to_vec(), b"x=y".to_vec(), true),
            ]
        );
        assert!(all(b"").is_empty() && all(b" ; ;\t").is_empty());
        assert_eq!(pairs(b" x = 1 ").next().map(|p| p.raw), Some(&b"x = 1"[..]));
    }

    /// Every byte a header value may hold, in a cookie's name and value, between an app's
    /// cookie and our session: the session is found by its exact name, and stripping it leaves
    /// the app's cookies byte for byte.
    #[test]
    fn every_byte_value_splits_finds_and_strips_alike() {
        for b in 0u8..=255 {
            let probe = [b'x', b, b'y', b'=', b'v', b, b'w'];
            let mut header = b"app=1; ".to_vec();
            header.extend_from_slice(&probe);
            header.extend_from_slice(b"; _portcullis=SESSION");
            let Ok(value) = HeaderValue::from_bytes(&header) else {
                // not a valid header value (controls, DEL): hyper never hands us one
                assert!(b < 0x20 && b != b'\t' || b == 0x7f, "byte {b:#04x}");
                continue;
            };
            let found: Vec<&[u8]> = pairs(value.as_bytes())
                .filter(|p| p.name == b"_portcullis")
                .map(|p| p.value)
                .collect();
            assert_eq!(found, vec![&b"SESSION"[..]], "byte {b:#04x}");
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, value);
            assert!(strip(&mut h, |p| p.name == b"_portcullis"), "byte {b:#04x}");
            let out = h.get(header::COOKIE).unwrap().as_bytes().to_vec();
            let expected: Vec<u8> = match b {
                // `;` splits the probe into three cookies, each passed on as it was
                b';' => b"app=1; x; y=v; w".to_vec(),
                _ => [&b"app=1; "[..], &probe].concat(),
            };
            assert_eq!(out, expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn names_fold_as_frameworks_read_them() {
        let ours = fold_name(b"__Host-_portcullis");
        assert_eq!(ours, b"_portcullis");
        for spelling in [
            &b"_portcullis"[..],
            b"%5Fportcullis",
            b"%5fportcullis",
            b"%255Fportcullis",
            b"%25255Fportcullis",
            b"%5F%5FHost-_portcullis",
            b"__Secure-_portcullis",
            b"__HOST-_PORTCULLIS",
            b".portcullis",
            b" portcullis",
            b"+portcullis",
            b"[portcullis",
            b"_%70ortcullis",
            b"_Portcullis",
        ] {
            assert_eq!(fold_name(spelling), ours, "{}", String::from_utf8_lossy(spelling));
        }
        for other in [&b"portcullis"[..], b"_portcullisx", b"x_portcullis", b"%5", b"_portculli%"] {
            assert_ne!(fold_name(other), ours, "{}", String::from_utf8_lossy(other));
        }
        // every byte, encoded, decodes to itself before folding
        for b in 0u8..=255 {
            let enc = format!("%{b:02X}");
            let plain = fold_name(&[b]);
            assert_eq!(fold_name(enc.as_bytes()), plain, "byte {b:#04x}");
        }
    }

    #[test]
    fn headers_without_anything_to_strip_stay_as_they_came() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_bytes(b"name=Zo\xc3\xab;  theme=dark").unwrap());
        assert!(!strip(&mut h, |p| p.name == b"_portcullis"));
        assert_eq!(h.get(header::COOKIE).unwrap().as_bytes(), b"name=Zo\xc3\xab;  theme=dark");
        // two Cookie headers (HTTP/2 sends them apart) become one for the app
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert!(!strip(&mut h, |p| p.name == b"_portcullis"));
        let v: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].as_bytes(), b"name=Zo\xc3\xab; theme=dark; b=2");
        // only ours: no Cookie header at all
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("_portcullis=1"));
        assert!(strip(&mut h, |p| p.name == b"_portcullis"));
        assert!(h.get(header::COOKIE).is_none());
        assert!(!strip(&mut HeaderMap::new(), |_| true));
    }
}
