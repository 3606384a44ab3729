//! The terminal host's remote mode against the REAL sandbox-agent binary: the
//! agent runs as a sandbox-agent PTY process while Kiln's host keeps the log and
//! serves attachers on its socket (reached here through `client::connect` and
//! the host protocol, as the terminal WebSocket route does). Once directly, once
//! through a cuttable TCP proxy (reconnect, retarget), and once through the fake
//! Daytona's preview URL with its token (a sandbox restart: new token, process
//! gone).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kiln::providers::LaunchSpec;
use kiln::terminal::client;
use kiln::terminal::host::HostOptions;
use kiln::terminal::protocol::{self, Frame, HostStatus};
use kiln::terminal::remote::{RemoteTarget, TARGET_FILE};

use crate::common::{sandbox_agent_bin, BIN};
use crate::fake_daytona::{FakeDaytona, Timing};

const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it answers `Some`, or panics after `WAIT` saying `what`.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `sandbox-agent server --no-token` on loopback, in a process group of its
/// own (its PTY processes die with it). Killed on drop.
struct SandboxAgent {
    child: Option<Child>,
    port: u16,
    home: tempfile::TempDir,
}

impl SandboxAgent {
    fn start() -> SandboxAgent {
        let home = tempfile::Builder::new().prefix("kiln-rt-sa-").tempdir().expect("tempdir");
        let port = kiln::integrations::sandbox_agent::free_port().expect("port");
        let mut sa = SandboxAgent { child: None, port, home };
        sa.boot();
        sa
    }

    fn boot(&mut self) {
        let bin = sandbox_agent_bin().expect("the sandbox-agent binary: set KILN_SANDBOX_AGENT_BIN or run .ci/run");
        let env = vec![("HOME".to_string(), self.home.path().display().to_string())];
        let mut cmd = kiln::integrations::sandbox_agent::server_command(Path::new(&bin), "127.0.0.1", self.port, None, &env);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        self.child = Some(cmd.spawn().expect("spawn sandbox-agent"));
        let url = self.url();
        wait_for("sandbox-agent healthy", || (http("GET", &format!("{url}/v1/health"), &[], None).0 == 200).then_some(()));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the process group this test started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SandboxAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP/1.1 request (no keep-alive); answers (status, body as JSON).
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> (u16, Value) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let Ok(mut s) = TcpStream::connect(host) else { return (0, Value::Null) };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, Value::Null);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(payload) } else { payload.to_string() };
    (status, serde_json::from_str(&payload).unwrap_or(Value::Null))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP proxy to `to` that the test can cut (every connection closed, new
/// ones refused) and heal: the network between Kiln and the sandbox.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Requests reach sandbox-agent, but answers are lost (the connection
    /// closes on the client once the answer starts).
    swallow: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let swallow = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, k, sw) = (cut.clone(), conns.clone(), swallow.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else { continue };
                {
                    let mut k = k.lock().unwrap();
                    k.push(inbound.try_clone().unwrap());
                    k.push(outbound.try_clone().unwrap());
                }
                let swallowing = sw.load(Ordering::SeqCst);
                for (n, (mut from, mut into)) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)].into_iter().enumerate()
                {
                    std::thread::spawn(move || {
                        if n == 1 && swallowing {
                            let _ = from.read(&mut [0u8; 4096]);
                            let _ = into.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, cut, swallow, conns }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones until `heal`.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn swallow(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }
}

/// An attacher on the host's socket: every frame it gets, collected by a thread.
struct Attacher {
    stream: std::os::unix::net::UnixStream,
    frames: Arc<Mutex<Vec<Frame>>>,
}

impl Attacher {
    fn open(state_dir: &Path, offset: u64) -> Attacher {
        let mut stream = client::connect(state_dir).expect("connect to the host");
        stream.set_read_timeout(None).unwrap();
        protocol::write_frame(&mut stream, &Frame::attach(offset)).unwrap();
        let frames: Arc<Mutex<Vec<Frame>>> = Arc::default();
        let (mut reader, f) = (stream.try_clone().unwrap(), frames.clone());
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = protocol::read_frame(&mut reader) {
                f.lock().unwrap().push(frame);
            }
        });
        Attacher { stream, frames }
    }

    fn send(&mut self, frame: Frame) {
        protocol::write_frame(&mut self.stream, &frame).unwrap();
    }

    /// The output received, with the offset of its first byte; checks that the
    /// frames are contiguous.
    fn output(&self) -> (u64, Vec<u8>) {
        let frames = self.frames.lock().unwrap();
        let mut first = None;
        let mut out = Vec::new();
        for f in frames.iter().filter(|f| f.kind == protocol::OUTPUT) {
            let at = f.u64_prefix().unwrap();
            let start = *first.get_or_insert(at);
            assert_eq!(at, start + out.len() as u64, "output frames are contiguous");
            out.extend_from_slice(&f.payload[8..]);
        }
        (first.unwrap_or(0), out)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output().1).into_owned()
    }

    fn until(&self, what: &str, want: &str) {
        wait_for(&format!("{what} ({want:?}) on the attach stream"), || self.text().contains(want).then_some(()));
    }

    fn exited(&self) -> Option<Value> {
        let frames = self.frames.lock().unwrap();
        frames.iter().find(|f| f.kind == protocol::EXITED).map(|f| serde_json::from_slice(&f.payload).unwrap())
    }
}

