//! ACP session journal throughput: envelopes/s persisted and fanned out to
//! `BENCH_SUBSCRIBERS` (100) stream subscribers, as a ratio to a raw batched
//! Diesel insert of the same rows (the raw variant of `benches/events.rs`).
//!
//! Setup: an in-process Kiln whose `sandbox_agent_bin` is the fake sandbox-agent
//! (`tests/fake_sandbox_agent.rs`, the example `fake-sandbox-agent`, built by this
//! bench with `cargo build --release --example fake-sandbox-agent` at startup),
//! a registered git repository and one running task (its agent is `cat`, hosted
//! by the release `kiln` binary). Each turn opens a fresh session with
//! `{"agent":"fake"}` and prompts `flood N`: the fake's scripted agent emits N
//! `agent_message_chunk` session/updates as fast as it can, then answers
//! `end_turn`. The turn's envelopes are the prompt (`session.sent`), the N
//! updates and the response: N + 2 journal events.
//!
//! Each round runs, in this order:
//! 1. **raw**: the turn's journal rows of the previous journal run (the first
//!    round uses the rows of a warm-up turn), inserted with
//!    `insert_into(events).values(&rows)`, 512 rows per `BEGIN IMMEDIATE`, into a
//!    fresh migrated SQLite file with the service's pragmas. Also the same number
//!    of rows shaped like `benches/events.rs`'s (the foundation's raw baseline).
//! 2. **upstream only**: a private ACP instance on the same fake, driven with
//!    Kiln's own `AcpClient` (no journal): prompt → the response on SSE.
//! 3. **journal, no stream subscribers**: a turn with no WebSocket subscriber.
//! 4. **journal + fan-out**: the same with the subscribers connected.
//!
//! Measured from just before `POST …/prompt` until:
//! - **persisted**: an in-process HistoryActor subscriber (on its own thread) has
//!   seen the turn's response and all N chunk updates. The HistoryActor publishes
//!   a batch only after it commits, so this is the time the last envelope was
//!   persisted (plus one channel hop).
//! - **delivered**: every WebSocket subscriber of `/v1/organizations/default/stream`
//!   has received the turn's response and its N chunk updates.
//!
//! The in-process subscriber is there in both journal variants, so "no stream
//! subscribers" still has the HistoryActor serialize each event once. The
//! service's database keeps every earlier turn; the raw baseline starts empty.
//! Also printed: CPU seconds per thread group during the median turns (from
//! `/proc/self/task/*/stat`, 10 ms ticks; the fake's from its own `/proc/PID`),
//! and, measured on the turn's rows after the timed window, what serializing an
//! event for the stream and reading one frame as these subscribers do cost.
//!
//! Terminal hosts and the sandbox-agent server are detached on purpose: the bench
//! archives its task, then kills whatever of them is left under its data dir
//! (also when it panics), and fails if any survives.
//!
//! Checked, every turn (a failure ends the run): every subscriber (and the
//! in-process one) got exactly N chunk updates, no duplicate, in journal-seq and
//! event-id order, and the response; the database holds exactly N updates, one
//! response and one prompt for the turn, with contiguous journal seqs. Not a
//! failure but reported: updates that arrived after the response (the POST's copy
//! of the response stands in when SSE has not delivered it after 5 s).
//!
//! Knobs: `BENCH_ENVELOPES` (20000 chunk updates per turn), `BENCH_ROUNDS` (3),
//! `BENCH_SUBSCRIBERS` (100), `BENCH_CLIENT_THREADS` (2), `BENCH_DRAIN_SECS`
//! (120, per turn). `events.subscriber_buffer` is raised above a turn's events so
//! that no subscriber is dropped for lagging (a `KILN_EVENTS__SUBSCRIBER_BUFFER`
//! in the environment still wins).

mod common;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::Arbiter;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use common::{fmt_rate, knob, print_table, unix_micros, Http, Service};
use kiln::actors::history::Subscribe;
use kiln::db::models::{EventRow, NewEventRow};
use kiln::db::schema::events;
use kiln::db::Db;
use kiln::integrations::sandbox_agent::{AcpClient, PostOutcome};

const ORG: &str = "default";
/// Rows per transaction in the raw baseline: the HistoryActor's `batch_max`.
const RAW_BATCH: usize = 512;

// ---------------------------------------------------------------------------
// Reading stream frames: one event each, as the HistoryActor serialized it.
// ---------------------------------------------------------------------------

/// The parts of a stream event this bench looks at (everything else is skipped).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    id: i64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    session: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<FrameData<'a>>,
}

#[derive(Deserialize)]
struct FrameData<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    envelope: Option<Envelope<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    update: Option<Update<'a>>,
}

#[derive(Deserialize)]
struct Update<'a> {
    #[serde(borrow, default, rename = "sessionUpdate")]
    session_update: Option<Cow<'a, str>>,
}

/// What one reader saw of one turn.
#[derive(Debug, Clone, Default)]
struct TurnReport {
    chunks: u64,
    updates: u64,
    /// Events of the session whose journal seq or event id was not above the last.
    out_of_order: u64,
    /// Chunk updates that arrived after the response.
    after_response: u64,
    /// Frames that were not readable as events.
    unreadable: u64,
    /// Unix µs when the turn was complete (response and every chunk).
    done_us: u64,
}

