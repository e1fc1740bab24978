//! Logs: the subscriber (non-blocking writer), the request id, and one access line per request.
//! Headers, tokens, cookies and query strings are never logged.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::peer::ClientAddr;
use crate::response::Decision;
pub use crate::response::X_REQUEST_ID;

/// Bytes of log output that may wait for a slow reader (a stalled pipe, a busy log shipper);
/// past that, new lines are dropped, counted and reported rather than stalling requests.
pub const LOG_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// The process's log output: every thread queues whole lines (an event, or a worker's batch of
/// access lines) and one thread writes them to stdout, in order, each with one `write_all`.
/// Nothing is dropped unless [`LOG_QUEUE_BYTES`] are waiting, and then it is counted and said.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<LogShared>,
}

struct LogShared {
    state: std::sync::Mutex<LogState>,
    /// Signalled when lines are queued or the writer is closed.
    queued: std::sync::Condvar,
    /// Signalled when the writer has written everything queued so far.
    written: std::sync::Condvar,
}

#[derive(Default)]
struct LogState {
    queue: std::collections::VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer thread holds lines it took off the queue and has not written yet.
    writing: bool,
    closed: bool,
    /// Lines dropped because the queue was full: since the last report, and in all.
    dropped_unreported: u64,
    dropped: u64,
}

fn lock_state(shared: &LogShared) -> std::sync::MutexGuard<'_, LogState> {
    shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|c| **c == b'\n').count() as u64
}

impl LogWriter {
    /// A writer to `out`, with its thread.
    fn spawn(out: impl std::io::Write + Send + 'static) -> std::io::Result<(Self, LogGuard)> {
        let shared = Arc::new(LogShared {
            state: std::sync::Mutex::new(LogState::default()),
            queued: std::sync::Condvar::new(),
            written: std::sync::Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || write_loop(&thread_shared, out))?;
        Ok((Self { shared: shared.clone() }, LogGuard { shared, thread: Some(thread) }))
    }

    /// Queues whole lines for writing.
    pub fn send(&self, lines: Vec<u8>) {
        if lines.is_empty() {
            return;
        }
        let mut st = lock_state(&self.shared);
        if st.bytes + lines.len() > LOG_QUEUE_BYTES && st.bytes > 0 {
            let n = count_lines(&lines).max(1);
            st.dropped += n;
            st.dropped_unreported += n;
            return;
        }
        st.bytes += lines.len();
        st.queue.push_back(lines);
        drop(st);
        self.shared.queued.notify_one();
    }
}

fn write_loop(shared: &LogShared, mut out: impl std::io::Write) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let mut st = lock_state(shared);
        while st.queue.is_empty() && st.dropped_unreported == 0 && !st.closed {
            st = shared.queued.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if st.queue.is_empty() && st.dropped_unreported == 0 {
            // closed, and everything is written
            shared.written.notify_all();
            return;
        }
        batch.clear();
        while let Some(lines) = st.queue.pop_front() {
            batch.extend_from_slice(&lines);
        }
        st.bytes = 0;
        let dropped = std::mem::take(&mut st.dropped_unreported);
        st.writing = true;
        drop(st);
        if dropped > 0 {
            let warning = format!(
                "portcullis: {dropped} log lines dropped: the log reader fell {} MiB behind\n",
                LOG_QUEUE_BYTES / (1024 * 1024)
            );
            let _ = out.write_all(warning.as_bytes());
        }
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        let mut st = lock_state(shared);
        st.writing = false;
        if st.queue.is_empty() {
            shared.written.notify_all();
        }
    }
}

/// Keeps the log writer running; [`LogGuard::finish`] waits for what is queued.
pub struct LogGuard {
    shared: Arc<LogShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogGuard {
    /// Waits until every queued line is written, or `deadline`; says on stderr what could not
    /// be written (and what was dropped) by then. Returns the lines not written.
    pub fn finish(mut self, deadline: std::time::Instant) -> u64 {
        let thread = self.thread.take();
        let mut st = lock_state(&self.shared);
        st.closed = true;
        self.shared.queued.notify_one();
        while !st.queue.is_empty() || st.writing || st.dropped_unreported > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .shared
                .written
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let unwritten: u64 =
            st.queue.iter().map(|l| count_lines(l)).sum::<u64>() + if st.writing { 1 } else { 0 };
        let dropped = st.dropped;
        drop(st);
        if unwritten > 0 {
            eprintln!("portcullis: the log reader did not take the last lines in time: about {unwritten} log lines not written");
        } else if let Some(t) = thread {
            let _ = t.join();
        }
        if dropped > 0 {
            eprintln!("portcullis: {dropped} log lines were dropped while running (the log reader was too slow)");
        }
        unwritten
    }
}

impl Drop for LogGuard {
    /// Not finished on purpose (an early return): the lines get a second.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let guard = LogGuard { shared: self.shared.clone(), thread: Some(thread) };
            guard.finish(std::time::Instant::now() + std::time::Duration::from_secs(1));
        }
    }
}