/// Everything in the host's log on disk.
fn log_bytes(state_dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["terminal.log.1", "terminal.log"] {
        bytes.extend(std::fs::read(state_dir.join(name)).unwrap_or_default());
    }
    bytes
}

fn log_text(state_dir: &Path) -> String {
    String::from_utf8_lossy(&log_bytes(state_dir)).into_owned()
}

fn target(base_url: &str, headers: &[(&str, &str)]) -> RemoteTarget {
    RemoteTarget {
        base_url: base_url.to_string(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        cwd: std::env::temp_dir().display().to_string(),
        env: vec![("REMOTE_T_BASE".into(), "from-the-target".into())],
        adopt: None,
    }
}

/// Launches a remote host in `state_dir` running `argv` after `setup`.
fn launch(state_dir: &Path, target: RemoteTarget, setup: &[&str], argv: &[&str], env: &[(&str, &str)], input: Option<&str>) {
    let opts = HostOptions {
        state_dir: state_dir.to_path_buf(),
        cwd: state_dir.to_path_buf(),
        log_max_bytes: 1 << 20,
        cols: 100,
        rows: 30,
        setup: setup.iter().map(|s| s.to_string()).collect(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        confine: None,
        cgroup: false,
        remote: Some(target),
    };
    let launch = LaunchSpec {
        argv: opts.argv.clone(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        initial_input: input.map(str::to_string),
    };
    client::launch(&opts, &launch, BIN).expect("launch the remote host");
}

fn status(state_dir: &Path) -> HostStatus {
    client::status(state_dir).expect("host status")
}

fn wait_connected(state_dir: &Path) -> HostStatus {
    wait_for("the remote host connected", || {
        let s = status(state_dir);
        (s.phase == "agent" && s.remote.as_ref().is_some_and(|r| r.connected)).then_some(s)
    })
}

/// How the run ended, once it has: from `exit.json`.
fn wait_exit(state_dir: &Path) -> kiln::terminal::protocol::ExitInfo {
    wait_for("the run ended", || client::exit_info(state_dir))
}

/// The tests' state dirs; on drop (a failed test included) every host still
/// running in one is killed, so none lingers retrying a sandbox-agent that is gone.
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Root {
        Root(tempfile::Builder::new().prefix("kiln-rt-").tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0.path()).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(entry.path().join("host.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                // SAFETY: kill(2) on a host this test launched (its pid file is in our temp dir).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn state_dir(root: &Root, name: &str) -> PathBuf {
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_remote_terminal_types_resizes_replays_and_records_the_exit() {
    let sa = SandboxAgent::start();
    let root = Root::new();
    let dir = state_dir(&root, "t1");
    let header_secret = "hdr-secret-9f1c";
    let tgt = target(&sa.url(), &[("x-test-token", header_secret)]);
    launch(
        &dir,
        tgt,
        &["echo set\"\"up-ran-$REMOTE_T_BASE"],
        &["bash", "--norc", "--noprofile", "-i"],
        &[("REMOTE_T_SECRET", "env-secret-77ab")],
        Some("echo initi\"\"al-$((1+1))\n"),
    );
    // The target reached the host through its private file, which is gone now;
    // no secret is on the host's command line or in its log.
    assert!(!dir.join(TARGET_FILE).exists(), "remote.json is deleted once read");
    let s = wait_connected(&dir);
    assert_eq!(s.agent_pid, None, "no local pid for a remote agent (kill must not signal a local process)");
    assert!(s.running);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.host_pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--remote"), "{cmdline}");
    for secret in [header_secret, "env-secret-77ab"] {
        assert!(!cmdline.contains(secret), "a secret on the host's command line: {cmdline}");
        let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/environ", s.host_pid)).unwrap()).into_owned();
        assert!(!environ.contains(secret), "a secret in the host's environment");
    }
    let process_id = s.remote.as_ref().unwrap().process_id.clone().expect("the process id");
    assert!(process_id.starts_with("proc_"), "{process_id}");

    let mut a = Attacher::open(&dir, 0);
    a.until("the setup command ran, with the target's env", "setup-ran-from-the-target");
    a.until("the initial input was typed", "initial-2");
    assert!(a.text().contains("$ echo set\"\"up-ran"), "the setup command is announced: {}", a.text());

    // Typing: through the server's call and through the attacher.
    client::send_input(&dir, b"echo h\"\"i-$((40+2)) $REMOTE_T_SECRET\n").unwrap();
    a.until("typed input's output", "hi-42 env-secret-77ab");
    // Bytes that are not UTF-8 arrive as typed.
    a.send(Frame::new(protocol::INPUT, b"stty raw -echo; echo RAW\"\"-ON; head -c 3 | od -An -tx1; stty sane\n".to_vec()));
    a.until("the terminal in raw mode", "RAW-ON");
    a.send(Frame::new(protocol::INPUT, vec![0xff, 0xfe, 0x01]));
    a.until("the raw bytes read back", "ff fe 01");

    // Resize: the attacher's size reaches the remote PTY.
    a.send(Frame::resize(111, 33));
    a.send(Frame::new(protocol::INPUT, b"stty size\n".to_vec()));
    a.until("the new size", "33 111");

    // The log on disk is what the attacher saw, and a replay from an offset
    // answers the log from there.
    let (first, seen) = a.output();
    assert_eq!(first, 0);
    wait_for("the log holds what was seen", || (log_bytes(&dir).len() >= seen.len()).then_some(()));
    assert_eq!(&log_bytes(&dir)[..seen.len()], &seen[..]);
    let at = a.text().find("hi-42").unwrap() as u64;
    let replay = Attacher::open(&dir, at);
    wait_for("the replay", || (replay.output().1.len() as u64 >= seen.len() as u64 - at).then_some(()));
    let (from, bytes) = replay.output();
    assert_eq!(from, at, "the replay starts at the offset asked for");
    assert_eq!(&bytes[..seen.len() - at as usize], &seen[at as usize..]);
    wait_for("the status's end offset is the log's end", || (status(&dir).end_offset as usize == log_bytes(&dir).len()).then_some(()));

    // The exit is recorded, for attachers and in exit.json.
    client::send_input(&dir, b"exit 7\n").unwrap();
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.signal, exit.phase.as_str(), exit.reason.as_deref()), (Some(7), None, "agent", None));
    let exited = wait_for("EXITED on the attach stream", || a.exited());
    assert_eq!((exited["code"].as_i64(), exited["phase"].as_str()), (Some(7), Some("agent")), "{exited}");
    assert!(!log_text(&dir).contains("process stream error"), "sandbox-agent's EIO line is not the agent's output");
    wait_for("the host gone", || client::status(&dir).is_err().then_some(()));
    let host_log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
    assert!(!host_log.contains(header_secret) && !host_log.contains("env-secret-77ab"), "{host_log}");
    // The process record in sandbox-agent says the same.
    let (_, info) = http("GET", &format!("{}/v1/processes/{process_id}", sa.url()), &[], None);
    assert_eq!((info["status"].as_str(), info["exitCode"].as_i64()), (Some("exited"), Some(7)), "{info}");
}

#[test]
fn setup_failures_and_missing_programs_end_as_locally() {
    let sa = SandboxAgent::start();
    let root = Root::new();
    let dir = state_dir(&root, "s1");
    launch(&dir, target(&sa.url(), &[]), &["echo fir\"\"st", "exit 3", "echo never-runs"], &["bash"], &[], None);
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.phase.as_str()), (Some(3), "setup"), "{exit:?}");
    let log = log_text(&dir);
    assert!(log.contains("first") && log.contains("$ exit 3"), "{log}");
    assert!(!log.contains("$ echo never-runs"), "setup stops at the first failure: {log}");

    let dir = state_dir(&root, "s2");
    launch(&dir, target(&sa.url(), &[]), &[], &["/nonexistent/agent-binary"], &[], None);
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.phase.as_str()), (Some(127), "agent"), "{exit:?}");
    assert!(log_text(&dir).contains("kiln: cannot start `/nonexistent/agent-binary`"), "{}", log_text(&dir));

    // A local host refuses a retarget (and its agent is untouched).
    let dir = state_dir(&root, "l1");
    let opts = HostOptions {
        state_dir: dir.clone(),
        cwd: dir.clone(),
        log_max_bytes: 1 << 20,
        cols: 80,
        rows: 24,
        setup: vec![],
        argv: vec!["sleep".into(), "30".into()],
        confine: None,
        cgroup: false,
        remote: None,
    };
    let spec = LaunchSpec { argv: opts.argv.clone(), env: vec![], initial_input: None };
    client::launch(&opts, &spec, BIN).unwrap();
    let err = client::retarget(&dir, &target(&sa.url(), &[])).unwrap_err();
    assert!(err.to_string().contains("not a remote host"), "{err}");
    let s = wait_for("the local agent started", || Some(status(&dir)).filter(|s| s.agent_pid.is_some()));
    assert!(s.running && s.remote.is_none(), "{s:?}");
    client::signal(&dir, libc::SIGKILL).unwrap();
    wait_exit(&dir);
}