/// Follows one session's turn in a stream of events.
struct Tracker {
    session: String,
    expect: u64,
    prompt_id: Option<u64>,
    last_seq: u64,
    last_id: i64,
    responded: bool,
    report: TurnReport,
}

impl Tracker {
    fn new(session: &str, expect: u64) -> Tracker {
        Tracker {
            session: session.to_string(),
            expect,
            prompt_id: None,
            last_seq: 0,
            last_id: 0,
            responded: false,
            report: TurnReport::default(),
        }
    }

    /// Takes one event; answers the report once the turn is complete.
    fn feed(&mut self, json: &[u8]) -> Option<TurnReport> {
        let frame: Frame = match serde_json::from_slice(json) {
            Ok(f) => f,
            Err(_) => {
                // Other events may have `data` of another shape; only ours must read.
                let mine = format!("\"session\":\"{}\"", self.session);
                if json.windows(mine.len()).any(|w| w == mine.as_bytes()) {
                    self.report.unreadable += 1;
                }
                return None;
            }
        };
        if frame.session.as_deref() != Some(self.session.as_str()) || !frame.kind.starts_with("session.") {
            return None;
        }
        let data = frame.data?;
        let seq = data.seq?; // not a journal entry (status changes have no seq)
        let envelope = data.envelope;
        if self.prompt_id.is_none() {
            // The turn starts with the prompt; earlier entries (the open) are not counted.
            let is_prompt = frame.kind == "session.sent"
                && envelope.as_ref().and_then(|e| e.method.as_deref()) == Some("session/prompt");
            if is_prompt {
                self.prompt_id = envelope.as_ref().and_then(|e| e.id.as_ref()).and_then(Value::as_u64);
                self.last_seq = seq;
                self.last_id = frame.id;
            }
            return None;
        }
        if seq <= self.last_seq || frame.id <= self.last_id {
            self.report.out_of_order += 1;
        }
        self.last_seq = self.last_seq.max(seq);
        self.last_id = self.last_id.max(frame.id);
        match frame.kind.as_ref() {
            "session.update" => {
                self.report.updates += 1;
                let update = envelope.as_ref().and_then(|e| e.params.as_ref()).and_then(|p| p.update.as_ref());
                if update.and_then(|u| u.session_update.as_deref()) == Some("agent_message_chunk") {
                    self.report.chunks += 1;
                    if self.responded {
                        self.report.after_response += 1;
                    }
                }
            }
            "session.response" => {
                let id = envelope.as_ref().and_then(|e| e.id.as_ref()).and_then(Value::as_u64);
                if id.is_some() && id == self.prompt_id {
                    self.responded = true;
                }
            }
            _ => {}
        }
        if self.responded && self.report.chunks >= self.expect {
            self.report.done_us = unix_micros();
            return Some(self.report.clone());
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Readers: WebSocket subscribers on client arbiters, and the in-process one.
// ---------------------------------------------------------------------------

/// How one WebSocket subscriber's turn ended.
type SubOutcome = Result<TurnReport, String>;

/// One WebSocket subscriber: connect, say so, follow the turn, close.
async fn ws_subscriber(
    client: Rc<awc::Client>,
    url: Rc<String>,
    token: Rc<String>,
    session: String,
    expect: u64,
    connected: mpsc::UnboundedSender<Result<(), String>>,
    done: mpsc::UnboundedSender<SubOutcome>,
) {
    let mut framed = match client.ws(url.as_str()).bearer_auth(token.as_str()).connect().await {
        Ok((_, framed)) => {
            let _ = connected.send(Ok(()));
            framed
        }
        Err(e) => {
            let _ = connected.send(Err(e.to_string()));
            return;
        }
    };
    let mut tracker = Tracker::new(&session, expect);
    let outcome = loop {
        match framed.next().await {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                if let Some(report) = tracker.feed(&bytes) {
                    break Ok(report);
                }
            }
            Some(Ok(awc::ws::Frame::Ping(p))) => {
                let _ = framed.send(awc::ws::Message::Pong(p)).await;
            }
            Some(Ok(awc::ws::Frame::Close(reason))) => break Err(format!("closed by the server: {reason:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(format!("protocol error: {e}")),
            None => break Err("the connection ended".into()),
        }
    };
    let _ = framed.send(awc::ws::Message::Close(None)).await;
    let _ = done.send(outcome);
}

/// The client threads: arbiters the subscribers run on, and their thread ids.
struct Clients {
    arbiters: Vec<Arbiter>,
    tids: Vec<i32>,
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

async fn spawn_arbiters(n: usize) -> Clients {
    let arbiters: Vec<Arbiter> = (0..n).map(|_| Arbiter::new()).collect();
    let mut tids = Vec::new();
    for a in &arbiters {
        let (tx, rx) = oneshot::channel();
        a.spawn(async move {
            let _ = tx.send(gettid());
        });
        tids.push(rx.await.expect("arbiter tid"));
    }
    Clients { arbiters, tids }
}

/// Connects `count` subscribers spread over the client arbiters; answers the
/// receiver of their outcomes once all are connected.
async fn connect_subscribers(
    svc: &Service,
    clients: &Clients,
    count: usize,
    session: &str,
    expect: u64,
) -> mpsc::UnboundedReceiver<SubOutcome> {
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let url = format!("{}/v1/organizations/{ORG}/stream", svc.ws_base());
    let threads = clients.arbiters.len();
    // The last turn's subscribers unregister asynchronously: let them go first.
    let quiet = Instant::now() + Duration::from_secs(10);
    while svc.kiln.metrics.stream_subscribers.load(Ordering::Relaxed) > 0 && Instant::now() < quiet {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let before = svc.kiln.metrics.stream_subscribers.load(Ordering::Relaxed);
    for (t, arbiter) in clients.arbiters.iter().enumerate() {
        let share = count / threads + usize::from(t < count % threads);
        let (url, token, session) = (url.clone(), svc.token.clone(), session.to_string());
        let (connected_tx, done_tx) = (connected_tx.clone(), done_tx.clone());
        arbiter.spawn(async move {
            let connector = awc::Connector::new().limit(0).timeout(Duration::from_secs(30));
            let client = Rc::new(awc::Client::builder().connector(connector).timeout(Duration::from_secs(30)).finish());
            let (url, token) = (Rc::new(url), Rc::new(token));
            for _ in 0..share {
                actix_rt::spawn(ws_subscriber(
                    client.clone(),
                    url.clone(),
                    token.clone(),
                    session.clone(),
                    expect,
                    connected_tx.clone(),
                    done_tx.clone(),
                ));
            }
        });
    }
    drop(connected_tx);
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(60), connected_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => panic!("a subscriber could not connect: {e}"),
            _ => panic!("subscribers did not connect within 60 s"),
        }
    }
    let live = svc.kiln.metrics.stream_subscribers.load(Ordering::Relaxed);
    assert!(live >= before + count as u64, "the server counts {live} stream subscribers, expected {count} more than {before}");
    done_rx
}

/// The in-process subscriber: a HistoryActor subscription followed on its own
/// thread. Its report is the time the turn's last envelope was persisted.
async fn watch_persisted(kiln: &kiln::actors::Kiln, watcher: &Arbiter, session: &str, expect: u64) -> oneshot::Receiver<TurnReport> {
    let mut sub = kiln.history(ORG).send(Subscribe {}).await.expect("subscribe to the history");
    let (tx, rx) = oneshot::channel();
    let session = session.to_string();
    watcher.spawn(async move {
        let mut tracker = Tracker::new(&session, expect);
        while let Some(p) = sub.events.recv().await {
            if let Some(report) = tracker.feed(p.json.as_bytes()) {
                let _ = tx.send(report);
                return;
            }
        }
        // Dropped (lagging) or the service stopped: `tx` is dropped, the bench says so.
    });
    rx
}

// ---------------------------------------------------------------------------
// CPU time per thread, to see where a turn's time goes.
// ---------------------------------------------------------------------------

/// utime + stime, in clock ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Every thread of this process: tid → (name, CPU ticks).
fn thread_ticks() -> HashMap<i32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(stat_ticks) {
            out.insert(tid, t);
        }
    }
    out
}

fn process_ticks(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(stat_ticks).map_or(0, |t| t.1)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// CPU seconds by thread group between two snapshots (plus the fake's process).
struct CpuSnapshot {
    threads: HashMap<i32, (String, u64)>,
    fake: u64,
}

fn cpu_snapshot(fake_pid: i32) -> CpuSnapshot {
    CpuSnapshot { threads: thread_ticks(), fake: process_ticks(fake_pid) }
}

fn cpu_breakdown(before: &CpuSnapshot, after: &CpuSnapshot, clients: &Clients, watcher_tid: i32) -> Vec<(String, f64)> {
    let hz = clock_ticks();
    let main_tid = std::process::id() as i32;
    let ours = |tid: &i32| clients.tids.contains(tid) || *tid == watcher_tid;
    // Kiln's arbiters are named like the bench's. `app::start` makes the actors'
    // arbiter first, then the HTTP server its workers: the lowest tid is the actors'.
    let actors_tid = after
        .threads
        .iter()
        .filter(|(tid, (comm, _))| comm.starts_with("actix-rt|system") && !ours(tid))
        .map(|(tid, _)| *tid)
        .min();
    let mut groups: HashMap<String, u64> = HashMap::new();
    for (tid, (comm, ticks)) in &after.threads {
        let spent = ticks.saturating_sub(before.threads.get(tid).map_or(0, |t| t.1));
        let group = if *tid == main_tid {
            "bench main thread (HTTP client)".to_string()
        } else if clients.tids.contains(tid) {
            "WebSocket clients (bench arbiters)".to_string()
        } else if *tid == watcher_tid {
            "in-process subscriber (bench)".to_string()
        } else if Some(*tid) == actors_tid {
            "Kiln's actor arbiter (SessionActor, HistoryActor, ...)".to_string()
        } else if comm.starts_with("actix-rt|system") {
            "Kiln's HTTP workers (stream sessions, API)".to_string()
        } else if comm.starts_with("tokio-r") {
            "blocking pool (SQLite writes and reads)".to_string()
        } else {
            comm.clone()
        };
        *groups.entry(group).or_default() += spent;
    }
    *groups.entry("fake sandbox-agent (its own process)".into()).or_default() += after.fake.saturating_sub(before.fake);
    let mut out: Vec<(String, f64)> = groups.into_iter().map(|(g, t)| (g, t as f64 / hz)).filter(|(_, s)| *s > 0.0).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Per-event costs measured on the turn's own rows, outside the timed window:
/// serializing an event for the stream (the HistoryActor does it once per event)
/// and reading one frame as a subscriber here does (once per subscriber).
fn cost_model(rows: &[EventRow], session: &str, n: u64) -> (f64, f64, f64, f64) {
    use kiln::actors::history::Event;
    let events: Vec<Event> = rows.iter().cloned().map(Event::from).collect();
    let t = Instant::now();
    let frames: Vec<String> = events.iter().map(|e| serde_json::to_string(e).expect("serialize")).collect();
    let serialize = t.elapsed().as_secs_f64() * 1e6 / events.len().max(1) as f64;
    let t = Instant::now();
    let mut tracker = Tracker::new(session, n);
    let mut done = false;
    for f in &frames {
        done |= tracker.feed(f.as_bytes()).is_some();
    }
    let parse = t.elapsed().as_secs_f64() * 1e6 / frames.len().max(1) as f64;
    assert!(done, "the cost model's tracker saw the whole turn");
    let count = rows.len().max(1) as f64;
    let data_bytes = rows.iter().map(|r| r.data.len()).sum::<usize>() as f64 / count;
    let frame_bytes = frames.iter().map(String::len).sum::<usize>() as f64 / count;
    (serialize, parse, data_bytes, frame_bytes)
}

// ---------------------------------------------------------------------------
// The raw baseline (as in benches/events.rs).
// ---------------------------------------------------------------------------

/// One row to insert: repo, task, kind, data, session.
type RawRow = (Option<String>, Option<String>, String, String, Option<String>);

/// A plain connection with the service's pragmas on a fresh migrated file; the
/// rows inserted `RAW_BATCH` per transaction. Answers the time the inserts took.
fn raw_insert(rows: &[RawRow]) -> Duration {
    let tmp = tempfile::Builder::new().prefix("kiln-bench-raw-").tempdir().expect("tempdir");
    let path = tmp.path().join("kiln.db");
    {
        let db = Db::open(&path, 5000, 1).expect("open db");
        db.migrate().expect("migrate");
    }
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("connect");
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA journal_mode = WAL;",
    )
    .expect("pragmas");
    let start = Instant::now();
    for chunk in rows.chunks(RAW_BATCH) {
        let at = kiln::util::now_ms();
        let batch: Vec<NewEventRow> = chunk
            .iter()
            .map(|(repo, task, kind, data, session)| NewEventRow {
                organization: ORG,
                repo: repo.as_deref(),
                task: task.as_deref(),
                kind,
                at,
                data: data.clone(),
                session: session.as_deref(),
            })
            .collect();
        conn.immediate_transaction(|c| diesel::insert_into(events::table).values(&batch).execute(c))
            .expect("insert batch");
    }
    let elapsed = start.elapsed();
    let stored: i64 = events::table.count().get_result(&mut conn).expect("count");
    assert_eq!(stored as usize, rows.len(), "the raw insert stored every row");
    elapsed
}

/// `n` rows shaped like `benches/events.rs`'s (64 senders, interleaved).
fn foundation_rows(n: usize) -> Vec<RawRow> {
    (0..n)
        .map(|k| {
            let (s, i) = (k % 64, k / 64);
            let data = json!({ "sender": s, "seq": i, "note": "benchmark payload of a typical size" });
            (Some("bench".into()), Some(format!("t{s:04}")), "bench.appended".into(), data.to_string(), None)
        })
        .collect()
}

/// Runs the raw insert on its own thread (it blocks) and waits for it.
fn raw_on_thread(rows: Vec<RawRow>) -> Duration {
    std::thread::spawn(move || raw_insert(&rows)).join().expect("raw insert thread")
}

// ---------------------------------------------------------------------------
// The service, the task and the turns.
// ---------------------------------------------------------------------------

/// Builds the fake sandbox-agent in release next to the `kiln` binary (a no-op
/// when it is up to date) and answers its path.
fn build_fake() -> PathBuf {
    let kiln_bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let bin = kiln_bin.parent().expect("target dir").join("examples/fake-sandbox-agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the fake sandbox-agent: cargo build --release --example fake-sandbox-agent");
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "--release", "--example", "fake-sandbox-agent"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    // `cargo bench` runs this binary with the package's CARGO_PKG_* and similar
    // variables set; some build scripts (ring's) rerun when those change, which
    // would rebuild half the tree on every run. Build as from a plain shell.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"]
            .iter()
            .any(|p| key.starts_with(p));
        if set_by_cargo || key == "OUT_DIR" {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status();
    match status {
        Ok(s) if s.success() && bin.is_file() => bin,
        other => panic!(
            "could not build the fake sandbox-agent ({other:?}); build it first with \
             `cargo build --release --example fake-sandbox-agent` (expected at {})",
            bin.display()
        ),
    }
}

/// The task's sandbox-agent server, from its 0600 record.
fn agent_record(data_dir: &Path, task: &str) -> (String, String, i32) {
    let record = std::fs::read(data_dir.join(format!("sandboxes/{task}/sandbox-agent.json"))).expect("sandbox-agent record");
    let record: Value = serde_json::from_slice(&record).expect("record json");
    (
        record["url"].as_str().expect("url").to_string(),
        record["token"].as_str().expect("token").to_string(),
        record["pid"].as_i64().expect("pid") as i32,
    )
}

/// Terminal hosts and sandbox-agent servers are detached on purpose; a bench
/// must not leave them behind. Found by their command line or working directory
/// under the data dir (which may already be deleted); killed with `kill`.
fn leftovers(data_dir: &Path, kill: bool) -> usize {
    let needle = data_dir.to_string_lossy().to_string();
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        let agent_server = cmdline.contains("sandbox-agent") && cmdline.contains(" server") && cwd.starts_with(&needle);
        if (cmdline.contains("terminal-host") && cmdline.contains(&needle)) || agent_server {
            if kill {
                // SAFETY: kill on a pid we found under our own data dir.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            } else {
                eprintln!("still running: {pid} {}", cmdline.split_whitespace().next().unwrap_or_default());
            }
            killed += 1;
        }
    }
    killed
}

/// Kills what `leftovers` finds when dropped, so a failed run (a panic) does
/// not leave detached processes behind either.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        leftovers(&self.0, true);
    }
}

/// One measured turn.
#[derive(Debug, Clone)]
struct Turn {
    /// Journal events of the turn: the prompt, the updates, the response.
    envelopes: usize,
    persisted: Duration,
    /// Until the last subscriber had the whole turn (None without subscribers).
    delivered: Option<Duration>,
    /// Subscriber completion times, sorted.
    per_subscriber: Vec<Duration>,
    after_response: u64,
    batches: u64,
    rows: Vec<RawRow>,
    cpu: Vec<(String, f64)>,
    wall: Duration,
    /// µs per event: serializing it for the stream, reading it as a subscriber.
    serialize_us: f64,
    parse_us: f64,
    /// Mean size of a row's `data` and of a stream frame, in bytes.
    data_bytes: f64,
    frame_bytes: f64,
}

struct Bench {
    svc: Service,
    http: Http,
    task: String,
    n: u64,
    clients: Clients,
    watcher: Arbiter,
    watcher_tid: i32,
    fake_pid: i32,
    drain: Duration,
}

impl Bench {
    fn sessions_path(&self) -> String {
        format!("/v1/organizations/{ORG}/tasks/{}/sessions", self.task)
    }

