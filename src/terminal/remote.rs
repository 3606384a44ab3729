//! The terminal host's remote mode: the agent runs in a PTY process inside a
//! remote sandbox, created and driven through sandbox-agent's process API
//! (PROTOCOLS.md §1.5), while Kiln's host keeps the log, the offsets and the
//! attachers exactly as for a local PTY.
//!
//! - **Processes.** Each setup command runs as its own managed process (`sh -c
//!   CMD`, `tty: true`), one after another, then the agent (its argv); the first
//!   setup command that fails ends the run with `phase: setup`, as on a local
//!   host. The launch's initial input is typed once the agent's process exists.
//!   A create whose answer was lost is not repeated blindly: the host adopts the
//!   process it made if the process list shows it.
//! - **Output** comes from the process's PTY log, followed (`GET …/logs?stream=pty
//!   &follow=true&since=SEQ`, SSE): every entry carries a sequence number, so after
//!   a reconnect the stream resumes after the last entry logged, with no byte
//!   written twice or missed (sandbox-agent's terminal WebSocket frames carry no
//!   sequence, so they cannot be joined to a replay exactly). A gap (entries the
//!   process's bounded buffer dropped while Kiln was away) is said in the terminal.
//! - **The terminal WebSocket** (`…/terminal/ws`) carries input (always
//!   `encoding: base64`, so bytes that are not UTF-8 arrive as typed), resizes,
//!   and the `exit` frame. Its binary output frames are read and dropped. Input
//!   is queued in order as the host gets it (never waiting for the driver, which
//!   may be connecting) and written as soon as the WebSocket is up.
//! - **Reconnect.** When either connection drops, the host asks for the process
//!   (`GET /v1/processes/{id}`): exited → the end is recorded; `404`, or another
//!   process under that id (ids restart with sandbox-agent) → the process is gone
//!   (sandbox-agent restarted with the sandbox) and the run ends with a reason; otherwise it retries with backoff (250 ms doubling to 10 s, jittered),
//!   and gives up after [`GIVE_UP`] without reaching sandbox-agent. Input typed
//!   meanwhile stays queued (up to [`MAX_QUEUED_INPUT`]) and is written on reconnect.
//! - **Retarget** replaces the base URL and headers (a restarted Daytona sandbox has
//!   a new preview token) and reconnects at once, cutting short a connection
//!   attempt or a backoff wait.
//! - **Signals**: SIGHUP and SIGTERM → `POST …/stop`, SIGKILL → `POST …/kill`;
//!   others are refused. They are sent on a task of their own, so a kill never
//!   waits for the driver.
//!
//! Secrets (the headers' values, the env) are never on a command line nor in
//! `host.log`: `client::launch` hands the target over in a 0600 file that the host
//! reads and deletes ([`TARGET_FILE`]), and retargets come over the host's socket.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::protocol::ExitInfo;
use crate::integrations::sandbox_agent::SseParser;
use crate::util::now_ms;

/// The file in the state dir through which `client::launch` hands the target to
/// the host (0600; the host deletes it once read).
pub const TARGET_FILE: &str = "remote.json";
/// The id of the sandbox-agent process the host drives now (`proc_3`): no secret.
pub const PROCESS_FILE: &str = "remote.process";
/// How long the host keeps trying to reach sandbox-agent before it reports the
/// run as ended.
pub const GIVE_UP: Duration = Duration::from_secs(600);
/// Input kept while sandbox-agent cannot be reached; more is refused.
pub const MAX_QUEUED_INPUT: usize = 1024 * 1024;
/// How long a client's input or signal waits for the driver.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// A single HTTP call's limit.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection that says nothing for this long is taken as dead (sandbox-agent
/// sends an SSE comment every 15 s; the WebSocket answers the host's pings).
const SILENCE: Duration = Duration::from_secs(45);
const PING_EVERY: Duration = Duration::from_secs(15);
/// Input bytes per WebSocket frame.
const INPUT_CHUNK: usize = 32 * 1024;
/// The line sandbox-agent 0.4.2 logs when a PTY process's terminal closes (EIO,
/// the normal end of a PTY): noise of its own, not the agent's output.
const PTY_EOF_NOISE: &[u8] = b"\n[process stream error: I/O error (os error 5)]\n";

/// Where the agent runs: a sandbox-agent server (e.g. behind a Daytona preview
/// URL), and the process's working directory and environment there. `Debug`
/// shows no header value and no env value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteTarget {
    /// sandbox-agent's base URL, e.g. a Daytona preview URL (no trailing `/`).
    pub base_url: String,
    /// Sent on every request, e.g. `x-daytona-preview-token`.
    pub headers: Vec<(String, String)>,
    /// The checkout inside the sandbox.
    pub cwd: String,
    pub env: Vec<(String, String)>,
    /// The agent's process a previous host drove (its [`PROCESS_FILE`]): if it
    /// still runs, with the same program in the same directory, the host
    /// follows it instead of starting another agent beside it (after Kiln's
    /// machine restarted, its hosts are gone but the sandbox's agent is not).
    #[serde(default)]
    pub adopt: Option<String>,
}

impl std::fmt::Debug for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self.headers.iter().map(|(k, _)| format!("{k}: (hidden)")).collect();
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RemoteTarget")
            .field("base_url", &self.base_url)
            .field("headers", &headers)
            .field("cwd", &self.cwd)
            .field("env", &env)
            .field("adopt", &self.adopt)
            .finish()
    }
}

