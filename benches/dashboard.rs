//! The web dashboard in a real browser: what its assets weigh over the wire, how
//! long the board takes to become usable with 0, 1,000 and 10,000 tasks, and how
//! the 10,000-task board keeps up while 100 events a second arrive.
//!
//! - **The service** is Kiln in-process (`common::Service`) on loopback. One
//!   organization per board size (`empty`, `k1`, `k10`), each with a real git
//!   repository; the tasks are rows written straight into the service's SQLite
//!   file as bench setup (like `--bench tasks`), in a spread of statuses so every
//!   column has cards.
//! - **The browser** is Debian's headless Chromium over WebDriver, the same
//!   client as the browser tests (`tests/it/browser.rs`), at 1280x800. It signs
//!   in with a link made by the admin token for each organization.
//! - **Time to a usable board** is read from the page's own User Timing marks:
//!   `kiln:board-first-render` (the first render with tasks in it: the first page
//!   of 500) and `kiln:board-ready` (every task loaded and rendered), in ms from
//!   the navigation's start. The page is reloaded `BENCH_ROUNDS` times (assets
//!   revalidated by ETag, 304s); the table shows the median. Ratios are to the
//!   empty board measured in the same run.
//! - **Live updates.** On the ready 10,000-task board (then the 1,000 one), a
//!   page-side `requestAnimationFrame` loop records every frame's interval, first
//!   for `BENCH_QUIET_SECS` with no events (the baseline), then for
//!   `BENCH_STORM_SECS` while the bench appends `BENCH_EVENTS_PER_SEC` events.
//!   Each is a `task.status_changed` (running to idle, or back) for a random
//!   task, appended with `Kiln::emit`: the HistoryActor commits it and publishes
//!   it to the stream, the path every real state change takes to reach a page
//!   (the tasks table itself is not changed: a reload would show the seeded
//!   statuses). The page also reports its renders (`kilnBoardStats`) and, per
//!   render, how long after the newest event's commit the board showed it.
//!
//! Knobs: `BENCH_ROUNDS` (3), `BENCH_EVENTS_PER_SEC` (100), `BENCH_STORM_SECS`
//! (10), `BENCH_QUIET_SECS` (5), `BENCH_SIZES` (`0,1000,10000`).

mod common;
#[allow(dead_code)]
#[path = "../tests/it/browser.rs"]
mod browser;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use browser::Browser;
use common::{knob, print_table, Http, Service};
use kiln::actors::history::NewEvent;

/// The seeded statuses, in tenths: 4 running, 1 idle, 1 queued, 1 failed, 2 archived, 1 killed.
const STATUSES: [&str; 10] = ["running", "running", "running", "running", "idle", "queued", "failed", "archived", "archived", "killed"];

fn task_id(org_index: u32, i: usize) -> String {
    // A bijection on u32 per organization, so ids are distinct and look random.
    format!("{:08x}", ((i as u32) | (org_index << 24)).wrapping_mul(2_654_435_761))
}

/// Bench setup only: writes `n` tasks of `org` straight into the service's
/// database file, bypassing the TaskActor, as if created over the last `n` minutes.
fn seed_rows(db: &std::path::Path, org: &str, org_index: u32, repo_id: i32, n: usize) {
    use kiln::db::models::Task;

    let now = kiln::util::now_ms();
    let words = ["login", "cache", "parser", "settings page", "CI config", "date library", "README", "search index", "billing", "export"];
    let rows: Vec<Task> = (0..n)
        .map(|i| {
            let id = task_id(org_index, i);
            let title = format!("{} the {} ({i})", ["Fix", "Speed up", "Refactor", "Test", "Document"][i % 5], words[(i / 5) % words.len()]);
            Task {
                branch: format!("kiln/bench-{i}-{id}"),
                id,
                organization: org.into(),
                repo_id,
                description: format!("{title}: make it right."),
                title,
                base_branch: "main".into(),
                agent: ["claude", "codex", "amp"][i % 3].into(),
                provider: "worktree".into(),
                status: STATUSES[i % 10].into(),
                status_reason: None,
                awaiting_input: false,
                created_at: now - (n - i) as i64 * 60_000,
                updated_at: now - (n - i) as i64 * 60_000,
            }
        })
        .collect();
    common::insert_task_rows(db, &rows);
}

