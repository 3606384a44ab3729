//! `GET …/tasks/{task}/diff` on a 10,000-line change, against plain `git diff`
//! of the same change measured in the same run.
//!
//! Boots Kiln in-process with an agent that only waits (`cat`), creates one task,
//! then writes the change into its worktree and times the route, one request at
//! a time, for three shapes of the same size:
//! - **untracked**: 10 new files of 1,000 lines, never added (the temporary
//!   index's `add -N` path);
//! - **committed**: the same files committed on the task branch;
//! - **rewritten**: 5,000 lines of a tracked 5,000-line file replaced (5,000
//!   deletions + 5,000 additions).
//!
//! The baseline is what git alone costs for the same text: `git diff -p -M
//! <merge-base>` in the worktree, with the untracked files made visible the same
//! way (a copy of the index with `add -N`, prepared once and not timed). The
//! ratio is Kiln's request (two git runs, the parse, JSON, HTTP) over that.
//! Every answer is checked: all 10,000 changed lines, not truncated.
//!
//! Then **the page**: with the untracked shape in place, the dashboard's Changes
//! tab is loaded `BENCH_PAGE_ROUNDS` times in headless Chromium at 1280x800 (the
//! client of the browser tests, `tests/it/browser.rs`). The page writes its own
//! timings on the files' container: `data-fetch-ms` (the request and JSON parse,
//! as the page sees it) and `data-render-ms` (from the answer to the frame after
//! the DOM is built, files open up to the page's budget). Then every closed file
//! is opened at once and timed to the next frame, and all 10,000 added lines must
//! be on the page.
//!
//! Knobs: `BENCH_REQUESTS` (20 per shape), `BENCH_LINES` (10000),
//! `BENCH_PAGE_ROUNDS` (5; 0 skips the page, and with it the need for Chromium).

mod common;
#[allow(dead_code)]
#[path = "../tests/it/browser.rs"]
mod browser;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use browser::Browser;
use common::{fmt_us, knob, print_table, Histogram, Http, Service};

fn git(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("git");
    cmd.args(["-c", "user.name=x", "-c", "user.email=x@x"]).args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Times plain git on the same change: one `git diff -p -M <merge-base>`.
fn baseline(wt: &Path, base: &str, requests: usize, tmp: &Path) -> (Histogram, usize) {
    let index = tmp.join("baseline.index");
    let real = text(git(wt, &[], &["rev-parse", "--path-format=absolute", "--git-path", "index"]));
    std::fs::copy(real, &index).expect("copy the index");
    git(wt, &[("GIT_INDEX_FILE", &index)], &["add", "--intent-to-add", "--all", "--", "."]);
    let mut hist = Histogram::default();
    let mut bytes = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let out = git(wt, &[("GIT_INDEX_FILE", &index)], &["diff", "-p", "-M", "--no-color", base, "--"]);
        hist.record_duration(t.elapsed());
        bytes = out.len();
    }
    let _ = std::fs::remove_file(index);
    (hist, bytes)
}

/// The page's timings of one load of the Changes tab, in ms.
struct PageRound {
    fetch: f64,
    render: f64,
    open_all: f64,
}

