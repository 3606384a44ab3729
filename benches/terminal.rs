//! Terminal benchmarks (`cargo bench --bench terminal`):
//!
//! 1. **Throughput**: an agent prints `BENCH_TERMINAL_MB` MB (default 100) of text;
//!    the bytes go through the terminal host and the server to a WebSocket client.
//!    Baseline, in the same run: reading the same `cat` straight from a PTY.
//! 2. **Keystroke round trip**: one byte typed over the WebSocket until its echo
//!    comes back (the PTY echoes it), `BENCH_KEYS` times (default 300). Baseline,
//!    in the same run: the same keystroke through a `tmux attach` client to a tmux
//!    pane running `cat`.
//!
//! Needs `tmux` on PATH for the second baseline (`apt-get install tmux`).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use common::{fmt_us, knob, print_table, Histogram, Service};

fn make_payload(dir: &std::path::Path, mb: usize) -> std::path::PathBuf {
    let path = dir.join("payload.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let line = b"the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let mut written = 0;
    while written < mb * 1024 * 1024 {
        f.write_all(line).unwrap();
        written += line.len();
    }
    f.flush().unwrap();
    path
}

/// Baseline: `cat payload` in a PTY, read straight from the master.
fn pty_throughput(payload: &std::path::Path) -> (u64, Duration) {
    let (pty, pts) = pty_process::blocking::open().unwrap();
    pty.resize(pty_process::Size::new(40, 120)).unwrap();
    let started = Instant::now();
    let mut child = pty_process::blocking::Command::new("cat").arg(payload).spawn(pts).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match (&pty).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = child.wait();
    (total, started.elapsed())
}

/// The agent profiles the bench needs, as a config file.
fn bench_config(dir: &std::path::Path, payload: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "[agents.printer]\ncommand = [\"sh\", \"-c\", \"read go; cat {p}\"]\nresume = [\"true\"]\nprompt = \"none\"\nidle_secs = 3600\n\n\
             [agents.echo]\ncommand = [\"cat\"]\nresume = [\"cat\"]\nprompt = \"none\"\nidle_secs = 3600\n",
            p = payload.display()
        ),
    )
    .unwrap();
    path
}

async fn create_running_task(svc: &Service, http: &awc::Client, agent: &str) -> String {
    let url = format!("{}/v1/organizations/default/tasks", svc.base);
    let mut res = http
        .post(&url)
        .bearer_auth(&svc.token)
        .send_json(&json!({"repo": "bench", "description": "bench", "agent": agent}))
        .await
        .unwrap();
    let task: Value = res.json().await.unwrap();
    let id = task["id"].as_str().expect("task id").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut res = http.get(format!("{url}/{id}")).bearer_auth(&svc.token).send().await.unwrap();
        let t: Value = res.json().await.unwrap();
        if t["status"] == "running" {
            return id;
        }
        assert!(Instant::now() < deadline, "task never ran: {t}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn attach(svc: &Service, http: &awc::Client, id: &str) -> actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec> {
    let url = format!("{}/v1/organizations/default/tasks/{id}/terminal?offset=0", svc.ws_base());
    let (_, ws) = http.ws(url).bearer_auth(&svc.token).max_frame_size(16 << 20).connect().await.unwrap();
    ws
}

async fn kiln_throughput(svc: &Service, http: &awc::Client) -> (u64, Duration) {
    let id = create_running_task(svc, http, "printer").await;
    let mut ws = attach(svc, http, &id).await;
    let started = Instant::now();
    ws.send(awc::ws::Message::Binary(b"\r".to_vec().into())).await.unwrap();
    let mut total = 0u64;
    while let Some(frame) = ws.next().await {
        match frame.unwrap() {
            awc::ws::Frame::Binary(b) => total += b.len() as u64,
            awc::ws::Frame::Text(t) => {
                let v: Value = serde_json::from_slice(&t).unwrap_or_default();
                if v["type"] == "exited" {
                    break;
                }
            }
            awc::ws::Frame::Ping(p) => ws.send(awc::ws::Message::Pong(p)).await.unwrap(),
            awc::ws::Frame::Close(_) => break,
            _ => {}
        }
    }
    (total, started.elapsed())
}

async fn kiln_round_trips(svc: &Service, http: &awc::Client, keys: usize) -> Histogram {
    let id = create_running_task(svc, http, "echo").await;
    let mut ws = attach(svc, http, &id).await;
    let mut hist = Histogram::default();
    for i in 0..keys {
        let key = b'a' + (i % 26) as u8;
        let sent = Instant::now();
        ws.send(awc::ws::Message::Binary(vec![key].into())).await.unwrap();
        'wait: while let Some(frame) = ws.next().await {
            match frame.unwrap() {
                awc::ws::Frame::Binary(b) if b.contains(&key) => break 'wait,
                awc::ws::Frame::Ping(p) => ws.send(awc::ws::Message::Pong(p)).await.unwrap(),
                _ => {}
            }
        }
        hist.record_duration(sent.elapsed());
        if i % 64 == 63 {
            // Keep the line short: a newline lets cat consume what was typed.
            ws.send(awc::ws::Message::Binary(b"\r".to_vec().into())).await.unwrap();
        }
    }
    hist
}