    async fn open_session(&self) -> String {
        let (status, body) = self.http.post(&self.sessions_path(), json!({"agent": "fake"})).await;
        assert_eq!(status, 201, "open a session: {body}");
        assert_eq!(body["status"], "ready", "{body}");
        body["id"].as_str().expect("session id").to_string()
    }

    /// One turn of `flood N` on a fresh session, with `subscribers` WebSocket
    /// subscribers connected.
    async fn turn(&self, subscribers: usize) -> Turn {
        let kiln = &self.svc.kiln;
        let sid = self.open_session().await;
        let mut subs = if subscribers > 0 {
            Some(connect_subscribers(&self.svc, &self.clients, subscribers, &sid, self.n).await)
        } else {
            None
        };
        let persisted_rx = watch_persisted(kiln, &self.watcher, &sid, self.n).await;
        let batches_before = kiln.metrics.event_batches.load(Ordering::Relaxed);
        let cpu_before = cpu_snapshot(self.fake_pid);

        let t0_us = unix_micros();
        let t0 = Instant::now();
        let (status, accepted) = self.http.post(&format!("{}/{sid}/prompt", self.sessions_path()), json!({"text": format!("flood {}", self.n)})).await;
        assert_eq!(status, 202, "prompt: {accepted}");
        let request_id = accepted["request_id"].as_u64().expect("request_id");
        let first_event = accepted["event_id"].as_i64().expect("event_id");

        let persisted = match tokio::time::timeout(self.drain, persisted_rx).await {
            Ok(Ok(report)) => {
                assert_eq!(report.chunks, self.n, "the in-process subscriber got exactly N chunk updates");
                assert_eq!(report.out_of_order, 0, "the in-process subscriber saw the journal in order");
                assert_eq!(report.unreadable, 0, "the in-process subscriber could read every event of the session");
                report
            }
            Ok(Err(_)) => panic!("the in-process subscriber was dropped (lagging?) before the turn was persisted"),
            Err(_) => panic!("the turn was not persisted within {:?}", self.drain),
        };
        let batches = kiln.metrics.event_batches.load(Ordering::Relaxed) - batches_before;

        let mut per_subscriber = Vec::with_capacity(subscribers);
        let mut after_response = persisted.after_response;
        if let Some(rx) = subs.as_mut() {
            let deadline = t0 + self.drain;
            let mut failures = Vec::new();
            while per_subscriber.len() + failures.len() < subscribers {
                match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                    Ok(Some(Ok(r))) => {
                        assert_eq!(r.chunks, self.n, "a subscriber got {} chunk updates, not exactly {}", r.chunks, self.n);
                        assert_eq!(r.updates, self.n, "a subscriber got other updates than the chunks");
                        assert_eq!(r.out_of_order, 0, "a subscriber got a duplicate or out-of-order event");
                        assert_eq!(r.unreadable, 0, "a subscriber got unreadable frames");
                        after_response = after_response.max(r.after_response);
                        per_subscriber.push(Duration::from_micros(r.done_us.saturating_sub(t0_us)));
                    }
                    Ok(Some(Err(e))) => failures.push(e),
                    _ => break,
                }
            }
            let missing = subscribers - per_subscriber.len();
            assert!(
                missing == 0,
                "{missing} of {subscribers} subscribers did not get the whole turn within {:?} ({} failed, first: {:?}; {} dropped for lagging)",
                self.drain,
                failures.len(),
                failures.first(),
                kiln.metrics.stream_overflows.load(Ordering::Relaxed)
            );
        }
        let wall = t0.elapsed();
        let cpu = cpu_breakdown(&cpu_before, &cpu_snapshot(self.fake_pid), &self.clients, self.watcher_tid);
        per_subscriber.sort();

