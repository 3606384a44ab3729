//! Stream fan-out: many WebSocket subscribers on `/v1/organizations/default/stream`
//! while events are appended through `Kiln::emit` at a fixed rate.
//!
//! Each event carries its send time (unix µs, taken just before `emit`) in
//! `data.sent_us`; a subscriber records `now - sent_us` for every event it gets, so
//! the latency covers batching, the SQLite commit, publishing, the server's
//! WebSocket write and the client's read. After the last event a `bench.done`
//! marker tells every subscriber how many events to expect; since the stream is
//! ordered, a subscriber that sees the marker has seen everything it will see.
//!
//! Subscribers are awc clients on their own arbiters in this process, so client
//! and server share the machine's cores.
//!
//! Knobs: `BENCH_SUBSCRIBERS` (1000), `BENCH_RATE` (events/s, 1000),
//! `BENCH_SECONDS` (10), `BENCH_CLIENT_THREADS` (2), `BENCH_DRAIN_SECS` (60).
//! `BENCH_SERVER_NODELAY=1` is an experiment, not a setting of the service: it
//! switches `TCP_NODELAY` on for the server's accepted sockets (same process, same
//! descriptors) to show what Nagle's algorithm costs the stream.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::Arbiter;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};

use common::{fmt_rate, fmt_us, knob, print_table, unix_micros, Histogram, Service};
use kiln::actors::history::NewEvent;

const ORG: &str = "default";

thread_local! {
    /// Delivery latencies seen by the subscribers of this client thread.
    static LATENCY: RefCell<Histogram> = RefCell::new(Histogram::default());
}

/// How one subscriber's run ended.
#[derive(Debug, Default)]
struct SubResult {
    received: u64,
    /// Events with an id not above the previous one (duplicates or reordering).
    out_of_order: u64,
    /// The count announced by the `bench.done` marker, if it arrived.
    expected: Option<u64>,
    /// Why the stream ended otherwise: a close frame, an error, end of stream.
    ended: Option<String>,
}

/// The position just after `needle` in `hay`.
fn after(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle).map(|p| p + needle.len())
}

/// The unsigned integer at `hay[at..]`.
fn number_at(hay: &[u8], at: usize) -> Option<u64> {
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&hay[at..at + digits]).ok()?.parse().ok()
}

