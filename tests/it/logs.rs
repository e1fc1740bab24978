//! Request ids and access lines: one line per request with the decision, none lost or torn.

use crate::common::*;
use portcullis::devissuer::{DevIssuer, KeyAlg};

#[tokio::test]
async fn only_short_safe_request_ids_are_kept() {
    let w = World::new().await;
    let long = "a".repeat(65);
    for (sent, kept) in [
        ("abc-123_x.y:z", true),
        ("a\"b", false),
        ("a b", false),
        ("a\\b", false),
        (long.as_str(), false),
    ] {
        let r = raw_get(w.proxy.addr, "/public/x", &[("X-Request-Id", sent)]).await;
        assert_eq!(r.status, 200);
        let got = w.upstream.last().one("x-request-id").unwrap();
        assert_eq!(got == sent, kept, "{sent:?} -> {got:?}");
        assert!(got.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b)));
    }
}

#[tokio::test]
async fn access_lines_record_the_decided_path_the_issuer_and_hypers_own_answers() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let bin =
        Binary::start(&config_text(&issuer.issuer(), &upstream.url(), &Opts::default())).await;
    // the path the decision was made on, and the raw one beside it
    let r = raw_get(bin.addr, "/%61dmin/../public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().path_and_query, "/public/x");
    let t = format!("Bearer {}", issuer.token_for("alice", AUD));
    assert_eq!(raw_get(bin.addr, "/api", &[("Authorization", &t)]).await.status, 200);
    // a refusal is logged with the decided path too
    assert_eq!(raw_get(bin.addr, "/%61pi/../private", &[]).await.status, 401);
    // too many headers: our 431, with a request id
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = raw_get(bin.addr, "/public/x", &many).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.head.to_ascii_lowercase().contains("x-request-id: "), "{r:?}");
    // a head hyper cannot parse: hyper's 400, and still an access line
    let r = raw(bin.addr, "GET / HTTP/1.1\r\nHost: app.example\r\nBad Header: x\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let hits = upstream.hits();
    let logs = bin.stop().await;
    assert_eq!(hits, 2);
    let access = access_lines(&logs);
    let public = access.iter().find(|v| v["reason"] == "public_route").expect("public line");
    assert_eq!(public["path"], "/public/x", "{public}");
    assert_eq!(public["raw_path"], "/%61dmin/../public/x", "{public}");
    let verified = access.iter().find(|v| v["reason"] == "token_verified").expect("token line");
    assert_eq!(verified["issuer"], issuer.issuer(), "{verified}");
    assert_eq!(verified["path"], "/api");
    assert!(verified.get("raw_path").is_none(), "{verified}");
    let refused = access.iter().find(|v| v["status"] == 401).expect("the refusal's line");
    assert_eq!(refused["path"], "/private", "{refused}");
    assert_eq!(refused["raw_path"], "/%61pi/../private", "{refused}");
    assert!(access.iter().any(|v| v["status"] == 431), "{access:?}");
    let bad = access.iter().find(|v| v["reason"] == "bad_request_head").expect("hyper's 400");
    assert_eq!(bad["status"], 400);
    assert!(bad["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn access_lines_are_written_while_serving_in_batches_and_none_is_lost() {
    let issuer = portcullis::devissuer::DevIssuer::start(&[portcullis::devissuer::KeyAlg::Rs256])
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let mut bin =
        Binary::start(&config_text(&issuer.issuer(), &upstream.url(), &Opts::default())).await;
    // one request: its line shows up shortly, without waiting for more or for shutdown
    assert_eq!(raw_get(bin.addr, "/public/first", &[]).await.status, 200);
    let mut first = None;
    while let Some(v) = bin.next_log_line(std::time::Duration::from_secs(30)).await {
        if v["target"] == "portcullis::access" {
            first = Some(v);
            break;
        }
    }
    let first = first.expect("the access line was written while the server ran");
    assert_eq!(first["path"], "/public/first", "{first}");
    // a burst from many connections at once: one line each, none lost or torn
    let t = format!("Bearer {}", issuer.token_for("alice", AUD));
    let burst: Vec<_> = (0..200)
        .map(|i| {
            let (addr, t) = (bin.addr, t.clone());
            tokio::spawn(async move {
                raw_get(addr, &format!("/api/{i}"), &[("Authorization", &t)]).await.status
            })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 200);
    }
    let logs = bin.stop().await;
    let access = access_lines(&logs);
    let mut paths: Vec<&str> = access.iter().filter_map(|v| v["path"].as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), 200, "{paths:?}");
    let mut ids: Vec<&str> = access.iter().filter_map(|v| v["request_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(upstream.hits(), 201);
}

#[tokio::test]
async fn no_access_line_is_lost_or_torn_when_the_log_reader_stalls_through_shutdown() {
    const CLIENTS: usize = 200;
    const EACH: usize = 10;
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let text = config_text(&issuer.issuer(), &upstream.url(), &Opts::default())
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"60s\"");
    // nobody reads the binary's stdout until after SIGTERM: its pipe fills and stays full
    let bin = Binary::start(&text).await;
    let token = issuer.token_for("alice", AUD);
    // One client, built before any request's timeout starts: building one loads the TLS roots,
    // and 200 of them built in turn on this test's one thread held up the requests already
    // sent for seconds on a busy machine. (It opens a connection for each request in flight.)
    let http = client();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, t, http) = (bin.addr, token.clone(), http.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let r = http
                        .get(format!("http://{addr}/api/{c}/{i}"))
                        .bearer_auth(&t)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(upstream.hits(), CLIENTS * EACH);
    // SIGTERM during the stall; the reader comes back a few seconds later (well within
    // shutdown_timeout)
    let lines = bin.stop_with_stalled_reader(std::time::Duration::from_secs(3)).await;
    let mut access = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("a torn log line: {l:?}"));
        if v["target"] == "portcullis::access" {
            access += 1;
        }
    }
    assert_eq!(access, CLIENTS * EACH, "access lines lost");
}