#[test]
fn signals_stop_and_kill_the_remote_process() {
    let sa = SandboxAgent::start();
    let root = Root::new();
    // SIGTERM → stop.
    let dir = state_dir(&root, "k1");
    launch(&dir, target(&sa.url(), &[]), &[], &["sh", "-c", "echo slee\"\"ping; exec sleep 600"], &[], None);
    wait_connected(&dir);
    wait_for("the agent started", || log_text(&dir).contains("sleeping").then_some(()));
    client::signal(&dir, libc::SIGTERM).unwrap();
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.signal, exit.phase.as_str()), (None, Some(libc::SIGTERM), "agent"), "{exit:?}");

    // SIGKILL → kill, also for an interactive shell that ignores SIGTERM.
    let dir = state_dir(&root, "k2");
    launch(&dir, target(&sa.url(), &[]), &[], &["bash", "--norc", "-i"], &[], None);
    wait_connected(&dir);
    client::signal(&dir, libc::SIGKILL).unwrap();
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGKILL)), "{exit:?}");
}

#[test]
fn a_cut_connection_reconnects_without_losing_or_repeating_output_and_retarget_moves_it() {
    let mut sa = SandboxAgent::start();
    let proxy = Proxy::start(sa.port);
    let root = Root::new();
    let dir = state_dir(&root, "r1");
    launch(&dir, target(&proxy.url(), &[]), &[], &["bash", "--norc", "--noprofile", "-i"], &[], None);
    wait_connected(&dir);
    let a = Attacher::open(&dir, 0);
    // Numbered lines printed in the background, across the cut.
    client::send_input(&dir, b"(for i in $(seq 1 60); do echo li\"\"ne-$i-end; sleep 0.05; done; echo all\"\"-done) &\n").unwrap();
    a.until("the first lines", "line-5-end");
    proxy.cut();
    wait_for("the host sees the cut", || status(&dir).remote.is_some_and(|r| !r.connected).then_some(()));
    // Typed while cut: queued, written once connected again.
    client::send_input(&dir, b"echo ty\"\"ped-while-cut\n").unwrap();
    // Let the job print on while nobody listens: its end is in sandbox-agent's log.
    let url = sa.url();
    let id = status(&dir).remote.unwrap().process_id.unwrap();
    wait_for("the job done inside the sandbox", || {
        let (_, logs) = http("GET", &format!("{url}/v1/processes/{id}/logs?stream=pty"), &[], None);
        let text: String = logs["entries"]
            .as_array()?
            .iter()
            .map(|e| {
                use base64::Engine as _;
                String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(e["data"].as_str().unwrap()).unwrap())
                    .into_owned()
            })
            .collect();
        text.contains("all-done").then_some(())
    });
    proxy.heal();
    a.until("the gap filled after the reconnect", "all-done");
    a.until("input typed while cut", "typed-while-cut");
    let text = a.text();
    for i in 1..=60 {
        assert_eq!(count(&text, &format!("line-{i}-end")), 1, "line {i} exactly once:\n{text}");
    }
    let positions: Vec<usize> = (1..=60).map(|i| text.find(&format!("line-{i}-end")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(log_text(&dir), text, "the log is what the attacher saw");
    assert!(status(&dir).remote.unwrap().connected);

    // Retarget: the old way in is gone for good; the host follows the new base
    // URL to the same process.
    proxy.cut();
    wait_for("the host sees the cut", || status(&dir).remote.is_some_and(|r| !r.connected).then_some(()));
    let other = Proxy::start(sa.port);
    client::retarget(&dir, &target(&other.url(), &[("x-new-token", "t2")])).unwrap();
    wait_for("connected through the new target", || status(&dir).remote.is_some_and(|r| r.connected).then_some(()));
    client::send_input(&dir, b"echo af\"\"ter-retarget\n").unwrap();
    a.until("output after the retarget", "after-retarget");
    assert_eq!(count(&a.text(), "all-done"), 1);

    // sandbox-agent restarts (the sandbox did): the process is gone, and the
    // host says so instead of hanging. The new sandbox-agent numbers its
    // processes from proc_1 again: another process with the agent's id is not
    // the agent.
    assert_eq!(status(&dir).remote.unwrap().process_id.as_deref(), Some("proc_1"));
    other.cut();
    sa.kill();
    sa.boot();
    let body = json!({"command": "sh", "args": ["-c", "while :; do echo impo\"\"stor; sleep 0.2; done"], "tty": true, "interactive": true});
    let (code, impostor) = http("POST", &format!("{}/v1/processes", sa.url()), &[], Some(body));
    assert_eq!((code, impostor["id"].as_str()), (200, Some("proc_1")), "{impostor}");
    other.heal();
    let exit = wait_exit(&dir);
    assert_eq!((exit.code, exit.signal, exit.phase.as_str()), (None, None, "agent"));
    assert!(exit.reason.as_deref().is_some_and(|r| r.contains("is gone")), "{exit:?}");
    assert!(log_text(&dir).contains("kiln: the agent's process"), "the terminal says why");
    assert!(!log_text(&dir).contains("impostor"), "another process's output never reaches the log");
    // No host, no retarget.
    wait_for("the host gone", || client::status(&dir).is_err().then_some(()));
    assert!(client::retarget(&dir, &target(&other.url(), &[])).is_err());
}

/// sandbox-agent's running processes whose args are `args`.
fn running_with_args(sa: &SandboxAgent, args: &Value) -> Vec<String> {
    let (_, list) = http("GET", &format!("{}/v1/processes", sa.url()), &[], None);
    let all = list["processes"].as_array().cloned().unwrap_or_default();
    all.iter().filter(|p| p["status"] == "running" && &p["args"] == args).map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_create_whose_answer_is_lost_is_adopted_not_repeated() {
    let sa = SandboxAgent::start();
    let proxy = Proxy::start(sa.port);
    proxy.swallow(true);
    let root = Root::new();
    let dir = state_dir(&root, "a1");
    let script = "echo adop\"\"ted-once; exec sleep 600";
    launch(&dir, target(&proxy.url(), &[]), &[], &["sh", "-c", script], &[], None);
    let args = json!(["-c", script]);
    // The create reached sandbox-agent; its answer did not reach the host.
    let made = wait_for("the process made", || Some(running_with_args(&sa, &args)).filter(|p| !p.is_empty()));
    assert!(!status(&dir).remote.unwrap().connected);
    proxy.swallow(false);
    let s = wait_connected(&dir);
    assert_eq!(s.remote.unwrap().process_id.as_deref(), Some(made[0].as_str()), "the host adopted the process made");
    assert_eq!(running_with_args(&sa, &args), made, "and made no other");
    let host_log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
    assert!(host_log.contains(&format!("adopted process \"{}\"", made[0])), "{host_log}");
    let a = Attacher::open(&dir, 0);
    a.until("its output", "adopted-once");
    client::signal(&dir, libc::SIGKILL).unwrap();
    assert_eq!(wait_exit(&dir).signal, Some(libc::SIGKILL));
}

/// The fake Daytona's control plane and toolbox, with its API key.
fn daytona(fake: &FakeDaytona, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {}", fake.key());
    http(method, &format!("{}{path}", fake.url), &[("Authorization", &auth)], body)
}

/// Starts sandbox-agent in the sandbox (a process session of its own) and
/// answers its preview URL and token once it is healthy through them.
fn start_agent_in(fake: &FakeDaytona, id: &str, port: u16, session: &str) -> (String, String) {
    let bin = sandbox_agent_bin().expect("the sandbox-agent binary");
    let tb = format!("/toolbox/{id}/process/session");
    assert_eq!(daytona(fake, "POST", &tb, Some(json!({"sessionId": session}))).0, 201);
    let cmd = format!("exec '{bin}' server --no-token --no-telemetry --host 127.0.0.1 --port {port}");
    assert_eq!(daytona(fake, "POST", &format!("{tb}/{session}/exec"), Some(json!({"command": cmd, "runAsync": true}))).0, 202);
    let (_, preview) = daytona(fake, "GET", &format!("/api/sandbox/{id}/ports/{port}/preview-url"), None);
    let (url, token) = (preview["url"].as_str().unwrap().to_string(), preview["token"].as_str().unwrap().to_string());
    wait_for("sandbox-agent healthy through the preview URL", || {
        (http("GET", &format!("{url}/v1/health"), &[("x-daytona-preview-token", &token)], None).0 == 200).then_some(())
    });
    (url, token)
}

fn wait_state(fake: &FakeDaytona, id: &str, want: &str) {
    wait_for(&format!("sandbox {want}"), || (daytona(fake, "GET", &format!("/api/sandbox/{id}"), None).1["state"] == want).then_some(()));
}

#[test]
fn through_a_daytona_preview_url_with_its_token_and_a_restart() {
    let fake = FakeDaytona::with_timing(Timing { create: Duration::ZERO, ..Timing::default() });
    let (_, created) = daytona(&fake, "POST", "/api/sandbox", Some(json!({})));
    let id = created["id"].as_str().unwrap().to_string();
    wait_state(&fake, &id, "started");
    let port = kiln::integrations::sandbox_agent::free_port().unwrap();
    let (url, token) = start_agent_in(&fake, &id, port, "agent");

    let root = Root::new();
    let dir = state_dir(&root, "d1");
    let mut tgt = target(&url, &[("x-daytona-preview-token", &token)]);
    tgt.cwd = fake.home(&id).unwrap().display().to_string();
    launch(&dir, tgt.clone(), &[], &["bash", "--norc", "--noprofile", "-i"], &[], None);
    wait_connected(&dir);
    let a = Attacher::open(&dir, 0);
    client::send_input(&dir, b"echo through-the-$((20+22))-\"\"preview; pwd\n").unwrap();
    a.until("output through the preview URL", "through-the-42-preview");
    a.until("the sandbox's checkout as cwd", &tgt.cwd);

    // The sandbox restarts: its processes die, the token changes. The host
    // cannot get in with the old token (a redirect): it waits for a retarget.
    daytona(&fake, "POST", &format!("/api/sandbox/{id}/stop"), None);
    wait_state(&fake, &id, "stopped");
    daytona(&fake, "POST", &format!("/api/sandbox/{id}/start"), None);
    wait_state(&fake, &id, "started");
    let (url2, token2) = start_agent_in(&fake, &id, port, "agent2");
    assert_ne!(token, token2, "a new token after the restart");
    wait_for("the host refused with the old token", || {
        let r = status(&dir).remote?;
        (!r.connected && r.error.as_deref().is_some_and(|e| e.contains("credentials"))).then_some(())
    });
    assert!(status(&dir).running, "still waiting, not ended");
    client::retarget(&dir, &RemoteTarget { headers: vec![("x-daytona-preview-token".into(), token2)], base_url: url2, ..tgt }).unwrap();
    // With the new token it reaches the new sandbox-agent, which has no such
    // process: the run is over, and says why.
    let exit = wait_exit(&dir);
    assert!(exit.reason.as_deref().is_some_and(|r| r.contains("is gone")), "{exit:?}");
    wait_for("EXITED on the attach stream", || a.exited());
    assert_eq!(count(&a.text(), "through-the-42-preview"), 1);
}