/// Loads the Changes tab of task `id` `rounds` times (signed in to `default`
/// with a link the admin token makes); checks every one of `lines` added lines
/// is shown once every file is open.
async fn measure_page(http: &Http, id: &str, rounds: usize, lines: usize) -> Vec<PageRound> {
    let browser = Browser::start().await;
    let (status, body) = http.json(awc::http::Method::POST, "/v1/dashboard/codes", Some(json!({"organization": "default"}))).await;
    assert_eq!(status, 201, "sign-in link: {body}");
    browser.goto(&format!("{}{}", http.base, body["path"].as_str().expect("path"))).await;
    browser.wait_for(".board").await;
    let mut out = Vec::new();
    for _ in 0..rounds {
        browser.goto(&format!("{}/tasks/{id}?tab=changes", http.base)).await;
        let loaded = browser.until("the diff rendered", "return document.getElementById('diff-files')?.dataset.renderMs", json!([])).await;
        let fetch = browser.eval("return Number(document.getElementById('diff-files').dataset.fetchMs)", json!([])).await;
        // Open every closed file, then wait a frame.
        let open_all = browser
            .eval_async(
                "const done = arguments[0]; const t0 = performance.now(); \
                 for (const b of document.querySelectorAll('.diff-toggle[aria-expanded=\"false\"]')) b.click(); \
                 requestAnimationFrame(() => done(performance.now() - t0));",
                json!([]),
            )
            .await;
        let shown = browser.eval("return document.querySelectorAll('.diff-table tr.ln-add').length", json!([])).await;
        assert_eq!(shown, lines, "every line is shown once every file is open");
        out.push(PageRound {
            fetch: fetch.as_f64().expect("data-fetch-ms"),
            render: loaded.as_str().and_then(|s| s.parse().ok()).expect("data-render-ms"),
            open_all: open_all.as_f64().expect("the time to open every file"),
        });
    }
    out
}

/// The median and the range of one column of the page's rounds.
fn median_and_range(mut v: Vec<f64>) -> (String, String) {
    v.sort_by(|a, b| a.total_cmp(b));
    (format!("{:.0}", v[v.len() / 2]), format!("{:.0}–{:.0}", v[0], v[v.len() - 1]))
}