        // The database holds the turn exactly once, in order.
        let s = sid.clone();
        let rows: Vec<EventRow> = kiln
            .db
            .read(move |c| {
                events::table
                    .filter(events::session.eq(s))
                    .filter(events::id.ge(first_event))
                    .filter(events::kind.eq_any(kiln::db::queries::JOURNAL_KINDS.to_vec()))
                    .order(events::id.asc())
                    .select(EventRow::as_select())
                    .load(c)
            })
            .await
            .expect("read the journal");
        let count = |kind: &str| rows.iter().filter(|r| r.kind == kind).count() as u64;
        assert_eq!(count("session.update"), self.n, "the journal holds exactly N updates");
        assert_eq!(count("session.response"), 1, "the journal holds the turn's response once");
        assert_eq!(count("session.sent"), 1, "the journal holds the prompt once");
        assert_eq!(rows.len() as u64, self.n + 2, "the turn's journal: prompt, N updates, response");
        let seqs: Vec<u64> = rows
            .iter()
            .map(|r| serde_json::from_str::<Value>(&r.data).expect("data")["seq"].as_u64().expect("seq"))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "journal seqs are contiguous");
        let response: Value = serde_json::from_str(&rows.last().expect("rows").data).expect("data");
        assert_eq!(response["envelope"]["id"].as_u64(), Some(request_id), "the turn ends with its response");
        let (serialize_us, parse_us, data_bytes, frame_bytes) = cost_model(&rows, &sid, self.n);
        let raw_rows: Vec<RawRow> = rows.into_iter().map(|r| (r.repo, r.task, r.kind, r.data, r.session)).collect();

