//! Protocols beside plain request/response: WebSockets after authentication, through the real
//! server, with a real client and echo server (tokio-tungstenite).

// tungstenite's handshake callback returns its (large) error response by value.
#![allow(clippy::result_large_err)]

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The headers of one handshake.
type Handshake = Vec<(String, String)>;

/// A WebSocket echo app that records the headers of each handshake it accepts.
struct EchoApp {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    closed: Arc<Mutex<usize>>,
}

impl EchoApp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(0));
        let (h, c) = (handshakes.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    let record =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            h.lock().unwrap().push(
                                req.headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                            );
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    *c.lock().unwrap() += 1;
                });
            }
        });
        Self { addr, handshakes, closed }
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn websockets_pass_after_authentication_and_rules() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let app = EchoApp::start().await;
    let o = Opts {
        extra: "[[authorization.rules]]\npath = \"/admin\"\ngroups = [\"admins\"]\n".into(),
        ..Opts::default()
    };
    let proxy = start_proxy(&issuer.issuer(), &format!("http://{}", app.addr), o, true).await;
    let ws_url = |p: &str| format!("ws://{}{p}", proxy.addr);
    let with_token = |p: &str, user: &str| {
        let mut req = ws_url(p).into_client_request().unwrap();
        let t = format!("Bearer {}", issuer.token_for(user, AUD));
        req.headers_mut().insert("authorization", t.parse().unwrap());
        req.headers_mut().insert("x-forwarded-user", "mallory".parse().unwrap());
        req
    };

    // allowed: the handshake reaches the app with the identity, and messages echo both ways
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(with_token("/chat", "alice")).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    // silent on both sides for longer than an idle HTTP/1.1 connection takes to be parked:
    // an upgraded connection is never parked
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(proxy.server.as_ref().unwrap().connections().1, 0);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still here"));
    let big = "x".repeat(256 * 1024);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(big));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let shakes = app.handshakes.lock().unwrap().clone();
    assert_eq!(shakes.len(), 1);
    assert_eq!(header(&shakes[0], "x-forwarded-user"), Some("alice"));
    assert_eq!(header(&shakes[0], "authorization"), None);
    assert!(header(&shakes[0], "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    // both halves close together
    for _ in 0..100 {
        if *app.closed.lock().unwrap() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(*app.closed.lock().unwrap(), 1, "the app's side did not close");

    // refused upgrades never reach the app
    let no_token = tokio_tungstenite::connect_async(ws_url("/chat")).await.unwrap_err();
    assert!(no_token.to_string().contains("401"), "{no_token}");
    let bob = tokio_tungstenite::connect_async(with_token("/admin/feed", "bob")).await.unwrap_err();
    assert!(bob.to_string().contains("403"), "{bob}");
    assert_eq!(app.handshakes.lock().unwrap().len(), 1, "a refused upgrade reached the app");

    // an admin may open the admin feed
    let (mut ws, _) =
        tokio_tungstenite::connect_async(with_token("/admin/feed", "alice")).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    drop(ws);
    proxy.shutdown().await;
}

/// One request over an h2c (prior knowledge) connection: (status, body).
async fn h2c_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut send = h2c_sender(addr).await;
    let mut req = http::Request::get(format!("http://app.example{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req = req.header("x-forwarded-user", "mallory");
    let resp = send
        .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn h2c_clients_are_served_on_the_same_port() {
    let w = World::new().await;
    let (status, body) = h2c_get(w.proxy.addr, "/api/h2?x=1", Some(&w.token("alice"))).await;
    assert_eq!(status, 200, "{body}");
    let seen = w.upstream.last();
    assert_eq!(seen.path_and_query, "/api/h2?x=1");
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("host").as_deref(), Some("app.example"), "the :authority became Host");
    assert_eq!(seen.one("x-forwarded-host").as_deref(), Some("app.example"));
    let hits = w.upstream.hits();
    let (status, body) = h2c_get(w.proxy.addr, "/api/h2", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(w.upstream.hits(), hits);
    // HTTP/1.1 still works on the same port
    assert_eq!(status_of(&w.url("/api/h1"), Some(&w.token("alice"))).await, 200);
}

/// A real gRPC server (tonic's grpc.health.v1) on loopback, speaking h2c.
async fn grpc_app() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("orders", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(tokio_stream_from(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx)
}

/// The listener as the stream of connections tonic serves.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

#[tokio::test]
async fn grpc_passes_end_to_end_and_refusals_are_grpc_statuses() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let (app, _stop) = grpc_app().await;
    let o = Opts {
        upstream: "protocol = \"h2c\"".into(),
        extra: "[[authorization.rules]]\npath = \"/grpc.health.v1.Health/Watch\"\ngroups = [\"admins\"]\n".into(),
        ..Opts::default()
    };
    let proxy = start_proxy(&issuer.issuer(), &format!("http://{app}"), o, true).await;
    let channel =
        tonic::transport::Channel::from_shared(proxy.url.clone()).unwrap().connect().await.unwrap();
    let with = |user: Option<&str>| {
        let auth = user.map(|u| format!("Bearer {}", issuer.token_for(u, AUD)));
        HealthClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut().insert("authorization", a.parse().unwrap());
            }
            Ok(req)
        })
    };
    let check = || HealthCheckRequest { service: "orders".into() };

    // unary, with the response's trailers (grpc-status 0) passed back
    let resp = with(Some("alice")).check(check()).await.unwrap();
    assert_eq!(resp.into_inner().status, 1, "SERVING");
    // server streaming: the first message of a watch
    let mut watch = with(Some("alice")).watch(check()).await.unwrap().into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status, 1);
    drop(watch);
    // a service the app does not know: the app's own gRPC status comes through its trailers
    let err =
        with(Some("alice")).check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // refused by portcullis: UNAUTHENTICATED and PERMISSION_DENIED, which clients report
    let err = with(None).check(check()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains("bearer token"), "{err}");
    let err = with(Some("bob")).watch(check()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let bad = format!("Bearer {}", issuer.token_for("alice", "api://someone-else"));
    let mut c =
        HealthClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bad.parse().unwrap());
            Ok(req)
        });
    assert_eq!(c.check(check()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    proxy.shutdown().await;
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

/// An app that streams `GIB` bytes down on `/download` and counts what comes up on `/upload`.
async fn bulk_app() -> SocketAddr {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/download",
            get(|| async {
                let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
                let n = (GIB as usize) / CHUNK;
                let stream = futures_util::stream::iter(
                    (0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                axum::body::Body::from_stream(stream)
            }),
        )
        .route(
            "/upload",
            post(|body: axum::body::Body| async move {
                let mut stream = body.into_data_stream();
                let mut total = 0u64;
                while let Some(Ok(c)) = stream.next().await {
                    total += c.len() as u64;
                }
                total.to_string()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The upload body: `GIB` bytes in chunks, made as they are sent.
fn upload_body() -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>,
> {
    let chunk = bytes::Bytes::from(vec![9u8; CHUNK]);
    let n = (GIB as usize) / CHUNK;
    http_body_util::StreamBody::new(futures_util::stream::iter(
        (0..n).map(move |_| Ok(hyper::body::Frame::data(chunk.clone()))),
    ))
}

/// Sends one upload and one download over `h2` or HTTP/1.1; returns (uploaded as counted by the
/// app, downloaded).
async fn transfer(addr: SocketAddr, token: &str, h2: bool) -> (u64, u64) {
    use http_body_util::BodyExt;
    let up = http::Request::post("http://app.example/upload")
        .header("authorization", format!("Bearer {token}"))
        .header("host", "app.example")
        .body(http_body_util::Either::Left(upload_body()))
        .unwrap();
    let down = http::Request::get("http://app.example/download")
        .header("authorization", format!("Bearer {token}"))
        .header("host", "app.example")
        .body(http_body_util::Either::Right(http_body_util::Empty::<bytes::Bytes>::new()))
        .unwrap();
    let io = || async {
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap())
    };
    let (r_up, r_down) = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io().await)
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut up = up;
        up.headers_mut().remove("host");
        let mut down = down;
        down.headers_mut().remove("host");
        (send.send_request(up).await.unwrap(), send.send_request(down).await.unwrap())
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io().await).await.unwrap();
        tokio::spawn(conn);
        let r_up = send.send_request(up).await.unwrap();
        let text = r_up.into_body().collect().await.unwrap().to_bytes();
        let uploaded: u64 = String::from_utf8_lossy(&text).parse().expect("the app's byte count");
        let mut r_down = send.send_request(down).await.unwrap();
        let mut got = 0u64;
        while let Some(f) = r_down.body_mut().frame().await {
            got += f.unwrap().data_ref().map(|d| d.len() as u64).unwrap_or(0);
        }
        return (uploaded, got);
    };
    let text = r_up.into_body().collect().await.unwrap().to_bytes();
    let uploaded: u64 = String::from_utf8_lossy(&text).parse().unwrap();
    let mut r_down = r_down;
    let mut got = 0u64;
    while let Some(f) = r_down.body_mut().frame().await {
        got += f.unwrap().data_ref().map(|d| d.len() as u64).unwrap_or(0);
    }
    (uploaded, got)
}

#[tokio::test]
async fn a_gibibyte_each_way_keeps_memory_flat_over_http1_and_h2() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let app = bulk_app().await;
    // the app answers an upload after reading all of it: give it time for a gibibyte
    let config = config_text(&issuer.issuer(), &format!("http://{app}"), &Opts::default())
        .replace("response_timeout = \"2s\"", "response_timeout = \"120s\"");
    let bin = Binary::start(&config).await;
    let token = issuer.token_for("alice", AUD);
    // warm up: one small exchange of each kind, so the baseline has its buffers and pools
    assert_eq!(status_of(&format!("http://{}/download-none", bin.addr), Some(&token)).await, 404);
    let before = bin.peak_rss_kib();
    for h2 in [false, true] {
        let (up, down) = transfer(bin.addr, &token, h2).await;
        assert_eq!((up, down), (GIB, GIB), "h2: {h2}");
    }
    let grown = bin.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS before {before} KiB, grown by {grown} KiB over 4 GiB streamed");
    // 4 GiB went through; buffers are bounded, so the peak barely moves
    assert!(grown < 48 * 1024, "peak RSS grew by {grown} KiB while streaming");
    bin.stop().await;
}

/// An app that echoes the trailers it received (as a header list in the body) and answers with
/// trailers of its own.
async fn trailer_app() -> SocketAddr {
    use axum::routing::post;
    use http_body_util::BodyExt;
    let app = axum::Router::new().route(
        "/{*path}",
        post(|body: axum::body::Body| async move {
            let collected = body.collect().await.unwrap();
            let got: Vec<String> = collected
                .trailers()
                .map(|t| t.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap())).collect())
                .unwrap_or_default();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-digest", "sha-256=abc".parse().unwrap());
            trailers.insert("x-forwarded-user", "from-the-app".parse().unwrap());
            trailers.insert("content-length", "5".parse().unwrap());
            let frames = vec![
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                    got.join(";"),
                ))),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            axum::response::Response::builder()
                .header("trailer", "x-digest, x-forwarded-user, content-length")
                .body(axum::body::Body::new(http_body_util::StreamBody::new(
                    futures_util::stream::iter(frames),
                )))
                .unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn trailers_pass_both_ways_over_http1_without_what_portcullis_sets() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let app = trailer_app().await;
    let proxy =
        start_proxy(&issuer.issuer(), &format!("http://{app}"), Opts::default(), true).await;
    let req = String::from(
        "POST /public/t HTTP/1.1\r\nHost: app.example\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-Checksum, X-Forwarded-User, X_Auth_Request_Email\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Forwarded-User: mallory\r\nX_Auth_Request_Email: m@evil.example\r\n\r\n"
    );
    let r = raw(proxy.addr, &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    // the app got the client's checksum and nothing portcullis strips or sets
    assert!(r.body.contains("x-checksum=abc"), "{r:?}");
    assert!(!r.body.contains("mallory") && !r.body.contains("evil.example"), "{r:?}");
    // the app's trailers reach the client, without the forbidden ones
    let tail = r.body.to_ascii_lowercase();
    assert!(tail.contains("x-digest: sha-256=abc"), "{r:?}");
    assert!(!tail.contains("from-the-app"), "{r:?}");
    assert!(!tail.contains("content-length: 5"), "{r:?}");
    proxy.shutdown().await;
}