impl std::io::Write for LogWriter {
    /// `tracing-subscriber` writes each event with one `write_all`: one whole line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the global subscriber. Keep the guard, and [`LogGuard::finish`] it before exiting.
pub fn init(cfg: &LogConfig) -> Option<LogGuard> {
    let (writer, guard) = LogWriter::spawn(std::io::stdout()).ok()?;
    let filter = EnvFilter::builder().parse_lossy(&cfg.level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let access_writer = writer.clone();
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let ok = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };
    if ok {
        let enabled = tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO);
        let _ = SINK.set(Sink { writer: access_writer, format: cfg.format, enabled });
    }
    ok.then_some(guard)
}

/// The access log's target: `PORTCULLIS_LOG_LEVEL=info,portcullis::access=off` turns it off.
pub const ACCESS_TARGET: &str = "portcullis::access";

/// Where access lines go once [`init`] has run: the same non-blocking writer as every other
/// line, but formatted here, in batches.
struct Sink {
    writer: LogWriter,
    format: LogFormat,
    /// Whether the filter lets `portcullis::access` at `info` through (it does not change).
    enabled: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// A worker's access lines are flushed this long after the first one of a batch, or as soon as
/// [`ACCESS_BATCH_BYTES`] are waiting (nginx's `access_log ... buffer= flush=`).
const ACCESS_FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
const ACCESS_BATCH_BYTES: usize = 32 * 1024;

/// This thread's access lines not written yet, and what makes them written.
struct Batch {
    buf: Vec<u8>,
    /// Set on worker threads: wakes the task that writes the batch after [`ACCESS_FLUSH_DELAY`].
    /// Without one, every line is written at once.
    flusher: Option<Arc<tokio::sync::Notify>>,
    /// The current second as RFC 3339 (`2026-11-30T15:37:43`), made once a second.
    second: u64,
    second_text: String,
}

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { buf: Vec::new(), flusher: None, second: u64::MAX, second_text: String::new() })
    };
}

/// Writes what this thread has batched (a worker calls it when its runtime is done).
pub fn flush_access_lines() {
    let Some(sink) = SINK.get() else { return };
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.buf.is_empty() {
            let lines = std::mem::replace(&mut b.buf, Vec::with_capacity(ACCESS_BATCH_BYTES));
            sink.writer.send(lines);
        }
    });
}

/// On a worker's runtime: batch this thread's access lines, and write each batch shortly after
/// its first line (one write for many lines, never on the request's path).
pub fn spawn_access_flusher() {
    if SINK.get().is_none() {
        return;
    }
    let notify = Arc::new(tokio::sync::Notify::new());
    BATCH.with(|b| b.borrow_mut().flusher = Some(notify.clone()));
    tokio::spawn(async move {
        loop {
            notify.notified().await;
            tokio::time::sleep(ACCESS_FLUSH_DELAY).await;
            flush_access_lines();
        }
    });
}

/// One access line's fields.
pub struct AccessLine<'a> {
    pub method: &'a str,
    /// The path portcullis decided on.
    pub path: &'a str,
    /// The client's path, when it differs.
    pub raw_path: Option<&'a str>,
    pub status: u16,
    pub latency_ms: f64,
    pub subject: &'a str,
    pub issuer: Option<&'a str>,
    pub reason: &'a str,
    pub detail: &'a str,
    pub request_id: &'a str,
    /// The peer's IP, rendered once per connection ([`ClientAddr::ip`]).
    pub client: Option<&'a str>,
}

