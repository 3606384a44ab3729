//! Create to running on the `daytona` provider against the fake Daytona, and
//! twenty tasks created at once on each provider.
//!
//! Boots Kiln in-process, with the fake Daytona of the integration tests
//! (`tests/it/fake_daytona.rs`, included here by `#[path]`): each sandbox is a
//! local directory running the real sandbox-agent binary, so every step is the
//! real one (the clone over smart HTTP with a password, sandbox-agent behind its
//! preview URL, the agent in sandbox-agent's PTY). The fake's state timings are
//! zero, and it records how long it took to answer each call, so what Kiln
//! itself adds is the total less the time spent in the fake's answers.
//!
//! 1. **One at a time.** `BENCH_ROUNDS` tasks per provider, interleaved: the
//!    time from `POST …/tasks` to the answer, to each `sandbox.progress` step
//!    (timestamped as the HistoryActor publishes it, through an in-process
//!    subscription), to `running`, and to the terminal showing the agent's first
//!    line. The baseline is the worktree provider on the same repository.
//! 2. **Twenty at once.** `BENCH_TASKS` POSTs sent together, per provider: the
//!    wall time until all run, p50/p95 per task, and the checks (distinct ids,
//!    branches and sandboxes, all running, no failure, every terminal answering,
//!    all killed with no sandbox or process left).
//!
//! Knobs: `BENCH_ROUNDS` (5), `BENCH_TASKS` (20), `BENCH_FAKE_CREATE_MS` and
//! `BENCH_FAKE_START_MS` (0: the fake's `creating` and `starting` take no time).
//! Needs the sandbox-agent binary: `KILN_SANDBOX_AGENT_BIN`, or where `.ci/run`
//! caches it.

mod common;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/fake_daytona.rs"]
mod fake_daytona;
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/fake_github.rs"]
mod fake_github;
#[allow(dead_code)]
#[path = "../tests/it/git_http.rs"]
mod git_http;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::{fmt_us, git, git_repo, knob, machine_line, print_table, Histogram, Service};
use fake_daytona::{FakeDaytona, Timing};
use kiln::actors::history::Subscribe;

const ORG: &str = "default";
const AGENT_PORT: u16 = 8468;
const PASSWORD: &str = "bench-s3cret";
const WAIT: Duration = Duration::from_secs(600);
const STEPS: [&str; 6] = ["creating", "starting", "cloning", "starting_agent", "setup", "ready"];

/// The real sandbox-agent binary, or the run stops and says how to get it.
fn sandbox_agent_bin() -> String {
    common::sandbox_agent_bin().unwrap_or_else(|| {
        eprintln!("the sandbox-agent binary is needed: set KILN_SANDBOX_AGENT_BIN, or install it with `npm install -g @sandbox-agent/cli-linux-x64@0.4.2`");
        std::process::exit(2)
    })
}

/// What the event subscription saw of one task, each with its arrival time.
#[derive(Default, Clone)]
struct Seen {
    steps: Vec<(String, Instant)>,
    created: Option<Instant>,
    running: Option<Instant>,
    failed: Option<String>,
    destroyed: bool,
}

type Log = Rc<RefCell<HashMap<String, Seen>>>;

/// Subscribes to the organization's events in-process; every event is noted on
/// arrival, so the step times carry no polling delay.
async fn watch_events(svc: &Service) -> Log {
    let log: Log = Rc::default();
    let mut sub = svc.kiln.history(ORG).send(Subscribe {}).await.expect("subscribe");
    let into = log.clone();
    actix_rt::spawn(async move {
        while let Some(published) = sub.events.recv().await {
            let at = Instant::now();
            let Some(task) = published.task.clone() else { continue };
            let event: Value = serde_json::from_str(&published.json).unwrap_or(Value::Null);
            let mut log = into.borrow_mut();
            let seen = log.entry(task).or_default();
            match event["kind"].as_str().unwrap_or_default() {
                "sandbox.progress" => seen.steps.push((event["data"]["step"].as_str().unwrap_or_default().to_string(), at)),
                "sandbox.created" => seen.created = Some(at),
                "sandbox.destroyed" => seen.destroyed = true,
                "task.status_changed" if event["data"]["to"] == "running" => seen.running = seen.running.or(Some(at)),
                "task.status_changed" if event["data"]["to"] == "failed" => {
                    seen.failed = Some(event["data"]["reason"].to_string());
                }
                _ => {}
            }
        }
    });
    log
}

