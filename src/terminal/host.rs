//! `kiln terminal-host`: a small detached process, one per sandbox, that owns the
//! agent's PTY. It outlives the server: it keeps the agent running, appends every
//! byte of output to the terminal log, and serves any number of attachers over a
//! unix socket in the sandbox's state dir.
//!
//! Threads: one reads the PTY, one accepts connections, and each connection has a
//! reader and a writer. A slow attacher never blocks the agent: its bounded queue
//! overflows, it is disconnected, and it can come back at its offset.
//!
//! Files in the state dir: `host.sock`, `host.pid`, `terminal.log*` and
//! `exit.json` (how the agent ended; written before the host exits).
//!
//! In remote mode (`HostOptions::remote`) there is no local PTY: a driver thread
//! (`remote`) runs the setup commands and the agent as sandbox-agent processes and
//! feeds their output into the same log; attachers, offsets and the protocol are
//! the same.
//!
//! A log that cannot be written (a full disk) never stops the terminal: output
//! still reaches attachers, the bytes are a hole in the log, the failure is in
//! the host's status for the server to report, and logging resumes as soon as
//! a write succeeds again (tried on the next output, and every second). Nothing
//! here may panic on a failed write: the host's own messages go to its stderr
//! with `writeln!`, errors ignored.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::log::TerminalLog;
use super::procs::Cgroup;
use super::protocol::{self, ExitInfo, Frame, HostStatus, RemoteStatus};
use super::remote;
/// Also here, beside the `HostOptions` that holds it.
pub use super::remote::RemoteTarget;
use crate::util::now_ms;

/// Frames queued per attacher before it is cut loose.
const CLIENT_QUEUE: usize = 1024;
/// Bytes per history chunk sent to a new attacher.
const HISTORY_CHUNK: usize = 64 * 1024;
/// How often a log that failed is tried again when there is no output to write.
const LOG_RETRY: Duration = Duration::from_secs(1);

pub const SOCKET: &str = "host.sock";
pub const PID_FILE: &str = "host.pid";
pub const EXIT_FILE: &str = "exit.json";
/// Text to type into the agent once it has started (read, then deleted).
pub const INITIAL_INPUT_FILE: &str = "initial-input";
/// The secret a client proves first on every connection (0600; confined agents
/// cannot read it, but could otherwise connect to any host's socket).
pub const KEY_FILE: &str = "host.key";

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub state_dir: PathBuf,
    pub cwd: PathBuf,
    pub log_max_bytes: u64,
    pub cols: u16,
    pub rows: u16,
    /// Shell commands run one by one in the PTY before the agent; the first that
    /// fails ends the host with `phase: setup`.
    pub setup: Vec<String>,
    pub argv: Vec<String>,
    /// The task's Landlock ruleset: setup commands and the agent enter it.
    pub confine: Option<Arc<crate::confine::Ruleset>>,
    /// Run the setup commands and the agent in a cgroup of their own, where one
    /// can be made (see `procs`).
    pub cgroup: bool,
    /// Run the setup commands and the agent in a remote sandbox through
    /// sandbox-agent's process API instead of a local PTY (see `remote`);
    /// `confine` and `cgroup` do not apply.
    pub remote: Option<RemoteTarget>,
}

/// Where input, resizes and signals go: the local PTY, or the remote driver.
enum Backend {
    Local(pty_process::blocking::Pty),
    Remote(remote::Handle),
}

enum Outgoing {
    Frame(Frame),
    /// Send the log from `from` up to `to`, then carry on with live frames.
    History { from: u64, to: u64 },
}

struct Client {
    tx: SyncSender<Outgoing>,
    attached: bool,
    size: Option<(u16, u16)>,
    /// A handle to shut the connection down when the client falls behind.
    stream: UnixStream,
}

