//! The event stream: replay then live with no gap and no duplicate, heartbeats,
//! and slow subscribers that are cut loose without slowing anyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::io::FromRawFd;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

fn ids(events: &[serde_json::Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

async fn metric(c: &Client, name: &str) -> i64 {
    let r = c.get("/metrics").await;
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {}", r.text))
}

/// A `since` past the newest event (what a client holds after the server's
/// database was restored from an older backup) is refused with the id to go on
/// from, on the list and the stream alike. It used to be answered with silence
/// until new ids caught up, so the client never learnt what it missed.
#[actix_web::test]
async fn a_since_past_the_newest_event_is_refused_with_where_to_go_on() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    c.post("/v1/organizations", json!({"name": "acme"})).await;
    let newest = c.get("/v1/organizations/acme/events?tail=1").await.body["next_since"].as_i64().unwrap();
    assert!(newest > 0);
    let ahead = newest + 1000;
    for path in [format!("/v1/organizations/acme/events?since={ahead}"), format!("/v1/organizations/acme/stream?since={ahead}")] {
        let r = c.get(&path).await;
        assert_eq!((r.status, r.code()), (400, "invalid_since"), "{path}: {r:?}");
        assert!(r.body["message"].as_str().unwrap().contains(&format!("since={newest}")), "{path}: {r:?}");
    }
    // Up to the newest id is fine, and the stream then delivers what comes next.
    assert_eq!(c.get(&format!("/v1/organizations/acme/events?since={newest}")).await.status, 200);
    let mut ws = c.ws(&format!("/v1/organizations/acme/stream?since={newest}")).await;
    c.patch("/v1/organizations/acme", json!({"display_name": "Acme"})).await;
    let events = ws.events(1, Duration::from_secs(10)).await;
    assert_eq!(events[0]["kind"], "organization.updated");
}

#[actix_web::test]
async fn replay_then_live_without_gap_or_duplicate() {
    // The test reads nothing while it creates 40 tasks (slow on a loaded
    // machine), so it answers no ping meanwhile: a long client timeout keeps the
    // server from dropping it for that.
    let (server, dir) = Server::start(&[("KILN_EVENTS__CLIENT_TIMEOUT_SECS", "3600")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    for i in 0..5 {
        c.create_task("default", "app", &format!("before {i}")).await;
    }
    let history = c.events_since("default", 0).await;
    let cut = history[2]["id"].as_i64().unwrap();

    // Events keep arriving while the client connects and replays.
    let writer = {
        let c = c.clone();
        actix_web::rt::spawn(async move {
            for i in 0..40 {
                c.create_task("default", "app", &format!("during {i}")).await;
            }
        })
    };
    let mut ws = c.ws(&format!("/v1/organizations/default/stream?since={cut}")).await;
    writer.await.unwrap();
    let all = c.events_since("default", 0).await;
    let expected: Vec<i64> = ids(&all).into_iter().filter(|id| *id > cut).collect();
    let got = ws.events(expected.len(), WAIT).await;
    assert_eq!(ids(&got), expected, "the stream matches the history exactly");
    assert_eq!(got.last().unwrap(), all.last().unwrap(), "events on the stream equal the stored ones");

    // And live after that.
    // (The tasks may still be changing status: those events come live too, in order.)
    c.patch("/v1/organizations/default", json!({"display_name": "after"})).await;
    let mut next = expected.last().unwrap() + 1;
    loop {
        let live = ws.events(1, WAIT).await;
        assert_eq!(live[0]["id"].as_i64().unwrap(), next, "live events follow without a gap: {live:?}");
        next += 1;
        if live[0]["kind"] == "organization.updated" {
            assert_eq!(live[0]["organization"], "default");
            break;
        }
        assert!(live[0]["task"].is_string(), "only the tasks' own progress comes before it: {live:?}");
    }
}

#[actix_web::test]
async fn without_since_only_live_events_and_browsers_can_use_access_token() {
    let (server, _dir) = Server::start(&[]);
    let anon = server.client().with_token(None);
    let mut ws = anon.ws(&format!("/v1/organizations/default/stream?access_token={}", server.token)).await;
    let c = server.client();
    c.patch("/v1/organizations/default", json!({"display_name": "Live"})).await;
    let got = ws.events(1, WAIT).await;
    assert_eq!(got[0]["kind"], "organization.updated", "history before connecting is not replayed");
    drop(ws);
    // The access log line is written when the connection ends.
    eventually(WAIT, "the stream request is logged", || {
        let log = server.log();
        async move { log.contains("GET /v1/organizations/default/stream").then_some(()) }
    })
    .await;
    assert!(!server.log().contains(&server.token), "tokens in query strings never reach the log");
}

/// Opens a WebSocket with a tiny receive buffer and never reads from it, like a
/// client on a stalled network.
fn stalled_client(url: &str, path: &str, token: &str) -> TcpStream {
    let addr: std::net::SocketAddrV4 = url.trim_start_matches("http://").parse().unwrap();
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 2048;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(fd, &sin as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32);
        assert_eq!(rc, 0, "connect");
        TcpStream::from_raw_fd(fd)
    };
    let mut s = stream;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    // Read the handshake answer byte by byte, so no frame is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads server frames until a close frame; answers its code and reason.
fn read_until_close(s: &mut TcpStream) -> (u16, String, usize) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut texts = 0;
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("frame header");
        let opcode = h[0] & 0x0f;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        match opcode {
            0x1 => texts += 1,
            0x8 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).to_string(), texts);
            }
            _ => {}
        }
    }
}

