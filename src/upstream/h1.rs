//! The lean HTTP/1.1 client to the app: one exchange on one connection at a time, the request
//! head written from the request's parts into the connection's reused buffer, the response head
//! parsed by [`framing::parse_head`] from the connection's read buffer, and both bodies streamed
//! by one owner that drives the request body and reads the response in the same poll (as hyper's
//! dispatcher does, without a task of its own or a channel in between).
//!
//! A connection goes back to its worker's pool only when the response ended exactly where its
//! framing said, with no byte after it, the request fully written and the app not closing: a
//! connection the app framed wrongly could otherwise hand one user's response to the next
//! request (response-queue poisoning). Every refusal is a [`FramingError`]: a 502, and the
//! connection closed.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::framing::{self, ChunkedDecoder, Decoded, Framing, FramingError, Head};

/// Free room kept in a read buffer before each read.
const READ_ROOM: usize = 8 * 1024;
/// A read buffer grows by this much when it runs out of room.
const READ_CHUNK: usize = 16 * 1024;
/// Request body bytes queued for the app before the next frame is taken from the client.
const WRITE_QUEUE: usize = 64 * 1024;
/// Slices handed to one vectored write.
const MAX_SLICES: usize = 16;

/// One kept-alive connection to the app, with its buffers.
pub struct Conn {
    io: TcpStream,
    /// How long its current request has waited for an answer (kept by the pool's sweep).
    pub watch: Arc<super::Watch>,
    /// Bytes read from the app and not used yet.
    rbuf: BytesMut,
    /// The request head being written (reused from one request to the next).
    head: Vec<u8>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            watch: Arc::default(),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            head: Vec::with_capacity(1024),
        }
    }

    /// Whether an idle connection may carry a request: the app has neither closed it nor sent
    /// anything unasked (which would be taken for the answer to the next request). Costs no
    /// system call unless the connection has been readable since it was last read dry.
    pub fn is_usable(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes the head of the request this connection carries next (see [`encode_head`]).
    pub fn write_head(
        &mut self,
        method: &Method,
        path_and_query: &[&str],
        headers: &HeaderMap,
        framing: RequestFraming,
    ) {
        encode_head(&mut self.head, method, path_and_query, headers, framing);
    }

    /// Takes a head written for another connection (a retry).
    pub fn set_head(&mut self, head: Vec<u8>) {
        self.head = head;
    }

    /// Reads what the app has sent into the read buffer: `Ok(0)` when it has closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM {
            self.rbuf.reserve(READ_CHUNK);
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_read_buf(&mut self.rbuf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The connection and the bytes the app sent after its `101` (the upgraded protocol's).
    pub fn into_upgraded(self) -> (TcpStream, Bytes) {
        (self.io, self.rbuf.freeze())
    }
}

/// How a request body is framed on the way to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no `Content-Length` (a `GET`).
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    /// From the body as it stands: an ended body has no framing unless the client sent a length
    /// or the method carries content; a known length is sent as `Content-Length`; anything
    /// else is chunked (which also carries trailers).
    pub fn of(method: &Method, headers: &HeaderMap, body: &Body) -> Self {
        if body.is_end_stream() {
            let has_content = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
            if has_content || headers.contains_key(CONTENT_LENGTH) {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        }
    }
}

/// Writes the request head into `buf` (emptied first): the request line in origin-form, the
/// fields as they stand (their framing fields replaced by `framing`'s), and the empty line.
/// Field names and values were checked when they were made (no CR, LF or NUL can be in them).
pub fn encode_head(
    buf: &mut Vec<u8>,
    method: &Method,
    path_and_query: &[&str],
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    buf.clear();
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    for part in path_and_query {
        buf.extend_from_slice(part.as_bytes());
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = headers.iter().filter(|(n, _)| *n != CONTENT_LENGTH && *n != TRANSFER_ENCODING);
    write_fields(buf, fields);
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

/// Why an exchange with the app failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("talking to the app: {0}")]
    Io(#[source] std::io::Error),
    #[error("the app closed the connection before its response ended")]
    Closed,
    #[error("the app's response: {0}")]
    Framing(#[from] FramingError),
    #[error("the request body: {0}")]
    RequestBody(#[source] axum::Error),
    #[error("the request body did not match its Content-Length")]
    RequestLength,
}

/// The request on its way out: its head, then its body's frames, queued and written as the
/// connection takes them.
struct Outgoing {
    /// Bytes of the head written so far.
    head_written: usize,
    /// Body bytes (and chunk framing) taken from the client, not yet written.
    queue: VecDeque<Bytes>,
    queued: usize,
    body: Option<Body>,
    framing: RequestFraming,
    /// Bytes of a `Length` body still expected.
    left: u64,
    /// The body's last bytes are queued (or there was none).
    ended: bool,
    /// Writing failed (the app may still answer: its answer is read).
    broken: bool,
    /// The request has a body.
    had_body: bool,
    /// A frame of it was taken (it cannot be sent again).
    body_polled: bool,
}

impl Outgoing {
    fn new(body: Option<Body>, framing: RequestFraming) -> Self {
        let left = match framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        };
        let ended = body.is_none();
        Self {
            head_written: 0,
            queue: VecDeque::new(),
            queued: 0,
            body,
            framing,
            left,
            ended,
            broken: false,
            had_body: !ended,
            body_polled: false,
        }
    }

    /// Everything is written.
    fn is_done(&self, head: &[u8]) -> bool {
        self.head_written == head.len() && self.ended && self.queue.is_empty()
    }

    /// Whether no byte of the request reached the connection and no frame of its body was
    /// taken (so it may be sent again, whole).
    fn untouched(&self) -> bool {
        self.head_written == 0 && !self.body_polled
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queued += b.len();
            self.queue.push_back(b);
        }
    }

    /// Takes the next frame of the body into the queue: `Ready(Ok(false))` when there is none.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ExchangeError>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        self.body_polled = true;
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        return Poll::Ready(Ok(true));
                    }
                    match self.framing {
                        RequestFraming::Chunked => {
                            self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.push(data);
                            self.push(Bytes::from_static(b"\r\n"));
                        }
                        _ => {
                            let n = data.len() as u64;
                            if n > self.left {
                                return Poll::Ready(Err(ExchangeError::RequestLength));
                            }
                            self.left -= n;
                            self.push(data);
                        }
                    }
                    Poll::Ready(Ok(true))
                }
                Err(frame) => {
                    // Trailers: sent with the chunked coding; a `Content-Length` body has none.
                    if let (Ok(trailers), RequestFraming::Chunked) =
                        (frame.into_trailers(), self.framing)
                    {
                        self.push(Bytes::from(encode_last_chunk(&trailers)));
                        self.body = None;
                        self.ended = true;
                    }
                    Poll::Ready(Ok(true))
                }
            },
            Some(Err(e)) => Poll::Ready(Err(ExchangeError::RequestBody(e))),
            None => {
                self.body = None;
                self.ended = true;
                match self.framing {
                    RequestFraming::Chunked => self.push(Bytes::from_static(b"0\r\n\r\n")),
                    _ if self.left != 0 => return Poll::Ready(Err(ExchangeError::RequestLength)),
                    _ => {}
                }
                Poll::Ready(Ok(false))
            }
        }
    }
}