/// Baseline: the same keystroke through `tmux attach` (in a PTY) to a pane
/// running `cat`. `None` when tmux is not installed.
fn tmux_round_trips(keys: usize) -> Option<Histogram> {
    let socket = format!("kiln-bench-{}", std::process::id());
    let tmux = |args: &[&str]| std::process::Command::new("tmux").args(["-L", &socket, "-f", "/dev/null"]).args(args).status();
    let ok = tmux(&["new-session", "-d", "-s", "b", "-x", "120", "-y", "40", "cat", ";", "set", "-g", "status", "off"]).ok()?;
    if !ok.success() {
        return None;
    }
    let (pty, pts) = pty_process::blocking::open().ok()?;
    pty.resize(pty_process::Size::new(40, 120)).ok()?;
    let mut client = pty_process::blocking::Command::new("tmux")
        .args(["-L", &socket, "-f", "/dev/null", "attach", "-t", "b"])
        .env("TERM", "xterm-256color")
        .spawn(pts)
        .ok()?;
    let mut buf = vec![0u8; 65536];
    // Let the client draw its first screen.
    let settle = Instant::now();
    unsafe {
        let flags = libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&pty), libc::F_GETFL);
        libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&pty), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    while settle.elapsed() < Duration::from_millis(500) {
        let _ = (&pty).read(&mut buf);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut hist = Histogram::default();
    for i in 0..keys {
        let key = b'a' + (i % 26) as u8;
        let sent = Instant::now();
        (&pty).write_all(&[key]).ok()?;
        loop {
            match (&pty).read(&mut buf) {
                Ok(n) if buf[..n].contains(&key) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(_) => return None,
            }
            if sent.elapsed() > Duration::from_secs(5) {
                return None;
            }
        }
        hist.record_duration(sent.elapsed());
        if i % 64 == 63 {
            let _ = (&pty).write_all(b"\r");
        }
    }
    let _ = client.kill();
    let _ = tmux(&["kill-server"]);
    Some(hist)
}

fn main() {
    let mb = knob("BENCH_TERMINAL_MB", 100);
    let keys = knob("BENCH_KEYS", 300);
    let tmp = tempfile::tempdir().unwrap();
    let payload = make_payload(tmp.path(), mb);
    println!("{}", common::machine_line());

    let (pty_bytes, pty_time) = pty_throughput(&payload);
    let config = bench_config(tmp.path(), &payload);
    let tmux = tmux_round_trips(keys);

    let system = actix_rt::System::new();
    let (kiln_bytes, kiln_time, kiln_keys) = system.block_on(async {
        // The bench binary is not `kiln`: hosts run from the release build of it.
        let host = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/kiln");
        assert!(std::path::Path::new(host).exists(), "build it first: cargo build --release");
        let svc = Service::start_with_config(&config, &[("KILN_TERMINAL__HOST_PROGRAM", host)]).await;
        let http = awc::Client::builder().timeout(Duration::from_secs(600)).finish();
        let repo = common::git_repo(svc.tmp.path(), "bench");
        let mut res = http
            .post(format!("{}/v1/organizations/default/repos", svc.base))
            .bearer_auth(&svc.token)
            .send_json(&json!({"source": repo}))
            .await
            .unwrap();
        assert!(res.status().is_success(), "{:?}", res.body().await);
        let (bytes, time) = kiln_throughput(&svc, &http).await;
        let hist = kiln_round_trips(&svc, &http, keys).await;
        kill_hosts(&svc.data_dir);
        svc.stop().await;
        (bytes, time, hist)
    });

    let rate = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0);
    println!("\nterminal throughput: {mb} MiB of text printed by `cat`");
    print_table(
        &["path", "bytes", "seconds", "MiB/s", "ratio"],
        &[
            vec!["PTY read directly".into(), pty_bytes.to_string(), format!("{:.2}", pty_time.as_secs_f64()), format!("{:.1}", rate(pty_bytes, pty_time)), "1.00".into()],
            vec![
                "host → server → WebSocket".into(),
                kiln_bytes.to_string(),
                format!("{:.2}", kiln_time.as_secs_f64()),
                format!("{:.1}", rate(kiln_bytes, kiln_time)),
                format!("{:.2}", rate(kiln_bytes, kiln_time) / rate(pty_bytes, pty_time)),
            ],
        ],
    );
    println!("\nkeystroke round trip: {keys} keys, typed until echoed");
    let mut rows = vec![vec![
        "Kiln WebSocket → host → PTY".into(),
        fmt_us(kiln_keys.quantile(0.5)),
        fmt_us(kiln_keys.quantile(0.99)),
    ]];
    match &tmux {
        Some(h) => rows.push(vec!["tmux attach → tmux server → pane".into(), fmt_us(h.quantile(0.5)), fmt_us(h.quantile(0.99))]),
        None => rows.push(vec!["tmux (not installed: apt-get install tmux)".into(), "-".into(), "-".into()]),
    }
    print_table(&["path", "p50", "p99"], &rows);
    if let Some(h) = &tmux {
        println!(
            "ratio of p50s (Kiln / tmux): {:.2}",
            kiln_keys.quantile(0.5) as f64 / h.quantile(0.5).max(1) as f64
        );
    }
}

/// Terminal hosts are detached on purpose; a bench must not leave them behind.
fn kill_hosts(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("sandboxes")) else { return };
    for entry in entries.flatten() {
        if let Ok(pid) = std::fs::read_to_string(entry.path().join("host.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
