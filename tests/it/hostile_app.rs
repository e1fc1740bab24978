//! The app is not trusted to frame its responses: an app the tests control byte for byte (a raw
//! socket server) answers with each kind of ambiguous framing. Each must be a 502 (or, once the
//! head has gone to the client, a response cut short), and the connection must never serve
//! another request: the next request gets its own response, on a new connection. A request the
//! app never saw is sent again; one it saw is not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::devissuer::{DevIssuer, KeyAlg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{start_proxy, Opts, Proxy, AUD};

/// What the app does with a request.
#[derive(Clone)]
pub enum Reply {
    /// Writes these bytes (in one write) and waits for the next request.
    Bytes(Vec<u8>),
    /// Writes these bytes, then each later piece after a pause, then waits.
    Pieces(Vec<Vec<u8>>),
    /// Writes these bytes and closes.
    BytesThenClose(Vec<u8>),
    /// Closes without a byte.
    Close,
    /// Writes these bytes, then resets the connection (an RST, not a close).
    BytesThenReset(Vec<u8>),
    /// Writes these bytes after this long, then waits for the next request.
    After(Duration, Vec<u8>),
    /// Never answers; records `closed <path>` when the proxy closes the connection.
    Hang,
}

type Script = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

/// One request as the app read it: which connection (numbered from 0 in accept order), the
/// method and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub conn: usize,
    pub method: String,
    pub path: String,
}

/// A raw app on loopback: reads request heads (and `Content-Length` bodies) and answers each
/// by its script. `/ok/<text>` always gets a well-framed `200` with `<text>` as its body.
pub struct RawApp {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<Asked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn ok(text: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).into_bytes()
}