/// One subscriber: connect (gated by `gate`), report, then read until the marker.
async fn subscriber(
    client: Rc<awc::Client>,
    url: Rc<String>,
    token: Rc<String>,
    gate: Rc<Semaphore>,
    connected: mpsc::UnboundedSender<Result<(), String>>,
    done: mpsc::UnboundedSender<SubResult>,
) {
    let permit = gate.acquire().await;
    let framed = client.ws(url.as_str()).bearer_auth(token.as_str()).connect().await;
    drop(permit);
    let mut framed = match framed {
        Ok((_, framed)) => {
            let _ = connected.send(Ok(()));
            framed
        }
        Err(e) => {
            let _ = connected.send(Err(e.to_string()));
            return;
        }
    };
    let mut result = SubResult::default();
    let mut last_id = 0u64;
    loop {
        match framed.next().await {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                let now = unix_micros();
                let id = after(&bytes, b"{\"id\":").and_then(|at| number_at(&bytes, at)).unwrap_or(0);
                if let Some(at) = after(&bytes, b"\"expected\":") {
                    result.expected = number_at(&bytes, at);
                    let _ = framed.send(awc::ws::Message::Close(None)).await;
                    break;
                }
                if id <= last_id {
                    result.out_of_order += 1;
                }
                last_id = id;
                result.received += 1;
                if let Some(sent) = after(&bytes, b"\"sent_us\":").and_then(|at| number_at(&bytes, at)) {
                    LATENCY.with(|h| h.borrow_mut().record(now.saturating_sub(sent)));
                }
            }
            Some(Ok(awc::ws::Frame::Ping(p))) => {
                let _ = framed.send(awc::ws::Message::Pong(p)).await;
            }
            Some(Ok(awc::ws::Frame::Close(reason))) => {
                result.ended = Some(format!("closed by server: {reason:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                result.ended = Some(format!("protocol error: {e}"));
                break;
            }
            None => {
                result.ended = Some("connection ended".into());
                break;
            }
        }
    }
    let _ = done.send(result);
}

/// The server's side of every TCP connection to `port` in this process: sockets
/// whose local port is the server's. Answers how many there are and how many have
/// `TCP_NODELAY`; with `set`, switches it on first (an experiment, see the docs).
fn server_sockets_nodelay(port: u16, set: bool) -> (usize, usize) {
    let (mut sockets, mut nodelay) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return (0, 0) };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // SAFETY: getsockname/getsockopt/setsockopt on descriptors of this process,
        // into structs we own; a descriptor that is not a socket just fails.
        unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0
                || addr.ss_family as i32 != libc::AF_INET
            {
                continue;
            }
            let sin = &*(&addr as *const _ as *const libc::sockaddr_in);
            let mut peer: libc::sockaddr_storage = std::mem::zeroed();
            let mut plen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // The listener has no peer; only accepted connections count.
            if u16::from_be(sin.sin_port) != port
                || libc::getpeername(fd, &mut peer as *mut _ as *mut libc::sockaddr, &mut plen) != 0
            {
                continue;
            }
            let one: libc::c_int = 1;
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if set {
                libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const libc::c_void, size);
            }
            let (mut value, mut vlen): (libc::c_int, libc::socklen_t) = (0, size);
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &mut value as *mut _ as *mut libc::c_void, &mut vlen);
            sockets += 1;
            nodelay += usize::from(value != 0);
        }
    }
    (sockets, nodelay)
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn run() {
    let subscribers = knob("BENCH_SUBSCRIBERS", 1000);
    let rate = knob("BENCH_RATE", 1000).max(1);
    let seconds = knob("BENCH_SECONDS", 10).max(1);
    let threads = knob("BENCH_CLIENT_THREADS", 2).max(1);
    let drain = Duration::from_secs(knob("BENCH_DRAIN_SECS", 60) as u64);
    let total = rate * seconds;
    // Large enough that no subscriber is ever dropped for lagging within one run:
    // a loss would then be a bug, not the designed overflow.
    let buffer = (total + 1000).to_string();
    let service = Service::start(&[("KILN_EVENTS__SUBSCRIBER_BUFFER", buffer.as_str())]).await;
    let kiln = service.kiln.clone();
    kiln.emit(ORG, vec![]).await.expect("history starts");

    println!("# Stream fan-out ({})", common::machine_line());
    println!(
        "{subscribers} subscribers on {threads} client threads, {rate} events/s for {seconds} s ({total} events), \
         subscriber_buffer {buffer}, server workers = cores\n"
    );

    // Subscribers, spread over client arbiters.
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let url = format!("{}/v1/organizations/{ORG}/stream", service.ws_base());
    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let connect_start = Instant::now();
    for (t, arbiter) in arbiters.iter().enumerate() {
        let share = subscribers / threads + usize::from(t < subscribers % threads);
        let (url, token) = (url.clone(), service.token.clone());
        let (connected_tx, done_tx) = (connected_tx.clone(), done_tx.clone());
        arbiter.spawn(async move {
            let connector = awc::Connector::new().limit(0).timeout(Duration::from_secs(30));
            let client = Rc::new(awc::Client::builder().connector(connector).timeout(Duration::from_secs(30)).finish());
            let (url, token, gate) = (Rc::new(url), Rc::new(token), Rc::new(Semaphore::new(32)));
            for _ in 0..share {
                actix_rt::spawn(subscriber(
                    client.clone(),
                    url.clone(),
                    token.clone(),
                    gate.clone(),
                    connected_tx.clone(),
                    done_tx.clone(),
                ));
            }
        });
    }
    drop((connected_tx, done_tx));
    let mut connect_failures = Vec::new();
    for _ in 0..subscribers {
        match tokio::time::timeout(Duration::from_secs(60), connected_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => connect_failures.push(e),
            _ => {
                connect_failures.push("timed out connecting".into());
                break;
            }
        }
    }
    let connect_time = connect_start.elapsed();
    let connected = subscribers - connect_failures.len();
    let live = kiln.metrics.stream_subscribers.load(Ordering::Relaxed);
    let force_nodelay = knob("BENCH_SERVER_NODELAY", 0) != 0;
    let (server_sockets, with_nodelay) = server_sockets_nodelay(service.addr.port(), force_nodelay);
    let nodelay_note = format!(
        "{with_nodelay} / {server_sockets}{}",
        if force_nodelay { " (forced on by BENCH_SERVER_NODELAY=1)" } else { " (as the service sets it)" }
    );
    eprintln!("{connected} subscribers connected in {connect_time:.2?} (server counts {live})");
    if let Some(e) = connect_failures.first() {
        eprintln!("{} connections failed, first: {e}", connect_failures.len());
    }

    // Emit at a fixed rate; each emit is its own task, like independent producers.
    let emitted: Rc<RefCell<(Vec<i64>, usize, Histogram)>> = Rc::default();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let tick = Duration::from_secs(1) / rate as u32;
    let mut pending = Vec::with_capacity(total);
    for k in 0..total {
        let due = start + tick * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            actix_rt::time::sleep(wait).await;
        }
        let (kiln, emitted) = (kiln.clone(), emitted.clone());
        pending.push(actix_rt::spawn(async move {
            let sent = unix_micros();
            let t = Instant::now();
            let result = kiln.emit_one(ORG, NewEvent::new("bench.stream", json!({ "sent_us": sent, "seq": k }))).await;
            let mut e = emitted.borrow_mut();
            e.2.record_duration(t.elapsed());
            match result {
                Ok(id) => e.0.push(id),
                Err(err) => {
                    e.1 += 1;
                    eprintln!("emit failed: {err}");
                }
            }
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    let emit_time = start.elapsed();
    let (ids, emit_errors, emit_latency) = std::mem::take(&mut *emitted.borrow_mut());
    let sent = ids.len() as u64;
    kiln.emit_one(ORG, NewEvent::new("bench.done", json!({ "expected": sent }))).await.expect("marker");

    // Wait for every subscriber to see the marker (or to end some other way).
    let mut results = Vec::with_capacity(connected);
    let drain_start = Instant::now();
    while results.len() < connected {
        match tokio::time::timeout_at((drain_start + drain).into(), done_rx.recv()).await {
            Ok(Some(r)) => results.push(r),
            _ => break,
        }
    }
    let drain_time = drain_start.elapsed();
    let window = start.elapsed();
    let cores_used = (cpu_seconds() - cpu_start) / window.as_secs_f64();

    let mut latency = Histogram::default();
    for arbiter in &arbiters {
        let (tx, rx) = oneshot::channel();
        arbiter.spawn(async move {
            let _ = tx.send(LATENCY.with(|h| h.borrow().clone()));
        });
        if let Ok(h) = rx.await {
            latency.merge(&h);
        }
    }
    for arbiter in &arbiters {
        arbiter.stop();
    }

    let complete = results.iter().filter(|r| r.expected == Some(sent) && r.received == sent).count();
    let unfinished = connected - results.len();
    let ended_early: Vec<&SubResult> = results.iter().filter(|r| r.ended.is_some()).collect();
    let received: u64 = results.iter().map(|r| r.received).sum();
    let expected_total = sent * connected as u64;
    let out_of_order: u64 = results.iter().map(|r| r.out_of_order).sum();
    let overflows = kiln.metrics.stream_overflows.load(Ordering::Relaxed);

    let rows = vec![
        vec!["subscribers connected".into(), format!("{connected} / {subscribers} in {connect_time:.2?}")],
        vec![
            "events appended".into(),
            format!(
                "{sent} in {:.2} s ({} /s achieved), {emit_errors} errors",
                emit_time.as_secs_f64(),
                fmt_rate(sent as f64 / emit_time.as_secs_f64())
            ),
        ],
        vec![
            "emit latency p50 / p99 / max".into(),
            format!(
                "{} / {} / {}",
                fmt_us(emit_latency.quantile(0.5)),
                fmt_us(emit_latency.quantile(0.99)),
                fmt_us(emit_latency.max)
            ),
        ],
        vec!["deliveries expected".into(), expected_total.to_string()],
        vec!["deliveries received".into(), format!("{received} ({} missing)", expected_total.saturating_sub(received))],
        vec!["subscribers with every event".into(), format!("{complete} / {connected}")],
        vec!["subscribers not done by the deadline".into(), unfinished.to_string()],
        vec!["subscribers closed early".into(), ended_early.len().to_string()],
        vec!["out-of-order or duplicate events".into(), out_of_order.to_string()],
        vec!["server overflow drops (lagging)".into(), overflows.to_string()],
        vec!["delivery latency p50".into(), fmt_us(latency.quantile(0.5))],
        vec!["delivery latency p90".into(), fmt_us(latency.quantile(0.9))],
        vec!["delivery latency p99".into(), fmt_us(latency.quantile(0.99))],
        vec!["delivery latency p99.9".into(), fmt_us(latency.quantile(0.999))],
        vec!["delivery latency max".into(), fmt_us(latency.max)],
        vec!["delivery latency mean".into(), fmt_us(latency.mean())],
        vec!["last delivery after last emit".into(), format!("{:.2?}", drain_time)],
        vec!["process CPU during the run".into(), format!("{cores_used:.2} cores")],
        vec!["server sockets with TCP_NODELAY".into(), nodelay_note],
    ];
    print_table(&["stream fan-out", "result"], &rows);
    if let Some(r) = ended_early.first() {
        println!("\nfirst early end: {:?}", r.ended);
    }
    if complete != connected {
        println!("\nLOSS: {} subscribers did not receive every event", connected - complete);
    }
    service.stop().await;
}

fn main() {
    let nofile = common::raise_nofile();
    eprintln!("open-file limit: {nofile}");
    actix_rt::System::new().block_on(run());
}
