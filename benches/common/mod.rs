//! Shared by the benchmark targets: an in-process Kiln service on a temp data dir,
//! an HTTP client with its admin token, task rows seeded straight into its
//! database, a small latency histogram, RSS readings and table printing.
//!
//! Benchmarks are `harness = false` binaries: `cargo bench --bench NAME` builds
//! them in release and runs `main`. Knobs are environment variables (`BENCH_*`),
//! because cargo passes its own `--bench` argument to the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln::actors::Kiln;
use serde_json::Value;
use kiln::config::Config;

/// A running in-process service and the temp dir that holds its data.
pub struct Service {
    pub kiln: Kiln,
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub token: String,
    pub data_dir: PathBuf,
    handle: actix_web::dev::ServerHandle,
    finished: tokio::task::JoinHandle<Result<(), kiln::app::BootError>>,
    pub tmp: tempfile::TempDir,
}

impl Service {
    /// Boots Kiln with `kiln::app::start` on 127.0.0.1:0 and a fresh data dir.
    /// `env` adds `KILN_*` settings, then any `KILN_*` variable of this process
    /// applies. Must run inside an actix System.
    pub async fn start(env: &[(&str, &str)]) -> Service {
        Self::boot(None, env).await
    }

    /// Like `start`, with `file` as the `--config FILE` layer (agent profiles, say).
    pub async fn start_with_config(file: &Path, env: &[(&str, &str)]) -> Service {
        Self::boot(Some(file), env).await
    }

    async fn boot(file: Option<&Path>, env: &[(&str, &str)]) -> Service {
        let tmp = tempfile::Builder::new().prefix("kiln-bench-").tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut pairs: Vec<(String, String)> = vec![
            ("KILN_DATA_DIR".into(), data_dir.to_string_lossy().into_owned()),
            ("KILN_SERVER__BIND".into(), "127.0.0.1:0".into()),
        ];
        pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // `KILN_*` settings in the bench's own environment apply last, so a run can
        // try another configuration; the data dir and the address stay the bench's.
        pairs.extend(std::env::vars().filter(|(k, _)| {
            k.starts_with("KILN_") && k != "KILN_DATA_DIR" && k != "KILN_SERVER__BIND"
        }));
        let config = Config::load_from(None, file, &pairs).expect("bench config");
        let running = kiln::app::start(config).await.expect("kiln starts");
        let addr = running.addrs[0];
        let base = format!("http://{addr}");
        let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("admin token").trim().to_string();
        let kiln = running.kiln.clone();
        let handle = running.server.handle();
        // The server only runs while it is polled; `finish` polls it, then flushes.
        let finished = actix_rt::spawn(running.finish());
        Service { kiln, addr, base, token, data_dir, handle, finished, tmp }
    }

    /// Stops the HTTP server gracefully and waits for the history flush.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        match self.finished.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("service stopped with an error: {e}"),
            Err(e) => eprintln!("service task failed: {e}"),
        }
    }

    /// `ws://…` form of the base URL.
    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }
}

/// An HTTP client for the service's API, with its admin token.
pub struct Http {
    pub client: awc::Client,
    pub base: String,
    pub token: String,
}

impl Http {
    /// A client of `service` whose requests time out after `timeout`.
    pub fn new(service: &Service, timeout: Duration) -> Http {
        Http { client: awc::Client::builder().timeout(timeout).finish(), base: service.base.clone(), token: service.token.clone() }
    }

    /// One request (with a JSON body if given); answers the status and the body's bytes.
    pub async fn call(&self, method: awc::http::Method, path: &str, body: Option<Value>) -> (u16, actix_web::web::Bytes) {
        let req = self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(&self.token);
        let mut res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        let bytes = res.body().limit(256 * 1024 * 1024).await.expect("body");
        (res.status().as_u16(), bytes)
    }