struct Http {
    client: awc::Client,
    base: String,
    ws_base: String,
    token: String,
}

impl Http {
    async fn call(&self, method: awc::http::Method, path: &str, body: Value) -> (u16, Value) {
        let mut res = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send_json(&body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let bytes = res.body().limit(16 << 20).await.expect("body");
        (res.status().as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(awc::http::Method::POST, path, body).await
    }

    /// Opens the task's terminal and reads until the agent's banner; answers when it came.
    async fn terminal_answers(&self, task: &str, banner: &str) -> Instant {
        let url = format!("{}/v1/organizations/{ORG}/tasks/{task}/terminal?offset=0", self.ws_base);
        let (_, mut ws) = self.client.ws(url).bearer_auth(&self.token).connect().await.expect("terminal");
        let mut text = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(awc::ws::Frame::Binary(b)))) => {
                    text.extend_from_slice(&b);
                    if String::from_utf8_lossy(&text).contains(banner) {
                        return Instant::now();
                    }
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("terminal of {task} ended before {banner:?}: {:?}", other.map(|f| f.map(|r| r.is_ok()))),
            }
        }
    }
}

/// A repository served over smart HTTP with a password: the origin both providers use.
struct Origin {
    _dir: tempfile::TempDir,
    http: git_http::GitHttp,
}

impl Origin {
    fn start() -> Origin {
        let dir = common::tempdir();
        let seed = git_repo(dir.path(), "seed");
        // A small project, so the clone and the checkout have something to do.
        for i in 0..50 {
            std::fs::create_dir_all(seed.join(format!("src/mod{}", i % 5))).expect("dir");
            let text: String = (0..40).map(|l| format!("line {l} of file {i}\n")).collect();
            std::fs::write(seed.join(format!("src/mod{}/file{i}.txt", i % 5)), text).expect("file");
        }
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "a small project"]);
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).expect("served");
        let bare = served.join("app.git");
        git(dir.path(), &["clone", "-q", "--bare", seed.to_str().expect("utf-8"), bare.to_str().expect("utf-8")]);
        let http = git_http::GitHttp::start(&served, "kiln-bot", PASSWORD);
        Origin { _dir: dir, http }
    }

    fn with_password(&self) -> String {
        format!("http://kiln-bot:{PASSWORD}@{}/app.git", self.http.url.trim_start_matches("http://"))
    }
}

/// One task's times, from its POST.
#[derive(Clone, Default)]
struct Timed {
    answered: Duration,
    steps: Vec<(String, Duration)>,
    created: Duration,
    running: Duration,
    terminal: Duration,
    /// Time spent in the fake's answers while the task was being made.
    in_fake: Duration,
    /// The same, per interval that ends at each step (and at `sandbox.created`, `running`).
    fake_by_step: Vec<Duration>,
}

/// Creates one task and times it to running and to its terminal's first line.
async fn create_one(http: &Http, log: &Log, fake: &FakeDaytona, provider: &str, i: usize) -> (String, Timed) {
    let description = format!("bench {provider} {i}");
    let t0 = Instant::now();
    let (status, body) = http
        .post(&format!("/v1/organizations/{ORG}/tasks"), json!({"repo": "app", "description": description, "provider": provider}))
        .await;
    let answered = t0.elapsed();
    assert_eq!(status, 201, "create on {provider}: {body}");
    let id = body["id"].as_str().expect("task id").to_string();
    let seen = wait_running(log, &[id.clone()]).await.remove(&id).expect("seen");
    let terminal = http.terminal_answers(&id, &format!("fake-agent ready: {description}")).await - t0;
    let running_at = seen.running.expect("running");
    // The fake's time, split at each step's arrival.
    let mut marks: Vec<Instant> = seen.steps.iter().map(|(_, at)| *at).collect();
    marks.extend([seen.created.expect("created"), running_at]);
    let calls: Vec<(Instant, Duration)> =
        fake.calls().into_iter().filter(|c| c.at >= t0 && c.at < running_at).map(|c| (c.at, c.took)).collect();
    let mut fake_by_step = vec![Duration::ZERO; marks.len()];
    for (at, took) in &calls {
        let slot = marks.iter().position(|m| at < m).unwrap_or(marks.len() - 1);
        fake_by_step[slot] += *took;
    }
    let timed = Timed {
        answered,
        steps: seen.steps.iter().map(|(s, at)| (s.clone(), *at - t0)).collect(),
        created: seen.created.expect("created") - t0,
        running: running_at - t0,
        terminal,
        in_fake: calls.iter().map(|(_, d)| *d).sum(),
        fake_by_step,
    };
    (id, timed)
}

