//! The server's side of a terminal host: launching one, asking its status, and
//! sending it input and signals. These block (short timeouts): call them on the
//! blocking pool. Attaching for a WebSocket lives in `http/terminal.rs`.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::host::{HostOptions, EXIT_FILE, KEY_FILE, SOCKET};
use super::protocol::{self, ExitInfo, Frame, HostStatus};

/// How long a status or input call waits for the host.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the host serving `state_dir`, proving its key first.
/// The longest unix socket path Kiln uses: `sun_path` holds 108 bytes with the
/// terminating NUL on Linux, and Kiln keeps some room.
pub const MAX_SOCKET_PATH: usize = 100;

/// How long a task's terminal socket path (`<data_dir>/sandboxes/<task>/host.sock`)
/// is under `data_dir`: every task id has 8 characters, so this is exact.
pub fn socket_path_len(data_dir: &Path) -> usize {
    super::host::socket_path(&data_dir.join("sandboxes").join("00000000")).as_os_str().len()
}

pub fn connect(state_dir: &Path) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(state_dir.join(SOCKET))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    if let Some(key) = host_key(state_dir) {
        protocol::write_frame(&mut stream, &Frame::new(protocol::HELLO, key))?;
    }
    Ok(stream)
}

/// The key a host in `state_dir` wants first (none for hosts started before keys).
pub fn host_key(state_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(state_dir.join(KEY_FILE)).ok()
}