impl AccessLine<'_> {
    /// Writes the line: formatted here and batched when logging is set up ([`init`]), as a
    /// `tracing` event otherwise (tests that collect events, embedders with their own subscriber).
    pub fn emit(&self) {
        let Some(sink) = SINK.get() else {
            return self.event();
        };
        if !sink.enabled {
            return;
        }
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            let was_empty = b.buf.is_empty();
            let Batch { buf, second, second_text, .. } = &mut *b;
            let micros = timestamp(second, second_text);
            match sink.format {
                LogFormat::Json => self.write_json(buf, second_text, micros),
                LogFormat::Text => self.write_text(buf, second_text, micros),
            }
            if b.buf.len() >= ACCESS_BATCH_BYTES || b.flusher.is_none() {
                let lines = std::mem::replace(&mut b.buf, Vec::with_capacity(ACCESS_BATCH_BYTES));
                sink.writer.send(lines);
            } else if was_empty {
                if let Some(f) = &b.flusher {
                    f.notify_one();
                }
            }
        });
    }

    fn event(&self) {
        tracing::info!(
            target: "portcullis::access",
            method = self.method,
            path = self.path,
            raw_path = self.raw_path,
            status = self.status,
            latency_ms = self.latency_ms,
            subject = self.subject,
            issuer = self.issuer,
            reason = self.reason,
            detail = self.detail,
            request_id = self.request_id,
            client = self.client,
            "request"
        );
    }

    /// The fields after the message, in order; absent ones are left out.
    fn fields(&self) -> [(&'static str, Option<Value<'_>>); 11] {
        [
            ("method", Some(Value::Plain(self.method))),
            ("path", Some(Value::Quoted(self.path))),
            ("raw_path", self.raw_path.map(Value::Quoted)),
            ("status", Some(Value::Int(self.status))),
            ("latency_ms", Some(Value::Float(self.latency_ms))),
            ("subject", Some(Value::Quoted(self.subject))),
            ("issuer", self.issuer.map(Value::Quoted)),
            ("reason", Some(Value::Quoted(self.reason))),
            ("detail", Some(Value::Quoted(self.detail))),
            ("request_id", Some(Value::Plain(self.request_id))),
            ("client", self.client.map(Value::Plain)),
        ]
    }

    /// The shape `tracing-subscriber`'s flattened JSON gives every other line. (Written without
    /// `core::fmt`: this runs once per request, on the worker.)
    fn write_json(&self, out: &mut Vec<u8>, second: &str, micros: u32) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_time(out, second, micros);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        for (key, value) in self.fields() {
            let Some(value) = value else { continue };
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Value::Plain(v) | Value::Quoted(v) => json_str(out, v),
                number => number.push_number(out),
            }
        }
        out.extend_from_slice(b",\"target\":\"portcullis::access\"}\n");
    }

    /// The shape of `tracing-subscriber`'s text lines (without colours): `Display` for the
    /// method, the request id and the client, `Debug` (quoted) for the other strings.
    fn write_text(&self, out: &mut Vec<u8>, second: &str, micros: u32) {
        push_time(out, second, micros);
        out.extend_from_slice(b"  INFO portcullis::access: request");
        for (key, value) in self.fields() {
            let Some(value) = value else { continue };
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            match value {
                Value::Plain(v) => out.extend_from_slice(v.as_bytes()),
                Value::Quoted(v) => debug_str(out, v),
                number => number.push_number(out),
            }
        }
        out.push(b'\n');
    }
}

/// An access-line field's value, and how the text format shows it.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// Shown as it is in text (`Display`).
    Plain(&'a str),
    /// Quoted and escaped in text (`Debug`).
    Quoted(&'a str),
    Int(u16),
    Float(f64),
}

impl Value<'_> {
    /// A number, written the same way in both formats (strings are not numbers: nothing).
    fn push_number(self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            Value::Float(f) => match whole_thousandths(f) {
                Some(k) => push_thousandths(out, k),
                None => out.extend_from_slice(ryu::Buffer::new().format(f).as_bytes()),
            },
            Value::Plain(_) | Value::Quoted(_) => {}
        }
    }
}

/// `f` as a whole number of thousandths, if it is one (a latency in milliseconds to the
/// microsecond) and small enough to be written by [`push_thousandths`].
fn whole_thousandths(f: f64) -> Option<u64> {
    let k = (f * 1000.0).round();
    (f >= 0.0 && k < 1e12 && k / 1000.0 == f).then_some(k as u64)
}

