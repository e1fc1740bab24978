//! WebSocket load for `benches/ws.sh`: a WebSocket echo app, and a client that counts echoed
//! messages or whole handshakes through a proxy (tokio-tungstenite on both ends).
//!
//!   ws echo ADDR                          the echo app (two worker threads), until killed
//!   ws messages URL TOKEN CONNS SECS      CONNS connections, each sending a 32-byte message and
//!                                         awaiting its echo, again and again: prints the count
//!   ws handshakes URL TOKEN CONNS SECS    CONNS tasks, each connecting, upgrading, echoing one
//!                                         message and closing, again and again: prints the count
//!
//! TOKEN `-` sends no Authorization header (the nginx baseline). Without a command (as
//! `cargo test --bench ws` runs it) it checks itself: an echo app on loopback, both loads
//! against it for a moment, and a refusal counted as a failure, not as a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str) -> Result<Client, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if token != "-" {
        let value = format!("Bearer {token}").parse().map_err(|_| "a bad token".to_string())?;
        req.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn round_trip(ws: &mut Client, payload: &Message) -> Result<(), String> {
    ws.send(payload.clone()).await.map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(m)) if m == *payload => Ok(()),
        other => Err(format!("no echo: {other:?}")),
    }
}

/// Runs `conns` tasks for `secs` seconds; the count of what they completed, or the first error.
async fn load(
    handshakes: bool,
    url: &str,
    token: &str,
    conns: usize,
    secs: f64,
) -> Result<u64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Message::binary(vec![b'x'; 32]);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (count, stop, payload) = (count.clone(), stop.clone(), payload.clone());
        let (url, token) = (url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            if handshakes {
                while !stop.load(Ordering::Relaxed) {
                    let mut ws = connect(&url, &token).await?;
                    round_trip(&mut ws, &payload).await?;
                    let _ = ws.close(None).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let mut ws = connect(&url, &token).await?;
                while !stop.load(Ordering::Relaxed) {
                    round_trip(&mut ws, &payload).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ws.close(None).await;
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(count.load(Ordering::Relaxed))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["echo", addr] => runtime().block_on(async {
            echo(TcpListener::bind(addr).await.expect("the echo app's address")).await
        }),
        [what @ ("messages" | "handshakes"), url, token, conns, secs] => {
            let conns = conns.parse().expect("CONNS");
            let secs = secs.parse().expect("SECS");
            match runtime().block_on(load(*what == "handshakes", url, token, conns, secs)) {
                Ok(n) => println!("{n}"),
                Err(e) => {
                    eprintln!("ws {what}: {e}");
                    std::process::exit(1);
                }
            }
        }
        [] => self_check(),
        _ => {
            eprintln!("usage: see the head of benches/ws.rs");
            std::process::exit(2);
        }
    }
}

fn self_check() {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let app = tokio::spawn(echo(listener));
        let messages = load(false, &url, "-", 4, 0.2).await.unwrap();
        let handshakes = load(true, &url, "t", 4, 0.2).await.unwrap();
        assert!(messages > 0 && handshakes > 0, "{messages} messages, {handshakes} handshakes");
        app.abort();
        // nothing listening: an error, never a count
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", closed.local_addr().unwrap());
        drop(closed);
        assert!(load(false, &url, "-", 1, 0.1).await.is_err());
        println!("ws: {messages} messages and {handshakes} handshakes in 0.2 s each against the echo app");
    });
}