/// What a retarget replaces: where sandbox-agent is reached, and how.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retarget {
    pub base_url: String,
    pub headers: Vec<(String, String)>,
}

impl From<&RemoteTarget> for Retarget {
    fn from(t: &RemoteTarget) -> Retarget {
        Retarget { base_url: t.base_url.clone(), headers: t.headers.clone() }
    }
}

/// Whether `name: value` can be sent as an HTTP header.
pub fn valid_header(name: &str, value: &str) -> bool {
    awc::http::header::HeaderName::try_from(name).is_ok() && awc::http::header::HeaderValue::try_from(value).is_ok()
}

/// Refuses headers that cannot be sent (named, never their values).
pub fn check_headers(headers: &[(String, String)]) -> io::Result<()> {
    match headers.iter().find(|(k, v)| !valid_header(k, v)) {
        Some((k, _)) => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the remote header {k:?} is not a valid HTTP header"))),
        None => Ok(()),
    }
}

/// Writes the target for a host about to start (0600, replacing a stale one).
pub fn write_target(state_dir: &Path, target: &RemoteTarget) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    check_headers(&target.headers)?;
    let path = state_dir.join(TARGET_FILE);
    let _ = std::fs::remove_file(&path);
    let json = serde_json::to_vec(target).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    io::Write::write_all(&mut f, &json)
}

/// Reads and deletes the target `client::launch` left for this host.
pub fn take_target(state_dir: &Path) -> io::Result<RemoteTarget> {
    let path = state_dir.join(TARGET_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("reading {TARGET_FILE}: {e}")))?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{TARGET_FILE}: {e}")))
}

/// What the driver tells the host about.
pub trait Sink: Send + Sync + 'static {
    /// Output of the terminal, in order: logged and broadcast.
    fn output(&self, bytes: &[u8]);
    /// The agent's process has been created (setup is over).
    fn agent_started(&self);
    /// The process driven now and whether sandbox-agent is reachable (with why not).
    fn remote(&self, process: Option<&str>, connected: bool, error: Option<String>);
}

/// What the run is, besides the target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub setup: Vec<String>,
    pub argv: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// Where `initial-input` and [`PROCESS_FILE`] are.
    pub state_dir: std::path::PathBuf,
}

type Reply = SyncSender<io::Result<()>>;

/// What the attachers send the process, in the order they sent it.
enum Item {
    Input(Vec<u8>),
    Resize(u16, u16),
}

/// Where a signal goes: the target now, and the process driven now.
#[derive(Clone)]
struct Current {
    base_url: String,
    headers: Vec<(String, String)>,
    process_id: String,
}

/// Input and resizes waiting to be written, in order (a resize right after
/// `stty size` typed before it must not overtake it).
#[derive(Default)]
struct Inbox {
    queue: VecDeque<Item>,
    /// Input bytes in `queue`.
    bytes: usize,
    /// The run has ended: input is refused.
    closed: bool,
}

/// What the host's threads hand the driver without waiting for it (it may be
/// busy connecting): input, and a new target.
#[derive(Default)]
struct Mailbox {
    inbox: std::sync::Mutex<Inbox>,
    input_ready: tokio::sync::Notify,
    retarget: std::sync::Mutex<Option<Retarget>>,
    retargeted: tokio::sync::Notify,
    current: std::sync::Mutex<Option<Current>>,
    /// The signal Kiln sent the current process, to report when it dies without
    /// an exit code.
    signalled: std::sync::Mutex<Option<i32>>,
}

impl Mailbox {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signalled(&self) -> std::sync::MutexGuard<'_, Option<i32>> {
        self.signalled.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_retarget(&self) -> Option<Retarget> {
        self.retarget.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The host's side of the driver. Nothing here waits for the driver (it may be
/// busy connecting); a signal waits (briefly) for its own HTTP call, so call
/// `signal` from the host's connection threads.
#[derive(Clone)]
pub struct Handle {
    signals: tokio::sync::mpsc::UnboundedSender<(i32, Reply)>,
    mail: Arc<Mailbox>,
}

impl Handle {
    /// Types `bytes`: queued in order and written on the terminal WebSocket as
    /// soon as it is connected. Refused when [`MAX_QUEUED_INPUT`] bytes wait
    /// already (sandbox-agent has been unreachable), or the run has ended.
    pub fn input(&self, bytes: &[u8]) -> io::Result<()> {
        {
            let mut inbox = self.mail.inbox();
            if inbox.closed {
                return Err(io::Error::other("the remote terminal has ended"));
            }
            if inbox.bytes + bytes.len() > MAX_QUEUED_INPUT {
                return Err(io::Error::other("sandbox-agent cannot be reached and the input queue is full"));
            }
            inbox.bytes += bytes.len();
            inbox.queue.push_back(Item::Input(bytes.to_vec()));
        }
        self.mail.input_ready.notify_one();
        Ok(())
    }

    /// Resizes the process's PTY, in order with the input.
    pub fn resize(&self, cols: u16, rows: u16) {
        {
            let mut inbox = self.mail.inbox();
            if inbox.closed {
                return;
            }
            // Resizes in a row while disconnected: only the last one counts.
            if let Some(Item::Resize(..)) = inbox.queue.back() {
                inbox.queue.pop_back();
            }
            inbox.queue.push_back(Item::Resize(cols, rows));
        }
        self.mail.input_ready.notify_one();
    }

    /// SIGHUP/SIGTERM stop the process, SIGKILL kills it; other signals are
    /// refused. Sent at once, whatever the driver is doing.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        let (reply, answer): (Reply, Receiver<io::Result<()>>) = sync_channel(1);
        self.signals.send((sig, reply)).map_err(|_| io::Error::other("the remote terminal has ended"))?;
        answer
            .recv_timeout(REPLY_WAIT)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "sandbox-agent did not answer the signal in time"))?
    }

    /// Replaces the base URL and headers; the driver drops its connections (or
    /// its attempt) and reconnects with them at once.
    pub fn retarget(&self, to: Retarget) -> io::Result<()> {
        if self.mail.inbox().closed {
            return Err(io::Error::other("the remote terminal has ended"));
        }
        *self.mail.retarget.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
        self.mail.retargeted.notify_one();
        Ok(())
    }
}