/// Signs the browser in to `org` with a link the admin token makes; waits for the ready board.
async fn sign_in(browser: &Browser, http: &Http, org: &str) {
    let (status, body) = http.post("/v1/dashboard/codes", json!({ "organization": org })).await;
    assert_eq!(status, 201, "{body}");
    browser.goto(&format!("{}{}", http.base, body["path"].as_str().expect("path"))).await;
    wait_ready(browser).await;
}

async fn wait_ready(browser: &Browser) {
    browser.until("the board is ready", "return performance.getEntriesByName('kiln:board-ready').length > 0", json!([])).await;
}

/// The page's timings after a load, in ms from the navigation's start.
const TIMINGS: &str = "const nav = performance.getEntriesByType('navigation')[0] || {}; \
    const mark = (n) => (performance.getEntriesByName(n)[0] || {}).startTime ?? null; \
    const api = performance.getEntriesByType('resource').filter(r => new URL(r.name).pathname.includes('/tasks')); \
    return { dom: nav.domContentLoadedEventEnd, first: mark('kiln:board-first-render'), ready: mark('kiln:board-ready'), \
             cards: document.querySelectorAll('.card').length, summary: document.querySelector('.summary')?.textContent, \
             api_requests: api.length, api_bytes: api.reduce((s, r) => s + r.encodedBodySize, 0) };";

/// What the page loaded from this server, as sent (gzipped) and as decoded.
const ASSETS: &str = "const all = [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')]; \
    return all.filter(r => r && !new URL(r.name).pathname.startsWith('/v1/')).map(r => ({ path: new URL(r.name).pathname, \
    encoded: r.encodedBodySize, decoded: r.decodedBodySize, transfer: r.transferSize }));";

/// Starts recording frame intervals and long tasks; resets the board's counters' baseline.
const RECORD: &str = "window.__frames = []; window.__recording = true; window.__long = []; \
    const s = window.kilnBoardStats; window.__base = { renders: s.renders, renderMs: s.renderMs, lags: s.lags.length }; s.maxRenderMs = 0; \
    if (!window.__obs) { window.__obs = new PerformanceObserver((l) => { for (const e of l.getEntries()) if (window.__recording) window.__long.push(e.duration); }); \
      try { window.__obs.observe({ type: 'longtask' }); } catch (e) {} } \
    const gen = window.__gen = (window.__gen || 0) + 1; \
    let last = null; const tick = (t) => { if (!window.__recording || window.__gen !== gen) return; if (last !== null) window.__frames.push(t - last); last = t; requestAnimationFrame(tick); }; \
    requestAnimationFrame(tick); return true;";

const STOP: &str = "window.__recording = false; const s = window.kilnBoardStats; \
    return { frames: window.__frames, long: window.__long, renders: s.renders - window.__base.renders, renderMs: s.renderMs - window.__base.renderMs, \
             maxRenderMs: s.maxRenderMs, lags: s.lags.slice(window.__base.lags), hidden: document.hidden };";

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

fn median(v: &[f64]) -> f64 {
    quantile(&sorted(v.to_vec()), 0.5)
}

/// One recording window, summarised.
struct Window {
    label: String,
    secs: f64,
    events: usize,
    frames: Vec<f64>,
    long: Vec<f64>,
    renders: f64,
    render_ms: f64,
    max_render_ms: f64,
    lags: Vec<f64>,
}

impl Window {
    fn row(&self, baseline_p95: f64) -> Vec<String> {
        let f = sorted(self.frames.clone());
        let over = f.iter().filter(|x| **x > 25.0).count();
        let lags = sorted(self.lags.clone());
        let p95 = quantile(&f, 0.95);
        vec![
            self.label.clone(),
            format!("{:.0}/s", self.events as f64 / self.secs),
            format!("{:.0}", f.len() as f64 / self.secs),
            format!("{:.1} / {:.1} / {:.1} ms", quantile(&f, 0.5), p95, f.last().copied().unwrap_or(f64::NAN)),
            format!("{:.2}", p95 / baseline_p95),
            format!("{over} ({:.1}%)", 100.0 * over as f64 / f.len().max(1) as f64),
            format!("{} ({:.0} ms)", self.long.len(), self.long.iter().sum::<f64>() + 0.0),
            format!("{:.0}/s", self.renders / self.secs),
            if self.renders > 0.0 { format!("{:.1} / {:.1} ms", self.render_ms / self.renders, self.max_render_ms) } else { "–".into() },
            if lags.is_empty() { "–".into() } else { format!("{:.0} / {:.0} / {:.0} ms", quantile(&lags, 0.5), quantile(&lags, 0.95), lags.last().copied().unwrap_or(f64::NAN)) },
        ]
    }
}