/// Waits until every task runs (panics on a failure); answers what was seen of each.
async fn wait_running(log: &Log, ids: &[String]) -> HashMap<String, Seen> {
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let log = log.borrow();
            for id in ids {
                if let Some(reason) = log.get(id).and_then(|s| s.failed.clone()) {
                    panic!("task {id} failed: {reason}");
                }
            }
            if ids.iter().all(|id| log.get(id).is_some_and(|s| s.running.is_some())) {
                return ids.iter().map(|id| (id.clone(), log[id].clone())).collect();
            }
        }
        assert!(Instant::now() < deadline, "tasks not running after {WAIT:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kills the tasks, all at once; checks each answered `killed`.
async fn kill_all(http: &Http, ids: &[String]) {
    let kills = ids.iter().map(|id| async move { http.post(&format!("/v1/organizations/{ORG}/tasks/{id}/kill"), json!({})).await });
    for (status, body) in futures_util::future::join_all(kills).await {
        assert!(status == 200 && body["task"]["status"] == "killed", "kill: {status} {body}");
    }
}

/// Processes still running for these sandboxes (cwd under the fake's homes) or
/// the service's terminal hosts (command line naming its data dir).
fn leftover_processes(homes: &[PathBuf], data_dir: &Path) -> Vec<String> {
    let data = data_dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if !cmdline.is_empty() && (homes.iter().any(|h| cwd.starts_with(h)) || (cmdline.contains("terminal-host") && cmdline.contains(&data))) {
            found.push(cmdline);
        }
    }
    found
}

/// Twenty (`n`) POSTs at once on `provider`; times each to running and checks the lot.
async fn create_many(http: &Http, log: &Log, fake: &FakeDaytona, svc: &Service, provider: &str, n: usize) -> Vec<String> {
    let creates_before = fake.creates().len();
    let t0 = Instant::now();
    let posts = (0..n).map(|i| {
        let body = json!({"repo": "app", "description": format!("many {provider} {i}"), "provider": provider});
        async move {
            let (status, body) = http.post(&format!("/v1/organizations/{ORG}/tasks"), body).await;
            (status, body, t0.elapsed())
        }
    });
    let replies = futures_util::future::join_all(posts).await;
    let mut answer = Histogram::default();
    let mut ids = Vec::new();
    let mut branches = BTreeSet::new();
    for (status, body, took) in &replies {
        assert_eq!(*status, 201, "create on {provider}: {body}");
        answer.record_duration(*took);
        ids.push(body["id"].as_str().expect("id").to_string());
        branches.insert(body["branch"].as_str().expect("branch").to_string());
    }
    assert_eq!((ids.iter().collect::<BTreeSet<_>>().len(), branches.len()), (n, n), "distinct ids and branches");
    let seen = wait_running(log, &ids).await;
    let wall = seen.values().filter_map(|s| s.running).max().expect("running") - t0;
    let mut running = Histogram::default();
    for s in seen.values() {
        running.record_duration(s.running.expect("running") - t0);
        let steps: Vec<&str> = s.steps.iter().map(|(k, _)| k.as_str()).collect();
        if provider == "daytona" {
            assert_eq!(steps, STEPS, "every step reported, in order");
        }
    }
    // Every terminal answers, with its own agent.
    let mut terminal = Histogram::default();
    for (i, id) in ids.iter().enumerate() {
        let t = Instant::now();
        http.terminal_answers(id, &format!("fake-agent ready: many {provider} {i}")).await;
        terminal.record_duration(t.elapsed());
    }
    let mut homes = Vec::new();
    if provider == "daytona" {
        let made: Vec<Value> = fake.creates().into_iter().skip(creates_before).collect();
        let names: BTreeSet<&str> = made.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!((made.len(), names.len()), (n, n), "one sandbox per task, no duplicate create");
        homes = fake_homes(fake, &names);
        assert_eq!(homes.len(), n, "twenty sandboxes started");
    }
    let killed = Instant::now();
    kill_all(http, &ids).await;
    let kill_wall = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftover_processes(&homes, &svc.data_dir);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left after the kill: {left:#?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    if provider == "daytona" {
        assert_eq!(fake.live_sandboxes(), 0, "every sandbox deleted");
    } else {
        let worktrees = svc.data_dir.join("worktrees/default/app");
        let left = std::fs::read_dir(&worktrees).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "every worktree removed");
    }
    print_table(
        &["provider", "tasks", "all running after", "POST answered p50 / p95", "running p50 / p95 / max", "terminal answered p50 / p95", "kill all"],
        &[vec![
            provider.to_string(),
            n.to_string(),
            format!("**{}**", fmt_us(wall.as_micros() as u64)),
            format!("{} / {}", fmt_us(answer.quantile(0.5)), fmt_us(answer.quantile(0.95))),
            format!("{} / {} / {}", fmt_us(running.quantile(0.5)), fmt_us(running.quantile(0.95)), fmt_us(running.max)),
            format!("{} / {}", fmt_us(terminal.quantile(0.5)), fmt_us(terminal.quantile(0.95))),
            fmt_us(kill_wall.as_micros() as u64),
        ]],
    );
    println!();
    ids
}