/// The host's status; an error when no host answers.
pub fn status(state_dir: &Path) -> io::Result<HostStatus> {
    let mut stream = connect(state_dir)?;
    protocol::write_frame(&mut stream, &Frame::new(protocol::STATUS, vec![]))?;
    loop {
        match protocol::read_frame(&mut stream)? {
            Some(f) if f.kind == protocol::STATUS_REPLY => {
                return serde_json::from_slice(&f.payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Some(_) => continue,
            None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the host closed the connection")),
        }
    }
}

/// Types `bytes` into the agent's terminal.
pub fn send_input(state_dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut stream = connect(state_dir)?;
    for chunk in bytes.chunks(64 * 1024) {
        protocol::write_frame(&mut stream, &Frame::new(protocol::INPUT, chunk.to_vec()))?;
    }
    // A status round trip proves the host has read (and so written) the input.
    protocol::write_frame(&mut stream, &Frame::new(protocol::STATUS, vec![]))?;
    while let Some(f) = protocol::read_frame(&mut stream)? {
        if f.kind == protocol::STATUS_REPLY {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends `sig` to the agent's process group.
pub fn signal(state_dir: &Path, sig: i32) -> io::Result<()> {
    let mut stream = connect(state_dir)?;
    protocol::write_frame(&mut stream, &Frame::signal(sig))?;
    protocol::write_frame(&mut stream, &Frame::new(protocol::STATUS, vec![]))?;
    let _ = protocol::read_frame(&mut stream);
    Ok(())
}

/// Points a remote host at a new base URL and headers (a Daytona sandbox that
/// restarted has a new preview token); the host reconnects with them at once.
/// `target.cwd` and `target.env` are not used: the process already runs. An
/// error when no host answers, or when the host is not a remote one.
pub fn retarget(state_dir: &Path, target: &super::remote::RemoteTarget) -> io::Result<()> {
    super::remote::check_headers(&target.headers)?;
    let json = serde_json::to_vec(&super::remote::Retarget::from(target)).map_err(io::Error::other)?;
    let mut stream = connect(state_dir)?;
    protocol::write_frame(&mut stream, &Frame::new(protocol::RETARGET, json))?;
    // A host that refuses it closes the connection: the status request or its
    // answer then fails (a reset, a broken pipe or the end of the stream).
    let refused = || io::Error::other("the terminal host refused the retarget (not a remote host?)");
    let answered = protocol::write_frame(&mut stream, &Frame::new(protocol::STATUS, vec![])).and_then(|()| loop {
        match protocol::read_frame(&mut stream)? {
            Some(f) if f.kind == protocol::STATUS_REPLY => return Ok(true),
            Some(_) => continue,
            None => return Ok(false),
        }
    });
    match answered {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused()),
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof) => Err(refused()),
        Err(e) => Err(e),
    }
}

/// Whether a status error means no host is there (as opposed to a slow one).
pub fn is_gone(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::UnexpectedEof)
}

/// How the agent ended, if the host recorded it.
pub fn exit_info(state_dir: &Path) -> Option<ExitInfo> {
    let bytes = std::fs::read(state_dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Starts a detached host (its own session, so it outlives the server) running
/// `opts` with the launch's environment added to the server's, and waits until
/// it answers on its socket. The launch's first input goes through a private
/// file the host types in once the agent has started.
///
/// With `opts.remote`, the agent runs in a remote sandbox through sandbox-agent:
/// the target (its headers, and its env with the launch's env on top) goes to
/// the host in a private file, never on its command line or in its environment.
pub fn launch(opts: &HostOptions, launch: &crate::providers::LaunchSpec, program: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(&opts.state_dir)?;
    let input_file = opts.state_dir.join(super::host::INITIAL_INPUT_FILE);
    let _ = std::fs::remove_file(&input_file);
    if let Some(text) = &launch.initial_input {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&input_file)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
    }
    let local_env: &[(String, String)] = if opts.remote.is_some() { &[] } else { &launch.env };
    let target_file = opts.state_dir.join(super::remote::TARGET_FILE);
    let _ = std::fs::remove_file(&target_file);
    let socket = opts.state_dir.join(SOCKET);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::other(format!(
            "the terminal socket path {} is too long for a unix socket: use a shorter data_dir",
            socket.display()
        )));
    }
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(opts.state_dir.join("host.log"))?;
    // /proc/self/exe still runs this very binary after it was replaced on disk
    // (a rebuild or an upgrade), where its path would name the new file or none.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if !program.is_empty() {
        std::path::PathBuf::from(program)
    } else if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(exe);
    cmd.arg("terminal-host")
        .arg("--state-dir")
        .arg(&opts.state_dir)
        .arg("--cwd")
        .arg(&opts.cwd)
        .args(["--log-max-bytes", &opts.log_max_bytes.to_string()])
        .args(["--cols", &opts.cols.to_string(), "--rows", &opts.rows.to_string()]);
    for step in &opts.setup {
        cmd.arg("--setup").arg(step);
    }
    if let Some(ruleset) = &opts.confine {
        let fd = ruleset.pass_to(&mut cmd);
        cmd.args(["--confine-fd", &fd.to_string(), "--confine-abi", &ruleset.abi().to_string()]);
    }
    if !opts.cgroup {
        cmd.arg("--no-cgroup");
    }
    if opts.remote.is_some() {
        cmd.arg("--remote");
    }
    cmd.arg("--").args(&opts.argv);
    // The server's own settings (KILN_*) are none of the agent's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(local_env.iter().map(|(k, v)| (k, v)))
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; it detaches the host from the server's
    // session and process group, so signals to the server do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // A host whose agent has ended lingers briefly to flush its clients: wait
    // for it to go, so the new one can take the socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&opts.state_dir).is_ok_and(|s| !s.running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A fresh key per host (after the old one is gone: it knows only its own):
    // only Kiln, which can read the state dir, connects.
    let _ = std::fs::remove_file(opts.state_dir.join(KEY_FILE));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(opts.state_dir.join(KEY_FILE))
        .and_then(|mut f| std::io::Write::write_all(&mut f, crate::util::random_hex(32).as_bytes()))?;
    if let Some(target) = &opts.remote {
        // The launch's env on top of the target's, as a local agent gets it on
        // top of the server's.
        let mut target = target.clone();
        for (k, v) in &launch.env {
            target.env.retain(|(name, _)| name != k);
            target.env.push((k.clone(), v.clone()));
        }
        super::remote::write_target(&opts.state_dir, &target)?;
    }
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&target_file);
            return Err(e);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Only our own host counts as up, not one that was there before.
        if status(&opts.state_dir).is_ok_and(|s| s.host_pid == child.id()) {
            break;
        }
        if let Some(code) = child.try_wait()? {
            let _ = std::fs::remove_file(&target_file);
            let log = std::fs::read_to_string(opts.state_dir.join("host.log")).unwrap_or_default();
            return Err(io::Error::other(format!("the terminal host exited at once ({code}): {}", log.trim())));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = std::fs::remove_file(&target_file);
            return Err(io::Error::other("the terminal host did not come up within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reap it when it ends, so it never lingers as a zombie of this server.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}