        Turn {
            envelopes: raw_rows.len(),
            persisted: Duration::from_micros(persisted.done_us.saturating_sub(t0_us)),
            delivered: per_subscriber.last().copied(),
            per_subscriber,
            after_response,
            batches,
            rows: raw_rows,
            cpu,
            wall,
            serialize_us,
            parse_us,
            data_bytes,
            frame_bytes,
        }
    }

    /// Upstream only: a private ACP instance on the same fake driven with Kiln's
    /// `AcpClient`; answers the time from the prompt to its response on SSE.
    async fn upstream_only(&self, round: usize) -> Duration {
        let (url, token, _) = agent_record(&self.svc.data_dir, &self.task);
        let client = AcpClient::new(&url, Some(&token));
        let server = format!("bench-upstream-{round}");
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1, "clientCapabilities": {}}});
        client.post(&server, Some("fake"), &init).await.expect("initialize");
        let new = json!({"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/tmp", "mcpServers": []}});
        let PostOutcome::Response(created) = client.post(&server, None, &new).await.expect("session/new") else {
            panic!("session/new was not answered")
        };
        let remote = created["result"]["sessionId"].clone();
        let mut stream = client.connect(&server, None).await.expect("SSE");
        let prompt = json!({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
            "params": {"sessionId": remote, "prompt": [{"type": "text", "text": format!("flood {}", self.n)}]}});
        let start = Instant::now();
        let poster = client.clone();
        let post = actix_rt::spawn(async move { poster.post(&server, None, &prompt).await });
        let mut chunks = 0u64;
        loop {
            let m = match tokio::time::timeout(self.drain, stream.next()).await {
                Ok(Some(Ok(m))) => m,
                other => panic!("upstream stream ended early: {:?}", other.map(|o| o.map(|r| r.map(|m| m.id)))),
            };
            if m.data["method"] == "session/update" && m.data["params"]["update"]["sessionUpdate"] == "agent_message_chunk" {
                chunks += 1;
            }
            if m.data["id"] == 3 && m.data.get("result").is_some() {
                break;
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(chunks, self.n, "upstream: exactly N chunks before the response");
        let _ = post.await;
        elapsed
    }
}