/// Answers signals on their own task, beside the driver.
async fn signal_loop(mut rx: tokio::sync::mpsc::UnboundedReceiver<(i32, Reply)>, mail: Arc<Mailbox>) {
    while let Some((sig, reply)) = rx.recv().await {
        let _ = reply.try_send(send_signal(&mail, sig).await);
    }
}

async fn send_signal(mail: &Mailbox, sig: i32) -> io::Result<()> {
    let action = match sig {
        libc::SIGHUP | libc::SIGTERM => "stop",
        libc::SIGKILL => "kill",
        _ => return Err(io::Error::new(io::ErrorKind::Unsupported, format!("signal {sig} cannot be sent to a remote process"))),
    };
    let current = mail.current().clone();
    let Some(c) = current else { return Err(io::Error::other("no remote process runs now")) };
    *mail.signalled() = Some(sig);
    let path = format!("/v1/processes/{}/{action}?waitMs=0", c.process_id);
    match call_at(&c.base_url, &c.headers, "POST", &path, None).await {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Starts the driver on a thread of its own (with its own runtime); the thread
/// answers how the run ended.
pub fn start(target: RemoteTarget, plan: Plan, sink: Arc<dyn Sink>) -> io::Result<(Handle, std::thread::JoinHandle<ExitInfo>)> {
    let (signals, signals_rx) = tokio::sync::mpsc::unbounded_channel();
    let mail = Arc::new(Mailbox::default());
    let thread = {
        let mail = mail.clone();
        std::thread::Builder::new().name("remote".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                actix_web::rt::spawn(signal_loop(signals_rx, mail.clone()));
                let mut driver = Driver { target, plan, sink, size: None, mail, ran: Vec::new() };
                let exit = driver.run().await;
                driver.mail.inbox().closed = true;
                exit
            })
        })?
    };
    Ok((Handle { signals, mail }, thread))
}

/// The retry delays: 250 ms doubling to 10 s, each with up to a quarter more of
/// jitter. Never zero, so a failing peer is never retried in a hot loop.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next try, without jitter.
    pub fn base_delay(&self) -> Duration {
        let ms = 250u64.saturating_mul(1u64 << self.failures.min(16));
        Duration::from_millis(ms.min(10_000))
    }

    /// The wait before the next try (jittered), counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay();
        self.failures = self.failures.saturating_add(1);
        let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1);
        base + Duration::from_millis(jitter)
    }
}

/// Which PTY log entries are new: sandbox-agent numbers them from 1, per process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last sequence appended to Kiln's log (0: none yet).
    pub last: u64,
}

/// What to do with one log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Already logged (a replay after a reconnect): drop it.
    Seen,
    /// Append it; `lost` entries before it were dropped by sandbox-agent's buffer.
    New { lost: u64 },
}

impl Cursor {
    pub fn take(&mut self, sequence: u64) -> Take {
        if sequence <= self.last {
            return Take::Seen;
        }
        let lost = sequence - self.last - 1;
        self.last = sequence;
        Take::New { lost }
    }
}

/// How one process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It exited: its code, or none when a signal killed it.
    Exited(Option<i32>),
    /// It could not be started (`kiln: cannot start …` was said).
    NotStarted,
    /// The run cannot go on (the process is gone, sandbox-agent unreachable).
    Lost(String),
}

/// Why a connection or call failed.
#[derive(Debug)]
enum Fail {
    /// `404`: no such process (sandbox-agent restarted).
    Gone,
    /// A redirect or `401`/`403`: the target's credentials are refused (a Daytona
    /// preview token that changed): wait for a retarget.
    Auth(u16),
    /// The request never reached sandbox-agent (no connection): safe to send again.
    Unreached(String),
    /// sandbox-agent refused the request itself: a process it could not spawn
    /// (`502 stream_error`: no such program, no such cwd) or a request it rejects
    /// (`400`, `409`, `422`). Trying again would answer the same.
    Refused(String),
    /// Anything else: the network, a 5xx, a proxy that cannot reach the sandbox.
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Gone => f.write_str("the process is gone"),
            Fail::Auth(status) => write!(f, "sandbox-agent refused the credentials ({status}): waiting for a retarget"),
            Fail::Refused(detail) | Fail::Unreached(detail) => f.write_str(detail),
            Fail::Other(e) => f.write_str(e),
        }
    }
}

