//! HTTP/1.1 response framing for the lean client to the app (RFC 9112 §6 and §7.1): the head
//! parsed by `httparse` (the parser hyper uses), the body's framing decided from it, and the
//! chunked coding decoded by a state machine that takes its input in pieces of any size.
//!
//! The app is not trusted to frame correctly. Anything a second reader could take differently
//! (Content-Length with Transfer-Encoding, several lengths, a coding other than chunked, a bad
//! chunk, bare LF line ends, an interim response other than 100 or 101, a head over the limit)
//! is an error: the answer is a 502 and the connection is closed, never pooled, so that one
//! user's response can never be handed to the next request (response-queue poisoning).

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE,
};
use http::StatusCode;

/// The largest response head read (status line and fields).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (or a trailer section).
pub const MAX_HEADERS: usize = 128;
/// Room in a response's header map: hyper's server reuses it for the next request's fields.
const REUSED_MAP_FIELDS: usize = 24;
/// The largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The longest chunk extension kept reading (it is skipped, never used).
const MAX_CHUNK_EXT: usize = 4 * 1024;
/// The most hex digits of a chunk size (leading zeros included): 2^64 has 16.
const MAX_SIZE_DIGITS: u8 = 16;

/// Why a response from the app is refused (a 502; the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head ({0})")]
    Malformed(&'static str),
    #[error("HTTP/1.{0} is not a version this client speaks")]
    Version(u8),
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndCoding,
    #[error("more than one Content-Length")]
    SeveralLengths,
    #[error("a Content-Length that is not a number")]
    BadLength,
    #[error("a transfer coding other than one chunked")]
    Coding,
    #[error("an interim response {0} (only 100 and 101 are expected)")]
    Interim(u16),
    #[error("malformed chunked body ({0})")]
    Chunk(&'static str),
    #[error("bytes after the end of the response")]
    Trailing,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a response to `HEAD`, 1xx, 204, 304), whatever the fields say.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding ([`ChunkedDecoder`]).
    Chunked,
    /// Until the app closes the connection (which then cannot be reused).
    UntilClose,
}

/// A response head as the app sent it.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has ended exactly
    /// where its framing says (HTTP/1.1 without `Connection: close`, a delimited body).
    pub reusable: bool,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete (read
/// more), else the head and how many bytes of `buf` it took. A copy of [`take_head`] for
/// callers holding a slice (tests, the fuzz target).
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(Head, usize)>, FramingError> {
    let mut b = bytes::BytesMut::from(buf);
    Ok(take_head(&mut b, head_request)?.map(|head| (head, buf.len() - b.len())))
}

/// Takes the response head off the start of `buf` once it is whole (`Ok(None)`: read more).
/// `head_request`: the request was `HEAD` (no body follows, whatever the fields say). A 100
/// (Continue) comes back like any head: the caller skips it and takes the next; a 101 has
/// [`Framing::Empty`] and the connection then belongs to the upgraded protocol.
///
/// One pass over the fields decides the framing and leaves out the hop-by-hop ones (and what
/// `Connection` names, but the guaranteed headers; a 101 keeps `Upgrade`), so the map holds
/// what goes on to the client; field values share the head's bytes instead of being copied.
pub fn take_head(
    buf: &mut bytes::BytesMut,
    head_request: bool,
) -> Result<Option<Head>, FramingError> {
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(FramingError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::HeadTooLarge),
        Err(e) => return Err(FramingError::Malformed(error_name(e))),
    };
    if len > MAX_HEAD {
        return Err(FramingError::HeadTooLarge);
    }
    let version = resp.version.unwrap_or(1);
    if version > 1 {
        return Err(FramingError::Version(version));
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| FramingError::Malformed("status"))?;
    // httparse accepts bare LF line ends; a second reader might not: refused
    if !crlf_only(&buf[..len]) {
        return Err(FramingError::Malformed("line ends other than CRLF"));
    }
    if status.is_informational() && code != 100 && code != 101 {
        return Err(FramingError::Interim(code));
    }
    // Where each field lies in the head (name, value: start and length), so that the values
    // can share its bytes once it is split off.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let n = resp.headers.len();
    for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = [at(f.name.as_bytes()), f.name.len() as u32, at(f.value), f.value.len() as u32];
    }
    let head = buf.split_to(len).freeze();
    // hyper's server keeps a response's map (emptied) for the next request on its connection:
    // sized for a request with portcullis's fields added, so that one never grows
    let mut headers = HeaderMap::with_capacity(n.max(REUSED_MAP_FIELDS));
    let mut fields = FramingFields::default();
    let mut named: Vec<HeaderName> = Vec::new();
    for &[ns, nl, vs, vl] in &spans[..n] {
        let name = HeaderName::from_bytes(&head[ns as usize..(ns + nl) as usize])
            .map_err(|_| FramingError::Malformed("name"))?;
        let value = &head[vs as usize..(vs + vl) as usize];
        if name == CONTENT_LENGTH {
            fields.lengths += 1;
            fields.length.get_or_insert(value);
        } else if name == TRANSFER_ENCODING {
            fields.coded = true;
            for t in value.split(|b| *b == b',') {
                fields.codings += 1;
                fields.chunked_only &= t.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        } else if name == CONNECTION {
            fields.close |=
                value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            named.extend(crate::headers::connection_named(value));
        }
        let hop_by_hop =
            crate::headers::HOP_BY_HOP.contains(&name) && !(code == 101 && name == UPGRADE);
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..(vs + vl) as usize))
            .map_err(|_| FramingError::Malformed("value"))?;
        if !hop_by_hop {
            headers.append(name, value);
        }
    }
    for name in named {
        headers.remove(name);
    }
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        fields.framing()?
    };
    let closes = version == 0 || fields.close;
    let reusable = !closes && framing != Framing::UntilClose && code != 101;
    Ok(Some(Head { status, headers, framing, reusable }))
}