async fn wait_running(http: &Http, task: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = http.get_json(&format!("/v1/organizations/{ORG}/tasks/{task}")).await;
        if t["status"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "the task never ran: {t}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median<T: Clone>(mut v: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2].clone()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

async fn run(fake: PathBuf) {
    let n = knob("BENCH_ENVELOPES", 20_000).max(1) as u64;
    // The fake honours `flood N` up to 100,000 (tests/fake_sandbox_agent.rs, MAX_FLOOD).
    assert!(n <= 100_000, "BENCH_ENVELOPES must be at most 100000: the fake sandbox-agent floods no more");
    let rounds = knob("BENCH_ROUNDS", 3).max(1);
    let subscribers = knob("BENCH_SUBSCRIBERS", 100);
    let threads = knob("BENCH_CLIENT_THREADS", 2).max(1);
    let drain = Duration::from_secs(knob("BENCH_DRAIN_SECS", 120) as u64);
    let host = env!("CARGO_BIN_EXE_kiln");
    let tmp = common::tempdir();
    let config = common::idle_agent_config(tmp.path(), "journal-bench.toml");
    // Above a turn's events, so no subscriber is dropped for lagging: a loss would
    // then be a bug, not the designed overflow.
    let buffer = (n as usize + 4096).max(4096).to_string();
    let fake_s = fake.to_string_lossy().to_string();
    let svc = Service::start_with_config(
        &config,
        &[
            ("KILN_SANDBOX_AGENT_BIN", fake_s.as_str()),
            ("KILN_TERMINAL__HOST_PROGRAM", host),
            ("KILN_EVENTS__SUBSCRIBER_BUFFER", buffer.as_str()),
            ("KILN_SESSIONS__CLOSE_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let data_dir = svc.data_dir.clone();
    let _cleanup = Cleanup(data_dir.clone());
    let http = Http::new(&svc, Duration::from_secs(120));

    println!("# ACP session journal throughput ({})", common::machine_line());
    println!(
        "flood {n} per turn (N + 2 = {} journal events: prompt, updates, response), {subscribers} stream subscribers \
         on {threads} client threads, {rounds} rounds, median shown; subscriber_buffer {}, batch_max {}\n",
        n + 2,
        svc.kiln.config.events.subscriber_buffer,
        svc.kiln.config.events.batch_max,
    );

    let repo = common::git_repo(svc.tmp.path(), "bench");
    let (status, body) = http.post(&format!("/v1/organizations/{ORG}/repos"), json!({"source": repo.to_string_lossy()})).await;
    assert!(status == 201 || status == 200, "register the repo: {status} {body}");
    let (status, task) = http
        .post(&format!("/v1/organizations/{ORG}/tasks"), json!({"repo": "bench", "description": "journal bench", "agent": "idle"}))
        .await;
    assert_eq!(status, 201, "create the task: {task}");
    let task = task["id"].as_str().expect("task id").to_string();
    wait_running(&http, &task).await;

    let clients = spawn_arbiters(threads).await;
    let watcher_set = spawn_arbiters(1).await;
    let watcher_tid = watcher_set.tids[0];
    let watcher = watcher_set.arbiters.into_iter().next().expect("watcher arbiter");
    let mut bench = Bench { svc, http, task, n, clients, watcher, watcher_tid, fake_pid: 0, drain };

    // Warm-up: starts the sandbox-agent server, and gives the first raw rows.
    let warm = bench.turn(0).await;
    bench.fake_pid = agent_record(&bench.svc.data_dir, &bench.task).2;
    eprintln!("warm-up turn: {} envelopes persisted in {}", warm.envelopes, secs(warm.persisted));
    let mut raw_rows = warm.rows;

    let (mut raw, mut raw_foundation, mut upstream, mut alone, mut fanned) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let rows = std::mem::take(&mut raw_rows);
        let envelopes = rows.len();
        let r = raw_on_thread(rows);
        raw.push((envelopes, r));
        let f = raw_on_thread(foundation_rows(envelopes));
        raw_foundation.push((envelopes, f));
        let u = bench.upstream_only(round).await;
        upstream.push(u);
        let mut a = bench.turn(0).await;
        a.rows = Vec::new();
        let mut t = if subscribers > 0 { bench.turn(subscribers).await } else { a.clone() };
        let rate = |d: Duration| fmt_rate(envelopes as f64 / d.as_secs_f64());
        eprintln!(
            "round {round}: raw {} /s, upstream {} /s, journal alone {} /s, journal with {subscribers} subscribers: persisted {} /s, delivered {} /s per subscriber",
            rate(r),
            rate(u),
            rate(a.persisted),
            rate(t.persisted),
            t.delivered.map(rate).unwrap_or_else(|| "-".into()),
        );
        raw_rows = std::mem::take(&mut t.rows);
        alone.push(a);
        fanned.push(t);
    }

    // Tear down: archive the task (closes the sessions, stops the sandbox), then
    // make sure nothing detached is left.
    let (status, body) = bench.http.post(&format!("/v1/organizations/{ORG}/tasks/{}/archive", bench.task), json!({})).await;
    if status != 200 {
        eprintln!("archiving the task answered {status}: {body}");
    }
    let archived = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = bench.http.get_json(&format!("/v1/organizations/{ORG}/tasks/{}", bench.task)).await;
        if t["status"] == "archived" || Instant::now() > archived {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let after_archive = leftovers(&data_dir, false);
    if after_archive > 0 {
        eprintln!("{after_archive} terminal-host / sandbox-agent processes still ran 0.5 s after the task was archived");
    }
    for a in &bench.clients.arbiters {
        a.stop();
    }
    bench.watcher.stop();
    bench.svc.stop().await;
    let killed = leftovers(&data_dir, true);
    if killed > 0 {
        eprintln!("killed {killed} leftover terminal-host / sandbox-agent processes");
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = leftovers(&data_dir, false);
    assert_eq!(left, 0, "{left} terminal-host / sandbox-agent processes of this bench are still running");

    // Report.
    let env = (n + 2) as f64;
    let raw_m = median(raw, |(e, d)| *e as f64 / d.as_secs_f64());
    let raw_rate = raw_m.0 as f64 / raw_m.1.as_secs_f64();
    let found_m = median(raw_foundation, |(e, d)| *e as f64 / d.as_secs_f64());
    let up_m = median(upstream, |d| env / d.as_secs_f64());
    let alone_m = median(alone, |t| env / t.persisted.as_secs_f64());
    let fan_p = median(fanned.clone(), |t| env / t.persisted.as_secs_f64());
    let fan_d = median(fanned, |t| t.delivered.map_or(0.0, |d| env / d.as_secs_f64()));
    let row = |name: &str, d: Duration, extra: String| {
        let rate = env / d.as_secs_f64();
        vec![name.to_string(), format!("{}", n + 2), secs(d), fmt_rate(rate), format!("{:.3}", rate / raw_rate), extra]
    };
    let per_txn = |t: &Turn| format!("{:.0} events/txn", t.envelopes as f64 / t.batches.max(1) as f64);
    let mut rows = vec![
        row("raw diesel, the journal rows, 512 rows/txn", raw_m.1, "baseline".into()),
        row(
            "raw diesel, rows shaped like benches/events.rs",
            found_m.1,
            format!("the journal rows insert at {:.3} of this rate", raw_rate / (found_m.0 as f64 / found_m.1.as_secs_f64())),
        ),
        row("upstream only: fake → SSE → AcpClient, no journal", up_m, "source ceiling".into()),
        row("journal, no stream subscribers: persisted", alone_m.persisted, per_txn(&alone_m)),
    ];
    if subscribers > 0 {
        rows.push(row(&format!("journal, {subscribers} subscribers: persisted"), fan_p.persisted, per_txn(&fan_p)));
        let d = fan_d.delivered.expect("delivered");
        let mid = fan_d.per_subscriber[fan_d.per_subscriber.len() / 2];
        rows.push(row(
            &format!("journal, {subscribers} subscribers: delivered to all"),
            d,
            format!("median subscriber done at {}", secs(mid)),
        ));
    }
    println!();
    print_table(&["path", "envelopes", "time", "envelopes/s", "ratio to raw", "note"], &rows);
    if let Some(d) = fan_d.delivered {
        let total = env * subscribers as f64 / d.as_secs_f64();
        println!(
            "\nfan-out: {} envelopes/s delivered per subscriber, {} deliveries/s in total ({} subscribers x {} envelopes in {})",
            fmt_rate(env / d.as_secs_f64()),
            fmt_rate(total),
            subscribers,
            n + 2,
            secs(d)
        );
        println!(
            "ratios: persisted/raw {:.3} alone, {:.3} with subscribers; delivered/raw {:.3}; delivered/upstream {:.3}",
            (env / alone_m.persisted.as_secs_f64()) / raw_rate,
            (env / fan_p.persisted.as_secs_f64()) / raw_rate,
            (env / d.as_secs_f64()) / raw_rate,
            up_m.as_secs_f64() / d.as_secs_f64(),
        );
    }
    println!(
        "\nrow `data` {:.0} bytes and stream frame {:.0} bytes on average; foundation-style rows {:.0} bytes of `data`",
        fan_d.data_bytes,
        fan_d.frame_bytes,
        foundation_rows(64).iter().map(|r| r.3.len()).sum::<usize>() as f64 / 64.0,
    );
    println!(
        "per event, on these rows: {:.2} µs to serialize it for the stream (once per event), {:.2} µs to read a frame \
         as the subscribers here do (once per subscriber: {:.2} s of client CPU per turn for {subscribers})",
        fan_d.serialize_us,
        fan_d.parse_us,
        fan_d.parse_us * env * subscribers as f64 / 1e6,
    );
    let late = fan_d.after_response.max(alone_m.after_response);
    if late > 0 {
        println!("\nNOTE: {late} chunk updates were journaled after the turn's response (the POST's copy stood in after the 5 s grace)");
    }
    for (what, t) in [("no subscribers", &alone_m), ("with subscribers", &fan_d)] {
        if subscribers == 0 && what == "with subscribers" {
            break;
        }
        println!("\nCPU during the median turn {what} ({} wall, {} persisted):", secs(t.wall), secs(t.persisted));
        let cpu_rows: Vec<Vec<String>> = t
            .cpu
            .iter()
            .map(|(g, s)| vec![g.clone(), format!("{s:.2} s"), format!("{:.2}", s / t.wall.as_secs_f64())])
            .collect();
        print_table(&["thread group", "CPU", "cores"], &cpu_rows);
    }
}

fn main() {
    let nofile = common::raise_nofile();
    eprintln!("open-file limit: {nofile}");
    let fake = build_fake();
    actix_rt::System::new().block_on(run(fake));
}