impl RawApp {
    pub async fn start(script: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(serve(s, n, script.clone(), log.clone()));
                n += 1;
            }
        });
        Self { addr, asked, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

async fn serve(mut s: TcpStream, conn: usize, script: Script, log: Arc<Mutex<Vec<Asked>>>) {
    let mut buf = Vec::new();
    loop {
        // a request head, and its body if it has a length
        let (method, path, body_len, head_len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut fields);
                if !matches!(req.parse(&buf[..end + 4]), Ok(httparse::Status::Complete(_))) {
                    // what the proxy sent is no request head: a desynchronised connection
                    let bad = Asked { conn, method: "-".into(), path: "unparsable".into() };
                    log.lock().unwrap().push(bad);
                    return;
                }
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
                break (
                    req.method.unwrap().to_string(),
                    req.path.unwrap().to_string(),
                    len,
                    end + 4,
                );
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        log.lock().unwrap().push(Asked { conn, method: method.clone(), path: path.clone() });
        let reply = match path.strip_prefix("/ok/") {
            Some(text) => Reply::Bytes(ok(text)),
            None => script(&method, &path),
        };
        match reply {
            Reply::Bytes(b) => {
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
            Reply::Pieces(pieces) => {
                for (i, p) in pieces.into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if s.write_all(&p).await.is_err() {
                        return;
                    }
                }
                // written whole (on loopback, in the proxy's socket buffer)
                let done = Asked { conn, method: "-".into(), path: format!("written {path}") };
                log.lock().unwrap().push(done);
            }
            Reply::BytesThenClose(b) => {
                let _ = s.write_all(&b).await;
                return;
            }
            Reply::Close => return,
            Reply::BytesThenReset(b) => {
                let _ = s.write_all(&b).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
            Reply::After(wait, b) => {
                tokio::time::sleep(wait).await;
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
            Reply::Hang => {
                let mut chunk = [0u8; 4096];
                while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
                let closed = Asked { conn, method: "-".into(), path: format!("closed {path}") };
                log.lock().unwrap().push(closed);
                return;
            }
        }
    }
}

/// The proxy (one worker, so one pool) in front of `app`, and a valid token.
async fn proxy_for(app: &RawApp) -> (DevIssuer, Proxy, String) {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let o = Opts { server: "workers = 1", ..Default::default() };
    let proxy = start_proxy(&issuer.issuer(), &app.url(), o, true).await;
    let token = issuer.token_for("alice", AUD);
    (issuer, proxy, token)
}

/// `GET path` through the proxy on a new client connection: the status and the body, or an
/// error if the response was cut short.
async fn get(
    proxy: &Proxy,
    token: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let r = c
        .request(method.parse().unwrap(), format!("{}{path}", proxy.url))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| format!("status {status}, body cut: {e}"))?;
    Ok((status, body))
}

/// After a bad answer to `/{case}`: the next request gets its own response, on a connection
/// other than the bad answer's.
async fn next_gets_its_own_response(app: &RawApp, proxy: &Proxy, token: &str, case: &str) {
    let next = get(proxy, token, "GET", &format!("/ok/after-{case}")).await.unwrap();
    assert_eq!(next, (200, format!("after-{case}")), "{case}: the next request's own response");
    let asked = app.asked();
    let bad = asked.iter().find(|a| a.path == format!("/{case}")).unwrap();
    let after = asked.iter().find(|a| a.path == format!("/ok/after-{case}")).unwrap();
    assert_ne!(after.conn, bad.conn, "{case}: the connection was used again");
}

/// Each ambiguous framing, sent whole with its head: a 502, and the app's next request (its own
/// response) arrives on a new connection, so the poison (`POISON`) never reaches anyone.
#[tokio::test]
async fn ambiguous_framing_is_a_502_and_the_connection_never_serves_again() {
    let poison = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";
    let cases: Vec<(&str, String)> = vec![
        (
            "length-and-chunked",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{poison}"),
        ),
        ("two-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 9\r\n\r\nabc".into()),
        ("listed-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc".into()),
        ("bad-chunk", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{poison}")),
        (
            "chunk-longer-than-its-size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n".into(),
        ),
        (
            "gzip-coding",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        ("interim-102", format!("HTTP/1.1 102 Processing\r\n\r\n{poison}")),
        ("unasked-101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".into()),
        ("bytes-after-length", format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{poison}")),
        ("bytes-after-204", format!("HTTP/1.1 204 No Content\r\n\r\n{poison}")),
        (
            "bytes-after-last-chunk",
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{poison}"),
        ),
        (
            "head-over-64k",
            format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(70_000)),
        ),
        ("bare-lf", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok".into()),
        ("http-2.0-line", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok".into()),
    ];
    let table: std::collections::HashMap<String, String> =
        cases.iter().map(|(k, v)| (format!("/{k}"), v.clone())).collect();
    let app = RawApp::start(move |_, path| Reply::Bytes(table[path].clone().into_bytes())).await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    for (i, (case, _)) in cases.iter().enumerate() {
        // a warm pooled connection first: the bad answer comes on a kept-alive one
        assert_eq!(
            get(&proxy, &token, "GET", &format!("/ok/warm{i}")).await.unwrap().1,
            format!("warm{i}")
        );
        let got = get(&proxy, &token, "GET", &format!("/{case}")).await;
        assert_eq!(got.as_ref().map(|(s, _)| *s), Ok(502), "{case}: {got:?}");
        assert!(!got.unwrap().1.contains("POISON"), "{case}");
        next_gets_its_own_response(&app, &proxy, &token, case).await;
    }
    proxy.shutdown().await;
}

/// A bad chunk, or bytes after the end, that arrive after the head went to the client: the
/// client's response is cut short (never completed with what the app sent), and the connection
/// is not used again.
#[tokio::test]
async fn framing_broken_mid_body_cuts_the_response_and_the_connection() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
    let app = RawApp::start(move |_, path| match path {
        "/late-bad-chunk" => Reply::Pieces(vec![head.clone(), b"zz\r\n".to_vec()]),
        "/late-trailing" => Reply::Pieces(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec(),
            b"worldPOISON".to_vec(),
        ]),
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    for case in ["late-bad-chunk", "late-trailing"] {
        get(&proxy, &token, "GET", "/ok/warm").await.unwrap();
        let got = get(&proxy, &token, "GET", &format!("/{case}")).await;
        assert!(got.is_err(), "{case}: a response cut short, not {got:?}");
        next_gets_its_own_response(&app, &proxy, &token, case).await;
    }
    proxy.shutdown().await;
}

/// Bytes the app sends unasked on a connection idle in the pool (a second response smuggled
/// after a clean one): the connection is dropped before use, and the next request gets its own
/// response on a new one.
#[tokio::test]
async fn bytes_sent_on_an_idle_pooled_connection_never_answer_the_next_request() {
    let app = RawApp::start(|_, path| match path {
        "/clean" => Reply::Pieces(vec![
            ok("clean"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON".to_vec(),
        ]),
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    for i in 0..3 {
        assert_eq!(get(&proxy, &token, "GET", "/clean").await.unwrap(), (200, "clean".into()));
        // until the unasked bytes are in the proxy's socket buffer
        for _ in 0..500 {
            if app.asked().iter().filter(|a| a.method == "-").count() > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let next = get(&proxy, &token, "GET", &format!("/ok/{i}")).await.unwrap();
        assert_eq!(next, (200, i.to_string()), "round {i}");
    }
    let asked = app.asked();
    let clean: Vec<usize> = asked.iter().filter(|a| a.path == "/clean").map(|a| a.conn).collect();
    let next: Vec<usize> =
        asked.iter().filter(|a| a.path.starts_with("/ok/")).map(|a| a.conn).collect();
    for (c, n) in clean.iter().zip(&next) {
        assert_ne!(c, n, "a request went on the connection with unasked bytes: {asked:?}");
    }
    proxy.shutdown().await;
}

/// upstream.response_timeout (2 s here) is kept per request: two answers of 1.5 s each on
/// one kept-alive connection both pass (the wait is counted afresh for each request); an app
/// that never answers gets a 504, no sooner than the timeout, and its connection is closed.
#[tokio::test]
async fn the_response_timeout_counts_each_request_on_its_own_connection() {
    let app = RawApp::start(|_, path| match path {
        "/hang" => Reply::Hang,
        _ => Reply::After(Duration::from_millis(1500), ok("slow")),
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    for path in ["/slow/1", "/slow/2"] {
        assert_eq!(get(&proxy, &token, "GET", path).await.unwrap(), (200, "slow".into()), "{path}");
    }
    let asked = app.asked();
    assert_eq!(asked[0].conn, asked[1].conn, "one connection for both: {asked:?}");
    let start = std::time::Instant::now();
    let (status, body) = get(&proxy, &token, "GET", "/hang").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("gateway_timeout"), "{body}");
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    // the app sees its connection closed
    for _ in 0..100 {
        if app.asked().iter().any(|a| a.path == "closed /hang") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.asked().iter().any(|a| a.path == "closed /hang"), "{:?}", app.asked());
    next_gets_its_own_response(&app, &proxy, &token, "hang").await;
}

/// `HEAD`, 204 and 304 have no body whatever their fields say, and such a response leaves the
/// connection ready for the next request (which gets its own response on it).
#[tokio::test]
async fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let app = RawApp::start(|method, path| match (method, path) {
        ("HEAD", _) => Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()),
        (_, "/no-content") => Reply::Bytes(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        (_, "/not-modified") => {
            Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_vec())
        }
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    get(&proxy, &token, "GET", "/ok/warm").await.unwrap();
    for (method, path, status) in
        [("HEAD", "/resource", 200), ("GET", "/no-content", 204), ("GET", "/not-modified", 304)]
    {
        let got = get(&proxy, &token, method, path).await.unwrap();
        assert_eq!(got, (status, String::new()), "{method} {path}");
        let next = get(&proxy, &token, "GET", &format!("/ok/after{status}")).await.unwrap();
        assert_eq!(next, (200, format!("after{status}")));
    }
    // all of it on the one warm connection
    let conns: Vec<usize> = app.asked().iter().map(|a| a.conn).collect();
    assert!(conns.iter().all(|c| *c == conns[0]), "{:?}", app.asked());
    proxy.shutdown().await;
}

/// A kept-alive connection the app closed before reading the next request: a `GET` goes again
/// on a new connection and succeeds. A `POST` the app read and then closed on without answering
/// is a 502 and reached the app once: it is never sent twice.
#[tokio::test]
async fn only_a_request_the_app_never_saw_is_sent_again() {
    let app = RawApp::start(|method, path| match (method, path) {
        // answers, then closes without saying so (no `Connection: close`)
        (_, "/once") => Reply::BytesThenClose(ok("once")),
        ("POST", "/read-then-close") => Reply::Close,
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    for i in 0..5 {
        assert_eq!(get(&proxy, &token, "GET", "/once").await.unwrap(), (200, "once".into()));
        let next = get(&proxy, &token, "GET", &format!("/ok/{i}")).await.unwrap();
        assert_eq!(next, (200, i.to_string()));
    }
    get(&proxy, &token, "GET", "/ok/warm").await.unwrap();
    let got = get(&proxy, &token, "POST", "/read-then-close").await.unwrap();
    assert_eq!(got.0, 502, "{got:?}");
    let posts = app.asked().iter().filter(|a| a.method == "POST").count();
    assert_eq!(posts, 1, "a request the app saw was sent again: {:?}", app.asked());
    proxy.shutdown().await;
}

/// An app that resets its connection mid-body: the client's response is cut (or a 502, if the
/// reset overtook the head), at once, and the next request is served on a new connection.
#[tokio::test]
async fn a_reset_mid_body_cuts_the_response_and_the_proxy_goes_on() {
    let app = RawApp::start(|_, path| match path {
        "/reset" => Reply::BytesThenReset(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nonly this".to_vec(),
        ),
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    match get(&proxy, &token, "GET", "/reset").await {
        Err(_) => {}
        Ok((status, body)) => assert_eq!(status, 502, "{body}"),
    }
    assert_eq!(get(&proxy, &token, "GET", "/ok/next").await.unwrap(), (200, "next".into()));
    let asked = app.asked();
    assert_ne!(asked[0].conn, asked[1].conn, "{asked:?}");
    proxy.shutdown().await;
}

/// A request whose body came with its head (written to the app with it in one go): the app
/// reads the body once, exactly, and the next request on the kept-alive connection is clean.
#[tokio::test]
async fn a_body_written_with_its_head_reaches_the_app_once() {
    let app = RawApp::start(|_, path| match path {
        "/post" => Reply::Bytes(ok("posted")),
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for i in 0..3 {
        let posted = client
            .post(format!("{}/post", proxy.url))
            .bearer_auth(&token)
            .body("hello world")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200);
        let next = get(&proxy, &token, "GET", &format!("/ok/{i}")).await.unwrap();
        assert_eq!(next, (200, i.to_string()));
    }
    let asked = app.asked();
    assert_eq!(asked.len(), 6, "{asked:?}");
    assert!(asked.iter().all(|a| a.method == "POST" || a.method == "GET"), "{asked:?}");
    assert!(asked.iter().all(|a| a.conn == asked[0].conn), "one connection: {asked:?}");
    proxy.shutdown().await;
}

/// An app that answers before it has read the request's body (as an early `413` does): the
/// connection, with the rest of that body never written, is not used for another request (the
/// app would read the next head after the body's first bytes).
#[tokio::test]
async fn a_connection_whose_request_was_not_written_whole_is_never_reused() {
    let app = RawApp::start(|_, path| match path {
        // RawApp reads no chunked body: it answers right after the head
        "/early" => {
            Reply::Bytes(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n".to_vec())
        }
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    // a client whose body is still coming: one chunk, then nothing (its socket held open)
    let mut client = TcpStream::connect(proxy.url.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nxxxxx\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before an answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 413"), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(get(&proxy, &token, "GET", "/ok/next").await.unwrap(), (200, "next".into()));
    let asked = app.asked();
    assert!(asked.iter().all(|a| a.path != "unparsable"), "{asked:?}");
    let early = asked.iter().find(|a| a.path == "/early").unwrap();
    let next = asked.iter().find(|a| a.path == "/ok/next").unwrap();
    assert_ne!(early.conn, next.conn, "{asked:?}");
    drop(client);
    proxy.shutdown().await;
}

/// A kept-alive connection the app closes on the next request without a byte of answer (as an
/// app closing its idle connections may, just as a request arrives): a bodiless `GET` goes
/// again, once, on a new connection, head and all, and the client gets that answer.
#[tokio::test]
async fn a_get_the_app_closed_on_unanswered_goes_again_whole_on_a_new_connection() {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = first.clone();
    let app = RawApp::start(move |_, path| match path {
        "/again" if f.swap(false, std::sync::atomic::Ordering::SeqCst) => Reply::Close,
        "/again" => Reply::Bytes(ok("again")),
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    assert_eq!(get(&proxy, &token, "GET", "/ok/warm").await.unwrap(), (200, "warm".into()));
    assert_eq!(get(&proxy, &token, "GET", "/again").await.unwrap(), (200, "again".into()));
    let asked = app.asked();
    let again: Vec<&Asked> = asked.iter().filter(|a| a.path == "/again").collect();
    assert_eq!(again.len(), 2, "{asked:?}");
    assert_eq!(again[0].conn, asked[0].conn, "first on the kept-alive connection: {asked:?}");
    assert_ne!(again[1].conn, again[0].conn, "then on a new one: {asked:?}");
    proxy.shutdown().await;
}

/// Answers delimited by the app closing (no length, no chunks) pass whole, and their connection
/// is not reused.
#[tokio::test]
async fn a_body_until_close_passes_whole_and_its_connection_ends() {
    let big = "x".repeat(300_000);
    let body = big.clone();
    let app = RawApp::start(move |_, path| match path {
        "/until-close" => {
            Reply::BytesThenClose(format!("HTTP/1.1 200 OK\r\n\r\n{body}").into_bytes())
        }
        _ => Reply::Close,
    })
    .await;
    let (_issuer, proxy, token) = proxy_for(&app).await;
    let got = get(&proxy, &token, "GET", "/until-close").await.unwrap();
    assert_eq!(got.0, 200);
    assert!(got.1 == big, "the body arrived cut: {} bytes", got.1.len());
    assert_eq!(get(&proxy, &token, "GET", "/ok/next").await.unwrap(), (200, "next".into()));
    let asked = app.asked();
    assert_ne!(asked[0].conn, asked[1].conn);
    proxy.shutdown().await;
}

/// What a client made of a response: status, fields, body and trailers, or an error.
type Outcome = Result<(u16, Vec<(String, Vec<u8>)>, Vec<u8>, Vec<(String, Vec<u8>)>), ()>;

fn fields(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
}

/// An app that answers one request with `bytes` and closes.
async fn one_shot(bytes: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(&bytes).await;
    });
    addr
}

async fn collect<B>(status: u16, headers: &http::HeaderMap, body: B) -> Outcome
where
    B: http_body::Body,
{
    use http_body_util::BodyExt;
    let collected = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    let trailers = collected.trailers().map(fields).unwrap_or_default();
    Ok((status, fields(headers), collected.to_bytes().to_vec(), trailers))
}

async fn with_lean(bytes: Vec<u8>, method: &str) -> Outcome {
    let addr = one_shot(bytes).await;
    let up = portcullis::upstream::Upstream::new(
        addr.to_string(),
        Duration::from_secs(2),
        Duration::from_secs(5),
        false,
        4,
        String::new(),
    );
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "app")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = up.send(req, false).await.map_err(|_| ())?;
    let (parts, body) = resp.into_parts();
    match body {
        portcullis::upstream::Answer::H1(b) => {
            collect(parts.status.as_u16(), &parts.headers, b).await
        }
        portcullis::upstream::Answer::H2(_) => Err(()),
    }
}

async fn with_hyper(bytes: Vec<u8>, method: &str) -> Outcome {
    let addr = one_shot(bytes).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "app")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|_| ())?;
    let (mut parts, body) = resp.into_parts();
    // the lean client hands on the end-to-end fields only
    portcullis::headers::remove_hop_by_hop(&mut parts.headers);
    collect(parts.status.as_u16(), &parts.headers, body).await
}

/// Differential: generated well-framed responses (lengths, chunks cut at several sizes, with
/// extensions and trailers, bodies until close, `HEAD`, repeated fields) read by the lean
/// client and by hyper's give the same status, fields, body and trailers; responses both must
/// refuse are refused by both; and what the lean client refuses on purpose (hyper is more
/// lenient with some) is refused.
#[tokio::test]
async fn the_lean_client_reads_what_hypers_reads_and_refuses_what_it_must() {
    let mut valid: Vec<(Vec<u8>, &str)> = Vec::new();
    for body in ["", "a", &"0123456789".repeat(500)] {
        for status in ["200 OK", "404 Not Found"] {
            let h = format!(
                "HTTP/1.1 {status}\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-App: yes\r\n"
            );
            valid.push((
                format!("{h}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes(),
                "GET",
            ));
            valid.push((format!("{h}Content-Length: {}\r\n\r\n", body.len()).into_bytes(), "HEAD"));
            valid.push((format!("{h}Connection: close\r\n\r\n{body}").into_bytes(), "GET"));
            for (piece, ext, trailers) in [
                (1, "", ""),
                (7, ";name=value", ""),
                (4096, "", "X-Checksum: 42\r\nX-More: a b\r\n"),
            ] {
                let mut t = format!("{h}Transfer-Encoding: chunked\r\n\r\n");
                for c in body.as_bytes().chunks(piece) {
                    t.push_str(&format!(
                        "{:x}{ext}\r\n{}\r\n",
                        c.len(),
                        std::str::from_utf8(c).unwrap()
                    ));
                }
                t.push_str(&format!("0\r\n{trailers}\r\n"));
                valid.push((t.into_bytes(), "GET"));
            }
        }
    }
    valid.push((b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec(), "GET"));
    valid.push((b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(), "GET"));
    valid.push((
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "GET",
    ));
    for (bytes, method) in &valid {
        let lean = with_lean(bytes.clone(), method).await;
        let hyper = with_hyper(bytes.clone(), method).await;
        assert!(lean.is_ok(), "{}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
        assert_eq!(lean, hyper, "{}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
    }
    // refused by both
    let both: [&[u8]; 5] = [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ];
    for bytes in both {
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(with_lean(bytes.to_vec(), "GET").await, Err(()), "{text}");
        assert_eq!(with_hyper(bytes.to_vec(), "GET").await, Err(()), "{text}");
    }
    // refused by the lean client on purpose (a second reader could frame them differently)
    let stricter: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    ];
    for bytes in stricter {
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(with_lean(bytes.to_vec(), "GET").await, Err(()), "{text}");
    }
}