fn fail_for(status: u16, body: &[u8]) -> Fail {
    let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // Its own problem+json, as opposed to a proxy's 502 on the way to it.
    let own = problem["type"].as_str().is_some_and(|t| t.starts_with("urn:sandbox-agent:error:"));
    let detail = || {
        problem["details"]["message"]
            .as_str()
            .or(problem["detail"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
    };
    match status {
        404 => Fail::Gone,
        300..=399 | 401 | 403 => Fail::Auth(status),
        400 | 409 | 413 | 415 | 422 => Fail::Refused(detail()),
        502 if own && problem["type"].as_str().is_some_and(|t| t.ends_with(":stream_error")) => Fail::Refused(detail()),
        _ => Fail::Other(format!("sandbox-agent answered {status}: {}", detail())),
    }
}

type Ws = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

impl Proc {
    /// Whether sandbox-agent's record `info` is this process.
    fn is(&self, info: &Value) -> bool {
        info["id"].as_str() == Some(self.id.as_str()) && (self.created_at.is_none() || info["createdAtMs"].as_i64() == self.created_at)
    }
}

/// Why a pump stopped.
enum Pumped {
    /// The WebSocket said the process exited.
    Exit(Option<i32>),
    /// A connection broke (or went silent).
    Broken(String),
    /// A retarget: reconnect now.
    Retargeted,
}

struct Driver {
    target: RemoteTarget,
    plan: Plan,
    sink: Arc<dyn Sink>,
    /// The size the attachers want, once one has said.
    size: Option<(u16, u16)>,
    mail: Arc<Mailbox>,
    /// The processes this host has run, never adopted again.
    ran: Vec<String>,
}

/// The state of the process driven now.
struct Proc {
    id: String,
    /// `createdAtMs`: with the id, it names this process even after sandbox-agent
    /// restarted and numbers its processes from `proc_1` again.
    created_at: Option<i64>,
    cursor: Cursor,
    /// The size its PTY has.
    size: Option<(u16, u16)>,
}

impl Driver {
    async fn run(&mut self) -> ExitInfo {
        let setup = self.plan.setup.clone();
        for cmd in &setup {
            self.sink.output(format!("\r\n$ {cmd}\r\n").as_bytes());
            let argv = vec!["sh".to_string(), "-c".to_string(), cmd.clone()];
            match self.run_process(&argv, false).await {
                (End::Exited(Some(0)), _) => {}
                (end, signalled) => return exit_info(end, signalled, "setup"),
            }
        }
        let argv = self.plan.argv.clone();
        if argv.is_empty() {
            return ExitInfo { code: Some(127), signal: None, phase: "agent".into(), at: now_ms(), reason: None };
        }
        let (end, signalled) = self.run_process(&argv, true).await;
        exit_info(end, signalled, "agent")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.base_url.trim_end_matches('/'))
    }

    fn client(&self, timeout: Option<Duration>) -> awc::Client {
        http_client(&self.target.headers, timeout)
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        call_at(&self.target.base_url, &self.target.headers, method, path, body).await
    }


    /// Creates the process (retrying while sandbox-agent cannot be reached), then
    /// follows it to its end.
    async fn run_process(&mut self, argv: &[String], agent: bool) -> (End, Option<i32>) {
        let env: serde_json::Map<String, Value> =
            self.target.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let body = json!({
            "command": argv[0],
            "args": &argv[1..],
            "cwd": self.target.cwd,
            "env": env,
            "tty": true,
            "interactive": true,
        });
        let mut backoff = Backoff::default();
        let mut unreachable_since: Option<Instant> = None;
        // A create whose answer was lost may have made the process: look for it
        // before making another (an agent must never run twice).
        let mut ambiguous = false;
        // The agent a previous host drove may still run: follow it, from its
        // output's current end (what it wrote meanwhile is not replayed).
        let mut skip_to = None;
        let adopted = match (agent, self.target.adopt.take()) {
            (true, Some(id)) => self.adopt_previous(&id, &body).await,
            _ => None,
        };
        if let Some((_, last)) = &adopted {
            skip_to = Some(*last);
        }
        let created = if let Some((found, _)) = adopted { found } else { loop {
            self.apply_retarget();
            let attempt = match ambiguous {
                // Only once the list says it is not there is another create safe.
                true => match self.adopt(&body).await {
                    Ok(Some(found)) => break found,
                    Ok(None) => self.call("POST", "/v1/processes", Some(&body)).await,
                    Err(e) => Err(e),
                },
                false => self.call("POST", "/v1/processes", Some(&body)).await,
            };
            match attempt {
                Ok(v) => break v,
                Err(Fail::Refused(e)) => {
                    // sandbox-agent could not spawn it (no such program, a bad cwd).
                    self.sink.output(format!("\r\nkiln: cannot start `{}`: {e}\r\n", argv[0]).as_bytes());
                    return (End::NotStarted, None);
                }
                Err(e) => {
                    // Once unsure, stay unsure until a list has answered.
                    ambiguous |= matches!(e, Fail::Other(_));
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    self.sink.remote(None, false, Some(e.to_string()));
                    if since.elapsed() > GIVE_UP {
                        return (End::Lost(format!("sandbox-agent could not be reached to start the process: {e}")), None);
                    }
                    self.wait(backoff.next_delay()).await;
                }
            }
        } };
        let Some(id) = created["id"].as_str().map(str::to_string) else {
            return (End::Lost(format!("sandbox-agent answered a process without an id: {created}")), None);
        };
        self.ran.push(id.clone());
        let _ = std::fs::write(self.plan.state_dir.join(PROCESS_FILE), &id);
        self.sink.remote(Some(&id), false, None);
        *self.mail.signalled() = None;
        *self.mail.current() =
            Some(Current { base_url: self.target.base_url.clone(), headers: self.target.headers.clone(), process_id: id.clone() });
        let mut proc_ = Proc { id, created_at: created["createdAtMs"].as_i64(), cursor: Cursor::default(), size: None };
        if let Some(last) = skip_to {
            proc_.cursor.last = last;
            self.sink.output(b"\r\n[kiln: reattached to the agent still running in the sandbox; what it wrote while no terminal host followed it is not in this log]\r\n");
        }
        let initial = (self.plan.cols, self.plan.rows);
        self.resize_http(&mut proc_, self.size.unwrap_or(initial)).await;
        if agent {
            self.sink.agent_started();
            let input_file = self.plan.state_dir.join(super::host::INITIAL_INPUT_FILE);
            if let Ok(text) = std::fs::read(&input_file) {
                let _ = std::fs::remove_file(&input_file);
                let mut inbox = self.mail.inbox();
                inbox.bytes += text.len();
                // Before anything typed during setup: the agent gets it first.
                inbox.queue.push_front(Item::Input(text));
            }
        }
        let end = self.follow(&mut proc_).await;
        *self.mail.current() = None;
        let signalled = self.mail.signalled().take();
        (end, signalled)
    }

    /// The process `id` a previous host drove, when it still runs the same
    /// program (`body`'s command, in its cwd) with a terminal; with the last
    /// sequence of its PTY log so far. `None` on any doubt: a new process is made.
    async fn adopt_previous(&mut self, id: &str, body: &Value) -> Option<(Value, u64)> {
        let info = self.call("GET", &format!("/v1/processes/{id}"), None).await.ok()?;
        let same = info["status"] == "running" && info["tty"] == true && info["command"] == body["command"] && info["cwd"] == body["cwd"];
        if !same {
            return None;
        }
        let logs = self.call("GET", &format!("/v1/processes/{id}/logs?stream=pty&tail=1"), None).await.ok()?;
        let last = logs["entries"].as_array().and_then(|e| e.iter().filter_map(|e| e["sequence"].as_u64()).max()).unwrap_or(0);
        super::host::note(&format!("adopted process {id}, still running from a previous host"));
        Some((info, last))
    }

    /// The newest running process that a lost create of `body` would have made
    /// (same command, args and cwd, not one this host ran before).
    async fn adopt(&mut self, body: &Value) -> Result<Option<Value>, Fail> {
        let list = self.call("GET", "/v1/processes", None).await?;
        let Some(processes) = list["processes"].as_array() else {
            return Err(Fail::Other(format!("sandbox-agent's process list has no processes: {list}")));
        };
        let found = processes
            .iter()
            .filter(|p| p["status"] == "running" && p["tty"] == true)
            .filter(|p| p["command"] == body["command"] && p["args"] == body["args"] && p["cwd"] == body["cwd"])
            .filter(|p| p["id"].as_str().is_some_and(|id| !self.ran.iter().any(|r| r == id)))
            .max_by_key(|p| p["createdAtMs"].as_i64().unwrap_or(0))
            .cloned();
        if let Some(p) = &found {
            super::host::note(&format!("adopted process {} made by a create whose answer was lost", p["id"]));
        }
        Ok(found)
    }

    /// Takes a retarget if one came: `true` when the target changed.
    fn apply_retarget(&mut self) -> bool {
        match self.mail.take_retarget() {
            Some(to) => {
                if let Some(c) = self.mail.current().as_mut() {
                    c.base_url = to.base_url.clone();
                    c.headers = to.headers.clone();
                }
                self.target.base_url = to.base_url;
                self.target.headers = to.headers;
                true
            }
            None => false,
        }
    }

    /// Writes the queued input and resizes in order; what could not be written
    /// stays first in the queue.
    async fn flush_input(&mut self, ws: &mut Ws, proc_: &mut Proc) -> Result<(), String> {
        loop {
            let Some(item) = self.mail.inbox().queue.pop_front() else { return Ok(()) };
            let sent = match &item {
                Item::Input(bytes) => send_input(ws, bytes).await,
                Item::Resize(cols, rows) => {
                    self.size = Some((*cols, *rows));
                    if proc_.size == self.size {
                        Ok(())
                    } else {
                        send_resize(ws, (*cols, *rows)).await.map(|()| proc_.size = self.size)
                    }
                }
            };
            match (sent, item) {
                (Ok(()), Item::Input(bytes)) => {
                    let mut inbox = self.mail.inbox();
                    inbox.bytes = inbox.bytes.saturating_sub(bytes.len());
                }
                (Ok(()), Item::Resize(..)) => {}
                (Err(e), item) => {
                    self.mail.inbox().queue.push_front(item);
                    return Err(e);
                }
            }
        }
    }

    async fn resize_http(&self, proc_: &mut Proc, size: (u16, u16)) {
        let path = format!("/v1/processes/{}/terminal/resize", proc_.id);
        if self.call("POST", &path, Some(&json!({"cols": size.0, "rows": size.1}))).await.is_ok() {
            proc_.size = Some(size);
        }
    }

    /// Follows the process until it ends: connect and pump; after a break, ask
    /// sandbox-agent what became of the process before connecting again, with
    /// backoff.
    async fn follow(&mut self, proc_: &mut Proc) -> End {
        let mut backoff = Backoff::default();
        let mut unreachable_since: Option<Instant> = None;
        let mut first = true;
        loop {
            self.apply_retarget();
            if !first {
                match self.call("GET", &format!("/v1/processes/{}", proc_.id), None).await {
                    // Ids restart with sandbox-agent: `proc_1` may now be another process.
                    Ok(info) if !proc_.is(&info) => return self.gone(proc_),
                    Ok(info) if info["status"] == "exited" => {
                        let code = info["exitCode"].as_i64().map(|c| c as i32);
                        return self.finish(proc_, Some(code)).await;
                    }
                    Ok(_) => unreachable_since = None,
                    Err(Fail::Gone) => return self.gone(proc_),
                    Err(e) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > GIVE_UP {
                            let reason = format!("sandbox-agent could not be reached for {} s: {e}", GIVE_UP.as_secs());
                            self.sink.output(format!("\r\nkiln: {reason}\r\n").as_bytes());
                            return End::Lost(reason);
                        }
                        self.sink.remote(Some(&proc_.id), false, Some(e.to_string()));
                        self.wait(backoff.next_delay()).await;
                        continue;
                    }
                }
            }
            first = false;
            let opened = tokio::select! {
                opened = self.open(proc_) => opened,
                _ = self.mail.retargeted.notified() => continue,
            };
            let why = match opened {
                Ok((ws, sse)) => {
                    backoff.reset();
                    self.sink.remote(Some(&proc_.id), true, None);
                    match self.pump(proc_, ws, sse).await {
                        Pumped::Exit(code) => return self.finish(proc_, Some(code)).await,
                        Pumped::Retargeted => continue,
                        Pumped::Broken(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            };
            self.sink.remote(Some(&proc_.id), false, Some(why));
            self.wait(backoff.next_delay()).await;
        }
    }

    /// The process is gone from sandbox-agent: says so in the terminal.
    fn gone(&self, proc_: &Proc) -> End {
        let reason =
            format!("the agent's process {} is gone from the sandbox (sandbox-agent restarted, or the sandbox did)", proc_.id);
        self.sink.output(format!("\r\nkiln: {reason}\r\n").as_bytes());
        End::Lost(reason)
    }

    /// Opens the terminal WebSocket (and waits for its `ready`), then the log stream
    /// from after the last entry logged.
    async fn open(&self, proc_: &Proc) -> Result<(Ws, awc::ClientResponse), Fail> {
        let ws_url = self.url(&format!("/v1/processes/{}/terminal/ws", proc_.id));
        // The client's default headers (the target's) go on the handshake too.
        let req = self.client(Some(HTTP_TIMEOUT)).ws(ws_url).max_frame_size(16 * 1024 * 1024);
        let (_, mut ws) = match req.connect().await {
            Ok(c) => c,
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => return Err(fail_for(s.as_u16(), b"")),
            Err(e) => return Err(Fail::Other(format!("connecting the terminal WebSocket: {e}"))),
        };
        // `ready` comes first; an exit may follow at once (a process that ended).
        match tokio::time::timeout(HTTP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(awc::ws::Frame::Text(t)))) if serde_json::from_slice::<Value>(&t).is_ok_and(|v| v["type"] == "ready") => {}
            Ok(other) => return Err(Fail::Other(format!("the terminal WebSocket did not say ready: {other:?}"))),
            Err(_) => return Err(Fail::Other("the terminal WebSocket did not say ready in time".into())),
        }
        let path = format!("/v1/processes/{}/logs?stream=pty&follow=true&since={}", proc_.id, proc_.cursor.last);
        let res = self
            .client(None)
            .get(self.url(&path))
            .insert_header(("accept", "text/event-stream"))
            .timeout(HTTP_TIMEOUT)
            .send()
            .await
            .map_err(|e| Fail::Other(format!("opening the terminal's log stream: {e}")))?;
        let status = res.status().as_u16();
        if status != 200 {
            let mut res = res;
            let body = res.body().limit(64 * 1024).await.unwrap_or_default();
            return Err(fail_for(status, &body));
        }
        Ok((ws, res))
    }

    /// Moves output to the log and input to the process until something ends it.
    async fn pump(&mut self, proc_: &mut Proc, mut ws: Ws, mut sse: awc::ClientResponse) -> Pumped {
        // The size the attachers asked for last, then what they typed (and
        // resized) while disconnected, in order.
        if let Some(size) = self.size.filter(|s| proc_.size != Some(*s)) {
            if send_resize(&mut ws, size).await.is_ok() {
                proc_.size = Some(size);
            }
        }
        if let Err(e) = self.flush_input(&mut ws, proc_).await {
            return Pumped::Broken(e);
        }
        let mut parser = SseParser::new();
        let mut sse_heard = Instant::now();
        let mut ws_heard = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                chunk = sse.next() => match chunk {
                    Some(Ok(bytes)) => {
                        sse_heard = Instant::now();
                        for frame in parser.feed(&bytes) {
                            if frame.event == "log" {
                                self.log_entry(proc_, &frame.data);
                            }
                        }
                    }
                    Some(Err(e)) => return Pumped::Broken(format!("the log stream broke: {e}")),
                    None => return Pumped::Broken("the log stream ended".into()),
                },
                frame = ws.next() => {
                    ws_heard = Instant::now();
                    match frame {
                        Some(Ok(awc::ws::Frame::Text(t))) => {
                            let v: Value = serde_json::from_slice(&t).unwrap_or(Value::Null);
                            match v["type"].as_str() {
                                Some("exit") => return Pumped::Exit(v["exitCode"].as_i64().map(|c| c as i32)),
                                Some("error") => super::host::note(&format!("sandbox-agent's terminal: {}", v["message"])),
                                _ => {}
                            }
                        }
                        Some(Ok(awc::ws::Frame::Ping(p))) => {
                            if ws.send(awc::ws::Message::Pong(p)).await.is_err() {
                                return Pumped::Broken("the terminal WebSocket broke".into());
                            }
                        }
                        Some(Ok(awc::ws::Frame::Close(_))) | None => return Pumped::Broken("the terminal WebSocket closed".into()),
                        Some(Err(e)) => return Pumped::Broken(format!("the terminal WebSocket broke: {e}")),
                        // Output comes from the log stream, which is numbered.
                        Some(Ok(_)) => {}
                    }
                },
                _ = self.mail.input_ready.notified() => {
                    if let Err(e) = self.flush_input(&mut ws, proc_).await {
                        return Pumped::Broken(e);
                    }
                },
                _ = self.mail.retargeted.notified() => {
                    let _ = ws.close().await;
                    return Pumped::Retargeted;
                },
                _ = ping.tick() => {
                    if sse_heard.elapsed() > SILENCE || ws_heard.elapsed() > SILENCE {
                        return Pumped::Broken("sandbox-agent went silent".into());
                    }
                    if ws.send(awc::ws::Message::Ping(Default::default())).await.is_err() {
                        return Pumped::Broken("the terminal WebSocket broke".into());
                    }
                },
            }
        }
    }

    /// Appends one SSE log entry if it is new.
    fn log_entry(&self, proc_: &mut Proc, data: &str) {
        let Ok(entry) = serde_json::from_str::<Value>(data) else { return };
        let Some(seq) = entry["sequence"].as_u64() else { return };
        let Take::New { lost } = proc_.cursor.take(seq) else { return };
        if lost > 0 {
            self.sink.output(format!("\r\nkiln: {lost} chunks of output were dropped by sandbox-agent while Kiln was away\r\n").as_bytes());
        }
        let bytes = match entry["encoding"].as_str() {
            Some("base64") | None => base64::engine::general_purpose::STANDARD.decode(entry["data"].as_str().unwrap_or("")).unwrap_or_default(),
            Some(_) => entry["data"].as_str().unwrap_or("").as_bytes().to_vec(),
        };
        if !bytes.is_empty() && bytes != PTY_EOF_NOISE {
            self.sink.output(&bytes);
        }
    }

    /// The process has exited: appends what the log holds after the last entry
    /// seen, then answers the end.
    async fn finish(&mut self, proc_: &mut Proc, code: Option<Option<i32>>) -> End {
        let mut code = code.flatten();
        // The exit frame can come before the process record says so.
        for _ in 0..20 {
            match self.call("GET", &format!("/v1/processes/{}", proc_.id), None).await {
                Ok(info) if info["status"] == "exited" => {
                    code = info["exitCode"].as_i64().map(|c| c as i32).or(code);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
        loop {
            let path = format!("/v1/processes/{}/logs?stream=pty&since={}", proc_.id, proc_.cursor.last);
            let Ok(logs) = self.call("GET", &path, None).await else { break };
            let entries = logs["entries"].as_array().cloned().unwrap_or_default();
            let before = proc_.cursor.last;
            for entry in &entries {
                self.log_entry(proc_, &entry.to_string());
            }
            if entries.is_empty() || proc_.cursor.last == before {
                break;
            }
        }
        End::Exited(code)
    }

    /// Waits `delay` (input and resizes stay queued); a retarget ends the wait
    /// at once.
    async fn wait(&self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.mail.retargeted.notified() => {}
        }
    }
}

/// An HTTP client that sends `headers` on every request and follows no redirect
/// (Daytona answers a refused preview token with one).
fn http_client(headers: &[(String, String)], timeout: Option<Duration>) -> awc::Client {
    let mut b = awc::Client::builder().disable_redirects().max_http_version(awc::http::Version::HTTP_11);
    b = match timeout {
        Some(t) => b.timeout(t),
        None => b.disable_timeout(),
    };
    for (k, v) in headers {
        // Checked at launch and retarget: `add_default_header` panics on a bad one.
        if valid_header(k, v) {
            b = b.add_default_header((k.as_str(), v.as_str()));
        }
    }
    b.finish()
}

/// One JSON call to sandbox-agent at `base_url`; the answer's body when it is a 2xx.
async fn call_at(base_url: &str, headers: &[(String, String)], method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
    let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| Fail::Other(e.to_string()))?;
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let req = http_client(headers, Some(HTTP_TIMEOUT)).request(method, url);
    let sent = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    };
    let mut res = sent.map_err(|e| match e {
        // No connection was made; `Disconnected` (a connection lost while
        // the request was on it) may have delivered it.
        awc::error::SendRequestError::Connect(e) if !matches!(e, awc::error::ConnectError::Disconnected) => {
            Fail::Unreached(format!("reaching sandbox-agent: {e}"))
        }
        e => Fail::Other(format!("reaching sandbox-agent: {e}")),
    })?;
    let status = res.status().as_u16();
    let bytes = res.body().limit(16 * 1024 * 1024).await.map_err(|e| Fail::Other(format!("reading sandbox-agent's answer: {e}")))?;
    if !(200..300).contains(&status) {
        return Err(fail_for(status, &bytes));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| Fail::Other(format!("sandbox-agent's answer is not JSON: {e}")))
}

