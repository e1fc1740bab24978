//! Where a browser may be sent after login or sign-out.

use url::Url;

/// Where a browser may be sent after login or sign-out: a path on this host, or a URL on this
/// host or an allowed one (`.example.com` matches subdomains at a dot boundary), re-serialised
/// by the URL parser; `None` for anything else (then `/`).
pub fn safe_redirect(rd: &str, this_host: &str, allowed: &[String]) -> Option<String> {
    if rd.is_empty()
        || rd.len() > 4096
        || rd.chars().any(|c| c.is_control() || c == '\\' || c.is_whitespace() && c != ' ')
        || rd.starts_with(' ')
    {
        return None;
    }
    if rd.starts_with('/') {
        // `//host` and `/\host` are other hosts to a browser, and so are their encodings.
        let decoded: String = percent_decode(rd);
        if rd.starts_with("//") || decoded.starts_with("//") || decoded.contains('\\') {
            return None;
        }
        let base = Url::parse("http://portcullis.invalid/").ok()?;
        let u = base.join(rd).ok()?;
        if u.host_str() != Some("portcullis.invalid") {
            return None;
        }
        let mut out = u.path().to_string();
        if let Some(q) = u.query() {
            out.push('?');
            out.push_str(q);
        }
        if out.starts_with("//") {
            return None;
        }
        return Some(out);
    }
    let lower = rd.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return None;
    }
    let u = Url::parse(rd).ok()?;
    if !u.username().is_empty() || u.password().is_some() {
        return None;
    }
    let host = u.host_str()?.to_ascii_lowercase();
    let with_port = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let this = this_host.to_ascii_lowercase();
    let ok = with_port == this
        || host == this
        || allowed.iter().any(|a| match a.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")) || host == domain,
            None => host == *a || with_port == *a,
        });
    ok.then(|| u.to_string())
}

fn percent_decode(s: &str) -> String {
    // Decoded twice: `%252F` is `%2F` to one decoder and `/` to the next.
    let once: String = percent_encoding_decode(s);
    percent_encoding_decode(&once)
}

fn percent_encoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    const HOST: &str = "app.example.com";

    fn allowed() -> Vec<String> {
        vec!["allowed.com".into(), ".example.org".into()]
    }

    fn check(rd: &str) -> Option<String> {
        safe_redirect(rd, HOST, &allowed())
    }

    #[test]
    fn safe_targets_are_kept_re_serialised() {
        assert_eq!(check("/").as_deref(), Some("/"));
        assert_eq!(check("/deep/link?x=1&y=%20z").as_deref(), Some("/deep/link?x=1&y=%20z"));
        assert_eq!(check("/a/../b").as_deref(), Some("/b"));
        assert_eq!(
            check("https://app.example.com/x").as_deref(),
            Some("https://app.example.com/x")
        );
        assert_eq!(check("https://allowed.com/").as_deref(), Some("https://allowed.com/"));
        assert_eq!(check("https://a.example.org/p").as_deref(), Some("https://a.example.org/p"));
        assert_eq!(check("https://example.org/").as_deref(), Some("https://example.org/"));
    }

    #[test]
    fn the_known_tricks_fall_back() {
        for rd in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "http:evil.com",
            "http:/evil.com",
            "/%2F%2Fevil.com",
            "/%2f%2fevil.com",
            "/%5Cevil.com",
            "/%252F%252Fevil.com",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "/\tevil",
            "\t/x",
            " /x",
            "/x\r\nSet-Cookie: a=b",
            "/\u{0}",
            "https://allowed.com.evil.com",
            "https://evil.com@allowed.com",
            "https://user@allowed.com/",
            "https://user:pw@app.example.com/",
            "https://notexample.org/",
            "https://evilexample.org/",
            "ftp://allowed.com/",
            "///evil.com",
            "/../../evil.com",
        ] {
            let got = check(rd);
            let ok = match &got {
                None => true,
                Some(s) => s.starts_with('/') && !s.starts_with("//") && !s.contains("evil.com/"),
            };
            assert!(ok, "{rd:?} -> {got:?}");
            assert!(got.as_deref() != Some(rd) || rd.starts_with('/'), "{rd:?} passed as is");
        }
    }

    /// A generated list: every prefix trick with every encoding of the separators, around a
    /// host that is not allowed. Whatever is accepted must stay on this host or an allowed one.
    #[test]
    fn generated_encodings_never_leave_the_allowed_hosts() {
        let slashes = [
            "/",
            "\\",
            "%2F",
            "%2f",
            "%5C",
            "%5c",
            "%252F",
            "%09",
            "%0D%0A",
            "\t",
            " ",
            "%20",
            "%00",
            "%E3%80%82",
        ];
        let schemes = ["", "http:", "https:", "HTTPS:", "javascript:", "//", "http://", "https://"];
        let hosts = [
            "evil.com",
            "allowed.com.evil.com",
            "evil.com@allowed.com",
            "evil.com%40allowed.com",
            "evil.com\\@allowed.com",
            "[::1]",
            "127.0.0.1",
            "allowed.com:443@evil.com",
        ];
        let mut n = 0;
        for scheme in schemes {
            for a in slashes {
                for b in slashes {
                    for host in hosts {
                        let rd = format!("{scheme}{a}{b}{host}/x");
                        n += 1;
                        let Some(out) = check(&rd) else { continue };
                        if out.starts_with('/') {
                            assert!(
                                !out.starts_with("//") && !out.contains('\\'),
                                "{rd:?} -> {out:?}"
                            );
                            continue;
                        }
                        let u = Url::parse(&out).unwrap();
                        let h = u.host_str().unwrap_or_default();
                        assert!(
                            h == HOST
                                || h == "allowed.com"
                                || h.ends_with(".example.org")
                                || h == "example.org",
                            "{rd:?} -> {out:?}"
                        );
                        assert!(
                            u.username().is_empty() && u.password().is_none(),
                            "{rd:?} -> {out:?}"
                        );
                    }
                }
            }
        }
        assert!(n > 10_000, "{n}");
    }
}
