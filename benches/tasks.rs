//! Task listing latency over 10,000 tasks, and the memory those tasks cost.
//!
//! Boots Kiln in-process, registers a real (empty) git repository, adds the tasks,
//! then times `GET …/tasks` pages of 100, one request at a time: the first page,
//! a status filter, a page halfway down through `cursor`, the repo filter, and a
//! status no task has (the worst case: the whole organization is walked).
//!
//! Seeding (`BENCH_SEED`):
//! - `db` (default): the rows are written straight into the service's SQLite file
//!   as bench setup, bypassing the TaskActor. Creating a task through the API also
//!   provisions its sandbox (a worktree and an agent process), and ten thousand of
//!   those is not what this benchmark is about.
//! - `api`: every task goes through `POST …/tasks`, as a client would create it;
//!   the table then also shows creation throughput and latency. Use a small
//!   `BENCH_TASKS` when provisioning starts real agents.
//!
//! Memory is this process's RSS (`VmRSS` from /proc/self/status): the service
//! *and* this benchmark's own HTTP client, which is small next to the service.
//!
//! Knobs: `BENCH_TASKS` (10000), `BENCH_REQUESTS` (200 per list variant),
//! `BENCH_SEED` (`db`), `BENCH_CREATE_CONCURRENCY` (16, for `api`).

mod common;

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use common::{fmt_rate, fmt_us, knob, print_table, rss_kib, Histogram, Http, Service};

const ORG: &str = "default";