struct State {
    log: TerminalLog,
    clients: HashMap<u64, Client>,
    next_client: u64,
    agent_pid: Option<u32>,
    exit: Option<ExitInfo>,
    started_at: i64,
    last_output_at: Option<i64>,
    /// When the last attached client went away (for the idle clock of auto-stop).
    last_detached_at: Option<i64>,
    active_size: Option<(u16, u16)>,
    /// `setup` while setup commands run, then `agent`.
    phase: &'static str,
    /// The log write failing now, and since when.
    log_error: Option<(String, i64)>,
    /// Bytes of output that could not be written to the log, since the start.
    log_dropped: u64,
    /// A remote host's connection to its process.
    remote: Option<RemoteStatus>,
}

impl State {
    fn status(&self) -> HostStatus {
        HostStatus {
            host_pid: std::process::id(),
            agent_pid: self.agent_pid,
            running: self.exit.is_none(),
            phase: self.phase.to_string(),
            exit: self.exit.clone(),
            started_at: self.started_at,
            last_output_at: self.last_output_at,
            end_offset: self.log.end(),
            start_offset: self.log.start(),
            log_error: self.log_error.as_ref().map(|(e, _)| e.clone()),
            log_error_since: self.log_error.as_ref().map(|(_, at)| *at),
            log_dropped_bytes: self.log_dropped,
            remote: self.remote.clone(),
            attached: self.clients.values().filter(|c| c.attached).count() as u32,
            last_detached_at: self.last_detached_at,
        }
    }

    /// Notes how a log write went: the first failure and the recovery are told
    /// on stderr (and through `status`).
    fn log_written(&mut self, result: std::io::Result<()>, len: usize) {
        match result {
            Ok(()) => {
                if let Some((error, since)) = self.log_error.take() {
                    note(&format!(
                        "the log is written again after failing since {since} ({error}); {} bytes are missing from it",
                        self.log_dropped
                    ));
                }
            }
            Err(e) => {
                self.log_dropped += len as u64;
                if self.log_error.is_none() {
                    note(&format!("cannot write the log: {e}; output still reaches attachers"));
                    self.log_error = Some((format!("log write failing: {e}"), now_ms()));
                }
            }
        }
    }

    /// Sends `frame` to every attached client; drops those whose queue is full.
    fn broadcast(&mut self, frame: &Frame) {
        self.clients.retain(|_, c| {
            if !c.attached {
                return true;
            }
            match c.tx.try_send(Outgoing::Frame(frame.clone())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    // Only our side: the client sees the end of its output, and
                    // whatever it typed before is still read and written.
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    false
                }
            }
        });
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the host until the agent has exited; answers the process exit code.
pub fn run(opts: HostOptions) -> i32 {
    match serve(opts) {
        Ok(()) => 0,
        Err(e) => {
            note(&e.to_string());
            1
        }
    }
}

/// A line on the host's stderr (`host.log`). A failed write is ignored: the
/// disk may be full, and `eprintln!` would panic.
pub(super) fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "terminal-host: {message}");
}