async fn send_input(ws: &mut Ws, bytes: &[u8]) -> Result<(), String> {
    for chunk in bytes.chunks(INPUT_CHUNK) {
        let data = base64::engine::general_purpose::STANDARD.encode(chunk);
        let frame = json!({"type": "input", "data": data, "encoding": "base64"}).to_string();
        ws.send(awc::ws::Message::Text(frame.into())).await.map_err(|e| format!("writing input: {e}"))?;
    }
    Ok(())
}

async fn send_resize(ws: &mut Ws, (cols, rows): (u16, u16)) -> Result<(), String> {
    let frame = json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
    ws.send(awc::ws::Message::Text(frame.into())).await.map_err(|e| format!("resizing: {e}"))
}

fn exit_info(end: End, signalled: Option<i32>, phase: &str) -> ExitInfo {
    let (code, signal, reason) = match end {
        End::Exited(Some(code)) => (Some(code), None, None),
        // No exit code: a signal ended it; Kiln knows which only when it sent it.
        End::Exited(None) => (None, signalled, None),
        End::NotStarted => (Some(127), None, None),
        End::Lost(reason) => (None, None, Some(reason)),
    };
    ExitInfo { code, signal, phase: phase.into(), at: now_ms(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_drops_replays_and_counts_gaps() {
        let mut c = Cursor::default();
        assert_eq!(c.take(1), Take::New { lost: 0 });
        assert_eq!(c.take(2), Take::New { lost: 0 });
        // A reconnect replays from `since`: nothing is appended twice.
        assert_eq!(c.take(2), Take::Seen);
        assert_eq!(c.take(1), Take::Seen);
        assert_eq!(c.take(3), Take::New { lost: 0 });
        // sandbox-agent's buffer dropped 4 and 5 while Kiln was away.
        assert_eq!(c.take(6), Take::New { lost: 2 });
        assert_eq!(c.last, 6);
    }

    #[test]
    fn backoff_grows_to_a_cap_and_is_never_zero() {
        let mut b = Backoff::default();
        let mut bases = Vec::new();
        for _ in 0..10 {
            bases.push(b.base_delay().as_millis());
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(250) && d <= Duration::from_millis(12_500), "{d:?}");
        }
        assert_eq!(bases, vec![250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.base_delay(), Duration::from_millis(250));
    }

    #[test]
    fn a_target_shows_no_secret_in_debug() {
        let t = RemoteTarget {
            base_url: "https://3000-abc.proxy.example".into(),
            headers: vec![("x-daytona-preview-token".into(), "tok_secret".into())],
            cwd: "/home/daytona/app".into(),
            env: vec![("GITHUB_TOKEN".into(), "ghp_secret".into())],
            adopt: None,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("tok_secret") && !shown.contains("ghp_secret"), "{shown}");
        assert!(shown.contains("x-daytona-preview-token") && shown.contains("GITHUB_TOKEN"), "{shown}");
    }

    #[test]
    fn the_target_file_is_private_and_read_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = RemoteTarget { base_url: "http://127.0.0.1:1".into(), headers: vec![], cwd: "/w".into(), env: vec![("K".into(), "V".into())], adopt: Some("proc_2".into()) };
        write_target(dir.path(), &t).unwrap();
        let mode = std::fs::metadata(dir.path().join(TARGET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(take_target(dir.path()).unwrap(), t);
        assert!(!dir.path().join(TARGET_FILE).exists(), "deleted once read");
        assert!(take_target(dir.path()).is_err());
    }

    #[test]
    fn answers_are_sorted_into_gone_auth_refused_and_retry() {
        assert!(matches!(fail_for(404, b""), Fail::Gone));
        assert!(matches!(fail_for(307, b""), Fail::Auth(307)), "Daytona's preview answers a bad token with a redirect");
        assert!(matches!(fail_for(401, b"{}"), Fail::Auth(401)));
        let spawn = br#"{"type":"urn:sandbox-agent:error:stream_error","status":502,"detail":"stream error: x","details":{"message":"failed to spawn tty process: No such file or directory (os error 2)"}}"#;
        match fail_for(502, spawn) {
            Fail::Refused(d) => assert!(d.starts_with("failed to spawn"), "{d}"),
            other => panic!("{other:?}"),
        }
        // A proxy's 502 (the sandbox is not reachable) is retried.
        assert!(matches!(fail_for(502, b"Bad Gateway"), Fail::Other(_)));
        assert!(matches!(fail_for(503, b""), Fail::Other(_)));
        assert!(matches!(fail_for(400, b"Failed to deserialize"), Fail::Refused(_)));
    }

    #[test]
    fn ends_become_exit_info() {
        let e = exit_info(End::Exited(Some(3)), None, "setup");
        assert_eq!((e.code, e.signal, e.phase.as_str(), e.reason), (Some(3), None, "setup", None));
        let e = exit_info(End::Exited(None), Some(libc::SIGKILL), "agent");
        assert_eq!((e.code, e.signal), (None, Some(libc::SIGKILL)));
        assert_eq!(exit_info(End::NotStarted, None, "agent").code, Some(127));
        let e = exit_info(End::Lost("gone".into()), None, "agent");
        assert_eq!((e.code, e.signal, e.reason.as_deref()), (None, None, Some("gone")));
    }
}