/// `k / 1000` written as ryu writes that number (`12.5`, `0.125`, `3.0`), without its
/// float formatting.
fn push_thousandths(out: &mut Vec<u8>, k: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(k / 1000).as_bytes());
    let frac = k % 1000;
    let digits =
        [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let mut len = 4;
    while len > 2 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(&digits[..len]);
}

/// `2026-11-30T15:37:43.587726Z`
fn push_time(out: &mut Vec<u8>, second: &str, micros: u32) {
    out.extend_from_slice(second.as_bytes());
    let mut digits = *b".000000Z";
    let mut m = micros.min(999_999);
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&digits);
}

/// A JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A string as `Debug` quotes it; printable ASCII without `"` or `\` is copied as it is.
fn debug_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// Updates the cached `YYYY-MM-DDTHH:MM:SS` of the current second if needed; returns the
/// microseconds within it.
fn timestamp(second: &mut u64, text: &mut String) -> u32 {
    let now = std::time::SystemTime::now();
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    if since.as_secs() != *second {
        *second = since.as_secs();
        text.clear();
        let full = humantime::format_rfc3339_seconds(now).to_string();
        text.push_str(full.trim_end_matches('Z'));
    }
    since.subsec_micros()
}

/// This process's request-id prefix (random). The first call seeds aws-lc's random generator,
/// which takes a while: [`crate::server::Server::start`] makes it before serving, so no request
/// pays for it.
pub fn request_id_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

/// `<prefix>-<counter in hex>`, unique within the process and across restarts.
fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    request_id_for(request_id_prefix(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Bytes of a worker's block of request ids.
const ID_BLOCK: usize = 4096;

thread_local! {
    /// The worker's current block: each id is split off it, so that an id is neither copied
    /// into an allocation of its own nor given one when it is first shared (it is shared three
    /// times: the request, the response, the access line).
    static ID_BLOCK_LEFT: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
}

/// `<prefix>-<n in hex>` (`format!("{prefix}-{n:x}")` without `core::fmt`), for a prefix of at
/// most 8 bytes.
fn request_id_for(prefix: &str, n: u64) -> HeaderValue {
    let prefix = prefix.as_bytes();
    let mut id = [0u8; 8 + 1 + 16];
    id[..prefix.len()].copy_from_slice(prefix);
    id[prefix.len()] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    let start = prefix.len() + 1;
    for (i, d) in id[start..start + digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    let id = &id[..start + digits];
    let bytes = ID_BLOCK_LEFT.with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() < id.len() {
            *block = bytes::BytesMut::with_capacity(ID_BLOCK);
        }
        block.extend_from_slice(id);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("0"))
}

/// The longest client-sent `X-Request-Id` kept.
pub const MAX_CLIENT_REQUEST_ID: usize = 64;

/// Whether a client-sent request id is kept: short, and only characters that need no quoting
/// in any log format (letters, digits, `-`, `_`, `.`, `:`, `/`, `+`, `=`, `@`).
fn is_safe_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_CLIENT_REQUEST_ID
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

/// A client-sent `X-Request-Id` is kept when safe (so traces join up across hops); otherwise a
/// new one is made. (tower-http's `SetRequestId` keeps whatever the client sent, however long or
/// whatever it holds, and would need this check beside it as a layer of its own.)
fn request_id<B>(req: &Request<B>) -> HeaderValue {
    let mut values = req.headers().get_all(&X_REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(v), None) if is_safe_request_id(v.as_bytes()) => Some(v),
        _ => None,
    };
    match keep {
        Some(v) => v.clone(),
        None => new_request_id(),
    }
}

/// An access line for a request hyper answered on its own, before any layer saw it: a head it
/// could not parse (`400`), one over its limits (`431`, `414`). Such answers carry no
/// `X-Request-Id` (hyper writes them), but the line has one, so that it can be found.
pub fn log_unparsed(client: std::net::SocketAddr, error: &hyper::Error) {
    if !error.is_parse() || error.is_parse_version_h2() {
        return;
    }
    let status: u16 = if error.is_parse_too_large() {
        if error.to_string().contains("URI") {
            414
        } else {
            431
        }
    } else {
        400
    };
    let id = new_request_id();
    AccessLine {
        method: "-",
        path: "-",
        raw_path: None,
        status,
        latency_ms: 0.0,
        subject: "-",
        issuer: None,
        reason: "bad_request_head",
        detail: &error.to_string(),
        request_id: id.to_str().unwrap_or(""),
        client: Some(&client.ip().to_string()),
    }
    .emit();
}

/// The outermost layer: gives every request an id (sent to the app, echoed to the client, shown
/// in error bodies) and writes one `info` line per request on target `portcullis::access`.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let id = request_id(&req);
        // the layers below read it from the header ([`request_id_of`])
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        let method = req.method().clone();
        // A clone of the URI shares its bytes: no copy of the path.
        let uri = req.uri().clone();
        let client = req.extensions().get::<ClientAddr>().and_then(|c| c.ip.clone());
        // A panic in any layer below (or in the app's body handling there) becomes a 500 with
        // this request's id and access line, never a connection dropped without an answer.
        // (tower-http's CatchPanic does this too, but boxes every response body again: 56,267
        // -> 56,539 instructions per proxied request, benches/callgrind.sh 2000.)
        let inner = &mut self.inner;
        let fut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || inner.call(req)));
        Box::pin(async move {
            let caught = match fut {
                Ok(fut) => std::panic::AssertUnwindSafe(fut).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            let mut resp = match caught {
                Ok(r) => r?,
                Err(panic) => panicked(panic.as_ref(), &id),
            };
            resp.headers_mut().insert(X_REQUEST_ID, id.clone());
            // milliseconds, to the microsecond
            let latency_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            let decision = resp.extensions().get::<Decision>();
            // The path portcullis decided on; the client's beside it when they differ.
            let normalized = resp.extensions().get::<crate::path::NormalizedPath>();
            let (path, raw_path) = match normalized {
                Some(n) => (n.0.as_str(), Some(uri.path())),
                None => (uri.path(), None),
            };
            let identity = decision.and_then(|d| d.identity.as_ref());
            AccessLine {
                method: method.as_str(),
                path,
                raw_path,
                status: resp.status().as_u16(),
                latency_ms,
                subject: identity.map(|i| i.subject.as_str()).unwrap_or("-"),
                issuer: identity.map(|i| i.issuer.as_str()),
                reason: decision.map(|d| d.reason.as_ref()).unwrap_or("-"),
                detail: decision.and_then(|d| d.detail.as_deref()).unwrap_or(""),
                request_id: id.to_str().unwrap_or(""),
                client: client.as_ref().and_then(|c| c.to_str().ok()),
            }
            .emit();
            Ok(resp)
        })
    }
}