/// Field lines (`name: value` CRLF), for a head or a trailer section.
fn write_fields<'a>(
    buf: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) {
    for (name, value) in fields {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// The last chunk with trailer fields.
fn encode_last_chunk(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    write_fields(&mut out, trailers.iter());
    out.extend_from_slice(b"\r\n");
    out
}

/// One request and its response on one connection.
pub struct Exchange {
    conn: Conn,
    out: Outgoing,
    /// Whether any byte of a response has arrived.
    answered: bool,
}

impl Exchange {
    /// The exchange of the request whose head is in `conn`'s head buffer (see [`encode_head`]).
    pub fn new(conn: Conn, body: Option<Body>, framing: RequestFraming) -> Self {
        Self { conn, out: Outgoing::new(body, framing), answered: false }
    }

    /// Whether the request may go again on another connection: none of it was written (nor
    /// its body touched), or the app closed without a byte of answer a request that has no
    /// body and may be repeated (RFC 9110 §9.2.2): a kept-alive connection the app closed just
    /// as the request went out.
    pub fn may_retry(&self, e: &ExchangeError, idempotent: bool) -> bool {
        if self.answered {
            return false;
        }
        if self.out.untouched() {
            return true;
        }
        let closed = match e {
            ExchangeError::Closed => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        };
        closed && idempotent && !self.out.had_body
    }

    /// The request body, if none of it was taken (for a retry).
    pub fn take_body(&mut self) -> Option<Body> {
        if self.out.body_polled {
            return None;
        }
        self.out.body.take()
    }

    /// The connection's watch (see [`super::Watch`]).
    pub fn watch(&self) -> &super::Watch {
        &self.conn.watch
    }

    /// The connection's request head buffer, to carry to a new connection for a retry.
    pub fn take_head(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.conn.head)
    }

    /// Writes what can be written without waiting: `Ready(Ok)` once the whole request is out.
    /// A failed write marks the request broken and is not an error here: the app may have
    /// answered already (an early 413, say), and its answer is read.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        if self.out.broken {
            return Poll::Ready(Ok(()));
        }
        loop {
            // take frames while there is room, then write
            while !self.out.ended && self.out.queued < WRITE_QUEUE {
                match self.out.poll_take(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            let head = &self.conn.head[self.out.head_written..];
            if head.is_empty() && self.out.queue.is_empty() {
                return if self.out.ended { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            if !head.is_empty() {
                slices[0] = IoSlice::new(head);
                n = 1;
            }
            for b in self.out.queue.iter().take(MAX_SLICES - n) {
                slices[n] = IoSlice::new(b);
                n += 1;
            }
            let written = match Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.out.broken = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(w)) => w,
                Poll::Pending => return Poll::Pending,
            };
            self.consume(written);
        }
    }

    fn consume(&mut self, mut written: usize) {
        let head_left = self.conn.head.len() - self.out.head_written;
        let from_head = written.min(head_left);
        self.out.head_written += from_head;
        written -= from_head;
        while written > 0 {
            let Some(front) = self.out.queue.front_mut() else { break };
            let n = written.min(front.len());
            front.advance(n);
            self.out.queued -= n;
            written -= n;
            if front.is_empty() {
                self.out.queue.pop_front();
            }
        }
    }

    /// Drives the request out and reads the response head. `head_request`: the request was
    /// `HEAD`; `upgrade`: it asked for a protocol switch (a `101` answers nothing else).
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: bool,
    ) -> Poll<Result<Head, ExchangeError>> {
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !self.conn.rbuf.is_empty() {
                self.answered = true;
                if let Some(head) = framing::take_head(&mut self.conn.rbuf, head_request)? {
                    match head.status.as_u16() {
                        // interim: the final head follows
                        100 => continue,
                        101 if !upgrade => {
                            return Poll::Ready(Err(FramingError::Interim(101).into()))
                        }
                        _ => return Poll::Ready(Ok(head)),
                    }
                }
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(ExchangeError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
            }
        }
    }

    /// The response body that follows `head`, or an error if the bytes already read show it
    /// framed wrongly: a bad chunk, or bytes after a complete response. (What arrived with the
    /// head is decoded now, so such an answer is a 502 rather than a response cut short.)
    /// `pool`: where the connection goes when the body ended cleanly.
    pub fn into_body(
        self,
        head: &Head,
        pool: Option<Arc<dyn Release>>,
    ) -> Result<ResponseBody, ExchangeError> {
        let upgraded = head.status.as_u16() == 101;
        let state = match head.framing {
            Framing::Empty | Framing::Length(0) => Read::Done,
            Framing::Length(n) => Read::Length(n),
            Framing::Chunked => Read::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Read::UntilClose,
        };
        let mut body = ResponseBody {
            ex: Some(self),
            state,
            early: VecDeque::new(),
            reusable: head.reusable,
            pool,
            upgraded,
        };
        if upgraded {
            // the bytes after a 101 are the new protocol's
            return Ok(body);
        }
        match body.state {
            Read::Done => {
                if body.ex.as_ref().is_some_and(|ex| !ex.conn.rbuf.is_empty()) {
                    return Err(FramingError::Trailing.into());
                }
                body.finish();
            }
            Read::Length(n) => {
                if body.ex.as_ref().is_some_and(|ex| ex.conn.rbuf.len() as u64 > n) {
                    return Err(FramingError::Trailing.into());
                }
            }
            Read::Chunked(_) => {
                while let Next::Frame(f) = body.buffered()? {
                    body.early.push_back(f);
                }
            }
            Read::UntilClose => {}
        }
        Ok(body)
    }
}