fn error_name(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "a field name",
        httparse::Error::HeaderValue => "a field value",
        httparse::Error::NewLine => "a line end",
        httparse::Error::Status => "the status",
        httparse::Error::Token => "a token",
        httparse::Error::TooManyHeaders => "too many fields",
        httparse::Error::Version => "the version",
    }
}

/// Whether every LF in `head` follows a CR.
fn crlf_only(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).all(|i| i > 0 && head[i - 1] == b'\r')
}

/// What the framing fields of a head said, gathered in the one pass over its fields.
struct FramingFields<'a> {
    /// `Content-Length` fields, and the first one's value.
    lengths: u32,
    length: Option<&'a [u8]>,
    /// A `Transfer-Encoding` field was there; its codings, counted over every such field;
    /// every one was `chunked`.
    coded: bool,
    codings: u32,
    chunked_only: bool,
    /// `Connection` lists `close`.
    close: bool,
}

impl Default for FramingFields<'_> {
    fn default() -> Self {
        Self {
            lengths: 0,
            length: None,
            coded: false,
            codings: 0,
            chunked_only: true,
            close: false,
        }
    }
}

impl FramingFields<'_> {
    /// The framing of a response that may have a body (RFC 9112 §6.3), refusing what is
    /// ambiguous.
    fn framing(&self) -> Result<Framing, FramingError> {
        if self.coded {
            if self.lengths > 0 {
                return Err(FramingError::LengthAndCoding);
            }
            // exactly one coding, chunked
            if self.codings != 1 || !self.chunked_only {
                return Err(FramingError::Coding);
            }
            return Ok(Framing::Chunked);
        }
        let Some(v) = self.length else {
            return Ok(Framing::UntilClose);
        };
        if self.lengths > 1 || v.contains(&b',') {
            return Err(FramingError::SeveralLengths);
        }
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::BadLength);
        }
        Ok(Framing::Length(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))))
    }
}

/// What [`ChunkedDecoder::decode`] found in its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Body bytes (a part of a chunk).
    Data(&'a [u8]),
    /// The input ran out inside the framing: read more.
    More,
    /// The body has ended, with its trailer fields (empty without).
    End(HeaderMap),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk size: its value and digits so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: optional whitespace and a chunk extension, up to CR.
    Ext {
        size: u64,
        len: usize,
    },
    /// The LF after a size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after it.
    DataLf,
    /// The trailer section, gathered until an empty line.
    Trailers,
    Done,
}