    /// `call`, with the body read as JSON (`null` if it is not).
    pub async fn json(&self, method: awc::http::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = self.call(method, path, body).await;
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, actix_web::web::Bytes) {
        self.call(awc::http::Method::GET, path, None).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.json(awc::http::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.json(awc::http::Method::POST, path, Some(body)).await
    }
}

/// A `--config` file whose default agent (`idle`) is `cat`: it waits and never
/// goes idle, for benches that need a running task and nothing from its agent.
pub fn idle_agent_config(dir: &Path, file_name: &str) -> PathBuf {
    let path = dir.join(file_name);
    std::fs::write(
        &path,
        "[tasks]\ndefault_agent = \"idle\"\nstatus_poll_ms = 200\n\n\
         [agents.idle]\ncommand = [\"cat\"]\nresume = [\"cat\"]\nprompt = \"none\"\nidle_secs = 3600\n",
    )
    .expect("bench config");
    path
}

/// Bench setup only: writes task rows straight into the service's database
/// file (`db`), bypassing the TaskActor (the single writer), 1,000 a transaction.
pub fn insert_task_rows(db: &Path, rows: &[kiln::db::models::Task]) {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use kiln::db::schema::tasks as t;

    let mut conn = diesel::SqliteConnection::establish(&db.to_string_lossy()).expect("open the service's db");
    conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;").expect("pragmas");
    for chunk in rows.chunks(1000) {
        conn.immediate_transaction(|c| diesel::insert_into(t::table).values(chunk).execute(c)).expect("seed tasks");
    }
}

/// A real git repository with one empty commit, for registering with Kiln.
pub fn git_repo(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("repo dir");
    for args in [
        &["-c", "init.defaultBranch=main", "init", "-q"][..],
        &["-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "init"][..],
    ] {
        let out = Command::new("git").args(args).current_dir(&dir).output().expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// An environment knob, or its default.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// This process's resident set size and its peak, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises the soft open-file limit to the hard limit; answers the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a stack struct we own.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur
    }
}

/// Microseconds since the Unix epoch (comparable across threads of this process).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A log-linear histogram of microsecond values: exact below 2048 µs, then
/// within 0.1% (1024 sub-buckets per power of two). Cheap to record into.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub max: u64,
    sum: u128,
}

const LINEAR: u64 = 2048;
const SUB: u64 = 1024;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; (LINEAR + 54 * SUB) as usize], count: 0, max: 0, sum: 0 }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() as u64; // >= 11
        let shift = exp - 10;
        (LINEAR + (exp - 11) * SUB + ((v >> shift) - SUB)) as usize
    }

    fn value_of(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let exp = (i - LINEAR) / SUB + 11;
        let mantissa = (i - LINEAR) % SUB + SUB;
        mantissa << (exp - 10)
    }

    pub fn record(&mut self, micros: u64) {
        self.counts[Self::index(micros)] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
        self.sum += micros as u128;
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_micros() as u64);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The value at quantile `q` (0.0..=1.0), in µs.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_of(i).min(self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / self.count as u128) as u64
        }
    }
}

/// Formats microseconds as `123 µs` or `12.3 ms`.
pub fn fmt_us(us: u64) -> String {
    if us < 10_000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

/// Formats a rate with thousands separators.
pub fn fmt_rate(per_sec: f64) -> String {
    let s = (per_sec.round() as u64).to_string();
    let first = match s.len() % 3 {
        0 => 3.min(s.len()),
        r => r,
    };
    let mut out = s[..first].to_string();
    for group in s.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or_default());
    }
    out
}

/// Prints a Markdown table, columns padded to line up in a terminal.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in rows {
        line(row.clone());
    }
}

/// The machine the numbers came from, for the header of every report.
pub fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {cpu}")
}

/// A fresh temp dir (the test helpers of `tests/it/fake_github.rs` use it too).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kiln-bench-").tempdir().expect("tempdir")
}

/// Runs git in `dir` with a fixed identity; answers stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=x", "-c", "user.email=x@x"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The real sandbox-agent binary, found as the integration tests find it:
/// `KILN_SANDBOX_AGENT_BIN`, else where `.ci/run` caches it.
pub fn sandbox_agent_bin() -> Option<String> {
    if let Ok(bin) = std::env::var("KILN_SANDBOX_AGENT_BIN") {
        return Some(bin);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let bin = cache.join("kiln-ci/sandbox-agent-0.4.2/node_modules/@sandbox-agent/cli-linux-x64/bin/sandbox-agent");
    bin.is_file().then(|| bin.to_string_lossy().to_string())
}

/// Polls `check` until it answers, or panics after `timeout` (as the tests'
/// helper of the same name, which the fakes' own tests use).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
