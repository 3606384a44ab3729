//! The cost of one pull-request poll cycle (`cargo bench --bench github`): a
//! repository with `BENCH_PRS` (default 500) pull requests on the fake GitHub
//! server from the tests, polled by the real PrSyncPoller inside an in-process
//! Kiln. Three cycles are measured: the first (cold: nothing cached), one where
//! nothing changed (every page a 304), and one after a single PR changed.
//! Reported: requests made, how many were 304s, rate limit spent, and time.

mod common;

#[allow(unused_imports)]
#[path = "../tests/it/fake_github.rs"]
mod fake_github;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{knob, print_table, Service};
use fake_github::FakeGithub;

const FULL: &str = "acme/bench";
const KEY: &str = "org/default/repo/origin/pr-sync";

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(["-c", "user.name=x", "-c", "user.email=x@x", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

async fn poller(svc: &Service, http: &awc::Client) -> Option<Value> {
    let mut res = http.get(format!("{}/admin/pollers", svc.base)).bearer_auth(&svc.token).send().await.ok()?;
    let body: Value = res.json().limit(1 << 24).await.ok()?;
    body["items"].as_array()?.iter().find(|p| p["key"] == KEY).cloned()
}

/// Triggers one poll and waits for it; answers the poller's report of it.
async fn cycle(svc: &Service, http: &awc::Client) -> (Value, Duration) {
    let before = poller(svc, http).await.map(|p| p["polls"].as_u64().unwrap_or(0)).unwrap_or(0);
    let started = Instant::now();
    http.post(format!("{}/admin/pollers/{KEY}/poll", svc.base)).bearer_auth(&svc.token).send().await.unwrap();
    loop {
        if let Some(p) = poller(svc, http).await {
            if p["polls"].as_u64().unwrap_or(0) > before {
                return (p, started.elapsed());
            }
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let prs = knob("BENCH_PRS", 500);
    println!("# One PR poll cycle ({}), {prs} pull requests", common::machine_line());
    let gh = FakeGithub::start();
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("origin.git");
    git(tmp.path(), &["init", "-q", "--bare", bare.to_str().unwrap()]);
    let work = tmp.path().join("work");
    git(tmp.path(), &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "init"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    gh.add_repo(FULL, &bare);
    for i in 0..prs {
        gh.add_pull(FULL, &format!("someone/feature-{i}"), "main", &format!("PR {i}"));
    }
    let system = actix_rt::System::new();
    let rows = system.block_on(async {
        // A long interval: only the cycles the bench triggers run.
        let svc = Service::start(&[("KILN_GITHUB__PR_POLL_MS", "3600000")]).await;
        let http = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        let post = |path: String, body: Value| {
            let (http, svc_base, token) = (http.clone(), svc.base.clone(), svc.token.clone());
            async move {
                let mut res = http.post(format!("{svc_base}{path}")).bearer_auth(token).send_json(&body).await.unwrap();
                assert!(res.status().is_success(), "{path}: {:?}", res.body().await);
            }
        };
        post("/v1/organizations/default/repos".into(), json!({"source": bare})).await;
        let put = |path: String, body: Value| {
            let (http, svc_base, token) = (http.clone(), svc.base.clone(), svc.token.clone());
            async move {
                let mut res = http.put(format!("{svc_base}{path}")).bearer_auth(token).send_json(&body).await.unwrap();
                assert!(res.status().is_success(), "{path}: {:?}", res.body().await);
            }
        };
        put("/v1/organizations/default/providers/github".into(), json!({"config": {"api_url": gh.url}, "secrets": {"token": gh.token()}})).await;
        put("/v1/organizations/default/repos/origin/settings".into(), json!({"github": FULL})).await;
        // The first cycle starts by itself when the poller starts; wait for it.
        while poller(&svc, &http).await.and_then(|p| p["polls"].as_u64()).unwrap_or(0) == 0 {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let mut rows = Vec::new();
        for (name, change) in [("cold (first cycle)", false), ("nothing changed", false), ("one PR changed", true)] {
            if change {
                gh.close_externally(FULL, 1);
            }
            let limit_before = gh.rate_limit_remaining();
            let requests_before = gh.requests().len();
            let (p, elapsed) = if name.starts_with("cold") {
                // Measure a cold cycle on a fresh poller: stop it, let a new one start.
                http.post(format!("{}/admin/pollers/{KEY}/stop", svc.base)).bearer_auth(&svc.token).send().await.unwrap();
                while poller(&svc, &http).await.is_some() {
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                }
                let limit_before = gh.rate_limit_remaining();
                let n_before = gh.requests().len();
                let started = Instant::now();
                put("/v1/organizations/default/repos/origin/settings".into(), json!({"github": FULL})).await;
                loop {
                    if let Some(p) = poller(&svc, &http).await {
                        if p["polls"].as_u64().unwrap_or(0) >= 1 {
                            let reqs = &gh.requests()[n_before..];
                            rows.push(vec![
                                name.to_string(),
                                reqs.len().to_string(),
                                reqs.iter().filter(|r| r.status == 304).count().to_string(),
                                (limit_before - gh.rate_limit_remaining()).to_string(),
                                format!("{:.1} ms", started.elapsed().as_secs_f64() * 1000.0),
                                format!("{} ms", p["cost"]["millis"]),
                            ]);
                            break;
                        }
                    }
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                }
                continue;
            } else {
                cycle(&svc, &http).await
            };
            let reqs = &gh.requests()[requests_before..];
            rows.push(vec![
                name.to_string(),
                reqs.len().to_string(),
                reqs.iter().filter(|r| r.status == 304).count().to_string(),
                (limit_before - gh.rate_limit_remaining()).to_string(),
                format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0),
                format!("{} ms", p["cost"]["millis"]),
            ]);
        }
        svc.stop().await;
        rows
    });
    print_table(&["cycle", "requests", "304s", "rate limit spent", "wall time", "poller's own time"], &rows);
}