/// Where a connection goes when its exchange ended cleanly.
pub trait Release: Send + Sync {
    fn release(&self, conn: Conn);
}

enum Read {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// What the bytes already read give next.
enum Next {
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// Read more.
    More,
}

/// The app's response body, read as the client takes it (while the rest of the request, if
/// any, is still written).
pub struct ResponseBody {
    ex: Option<Exchange>,
    state: Read,
    /// Frames decoded with the head (a chunked body's first chunks).
    early: VecDeque<Frame<Bytes>>,
    reusable: bool,
    pool: Option<Arc<dyn Release>>,
    /// A `101`: the connection is the upgraded protocol's ([`ResponseBody::into_upgraded`]).
    upgraded: bool,
}

impl ResponseBody {
    /// After a `101`: the connection, and the bytes the app already sent on it.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !self.upgraded {
            return None;
        }
        self.ex.take().map(|ex| ex.conn.into_upgraded())
    }

    /// The body ended where its framing said: the connection goes back to the pool if nothing
    /// follows, the request is fully written and the app keeps it open.
    fn finish(&mut self) {
        self.state = Read::Done;
        let Some(ex) = self.ex.take() else { return };
        let clean = ex.conn.rbuf.is_empty() && ex.out.is_done(&ex.conn.head) && !ex.out.broken;
        if self.reusable && clean {
            if let Some(pool) = &self.pool {
                pool.release(ex.conn);
            }
        }
    }

    /// The next frame from the bytes already read, if they hold one.
    fn buffered(&mut self) -> Result<Next, ExchangeError> {
        let Some(ex) = self.ex.as_mut() else { return Ok(Next::End) };
        let rbuf = &mut ex.conn.rbuf;
        match &mut self.state {
            Read::Done => Ok(Next::End),
            _ if rbuf.is_empty() => Ok(Next::More),
            Read::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rbuf.len());
                let data = rbuf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    if !rbuf.is_empty() {
                        return Err(FramingError::Trailing.into());
                    }
                    self.finish();
                }
                Ok(Next::Frame(Frame::data(data)))
            }
            Read::UntilClose => Ok(Next::Frame(Frame::data(rbuf.split().freeze()))),
            Read::Chunked(decoder) => {
                // what the decoder found, as owned facts (its slice borrows the buffer)
                let step = match decoder.decode(rbuf)? {
                    (used, Decoded::Data(d)) => (used, Some(d.len()), None),
                    (used, Decoded::More) => (used, None, None),
                    (used, Decoded::End(trailers)) => (used, None, Some(trailers)),
                };
                match step {
                    (used, Some(len), _) => {
                        rbuf.advance(used - len);
                        Ok(Next::Frame(Frame::data(rbuf.split_to(len).freeze())))
                    }
                    (used, None, None) => {
                        rbuf.advance(used);
                        Ok(Next::More)
                    }
                    (used, None, Some(trailers)) => {
                        rbuf.advance(used);
                        if !rbuf.is_empty() {
                            return Err(FramingError::Trailing.into());
                        }
                        self.finish();
                        if trailers.is_empty() {
                            Ok(Next::End)
                        } else {
                            Ok(Next::Frame(Frame::trailers(trailers)))
                        }
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.state = Read::Done;
        self.ex = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        if let Some(f) = this.early.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        loop {
            let Some(ex) = this.ex.as_mut() else { return Poll::Ready(None) };
            if let Read::Done = this.state {
                return Poll::Ready(None);
            }
            if let Poll::Ready(Err(e)) = ex.poll_send(cx) {
                return this.fail(e);
            }
            match this.buffered() {
                Err(e) => return this.fail(e),
                Ok(Next::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(Next::End) => return Poll::Ready(None),
                Ok(Next::More) => {}
            }
            let Some(ex) = this.ex.as_mut() else { return Poll::Ready(None) };
            match ready!(ex.conn.poll_fill(cx)) {
                Ok(0) => {
                    if let Read::UntilClose = this.state {
                        this.state = Read::Done;
                        this.ex = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(ExchangeError::Closed);
                }
                Ok(_) => {}
                Err(e) => return this.fail(ExchangeError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.early.is_empty() && matches!(self.state, Read::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            Read::Done if self.early.is_empty() => SizeHint::with_exact(0),
            Read::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_framed_by_its_body_and_method() {
        let none = HeaderMap::new();
        let mut length0 = HeaderMap::new();
        length0.insert(CONTENT_LENGTH, "0".parse().unwrap());
        let of = |m: Method, h: &HeaderMap, b: Body| RequestFraming::of(&m, h, &b);
        assert_eq!(of(Method::GET, &none, Body::empty()), RequestFraming::None);
        assert_eq!(of(Method::DELETE, &none, Body::empty()), RequestFraming::None);
        // a method that carries content, or a client's length, says so even when empty
        for m in [Method::POST, Method::PUT, Method::PATCH] {
            assert_eq!(of(m, &none, Body::empty()), RequestFraming::Length(0));
        }
        assert_eq!(of(Method::GET, &length0, Body::empty()), RequestFraming::Length(0));
        assert_eq!(of(Method::POST, &none, Body::from("abc")), RequestFraming::Length(3));
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("a"))]);
        assert_eq!(of(Method::POST, &none, Body::from_stream(stream)), RequestFraming::Chunked);
    }

    #[test]
    fn a_request_head_carries_its_own_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, "app".parse().unwrap());
        headers.insert(CONTENT_LENGTH, "5".parse().unwrap());
        headers.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let mut buf = Vec::new();
        let head = |buf: &mut Vec<u8>, framing| {
            encode_head(buf, &Method::POST, &["/base", "/p?q=1"], &headers, framing);
            String::from_utf8(buf.clone()).unwrap()
        };
        assert_eq!(
            head(&mut buf, RequestFraming::Length(5)),
            "POST /base/p?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            head(&mut buf, RequestFraming::Chunked),
            "POST /base/p?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // the buffer is emptied first
        assert_eq!(
            head(&mut buf, RequestFraming::None),
            "POST /base/p?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }
}