/// SIGXFSZ would kill the host when the log reaches a file size limit: with a
/// handler (not SIG_IGN, which the agent would inherit) the write fails instead.
fn survive_file_size_limit() {
    extern "C" fn on_sigxfsz(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGXFSZ, on_sigxfsz as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

fn serve(opts: HostOptions) -> std::io::Result<()> {
    survive_file_size_limit();
    std::fs::create_dir_all(&opts.state_dir)?;
    let _ = std::fs::remove_file(opts.state_dir.join(EXIT_FILE));
    let sock_path = opts.state_dir.join(SOCKET);
    if sock_path.exists() {
        if UnixStream::connect(&sock_path).is_ok() {
            return Err(std::io::Error::other(format!("a host already serves {}", sock_path.display())));
        }
        std::fs::remove_file(&sock_path)?;
    }
    let log = TerminalLog::open(&opts.state_dir, opts.log_max_bytes)?;
    // Without its key the host would serve anyone who reaches its socket, an
    // agent of another task included: it does not start.
    let key = std::fs::read(opts.state_dir.join(KEY_FILE))
        .map_err(|e| std::io::Error::other(format!("reading the host key {KEY_FILE}: {e}")))?;
    let state: Shared = Arc::new(Mutex::new(State {
        log,
        clients: HashMap::new(),
        next_client: 1,
        agent_pid: None,
        exit: None,
        started_at: now_ms(),
        last_output_at: None,
        last_detached_at: None,
        active_size: None,
        phase: "setup",
        log_error: None,
        log_dropped: 0,
        remote: opts.remote.as_ref().map(|_| RemoteStatus { process_id: None, connected: false, error: None, since: now_ms() }),
    }));
    {
        let state = state.clone();
        std::thread::spawn(move || retry_log(&state));
    }
    match opts.remote.clone() {
        Some(target) => serve_remote(&opts, target, state, key, &sock_path),
        None => serve_local(&opts, state, key, &sock_path),
    }
}

fn serve_local(opts: &HostOptions, state: Shared, key: Vec<u8>, sock_path: &Path) -> std::io::Result<()> {
    let cgroup = if opts.cgroup {
        Cgroup::create(&opts.state_dir)
    } else {
        let _ = std::fs::remove_file(opts.state_dir.join(super::procs::CGROUP_FILE));
        None
    };
    let (pty, pts) = pty_process::blocking::open().map_err(std::io::Error::other)?;
    pty.resize(pty_process::Size::new(opts.rows, opts.cols)).map_err(std::io::Error::other)?;
    if let Some(ruleset) = &opts.confine {
        // The agent's own terminal (`/dev/stderr`, `tty`), and no other.
        ruleset.allow_terminal(std::os::fd::AsFd::as_fd(&pts))?;
    }
    let backend = Arc::new(Backend::Local(pty));

    // Listen before anything runs, so the server can attach from byte 0.
    let listener = UnixListener::bind(sock_path)?;
    std::fs::write(opts.state_dir.join(PID_FILE), std::process::id().to_string())?;
    {
        let (state, backend) = (state.clone(), backend.clone());
        std::thread::spawn(move || accept_loop(listener, state, backend, key));
    }
    let reader = {
        let (state, backend) = (state.clone(), backend.clone());
        std::thread::spawn(move || {
            if let Backend::Local(pty) = &*backend {
                pump_output(pty, &state)
            }
        })
    };
    let Backend::Local(pty) = &*backend else { return Err(std::io::Error::other("a local host without a PTY")) };
    let exit = run_steps(opts, pty, pts, &state, cgroup.as_ref());
    // Give the reader a moment to drain what the agent printed last.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(opts, &state, exit, sock_path);
    // Only once nothing the agent started runs on (kill stops those).
    if let Some(cgroup) = &cgroup {
        let _ = cgroup.remove();
    }
    Ok(())
}

/// The host's side of the remote driver: output into the log, the phase and the
/// connection into the status.
struct RemoteSink(Shared);

impl remote::Sink for RemoteSink {
    fn output(&self, bytes: &[u8]) {
        record_output(&self.0, bytes);
    }

    fn agent_started(&self) {
        lock(&self.0).phase = "agent";
    }

    fn remote(&self, process: Option<&str>, connected: bool, error: Option<String>) {
        let mut s = lock(&self.0);
        let now = now_ms();
        let status = s.remote.get_or_insert(RemoteStatus { process_id: None, connected, error: None, since: now });
        if status.connected != connected || status.process_id.as_deref() != process {
            status.since = now;
        }
        if let (true, false, Some(e)) = (status.connected, connected, &error) {
            note(&format!("lost the remote terminal: {e}"));
        } else if !status.connected && connected && status.error.is_some() {
            note("the remote terminal is connected again");
        }
        status.process_id = process.map(str::to_string);
        status.connected = connected;
        status.error = error;
    }
}

fn serve_remote(opts: &HostOptions, target: RemoteTarget, state: Shared, key: Vec<u8>, sock_path: &Path) -> std::io::Result<()> {
    // Nothing of the agent runs on this machine: no cgroup, no confinement.
    let _ = std::fs::remove_file(opts.state_dir.join(super::procs::CGROUP_FILE));
    let _ = std::fs::remove_file(opts.state_dir.join(remote::PROCESS_FILE));
    let listener = UnixListener::bind(sock_path)?;
    std::fs::write(opts.state_dir.join(PID_FILE), std::process::id().to_string())?;
    let plan = remote::Plan {
        setup: opts.setup.clone(),
        argv: opts.argv.clone(),
        cols: opts.cols,
        rows: opts.rows,
        state_dir: opts.state_dir.clone(),
    };
    let (handle, driver) = remote::start(target, plan, Arc::new(RemoteSink(state.clone())))?;
    let backend = Arc::new(Backend::Remote(handle));
    {
        let (state, backend) = (state.clone(), backend.clone());
        std::thread::spawn(move || accept_loop(listener, state, backend, key));
    }
    let exit = driver.join().unwrap_or_else(|_| ExitInfo {
        code: None,
        signal: None,
        phase: lock(&state).phase.into(),
        at: now_ms(),
        reason: Some("the remote terminal failed".into()),
    });
    if let Some(reason) = &exit.reason {
        note(reason);
    }
    if let Some(r) = lock(&state).remote.as_mut() {
        r.connected = false;
    }
    finish(opts, &state, exit, sock_path);
    Ok(())
}

/// Records how the run ended, tells the attachers, lets them read the last
/// frames, and takes the socket away.
fn finish(opts: &HostOptions, state: &Shared, exit: ExitInfo, sock_path: &Path) {
    let json = serde_json::to_vec(&exit).unwrap_or_default();
    // Attachers still hear of the end if the record cannot be written.
    if let Err(e) = std::fs::write(opts.state_dir.join(EXIT_FILE), &json) {
        note(&format!("cannot write {EXIT_FILE}: {e}"));
    }
    {
        let mut s = lock(state);
        s.exit = Some(exit);
        s.agent_pid = None;
        s.broadcast(&Frame::new(protocol::EXITED, json));
    }
    // Let attachers read the last frames, then go.
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::fs::remove_file(sock_path);
    let _ = std::fs::remove_file(opts.state_dir.join(PID_FILE));
}

/// Runs the setup commands, then the agent; answers how it ended.
fn run_steps(
    opts: &HostOptions,
    pty: &pty_process::blocking::Pty,
    pts: pty_process::blocking::Pts,
    state: &Shared,
    cgroup: Option<&Cgroup>,
) -> ExitInfo {
    for cmd in &opts.setup {
        announce(state, &format!("\r\n$ {cmd}\r\n"));
        let inside = cgroup.and_then(Cgroup::enter);
        let mut command = confined(pty_process::blocking::Command::new("sh").arg("-c").arg(cmd).current_dir(&opts.cwd), opts);
        let child = command.spawn_borrowed(&pts);
        drop(inside);
        let status = match child {
            Ok(mut child) => {
                lock(state).agent_pid = Some(child.id());
                child.wait()
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return exit_info(&s, "setup"),
            Err(e) => {
                announce(state, &format!("\r\nkiln: setup could not start: {e}\r\n"));
                return ExitInfo { code: Some(127), signal: None, phase: "setup".into(), at: now_ms(), reason: None };
            }
        }
    }
    let Some((program, args)) = opts.argv.split_first() else {
        return ExitInfo { code: Some(127), signal: None, phase: "agent".into(), at: now_ms(), reason: None };
    };
    let inside = cgroup.and_then(Cgroup::enter);
    let spawned = confined(pty_process::blocking::Command::new(program).args(args).current_dir(&opts.cwd), opts).spawn(pts);
    drop(inside);
    match spawned {
        Ok(mut child) => {
            {
                let mut s = lock(state);
                s.agent_pid = Some(child.id());
                s.phase = "agent";
            }
            let input_file = opts.state_dir.join(INITIAL_INPUT_FILE);
            if let Ok(text) = std::fs::read(&input_file) {
                let _ = std::fs::remove_file(&input_file);
                let _ = (&*pty).write_all(&text);
            }
            match child.wait() {
                Ok(s) => exit_info(&s, "agent"),
                Err(_) => ExitInfo { code: None, signal: None, phase: "agent".into(), at: now_ms(), reason: None },
            }
        }
        Err(e) => {
            announce(state, &format!("\r\nkiln: cannot start `{program}`: {e}\r\n"));
            ExitInfo { code: Some(127), signal: None, phase: "agent".into(), at: now_ms(), reason: None }
        }
    }
}

/// Makes `cmd` enter the task's Landlock domain between fork and exec.
fn confined(cmd: pty_process::blocking::Command, opts: &HostOptions) -> pty_process::blocking::Command {
    let Some(ruleset) = &opts.confine else { return cmd };
    let (fd, drop_caps) = (ruleset.raw_fd(), ruleset.drops_caps());
    // SAFETY: `enter` makes only async-signal-safe system calls; the host keeps
    // the ruleset open for its whole life.
    unsafe { cmd.pre_exec(move || crate::confine::enter(fd, drop_caps)) }
}

fn exit_info(status: &std::process::ExitStatus, phase: &str) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    ExitInfo { code: status.code(), signal: status.signal(), phase: phase.into(), at: now_ms(), reason: None }
}

/// Writes a line of Kiln's own into the terminal stream.
fn announce(state: &Shared, text: &str) {
    record_output(state, text.as_bytes());
}

/// Logs and broadcasts output. A failed log write does not hold it back.
fn record_output(state: &Shared, bytes: &[u8]) {
    let mut s = lock(state);
    let (offset, written) = s.log.append(bytes);
    s.log_written(written, bytes.len());
    s.last_output_at = Some(now_ms());
    s.broadcast(&Frame::output(offset, bytes));
}

/// While the log is failing, tries it again every `LOG_RETRY`, so the failure
/// ends when the disk has room even if the agent prints nothing.
fn retry_log(state: &Shared) {
    loop {
        std::thread::sleep(LOG_RETRY);
        let mut s = lock(state);
        if s.log.has_hole() {
            let resumed = s.log.resume();
            if resumed.is_ok() {
                s.log_written(Ok(()), 0);
            }
        }
    }
}

fn pump_output(pty: &pty_process::blocking::Pty, state: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match (&*pty).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => record_output(state, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: every process holding the terminal has gone.
            Err(_) => return,
        }
    }
}

fn accept_loop(listener: UnixListener, state: Shared, backend: Arc<Backend>, key: Vec<u8>) {
    let key = Arc::new(key);
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let (state, backend, key) = (state.clone(), backend.clone(), key.clone());
        std::thread::spawn(move || {
            let mut stream = stream;
            {
                if !protocol::read_hello(&mut stream, &key) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
            serve_client(stream, state, backend)
        });
    }
}

fn serve_client(stream: UnixStream, state: Shared, backend: Arc<Backend>) {
    let (Ok(write_half), Ok(shutdown_handle)) = (stream.try_clone(), stream.try_clone()) else { return };
    let (tx, rx) = sync_channel::<Outgoing>(CLIENT_QUEUE);
    let id = {
        let mut s = lock(&state);
        let id = s.next_client;
        s.next_client += 1;
        s.clients.insert(id, Client { tx: tx.clone(), attached: false, size: None, stream: shutdown_handle });
        id
    };
    let writer = {
        let state = state.clone();
        std::thread::spawn(move || write_client(write_half, rx, &state))
    };
    let mut reader = stream;
    while let Ok(Some(frame)) = protocol::read_frame(&mut reader) {
        if !handle_frame(&frame, id, &tx, &state, &backend) {
            break;
        }
    }
    // Everything the client sent has been read (or it broke the protocol).
    {
        let mut s = lock(&state);
        if s.clients.remove(&id).is_some_and(|c| c.attached) {
            s.last_detached_at = Some(now_ms());
        }
    }
    drop(tx);
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

/// Handles one client frame; `false` ends the connection.
fn handle_frame(
    frame: &Frame,
    id: u64,
    tx: &SyncSender<Outgoing>,
    state: &Shared,
    backend: &Backend,
) -> bool {
    match frame.kind {
        protocol::ATTACH => {
            let Some(offset) = frame.u64_prefix() else { return false };
            let mut s = lock(state);
            let to = s.log.end();
            let Some(client) = s.clients.get_mut(&id) else { return false };
            if !client.attached {
                client.attached = true;
                // An offset past the end (a stale or made-up one) starts at the
                // end: live output follows, and the client is told where it is.
                let from = offset.min(to);
                // Queued under the lock, so history comes before any live frame.
                let attached = Outgoing::Frame(Frame::new(protocol::ATTACHED, from.to_be_bytes().to_vec()));
                if tx.try_send(attached).is_err() || tx.try_send(Outgoing::History { from, to }).is_err() {
                    return false;
                }
                if let Some(exit) = &s.exit {
                    let json = serde_json::to_vec(exit).unwrap_or_default();
                    let _ = tx.try_send(Outgoing::Frame(Frame::new(protocol::EXITED, json)));
                }
            }
            true
        }
        protocol::INPUT => {
            make_active(state, id, backend);
            match backend {
                Backend::Local(pty) => (&*pty).write_all(&frame.payload).is_ok(),
                Backend::Remote(handle) => handle.input(&frame.payload).is_ok(),
            }
        }
        protocol::RESIZE => {
            let Some(size) = frame.size() else { return false };
            if size.0 == 0 || size.1 == 0 {
                return true;
            }
            if let Some(c) = lock(state).clients.get_mut(&id) {
                c.size = Some(size);
            }
            make_active(state, id, backend);
            true
        }
        protocol::STATUS => {
            let json = serde_json::to_vec(&lock(state).status()).unwrap_or_default();
            tx.send(Outgoing::Frame(Frame::new(protocol::STATUS_REPLY, json))).is_ok()
        }
        protocol::SIGNAL => {
            let Some(sig) = frame.signal_number() else { return true };
            match backend {
                Backend::Local(_) => {
                    if let Some(pid) = lock(state).agent_pid {
                        // SAFETY: kill(2); the agent leads its own session and process group.
                        unsafe { libc::kill(-(pid as i32), sig) };
                    }
                }
                Backend::Remote(handle) => {
                    if lock(state).exit.is_none() {
                        if let Err(e) = handle.signal(sig) {
                            note(&format!("signal {sig} to the remote process: {e}"));
                        }
                    }
                }
            }
            true
        }
        protocol::RETARGET => {
            let Backend::Remote(handle) = backend else { return false };
            let Ok(to) = serde_json::from_slice::<remote::Retarget>(&frame.payload) else { return false };
            if remote::check_headers(&to.headers).is_err() {
                return false;
            }
            // Ended already: nothing to reconnect, and the driver is gone.
            if lock(state).exit.is_some() {
                return true;
            }
            handle.retarget(to).is_ok()
        }
        _ => false,
    }
}

/// The most recently active client decides the terminal size.
fn make_active(state: &Shared, id: u64, backend: &Backend) {
    let mut s = lock(state);
    let Some(size) = s.clients.get(&id).and_then(|c| c.size) else { return };
    if s.active_size != Some(size) {
        s.active_size = Some(size);
        match backend {
            Backend::Local(pty) => {
                let _ = pty.resize(pty_process::Size::new(size.1, size.0));
            }
            Backend::Remote(handle) => handle.resize(size.0, size.1),
        }
    }
}

fn write_client(mut stream: UnixStream, rx: Receiver<Outgoing>, state: &Shared) {
    for msg in rx {
        let ok = match msg {
            Outgoing::Frame(frame) => protocol::write_frame(&mut stream, &frame).is_ok(),
            Outgoing::History { from, to } => send_history(&mut stream, state, from, to),
        };
        if !ok {
            break;
        }
    }
    // Never the read side: the connection's reader drains the client's input.
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn send_history(stream: &mut UnixStream, state: &Shared, from: u64, to: u64) -> bool {
    let mut at = from;
    while at < to {
        let chunk = lock(state).log.read_at(at, HISTORY_CHUNK.min((to - at) as usize));
        match chunk {
            Ok((offset, bytes)) if !bytes.is_empty() => {
                if protocol::write_frame(stream, &Frame::output(offset, &bytes)).is_err() {
                    return false;
                }
                at = offset + bytes.len() as u64;
            }
            _ => break,
        }
    }
    stream.flush().is_ok()
}

/// Whether a host answers on the socket in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}