/// The answer for a request whose handling panicked: `500`, and the panic's message in the log
/// (it comes from our code, never from request data).
fn panicked(panic: &(dyn std::any::Any + Send), id: &HeaderValue) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    tracing::error!(request_id = id.to_str().unwrap_or(""), panic = %message, "request handling panicked; answered 500");
    let mut resp = Response::new(Body::from("{\"error\":\"internal_error\"}"));
    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut d = Decision::new("panic");
    d.detail = Some(message);
    resp.extensions_mut().insert(d);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_below_is_a_500_with_its_request_id_not_a_dropped_connection() {
        use std::convert::Infallible;
        use tower::{service_fn, ServiceBuilder, ServiceExt};
        // in the future the layer returns, and in the call itself
        let in_future = ServiceBuilder::new().layer(AccessLogLayer).service(service_fn(
            |_req: Request<Body>| async move {
                if true {
                    panic!("a bug in a layer");
                }
                Ok::<_, Infallible>(Response::new(Body::empty()))
            },
        ));
        #[derive(Clone)]
        struct PanicsInCall;
        impl Service<Request<Body>> for PanicsInCall {
            type Response = Response<Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<Body>) -> Self::Future {
                panic!("a bug before the future")
            }
        }
        let in_call = ServiceBuilder::new().layer(AccessLogLayer).service(PanicsInCall);
        for resp in [
            in_future.oneshot(Request::new(Body::empty())).await.unwrap(),
            in_call.oneshot(Request::new(Body::empty())).await.unwrap(),
        ] {
            assert_eq!(resp.status(), 500);
            assert!(resp.headers().contains_key(X_REQUEST_ID));
            let d = resp.extensions().get::<Decision>().unwrap();
            assert_eq!(d.reason, "panic");
            assert!(d.detail.as_deref().unwrap().starts_with("a bug"), "{:?}", d.detail);
        }
    }

    fn line<'a>(path: &'a str, detail: &'a str, issuer: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            method: "GET",
            path,
            raw_path: Some("/%61"),
            status: 403,
            latency_ms: 0.125,
            subject: "alice",
            issuer,
            reason: "forbidden",
            detail,
            request_id: "0a1b2c3d-ff",
            client: Some("127.0.0.1"),
        }
    }

    #[test]
    fn json_lines_are_json_with_every_field() {
        let mut out = Vec::new();
        line("/a\"b\\c\u{1}é", "no \"group\"\n", Some("https://idp")).write_json(
            &mut out,
            "2026-11-30T15:37:43",
            7,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-11-30T15:37:43.000007Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], ACCESS_TARGET);
        assert_eq!(v["path"], "/a\"b\\c\u{1}é");
        assert_eq!(v["raw_path"], "/%61");
        assert_eq!(v["status"], 403);
        assert_eq!(v["latency_ms"], 0.125);
        assert_eq!(v["detail"], "no \"group\"\n");
        assert_eq!(v["issuer"], "https://idp");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["request_id"], "0a1b2c3d-ff");
        let mut out = Vec::new();
        line("/", "", None).write_json(&mut out, "2026-11-30T15:37:43", 0);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("issuer").is_none(), "{v}");
    }

    #[test]
    fn text_lines_quote_like_debug() {
        for s in ["/plain/path", "/a\"b", "/back\\slash", "/ctl\u{7}", "/é", "", "/tab\t"] {
            let mut out = Vec::new();
            debug_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{s:?}"));
        }
        let mut out = Vec::new();
        line("/x", "d", Some("i")).write_text(&mut out, "2026-11-30T15:37:43", 123_456);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-30T15:37:43.123456Z  INFO portcullis::access: request method=GET path=\"/x\" \
             raw_path=\"/%61\" status=403 latency_ms=0.125 subject=\"alice\" issuer=\"i\" \
             reason=\"forbidden\" detail=\"d\" request_id=0a1b2c3d-ff client=127.0.0.1\n"
        );
    }

    #[test]
    fn request_ids_are_the_prefix_and_a_hex_counter() {
        let prefix = request_id_prefix();
        assert_eq!(prefix.len(), 8);
        let a = new_request_id();
        let b = new_request_id();
        let n = |v: &HeaderValue| {
            let s = v.to_str().unwrap();
            let (p, n) = s.split_once('-').unwrap();
            assert_eq!(p, prefix);
            assert!(!n.starts_with('0') || n == "0", "{s}");
            u64::from_str_radix(n, 16).unwrap()
        };
        assert!(n(&b) > n(&a));
    }

    #[test]
    fn request_ids_are_formatted_like_format() {
        for n in [0, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX >> 4, u64::MAX] {
            assert_eq!(request_id_for("0a1b2c3d", n), format!("0a1b2c3d-{n:x}").as_str());
        }
        // ids cut from the worker's blocks, across several blocks, all kept at once: each is
        // its own, intact
        let ids: Vec<HeaderValue> =
            (0..3 * ID_BLOCK as u64 / 10).map(|n| request_id_for("0a1b2c3d", n << 20)).collect();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(id, format!("0a1b2c3d-{:x}", (n as u64) << 20).as_str());
        }
    }

    #[test]
    fn latencies_are_written_as_ryu_writes_them() {
        let ks = (0..300_000u64).chain([999_999, 1_000_000, 123_456_789, 999_999_999_999]);
        for k in ks {
            let f = k as f64 / 1e3;
            let mut ours = Vec::new();
            Value::Float(f).push_number(&mut ours);
            assert_eq!(std::str::from_utf8(&ours).unwrap(), ryu::Buffer::new().format(f), "{k}");
        }
        // not whole thousandths, or too large: ryu itself
        for f in [0.0001, 1e13, -1.0, f64::NAN] {
            assert_eq!(whole_thousandths(f), None, "{f}");
        }
        let mut out = Vec::new();
        Value::Float(0.0001).push_number(&mut out);
        assert_eq!(out, b"0.0001");
    }

    #[test]
    fn timestamps_cache_the_second() {
        let (mut second, mut text) = (u64::MAX, String::new());
        timestamp(&mut second, &mut text);
        assert_eq!(text.len(), "2026-11-30T15:37:43".len(), "{text}");
        assert!(text.as_bytes()[10] == b'T' && !text.ends_with('Z'), "{text}");
        let first = second;
        timestamp(&mut second, &mut text);
        assert!(second == first || second == first + 1);
    }
}