/// The chunked transfer coding, decoded from pieces of any size (a piece may end anywhere: in
/// a size, between CR and LF, in a trailer). Strict: CRLF line ends only, hex sizes of at most
/// 16 digits that fit 64 bits, extensions skipped within a bound, trailers within a bound.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailers: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: State::Size { size: 0, digits: 0 }, trailers: Vec::new() }
    }

    /// Decodes from the start of `input`: what it found and how many bytes it took. Call again
    /// with the rest (or more input after [`Decoded::More`]) until [`Decoded::End`].
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Decoded<'a>), FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { size, digits } => match hex(b) {
                    Some(d) => {
                        if digits >= MAX_SIZE_DIGITS {
                            return Err(FramingError::Chunk("a chunk size too long"));
                        }
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(FramingError::Chunk("a chunk size too large"))?;
                        self.state = State::Size { size, digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(FramingError::Chunk("no chunk size")),
                    None if b == b'\r' => self.state = State::SizeLf { size },
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.state = State::Ext { size, len: 1 }
                    }
                    None => return Err(FramingError::Chunk("a bad byte in a chunk size")),
                },
                State::Ext { size, len } => {
                    if b == b'\r' {
                        self.state = State::SizeLf { size };
                    } else if b == b'\n' || (b < b' ' && b != b'\t') || b == 0x7f {
                        return Err(FramingError::Chunk("a control byte in a chunk extension"));
                    } else if len >= MAX_CHUNK_EXT {
                        return Err(FramingError::Chunk("a chunk extension too long"));
                    } else {
                        self.state = State::Ext { size, len: len + 1 };
                    }
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(FramingError::Chunk("a CR without LF after a chunk size"));
                    }
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                }
                State::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                    return Ok((i + n, Decoded::Data(&input[i..i + n])));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(FramingError::Chunk("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::Chunk("a CR without LF after chunk data"));
                    }
                    self.state = State::Size { size: 0, digits: 0 };
                }
                State::Trailers => {
                    // taken whole until the empty line that ends the section
                    let rest = &input[i..];
                    let room = MAX_TRAILERS + 2 - self.trailers.len();
                    let end = find_section_end(&self.trailers, rest);
                    let take = end.unwrap_or(rest.len());
                    if take > room {
                        return Err(FramingError::Chunk("a trailer section too large"));
                    }
                    self.trailers.extend_from_slice(&rest[..take]);
                    if end.is_none() {
                        return Ok((input.len(), Decoded::More));
                    }
                    let trailers = parse_trailers(&self.trailers)?;
                    self.trailers = Vec::new();
                    self.state = State::Done;
                    return Ok((i + take, Decoded::End(trailers)));
                }
                State::Done => return Ok((i, Decoded::End(HeaderMap::new()))),
            }
            i += 1;
        }
        if self.state == State::Done {
            return Ok((i, Decoded::End(HeaderMap::new())));
        }
        Ok((i, Decoded::More))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where, in `rest`, the trailer section that began with `seen` ends (just after its empty
/// line): the section is `CRLF` alone, or field lines each ending in CRLF, then `CRLF`.
fn find_section_end(seen: &[u8], rest: &[u8]) -> Option<usize> {
    // the last three bytes seen, then the new ones: look for the end across the boundary
    let keep = seen.len().min(3);
    let mut window: Vec<u8> = seen[seen.len() - keep..].to_vec();
    let base = window.len();
    window.extend_from_slice(rest);
    if seen.is_empty() && rest.starts_with(b"\r\n") {
        return Some(2);
    }
    if seen.len() == 1 && seen[0] == b'\r' && rest.first() == Some(&b'\n') {
        return Some(1);
    }
    memchr::memmem::find(&window, b"\r\n\r\n").map(|at| at + 4 - base)
}

/// The trailer fields of a complete section (its bytes up to and including the empty line).
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, FramingError> {
    if section == b"\r\n" {
        return Ok(HeaderMap::new());
    }
    if !crlf_only(section) {
        return Err(FramingError::Chunk("line ends other than CRLF in the trailers"));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((n, fields))) if n == section.len() => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| FramingError::Chunk("a trailer field name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| FramingError::Chunk("a trailer field value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(FramingError::Chunk("malformed trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, FramingError> {
        parse_head(text.as_bytes(), false)
    }

    fn framing(text: &str) -> Result<Framing, FramingError> {
        head(text).map(|h| h.expect("complete").0.framing)
    }

    #[test]
    fn the_framing_of_a_response_is_decided_from_its_head() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        // up to 19 digits (leading zeros too): any u64 below 10^19
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000012\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        // no body whatever the fields say: 204, 304, 1xx and a response to HEAD
        for status in ["204 No Content", "304 Not Modified", "100 Continue", "101 Switching"] {
            let text = format!(
                "HTTP/1.1 {status}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            assert_eq!(framing(&text), Ok(Framing::Empty), "{status}");
        }
        let (h, _) =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.reusable);
        // the head's length, the fields kept in order, repeated ones too
        let text = "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-A: 1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\nBODY";
        let (h, n) = head(text).unwrap().unwrap();
        assert_eq!(n, text.len() - 4);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h.status, StatusCode::OK);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let refused = [
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", FramingError::LengthAndCoding),
            ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", FramingError::LengthAndCoding),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", FramingError::SeveralLengths),
            ("Content-Length: 5, 5\r\n", FramingError::SeveralLengths),
            ("Content-Length: 5\r\nContent-Length: 6\r\n", FramingError::SeveralLengths),
            ("Content-Length: +5\r\n", FramingError::BadLength),
            ("Content-Length: 0x5\r\n", FramingError::BadLength),
            ("Content-Length: \r\n", FramingError::BadLength),
            ("Content-Length: 99999999999999999999\r\n", FramingError::BadLength),
            ("Content-Length: 00000000000000000001\r\n", FramingError::BadLength),
            ("Transfer-Encoding: gzip\r\n", FramingError::Coding),
            ("Transfer-Encoding: gzip, chunked\r\n", FramingError::Coding),
            ("Transfer-Encoding: chunked, chunked\r\n", FramingError::Coding),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", FramingError::Coding),
            ("Transfer-Encoding: identity\r\n", FramingError::Coding),
            ("Transfer-Encoding: \r\n", FramingError::Coding),
        ];
        for (fields, want) in refused {
            let text = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
            assert_eq!(framing(&text), Err(want.clone()), "{fields:?}");
        }
        // interim responses other than 100 and 101
        for code in [102, 103, 150, 199] {
            let text = format!("HTTP/1.1 {code} Early\r\n\r\n");
            assert_eq!(framing(&text), Err(FramingError::Interim(code)));
        }
        // what was malformed is named
        let named = |text: &str| match head(text) {
            Err(FramingError::Malformed(what)) => what,
            other => panic!("{text:?}: {:?}", other.map(|h| h.map(|h| h.0.framing))),
        };
        assert_eq!(named("HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n"), "a field name");
        assert_eq!(named("HTTP/1.1 2x0 OK\r\n\r\n"), "the status");
        assert_eq!(named("HTTP/1.1 200 OK\r\n\nX-A: 1\r\n\r\n"), "line ends other than CRLF");
        assert_eq!(named("\nHTTP/1.1 200 OK\r\n\r\n"), "line ends other than CRLF");
        // bare LF, obsolete folding, a space before the colon, HTTP/2 in a 1.1 head
        for text in [
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 99 Low\r\n\r\n",
            "HTTP/1.1 2000 High\r\n\r\n",
        ] {
            assert!(
                matches!(head(text), Err(FramingError::Malformed(_) | FramingError::Version(_))),
                "{text:?}: {:?}",
                head(text).map(|h| h.map(|h| h.0.framing))
            );
        }
    }

    #[test]
    fn a_head_is_read_whole_and_within_its_limit() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for cut in 0..text.len() {
            assert!(head(&text[..cut]).unwrap().is_none(), "complete at {cut}");
        }
        assert!(head(text).unwrap().is_some());
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&big).unwrap_err(), FramingError::HeadTooLarge);
        // a whole head of exactly 64 KiB (docs/forwarding.md) is read; one byte more is too large
        let sized = |n: usize| {
            let start = "HTTP/1.1 200 OK\r\nX-Big: ";
            format!("{start}{}\r\n\r\n", "a".repeat(n - start.len() - 4))
        };
        assert_eq!(head(&sized(64 * 1024)).unwrap().unwrap().1, 64 * 1024);
        assert_eq!(head(&sized(64 * 1024 + 1)).unwrap_err(), FramingError::HeadTooLarge);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(head(&text).unwrap_err(), FramingError::HeadTooLarge);
    }

    #[test]
    fn which_connections_may_be_reused() {
        let reusable = |text: &str| head(text).unwrap().unwrap().0.reusable;
        assert!(reusable("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable("HTTP/1.1 200 OK\r\n\r\n"), "until close");
        assert!(!reusable("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!reusable("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"));
    }

    #[test]
    fn the_head_hands_on_end_to_end_fields_only_and_leaves_the_body_bytes() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, X-Forwarded-For, close\r\n\
                    Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n\
                    Proxy-Connection: x\r\nTE: trailers\r\nX-Secret: s\r\nX-Forwarded-For: 1.2.3.4\r\n\
                    Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-App: été\r\n\r\n5\r\nhello";
        let mut buf = bytes::BytesMut::from(text.as_bytes());
        let h = take_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(&buf[..], b"5\r\nhello", "the body's bytes stay");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.reusable, "Connection: close, read before the field was left out");
        let mut names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["set-cookie", "x-app", "x-forwarded-for"]);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h.headers["x-app"].as_bytes(), "été".as_bytes());
        // room for the next request's fields: hyper's server reuses the map for them
        assert!(h.headers.capacity() >= REUSED_MAP_FIELDS, "{}", h.headers.capacity());
        // a 101 keeps what the switch needs
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(h.headers["upgrade"], "websocket");
        assert!(!h.headers.contains_key("connection"));
        // a field value that is no value is refused, even in a field left out
        let bad = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: a\x7fb\r\n\r\n";
        assert!(head(bad).is_err());
    }

    /// Decodes `body` given in the pieces `cuts` make: the data, the trailers, the bytes used.
    fn decode_in_pieces(
        body: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, HeaderMap, usize), FramingError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut bounds = cuts.to_vec();
        bounds.push(body.len());
        let mut start = 0;
        let mut pending: Vec<u8> = Vec::new();
        let mut used = 0;
        for end in bounds {
            pending.extend_from_slice(&body[start..end]);
            start = end;
            loop {
                let (n, got) = d.decode(&pending)?;
                used += n;
                match got {
                    Decoded::Data(bytes) => {
                        data.extend_from_slice(bytes);
                        pending.drain(..n);
                    }
                    Decoded::More => {
                        pending.drain(..n);
                        break;
                    }
                    Decoded::End(trailers) => return Ok((data, trailers, used)),
                }
            }
        }
        Err(FramingError::Chunk("ended early"))
    }

    #[test]
    fn chunked_bodies_decode_the_same_split_at_every_byte() {
        let body = b"5;name=\"v\"\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n000\r\nX-Checksum: 42\r\nGrpc-Status: 0\r\n\r\nNEXT";
        let whole = decode_in_pieces(body, &[]).unwrap();
        assert_eq!(whole.0, b"hello abcdefghijklmnopqrstuvwxy");
        assert_eq!(whole.1.get("grpc-status").unwrap(), "0");
        assert_eq!(whole.1.get("x-checksum").unwrap(), "42");
        assert_eq!(whole.2, body.len() - 4, "the next response's bytes are not taken");
        for a in 0..body.len() {
            assert_eq!(decode_in_pieces(body, &[a]).unwrap(), whole, "split at {a}");
            for b in a..body.len() {
                assert_eq!(decode_in_pieces(body, &[a, b]).unwrap(), whole, "split at {a}, {b}");
            }
        }
        // one byte at a time
        let every: Vec<usize> = (1..body.len()).collect();
        assert_eq!(decode_in_pieces(body, &every).unwrap(), whole);
        // hex digits in either case
        for (size, n) in [("a", 10), ("A", 10), ("f", 15), ("F", 15), ("1b", 27), ("0C", 12)] {
            let text = format!("{size}\r\n{}\r\n0\r\n\r\n", "x".repeat(n));
            let (data, _, used) = decode_in_pieces(text.as_bytes(), &[]).unwrap();
            assert_eq!((data.len(), used), (n, text.len()), "{size}");
        }
        // without trailers; with whitespace before an extension (RFC 9112 §7.1.1's BWS)
        let plain: &[&[u8]] = &[
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3 ;x\r\nabc\r\n0\t;y=1\r\n\r\n",
            b"3\t\r\nabc\r\n0 \r\n\r\n",
            b"3;a=\"b c\"\t; d\r\nabc\r\n0;~\r\n\r\n", // a space, a tab and a tilde within
        ];
        for plain in plain {
            for a in 0..plain.len() {
                let (data, trailers, used) = decode_in_pieces(plain, &[a]).unwrap();
                assert_eq!((data.as_slice(), trailers.len(), used), (&b"abc"[..], 0, plain.len()));
            }
        }
    }

    #[test]
    fn bad_chunks_are_refused_wherever_they_are_split() {
        let bad: &[&[u8]] = &[
            b"\r\n",                          // no size
            b"\r\n\r\n",                      // no size, then what would end a last chunk
            b";x\r\n\r\n",                    // an extension without a size
            b"5x\r\nhello\r\n0\r\n\r\n",      // a size followed by a non-hex byte
            b"g\r\n",                         // not hex
            b"-1\r\n",                        // a sign
            b"5\nhello\r\n0\r\n\r\n",         // bare LF after the size
            b"5\r\nhello\n0\r\n\r\n",         // bare LF after the data
            b"5\r\nhelloX\r\n0\r\n\r\n",      // data longer than its size
            b"5\rXhello\r\n",                 // CR without LF
            b"10000000000000000\r\n",         // 17 digits
            b"0000000000000000F\r\n",         // 17 digits, leading zeros
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",  // LF inside an extension
            b"5;\x01\r\nhello\r\n0\r\n\r\n",  // a control byte in an extension
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n", // DEL in an extension
            b"5;a\x1f\r\nhello\r\n0\r\n\r\n", // the last control byte below a space
            b"0\r\nX-A: 1\n\r\n",             // bare LF in the trailers
            b"0\r\nX A: 1\r\n\r\n",           // a bad trailer name
            b"0\r\n: 1\r\n\r\n",              // an empty trailer name
        ];
        for body in bad {
            for a in 0..body.len() {
                assert!(
                    decode_in_pieces(body, &[a]).is_err(),
                    "{:?} split at {a}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // the largest size is read (then its data awaited); one more digit overflows
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"FFFFFFFFFFFFFFFF\r\nab").unwrap(), (20, Decoded::Data(b"ab")));
        let mut d = ChunkedDecoder::new();
        assert!(matches!(d.decode(b"1FFFFFFFFFFFFFFFF"), Err(FramingError::Chunk(_))));
        // limits on extensions and trailers
        let ext = |n: usize| format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(n));
        // (the limits docs/forwarding.md gives: an extension of 4 KiB with its `;`, a trailer
        // section of 16 KiB without its empty line)
        assert!(decode_in_pieces(ext(4 * 1024 - 1).as_bytes(), &[]).is_ok());
        assert!(decode_in_pieces(ext(4 * 1024).as_bytes(), &[]).is_err());
        let trailers = |n: usize| format!("0\r\nX-Big: {}\r\n\r\n", "a".repeat(n));
        let fits = trailers(16 * 1024 - "X-Big: \r\n".len());
        assert!(decode_in_pieces(fits.as_bytes(), &[]).is_ok());
        let over = trailers(16 * 1024 + 1 - "X-Big: \r\n".len());
        assert!(decode_in_pieces(over.as_bytes(), &[]).is_err());
        // a body that stops early is not a body
        assert!(decode_in_pieces(b"5\r\nhel", &[]).is_err());
    }
}