/// Records for `secs`, appending `rate` events a second meanwhile (0: quiet).
async fn window(browser: &Browser, service: &Service, org: &str, ids: &[String], label: &str, secs: u64, rate: usize) -> Window {
    use rand::Rng;
    browser.eval(RECORD, json!([])).await;
    let start = Instant::now();
    let mut events = 0;
    if rate > 0 {
        // Each id flips running <-> idle; the bench keeps the state it last sent.
        let mut idle = std::collections::HashMap::<usize, bool>::new();
        let mut rng = rand::thread_rng();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while start.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let i = rng.gen_range(0..ids.len());
            let was_idle = idle.get(&i).copied().unwrap_or(false);
            idle.insert(i, !was_idle);
            let (from, to) = if was_idle { ("idle", "running") } else { ("running", "idle") };
            let ev = NewEvent::new("task.status_changed", json!({"from": from, "to": to, "reason": null})).repo("app").task(&ids[i]);
            service.kiln.emit(org, vec![ev]).await.expect("append an event");
            events += 1;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let the last events land before the recording stops.
    if rate > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v = browser.eval(STOP, json!([])).await;
    assert_eq!(v["hidden"], false, "the page must be visible, or it renders on a timer instead of frames");
    Window {
        label: label.to_string(),
        secs,
        events,
        frames: floats(&v["frames"]),
        long: floats(&v["long"]),
        renders: v["renders"].as_f64().unwrap_or(0.0),
        render_ms: v["renderMs"].as_f64().unwrap_or(0.0),
        max_render_ms: v["maxRenderMs"].as_f64().unwrap_or(0.0),
        lags: floats(&v["lags"]),
    }
}

async fn run() {
    let rounds = knob("BENCH_ROUNDS", 3).max(1);
    let rate = knob("BENCH_EVENTS_PER_SEC", 100);
    let storm_secs = knob("BENCH_STORM_SECS", 10) as u64;
    let quiet_secs = knob("BENCH_QUIET_SECS", 5) as u64;
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "0,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("# The dashboard in headless Chromium ({})", common::machine_line());
    println!("boards of {sizes:?} tasks, {rounds} reloads each; {rate} events/s for {storm_secs} s\n");

    let service = Service::start(&[]).await;
    let http = Http::new(&service, Duration::from_secs(60));
    let mut orgs = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let org = match n {
            0 => "empty".to_string(),
            n if n % 1000 == 0 => format!("k{}", n / 1000),
            n => format!("n{n}"),
        };
        let (status, body) = http.post("/v1/organizations", json!({ "name": org })).await;
        assert_eq!(status, 201, "{body}");
        let repo_dir = common::git_repo(&service.tmp.path().join(&org), "app");
        let (status, body) =
            http.post(&format!("/v1/organizations/{org}/repos"), json!({ "source": repo_dir.to_string_lossy() })).await;
        assert!(status == 201 || status == 200, "register repo: {status} {body}");
        let repo_id = body["id"].as_i64().expect("repo id") as i32;
        let db = service.data_dir.join("kiln.db");
        let org2 = org.clone();
        let t = Instant::now();
        actix_web::web::block(move || seed_rows(&db, &org2, k as u32, repo_id, n)).await.expect("seed");
        println!("seeded {n} tasks in `{org}` in {:.2} s", t.elapsed().as_secs_f64());
        orgs.push((org, n));
    }
    println!();

    let browser = Browser::start().await;

    // 1. Assets over the wire: the first (cold) load of the page, as the browser saw it.
    sign_in(&browser, &http, &orgs[0].0).await;
    let assets = browser.eval(ASSETS, json!([])).await;
    let assets = assets.as_array().cloned().unwrap_or_default();
    let (mut enc, mut dec, mut xfer) = (0.0, 0.0, 0.0);
    let mut rows = Vec::new();
    for a in &assets {
        let (e, d, t) = (a["encoded"].as_f64().unwrap_or(0.0), a["decoded"].as_f64().unwrap_or(0.0), a["transfer"].as_f64().unwrap_or(0.0));
        enc += e;
        dec += d;
        xfer += t;
        rows.push(vec![a["path"].as_str().unwrap_or("").to_string(), format!("{:.1} KiB", d / 1024.0), format!("{:.1} KiB", e / 1024.0)]);
    }
    rows.sort();
    rows.push(vec![format!("**all {} files**", assets.len()), format!("**{:.1} KiB**", dec / 1024.0), format!("**{:.1} KiB**", enc / 1024.0)]);
    print_table(&["asset (cold load)", "size", "gzipped, as sent"], &rows);
    println!("\non the wire with headers: {:.1} KiB; a reload revalidates every file (304s, no bodies)\n", xfer / 1024.0);

    // 2. Time to a usable board.
    let mut table = Vec::new();
    let mut baseline = f64::NAN;
    for (org, n) in &orgs {
        sign_in(&browser, &http, org).await;
        let mut firsts = Vec::new();
        let mut readys = Vec::new();
        let mut doms = Vec::new();
        let mut last = Value::Null;
        for _ in 0..rounds {
            browser.goto(&format!("{}/", http.base)).await;
            wait_ready(&browser).await;
            let t = browser.eval(TIMINGS, json!([])).await;
            doms.push(t["dom"].as_f64().unwrap_or(f64::NAN));
            firsts.push(t["first"].as_f64().unwrap_or(f64::NAN));
            readys.push(t["ready"].as_f64().unwrap_or(f64::NAN));
            last = t;
        }
        let expect = if *n == 0 { "No tasks yet".to_string() } else { format!("{n} tasks") };
        assert!(last["summary"].as_str().unwrap_or("").starts_with(&expect), "the board shows every task: {last}");
        let ready = median(&readys);
        if *n == 0 {
            baseline = ready;
        }
        table.push(vec![
            format!("{n}"),
            format!("{:.0} ms", median(&doms)),
            if *n == 0 { "–".into() } else { format!("{:.0} ms", median(&firsts)) },
            format!("**{:.0} ms**", ready),
            format!("{:.2}", ready / baseline),
            format!("{}", last["cards"]),
            format!("{} ({:.0} KiB)", last["api_requests"], last["api_bytes"].as_f64().unwrap_or(0.0) / 1024.0),
        ]);
    }
    print_table(&["tasks", "DOM ready", "first render", "usable (board-ready)", "ratio to empty", "cards drawn", "task list requests"], &table);
    println!();

    // 3. Live updates on the biggest boards.
    let mut windows = Vec::new();
    for (k, (org, n)) in orgs.iter().enumerate().rev() {
        if *n == 0 || rate == 0 {
            continue;
        }
        sign_in(&browser, &http, org).await;
        browser.until("the stream is live", "return document.getElementById('live')?.textContent === 'Live'", json!([])).await;
        // The running and idle tasks: the ones a status change moves between Working and Needs you.
        let ids: Vec<String> = (0..*n).filter(|i| matches!(STATUSES[i % 10], "running" | "idle")).map(|i| task_id(k as u32, i)).collect();
        let quiet = window(&browser, &service, org, &ids, &format!("{n} tasks, quiet"), quiet_secs, 0).await;
        let storm = window(&browser, &service, org, &ids, &format!("{n} tasks, {rate} events/s"), storm_secs, rate).await;
        let p95 = quantile(&sorted(quiet.frames.clone()), 0.95);
        windows.push(quiet.row(p95));
        windows.push(storm.row(p95));
        let summary = browser.eval("return document.querySelector('.summary')?.textContent", json!([])).await;
        assert_eq!(summary.as_str().unwrap_or(""), format!("{n} tasks"), "no task lost or doubled");
    }
    if !windows.is_empty() {
        print_table(
            &["board", "events", "frames/s", "frame p50 / p95 / max", "p95 ratio to quiet", "frames > 25 ms", "long tasks (total)", "renders", "render mean / max", "event to screen p50 / p95 / max"],
            &windows,
        );
    }
    drop(browser);
    service.stop().await;
}

fn main() {
    actix_rt::System::new().block_on(run());
}