/// Creates `tasks` tasks through `POST …/tasks`, `concurrency` at a time;
/// answers the latency of each request.
async fn create_through_api(http: &Http, repo: &str, tasks: usize, concurrency: usize) -> Histogram {
    let path = format!("/v1/organizations/{ORG}/tasks");
    let outcomes: Vec<(u16, Duration)> = stream::iter(0..tasks)
        .map(|i| {
            let path = &path;
            async move {
                let t = Instant::now();
                let body = json!({
                    "repo": repo,
                    "title": format!("Benchmark task {i}"),
                    "description": format!("Benchmark task number {i}: make the widget faster."),
                });
                let (status, reply) = http.post(path, body).await;
                if status != 201 {
                    eprintln!("create task {i}: {status} {reply}");
                }
                (status, t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut latency = Histogram::default();
    for (status, d) in &outcomes {
        assert_eq!(*status, 201, "every task was created");
        latency.record_duration(*d);
    }
    latency
}

/// Bench setup only: writes `tasks` queued rows straight into the service's
/// database file, bypassing the TaskActor (the single writer), as if they had been
/// created over the last `tasks` seconds. Same columns as `POST …/tasks` writes.
fn seed_rows(db: &std::path::Path, repo_id: i32, tasks: usize) {
    use kiln::db::models::Task;

    let now = kiln::util::now_ms();
    let rows: Vec<Task> = (0..tasks)
        .map(|i| {
            // A bijection on u32, so ids are distinct and look random.
            let id = format!("{:08x}", (i as u32).wrapping_mul(2_654_435_761));
            let title = format!("Benchmark task {i}");
            Task {
                branch: format!("kiln/benchmark-task-{i}-{id}"),
                id,
                organization: ORG.into(),
                repo_id,
                description: format!("Benchmark task number {i}: make the widget faster."),
                title,
                base_branch: "main".into(),
                agent: "claude".into(),
                provider: "worktree".into(),
                status: "queued".into(),
                status_reason: None,
                awaiting_input: false,
                created_at: now - (tasks - i) as i64 * 1000,
                updated_at: now - (tasks - i) as i64 * 1000,
            }
        })
        .collect();
    common::insert_task_rows(db, &rows);
}

/// How many tasks of the organization are in each status, most first.
async fn status_counts(kiln: &kiln::actors::Kiln) -> Vec<(String, i64)> {
    use diesel::prelude::*;
    use kiln::db::schema::tasks as t;
    let mut counts: Vec<(String, i64)> = kiln
        .db
        .read(|c| {
            t::table
                .filter(t::organization.eq(ORG))
                .group_by(t::status)
                .select((t::status, diesel::dsl::count_star()))
                .load(c)
        })
        .await
        .expect("status counts");
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    counts
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

async fn run() {
    let tasks = knob("BENCH_TASKS", 10_000);
    let requests = knob("BENCH_REQUESTS", 200).max(1);
    let concurrency = knob("BENCH_CREATE_CONCURRENCY", 16).max(1);
    println!("# Task list latency and memory ({})", common::machine_line());
    let seed = std::env::var("BENCH_SEED").unwrap_or_else(|_| "db".into());
    println!("{tasks} tasks (seeded: {seed}), {requests} sequential requests per list variant\n");

    let service = Service::start(&[]).await;
    let http = Http::new(&service, Duration::from_secs(60));
    // Two requests, so the workers and the read pool are warm before the first reading.
    let (status, _) = http.get("/v1/health").await;
    assert_eq!(status, 200);
    let (status, _) = http.get(&format!("/v1/organizations/{ORG}/tasks?limit=1")).await;
    assert_eq!(status, 200);
    let (rss_boot, _) = rss_kib();
    let actors_boot = service.kiln.registry.count();

    let repo_dir = common::git_repo(service.tmp.path(), "bench-repo");
    let (status, body) =
        http.post(&format!("/v1/organizations/{ORG}/repos"), json!({ "source": repo_dir.to_string_lossy() })).await;
    assert!(status == 201 || status == 200, "register repo: {status} {body}");
    let repo = body["name"].as_str().expect("repo name").to_string();

    let create_start = Instant::now();
    let create_latency = match seed.as_str() {
        "api" => Some(create_through_api(&http, &repo, tasks, concurrency).await),
        "db" => {
            // In a child process, so the rows this benchmark builds are not counted
            // in the RSS readings of the service.
            let repo_id = body["id"].as_i64().expect("repo id");
            let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                .env(SEED_CHILD, format!("{}|{repo_id}|{tasks}", service.data_dir.join("kiln.db").display()))
                .status()
                .expect("run the seeding child");
            assert!(status.success(), "seeding failed: {status}");
            None
        }
        other => panic!("BENCH_SEED must be `api` or `db`, not `{other}`"),
    };
    let create_time = create_start.elapsed();
    let statuses = status_counts(&service.kiln).await;
    let created: i64 = statuses.iter().map(|(_, n)| n).sum();
    assert_eq!(created as usize, tasks, "every task is in the database");

    let (rss_seeded, _) = rss_kib();
    let actors_seeded = service.kiln.registry.count();

    // Page through every task once (the service has now read each row), keeping
    // the cursor halfway down for the deep-page variant.
    let (mut cursor, mut pages, mut seen, mut deep) = (None::<String>, 0, 0, (0, String::new(), 0));
    let walk_start = Instant::now();
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/organizations/{ORG}/tasks?limit=100&cursor={c}"),
            None => format!("/v1/organizations/{ORG}/tasks?limit=100"),
        };
        let (status, bytes) = http.get(&q).await;
        assert_eq!(status, 200);
        let page: Value = serde_json::from_slice(&bytes).expect("json");
        seen += page["items"].as_array().map_or(0, Vec::len);
        cursor = page["next_cursor"].as_str().map(str::to_string);
        pages += 1;
        if pages == (tasks / 2 / 100).max(1) {
            deep = (pages + 1, cursor.clone().unwrap_or_default(), tasks.saturating_sub(pages * 100).min(100));
        }
        if cursor.is_none() {
            break;
        }
    }
    let walk_time = walk_start.elapsed();
    assert_eq!(seen, tasks, "paging with the cursor reaches every task exactly once");
    let (rss_walked, _) = rss_kib();
    let (deep_page, deep, deep_n) = deep;
    let full = tasks.min(100);
    // (name, query, items expected). The status filters take the most common
    // status (a full page) and one no task has: the worst case, where the whole
    // organization is walked to answer an empty page.
    let (common_status, common_n) = statuses[0].clone();
    let absent = ["running", "archived", "killed", "queued"]
        .into_iter()
        .find(|s| statuses.iter().all(|(have, _)| have != s))
        .unwrap_or("running");
    let mut variants = vec![
        ("first page, limit=100".to_string(), format!("/v1/organizations/{ORG}/tasks?limit=100"), full),
        (
            format!("status={common_status}, limit=100"),
            format!("/v1/organizations/{ORG}/tasks?status={common_status}&limit=100"),
            (common_n as usize).min(100),
        ),
        ("repo=<name>, limit=100".to_string(), format!("/v1/organizations/{ORG}/tasks?repo={repo}&limit=100"), full),
        (format!("status={absent} (0 matches)"), format!("/v1/organizations/{ORG}/tasks?status={absent}&limit=100"), 0),
    ];
    if !deep.is_empty() {
        let q = format!("/v1/organizations/{ORG}/tasks?limit=100&cursor={deep}");
        variants.insert(2, (format!("page {deep_page} via cursor, limit=100"), q, deep_n));
    }
    let mut rows = Vec::new();
    for (name, q, expected) in &variants {
        let mut h = Histogram::default();
        let mut size = 0;
        for _ in 0..10 {
            http.get(q).await; // warm-up
        }
        for _ in 0..requests {
            let t = Instant::now();
            let (status, bytes) = http.get(q).await;
            h.record_duration(t.elapsed());
            assert_eq!(status, 200, "{q}");
            size = bytes.len();
            let page: Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(page["items"].as_array().map(Vec::len), Some(*expected), "{q} answers {expected} items");
        }
        rows.push(vec![
            name.clone(),
            requests.to_string(),
            fmt_us(h.quantile(0.5)),
            fmt_us(h.quantile(0.99)),
            fmt_us(h.max),
            format!("{:.1} KiB", size as f64 / 1024.0),
        ]);
    }

    // Throughput with several clients at once, for scale.
    let parallel = 8;
    let (q, n) = (&variants[0].1, requests * 4);
    let t = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(parallel, |_| async {
            let (status, _) = http.get(q).await;
            assert_eq!(status, 200);
        })
        .await;
    let list_rate = n as f64 / t.elapsed().as_secs_f64();
    let (rss_after, hwm) = rss_kib();

    let seeded_how = match &create_latency {
        Some(_) => format!("{tasks} through POST …/tasks at concurrency {concurrency}"),
        None => format!("{tasks} rows written straight to SQLite (bench setup)"),
    };
    let mut seed_rows_out = vec![
        vec!["tasks".into(), seeded_how],
        vec![
            "time".into(),
            format!("{:.1} s ({} tasks/s)", create_time.as_secs_f64(), fmt_rate(tasks as f64 / create_time.as_secs_f64())),
        ],
        vec!["statuses afterwards".into(), statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", ")],
    ];
    if let Some(h) = &create_latency {
        seed_rows_out.push(vec!["POST latency p50 / p99".into(), format!("{} / {}", fmt_us(h.quantile(0.5)), fmt_us(h.quantile(0.99)))]);
    }
    print_table(&["seeding", "result"], &seed_rows_out);
    println!();
    print_table(&["GET …/tasks", "requests", "p50", "p99", "max", "body"], &rows);
    println!(
        "\npaging through all {tasks} tasks: {pages} pages in {:.2} s; first page with {parallel} concurrent clients: {} requests/s\n",
        walk_time.as_secs_f64(),
        fmt_rate(list_rate)
    );
    let actors_after = service.kiln.registry.count();
    let row = |name: String, rss: u64, actors: Option<usize>| {
        let delta = rss.saturating_sub(rss_boot);
        vec![
            name,
            mib(rss),
            format!("+{} ({:.0} B/task)", mib(delta), delta as f64 * 1024.0 / tasks as f64),
            actors.map(|n| n.to_string()).unwrap_or_default(),
        ]
    };
    print_table(
        &["memory (whole bench process)", "RSS", "over boot", "live actors"],
        &[
            vec!["after boot".into(), mib(rss_boot), String::new(), actors_boot.to_string()],
            row(format!("after adding {tasks} tasks ({seed})"), rss_seeded, Some(actors_seeded)),
            row("after paging through every task".into(), rss_walked, None),
            row("after the list benchmark".into(), rss_after, Some(actors_after)),
            row("peak (VmHWM)".into(), hwm, None),
        ],
    );
    service.stop().await;
}

/// Set on the child process that seeds rows: `<db path>|<repo id>|<count>`.
const SEED_CHILD: &str = "BENCH_SEED_CHILD";

fn main() {
    if let Ok(job) = std::env::var(SEED_CHILD) {
        let parts: Vec<&str> = job.rsplitn(3, '|').collect();
        let (count, repo_id, db) = (parts[0].parse().expect("count"), parts[1].parse().expect("repo id"), parts[2]);
        seed_rows(std::path::Path::new(db), repo_id, count);
        return;
    }
    actix_rt::System::new().block_on(run());
}