#[actix_web::test]
async fn a_slow_subscriber_is_closed_and_can_resume_while_others_get_everything() {
    let (server, dir) = Server::start(&[("KILN_EVENTS__SUBSCRIBER_BUFFER", "64")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    // The fast subscriber reads all the time, on its own task.
    let mut fast = c.ws("/v1/organizations/default/stream?since=0").await;
    let fast_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let seen = fast_seen.clone();
        actix_web::rt::spawn(async move {
            loop {
                match fast.next(Duration::from_secs(3600)).await {
                    WsItem::Event(e) => seen.lock().unwrap().push(e),
                    other => panic!("the fast subscriber was closed: {other:?}"),
                }
            }
        })
    };
    let mut slow = stalled_client(&server.url, "/v1/organizations/default/stream?since=0", &server.token);

    // Produce large events (a task.created carries the description) until the
    // server reports the overflow. The `ghost` agent fails at once, so no
    // sandbox is made for these tasks.
    let description = "d".repeat(60_000);
    let mut rounds = 0;
    while metric(&c, "kiln_stream_overflows_total").await == 0 {
        rounds += 1;
        assert!(rounds < 200, "the stalled subscriber never overflowed");
        let writes: Vec<_> = (0..5)
            .map(|_| {
                let c = c.clone();
                let body = json!({"repo": "app", "description": description, "agent": "ghost"});
                async move { c.post("/v1/organizations/default/tasks", body).await }
            })
            .collect();
        for r in futures_util::future::join_all(writes).await {
            assert_eq!(r.status, 201, "{r:?}");
        }
    }
    // Let every task finish failing, so the history is complete.
    eventually(WAIT, "every ghost task has failed", || {
        let c = c.clone();
        async move {
            let mut busy = 0;
            for status in ["queued", "provisioning"] {
                let r = c.get(&format!("/v1/organizations/default/tasks?status={status}")).await;
                busy += r.body["items"].as_array().unwrap().len();
            }
            (busy == 0).then_some(())
        }
    })
    .await;
    let all = c.events_since("default", 0).await;
    // The fast subscriber got every event, in order.
    let total = all.len();
    eventually(WAIT, "the fast subscriber has every event", || {
        let n = fast_seen.lock().unwrap().len();
        async move { (n >= total).then_some(()) }
    })
    .await;
    assert!(!reader.is_finished(), "the fast subscriber is still connected");
    assert_eq!(ids(&fast_seen.lock().unwrap()), ids(&all));

    // The slow one, when it finally reads, finds what fit, then a close that says
    // where to resume.
    let (code, reason, received) = tokio::task::spawn_blocking(move || read_until_close(&mut slow)).await.unwrap();
    assert_eq!(code, 1013, "close code `try again later`: {reason}");
    let since: i64 = reason.rsplit("since=").next().unwrap().trim().parse().expect(&reason);
    let last_received = if received == 0 { 0 } else { ids(&all)[received - 1] };
    assert_eq!(since, last_received, "since names the last event it received");
    // Resuming from there gives the rest with no gap.
    let mut resumed = c.ws(&format!("/v1/organizations/default/stream?since={since}")).await;
    let rest = resumed.events(all.len() - received, WAIT).await;
    assert_eq!(ids(&rest), ids(&all)[received..].to_vec());
    eventually(WAIT, "the slow subscriber is unregistered", || {
        let c = c.clone();
        async move { (metric(&c, "kiln_stream_subscribers").await == 2).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn clients_that_miss_heartbeats_are_dropped_and_unregistered() {
    let (server, _dir) =
        Server::start(&[("KILN_EVENTS__HEARTBEAT_SECS", "1"), ("KILN_EVENTS__CLIENT_TIMEOUT_SECS", "2")]);
    let c = server.client();
    // A well-behaved client answers pings and stays.
    let mut good = c.ws("/v1/organizations/default/stream").await;
    // A silent one never answers.
    let _silent = stalled_client(&server.url, "/v1/organizations/default/stream", &server.token);
    eventually(WAIT, "two subscribers", || {
        let c = c.clone();
        async move { (metric(&c, "kiln_stream_subscribers").await == 2).then_some(()) }
    })
    .await;
    // Keep the good one pumping (it answers pings) until the silent one is gone.
    let dropped = async {
        eventually(WAIT, "the silent client is dropped", || {
            let c = c.clone();
            async move { (metric(&c, "kiln_stream_subscribers").await == 1).then_some(()) }
        })
        .await
    };
    let pump = async {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), good.next(Duration::from_secs(3600))).await;
        }
    };
    tokio::select! {
        _ = dropped => {},
        _ = pump => unreachable!(),
    }
    // The good client is still served.
    c.patch("/v1/organizations/default", json!({"display_name": "still here"})).await;
    let got = good.events(1, WAIT).await;
    assert_eq!(got[0]["data"]["display_name"], "still here");
}

/// A client frame over 64 KiB closes the stream with 1009 and a reason (it used
/// to be dropped with the connection and no close frame); smaller frames are
/// ignored and the stream goes on.
#[actix_web::test]
async fn a_client_frame_over_64_kib_closes_the_stream_with_1009() {
    use futures_util::SinkExt;
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let mut ws = c.ws("/v1/organizations/default/stream?since=0").await;
    ws.framed.send(awc::ws::Message::Text("x".repeat(60 * 1024).into())).await.unwrap();
    c.patch("/v1/organizations/default", json!({"display_name": "still here"})).await;
    // A frame under the limit is ignored: the stream goes on.
    loop {
        match ws.next(WAIT).await {
            WsItem::Event(e) if e["data"]["display_name"] == "still here" => break,
            WsItem::Event(_) => continue,
            other => panic!("the stream ended after a frame under the limit: {other:?}"),
        }
    }
    let _ = ws.framed.send(awc::ws::Message::Binary(vec![b'x'; 70 * 1024].into())).await;
    let reason = loop {
        match ws.next(WAIT).await {
            WsItem::Event(_) => continue,
            WsItem::Close(reason) => break reason.expect("a close frame with a reason"),
            WsItem::Ended => panic!("the connection ended without a close frame"),
        }
    };
    assert_eq!(reason.code, awc::ws::CloseCode::Size, "{reason:?}");
    let text = reason.description.unwrap_or_default();
    assert!(text.contains("at most 65536 bytes") && text.contains("since="), "{text}");
}