/// The homes of the fake's live sandboxes with these names.
fn fake_homes(fake: &FakeDaytona, names: &BTreeSet<&str>) -> Vec<PathBuf> {
    fake.sandboxes().into_iter().filter(|(_, name)| names.contains(name.as_str())).filter_map(|(id, _)| fake.home(&id)).collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    fmt_us(d.as_micros() as u64)
}

fn main() {
    actix_rt::System::new().block_on(run());
}

async fn run() {
    let rounds = knob("BENCH_ROUNDS", 5).max(1);
    let many = knob("BENCH_TASKS", 20);
    let bin = sandbox_agent_bin();
    common::raise_nofile();
    let timing = Timing {
        create: Duration::from_millis(knob("BENCH_FAKE_CREATE_MS", 0) as u64),
        start: Duration::from_millis(knob("BENCH_FAKE_START_MS", 0) as u64),
        stop: Duration::ZERO,
        destroy: Duration::ZERO,
    };
    let fake = FakeDaytona::with_timing(timing.clone());
    fake.private_ports(&[AGENT_PORT]);
    let origin = Origin::start();

    let dir = common::tempdir();
    let config = dir.path().join("bench.toml");
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake-agent.sh");
    std::fs::write(
        &config,
        format!(
            "sandbox_agent_bin = \"{bin}\"\n[tasks]\ndefault_agent = \"fake\"\n\n\
             [agents.fake]\ncommand = [\"{agent}\"]\nresume = [\"{agent}\", \"--resumed\"]\nprompt = \"argument\"\nidle_secs = 3600\n"
        ),
    )
    .expect("config");
    // The terminal hosts and git's askpass helper are the `kiln` binary, not this bench.
    let svc = Service::start_with_config(&config, &[("KILN_TERMINAL__HOST_PROGRAM", env!("CARGO_BIN_EXE_kiln"))]).await;
    let http = Http {
        client: awc::Client::builder().timeout(Duration::from_secs(600)).finish(),
        base: svc.base.clone(),
        ws_base: svc.ws_base(),
        token: svc.token.clone(),
    };
    let (status, body) = http.post(&format!("/v1/organizations/{ORG}/repos"), json!({"source": origin.with_password(), "name": "app"})).await;
    assert_eq!(status, 201, "register the repository: {body}");
    let profile = json!({
        "config": {"api_url": fake.api_url(), "agent_bin": fake.port_mapper(&bin), "agent_port": AGENT_PORT},
        "secrets": {"api_key": fake.key()},
    });
    let (status, body) = http.call(awc::http::Method::PUT, &format!("/v1/organizations/{ORG}/providers/daytona"), profile).await;
    assert_eq!(status, 200, "the daytona profile: {body}");
    let log = watch_events(&svc).await;

    let poll_ms = svc.kiln.config.tasks.status_poll_ms;
    println!("# Create to running, worktree vs daytona (fake Daytona)\n");
    println!("{}; status poll every {poll_ms} ms; fake timing: creating {:?}, starting {:?}", machine_line(), timing.create, timing.start);
    println!("load average at start: {}\n", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

    // A warm-up task on each (the first clone of the mirror, page cache).
    for provider in ["worktree", "daytona"] {
        let (id, _) = create_one(&http, &log, &fake, provider, 0).await;
        kill_all(&http, &[id]).await;
    }
    let mut results: HashMap<&str, Vec<Timed>> = HashMap::new();
    for round in 1..=rounds {
        for provider in ["worktree", "daytona"] {
            let (id, timed) = create_one(&http, &log, &fake, provider, round).await;
            results.entry(provider).or_default().push(timed);
            kill_all(&http, &[id]).await;
        }
    }

    // Table 1: the totals, median of the rounds.
    let total = |p: &str, f: &dyn Fn(&Timed) -> Duration| median(results[p].iter().map(f).collect());
    let base_running = total("worktree", &|t| t.running);
    let base_terminal = total("worktree", &|t| t.terminal);
    let mut rows = Vec::new();
    for provider in ["worktree", "daytona"] {
        let running = total(provider, &|t| t.running);
        let in_fake = total(provider, &|t| t.in_fake);
        let own = total(provider, &|t| t.running.saturating_sub(t.in_fake));
        rows.push(vec![
            provider.to_string(),
            ms(total(provider, &|t| t.answered)),
            ms(total(provider, &|t| t.created)),
            format!("**{}**", ms(running)),
            ms(total(provider, &|t| t.terminal)),
            if provider == "daytona" { ms(in_fake) } else { "–".into() },
            if provider == "daytona" { format!("**{}**", ms(own)) } else { "–".into() },
            format!("{:.2}", running.as_secs_f64() / base_running.as_secs_f64()),
            format!("{:.2}", total(provider, &|t| t.terminal).as_secs_f64() / base_terminal.as_secs_f64()),
            format!("{:.2}", own.as_secs_f64() / base_running.as_secs_f64()),
        ]);
    }
    println!("## One task at a time (median of {rounds})\n");
    print_table(
        &[
            "provider",
            "POST answered",
            "sandbox.created",
            "running",
            "terminal answers",
            "in the fake",
            "Kiln's own (running − fake)",
            "running ratio",
            "terminal ratio",
            "own ratio",
        ],
        &rows,
    );

    // Table 2: Daytona's steps. Each row is the interval that ends at that event.
    let daytona = &results["daytona"];
    let names: Vec<String> = STEPS.iter().map(|s| format!("→ {s}")).chain(["→ sandbox.created".into(), "→ running".into()]).collect();
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let at = |t: &Timed| match i {
            i if i < STEPS.len() => t.steps.get(i).map(|(_, d)| *d).unwrap_or_default(),
            6 => t.created,
            _ => t.running,
        };
        let span = median(daytona.iter().map(|t| at(t).saturating_sub(if i == 0 { Duration::ZERO } else { prev_at(t, i) })).collect());
        let fake_part = median(daytona.iter().map(|t| t.fake_by_step.get(i).copied().unwrap_or_default()).collect());
        rows.push(vec![name.clone(), ms(median(daytona.iter().map(at).collect())), ms(span), ms(fake_part), ms(span.saturating_sub(fake_part))]);
    }
    println!("\n## Daytona, step by step (median of {rounds}; each row ends at that event)\n");
    print_table(&["interval", "at (from POST)", "took", "in the fake", "Kiln's own"], &rows);

    println!("\n## {many} tasks created at once\n");
    create_many(&http, &log, &fake, &svc, "worktree", many).await;
    create_many(&http, &log, &fake, &svc, "daytona", many).await;
    println!("load average at the end: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    svc.stop().await;
}

/// When the step before `i` arrived (from the POST).
fn prev_at(t: &Timed, i: usize) -> Duration {
    match i {
        0 => Duration::ZERO,
        i if i <= STEPS.len() => t.steps.get(i - 1).map(|(_, d)| *d).unwrap_or_default(),
        _ => t.created,
    }
}