fn main() {
    let requests = knob("BENCH_REQUESTS", 20).max(1);
    let page_rounds = knob("BENCH_PAGE_ROUNDS", 5);
    let lines = knob("BENCH_LINES", 10_000).max(10);
    let tmp = common::tempdir();
    let config = common::idle_agent_config(tmp.path(), "diff-bench.toml");
    let system = actix_rt::System::new();
    system.block_on(async move {
        let host = env!("CARGO_BIN_EXE_kiln");
        let svc = Service::start_with_config(&config, &[("KILN_TERMINAL__HOST_PROGRAM", host)]).await;
        let http = Http::new(&svc, Duration::from_secs(120));
        // The repository has the file the `rewritten` shape replaces.
        let repo = common::git_repo(svc.tmp.path(), "bench");
        let half = lines / 2;
        let original: String = (0..half).map(|i| format!("original line {i} of the tracked file\n")).collect();
        std::fs::write(repo.join("tracked.txt"), original).unwrap();
        common::git(&repo, &["add", "."]);
        common::git(&repo, &["commit", "-q", "-m", "tracked"]);
        let (status, body) = http.json(awc::http::Method::POST, "/v1/organizations/default/repos", Some(json!({"source": repo}))).await;
        assert!(status < 300, "register: {status} {body}");
        let (status, task) =
            http.json(awc::http::Method::POST, "/v1/organizations/default/tasks", Some(json!({"repo": "bench", "description": "diff bench"}))).await;
        assert_eq!(status, 201, "create: {task}");
        let id = task["id"].as_str().unwrap().to_string();
        let task_path = format!("/v1/organizations/default/tasks/{id}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let wt = loop {
            let (_, t) = http.json(awc::http::Method::GET, &task_path, None).await;
            if t["status"] == "running" {
                break PathBuf::from(t["sandbox"]["path"].as_str().expect("sandbox path"));
            }
            assert!(Instant::now() < deadline, "the task never ran: {t}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        let diff_path = format!("{task_path}/diff");

        println!("# A {lines}-line change: GET …/diff vs plain git diff ({})", common::machine_line());
        println!("{requests} sequential requests per shape; the baseline is one `git diff -p -M <merge-base>` of the same change\n");
        let per_file = lines / 10;
        let mut rows = Vec::new();
        let mut page = Vec::new();
        for shape in ["untracked", "committed", "rewritten"] {
            match shape {
                "untracked" => {
                    for f in 0..10 {
                        let body: String = (0..per_file).map(|i| format!("    let value_{i} = compute({f}, {i}); // file {f}\n")).collect();
                        std::fs::create_dir_all(wt.join("src")).unwrap();
                        std::fs::write(wt.join(format!("src/f{f}.rs")), body).unwrap();
                    }
                }
                "committed" => {
                    git(&wt, &[], &["add", "src"]);
                    git(&wt, &[], &["commit", "-q", "-m", "bench files"]);
                }
                _ => {
                    // Back to the base for src/, then rewrite the tracked file.
                    git(&wt, &[], &["rm", "-q", "-r", "src"]);
                    git(&wt, &[], &["commit", "-q", "-m", "drop the bench files"]);
                    let rewritten: String = (0..half).map(|i| format!("rewritten line {i} of the tracked file\n")).collect();
                    std::fs::write(wt.join("tracked.txt"), rewritten).unwrap();
                }
            }
            let mut hist = Histogram::default();
            let mut size = 0;
            for _ in 0..requests {
                let t = Instant::now();
                let (status, bytes) = http.call(awc::http::Method::GET, &diff_path, None).await;
                hist.record_duration(t.elapsed());
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
                size = bytes.len();
                let d: Value = serde_json::from_slice(&bytes).expect("json");
                let changed = d["additions"].as_u64().unwrap() + d["deletions"].as_u64().unwrap();
                assert_eq!(changed as usize, if shape == "rewritten" { 2 * half } else { lines }, "{shape}: every line counted");
                assert_eq!(d["truncated"], false, "{shape}: nothing left out");
                let shown: usize = d["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|f| f["hunks"].as_array().unwrap().iter())
                    .flat_map(|h| h["lines"].as_array().unwrap().iter())
                    .filter(|l| l["kind"] != "context")
                    .count();
                assert_eq!(shown, changed as usize, "{shape}: every changed line has its text");
            }
            let (_, t) = http.json(awc::http::Method::GET, &diff_path, None).await;
            let base = t["base_commit"].as_str().unwrap().to_string();
            let (git_hist, git_bytes) = baseline(&wt, &base, requests, tmp.path());
            let ratio = hist.quantile(0.5) as f64 / git_hist.quantile(0.5).max(1) as f64;
            rows.push(vec![
                shape.to_string(),
                fmt_us(hist.quantile(0.5)),
                fmt_us(hist.quantile(0.99)),
                fmt_us(git_hist.quantile(0.5)),
                format!("{ratio:.1}×"),
                format!("{:.1} MB", size as f64 / 1e6),
                format!("{:.1} MB", git_bytes as f64 / 1e6),
            ]);
            if shape == "untracked" && page_rounds > 0 {
                page = measure_page(&http, &id, page_rounds, per_file * 10).await;
            }
        }
        print_table(&["shape", "GET …/diff p50", "p99", "git diff p50", "ratio", "JSON", "patch text"], &rows);
        if !page.is_empty() {
            println!("\n# The Changes tab in Chromium, the untracked shape ({} rounds, ms)\n", page.len());
            let mut table: Vec<Vec<String>> = page
                .iter()
                .enumerate()
                .map(|(i, r)| vec![format!("round {}", i + 1), format!("{:.0}", r.fetch), format!("{:.0}", r.render), format!("{:.0}", r.open_all)])
                .collect();
            let (fetch, render, open_all) = (
                median_and_range(page.iter().map(|r| r.fetch).collect()),
                median_and_range(page.iter().map(|r| r.render).collect()),
                median_and_range(page.iter().map(|r| r.open_all).collect()),
            );
            table.push(vec!["median".into(), fetch.0, render.0, open_all.0]);
            table.push(vec!["range".into(), fetch.1, render.1, open_all.1]);
            print_table(&["ms", "fetch (API + JSON)", "first render (files open up to the budget)", "open every other file"], &table);
        }
        let (status, _) = http.json(awc::http::Method::POST, &format!("{task_path}/kill"), Some(json!({}))).await;
        assert_eq!(status, 200, "kill the bench task");
        svc.stop().await;
    });
}
