//! Twenty Daytona tasks created at once through the server, against the fake
//! Daytona with the real sandbox-agent in every sandbox: each gets its own
//! sandbox and branch, all reach `running` with no error, the terminals answer,
//! and killing them all leaves no sandbox and no process behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, git, Client, Term};
use crate::daytona_provider::{bin, daytona_server, fast, sandbox_id, Remote};
use crate::fake_daytona::FakeDaytona;

const TASKS: usize = 20;
/// Generous: twenty sandboxes clone and start sandbox-agent on a shared 2-core machine.
const WAIT: Duration = Duration::from_secs(300);

/// The statuses of every task of the default organization, by id.
async fn tasks(c: &Client) -> BTreeMap<String, Value> {
    let listed = c.get("/v1/organizations/default/tasks?limit=500").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    listed.body["items"].as_array().unwrap().iter().map(|t| (t["id"].as_str().unwrap().to_string(), t.clone())).collect()
}

/// Live processes that belong to these sandboxes (their cwd under one of the
/// homes) or to the server's terminal hosts (their command line names its data dir).
fn processes_of(homes: &[PathBuf], data_dir: &Path) -> Vec<String> {
    let data = data_dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        // A zombie has an empty command line: it runs nothing.
        if cmdline.is_empty() {
            continue;
        }
        if homes.iter().any(|h| cwd.starts_with(h)) || (cmdline.contains("terminal-host") && cmdline.contains(&data)) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[actix_web::test]
async fn twenty_daytona_tasks_created_at_once_all_run_on_their_own_sandboxes_and_all_go_away() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    // Every sandbox listens on the same agent port, each in its own network, as on Daytona.
    const AGENT_PORT: u16 = 8468;
    fake.private_ports(&[AGENT_PORT]);
    let config = json!({"config": {"api_url": fake.api_url(), "agent_bin": fake.port_mapper(&bin()), "agent_port": AGENT_PORT}});
    let r = c.put("/v1/organizations/default/providers/daytona", config).await;
    assert_eq!(r.status, 200, "{r:?}");

    let creates: Vec<_> = (0..TASKS)
        .map(|i| {
            let c = c.clone();
            let body = json!({"repo": "app", "description": format!("parallel {i}"), "provider": "daytona"});
            async move { c.post("/v1/organizations/default/tasks", body).await }
        })
        .collect();
    let replies = futures_util::future::join_all(creates).await;
    let mut ids = Vec::new();
    for r in &replies {
        assert_eq!(r.status, 201, "{r:?}");
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let branches: BTreeSet<&str> = replies.iter().map(|r| r.body["branch"].as_str().unwrap()).collect();
    assert_eq!((ids.iter().collect::<BTreeSet<_>>().len(), branches.len()), (TASKS, TASKS), "distinct ids and branches");

    eventually(WAIT, "all twenty Daytona tasks running", || {
        let (c, ids) = (c.clone(), ids.clone());
        async move {
            let all = tasks(&c).await;
            let failed: Vec<String> =
                all.values().filter(|t| t["status"] == "failed").map(|t| format!("{}: {}", t["id"], t["status_reason"])).collect();
            assert!(failed.is_empty(), "provisioning failed: {failed:#?}");
            ids.iter().all(|id| all[id]["status"] == "running").then_some(())
        }
    })
    .await;

    // One sandbox each, named for its task, checked out on the task's own branch.
    let all = tasks(&c).await;
    let mut sandboxes = BTreeSet::new();
    let mut homes = Vec::new();
    for id in &ids {
        let sandbox = sandbox_id(&fake, id).await.unwrap_or_else(|| panic!("task {id} has no sandbox"));
        let home = fake.home(&sandbox).unwrap();
        assert_eq!(git(&home.join("app"), &["rev-parse", "--abbrev-ref", "HEAD"]), all[id]["branch"].as_str().unwrap());
        sandboxes.insert(sandbox);
        homes.push(home);
    }
    assert_eq!(sandboxes.len(), TASKS, "twenty distinct sandboxes");
    assert_eq!(fake.creates().len(), TASKS, "one create per task, no duplicate");

    let events = c.events_since("default", 0).await;
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!((count("sandbox.created"), count("task.failed")), (TASKS, 0));
    for id in &ids {
        let steps: Vec<&str> = events
            .iter()
            .filter(|e| e["kind"] == "sandbox.progress" && e["task"] == id.as_str())
            .map(|e| e["data"]["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["creating", "starting", "cloning", "starting_agent", "setup", "ready"], "task {id}");
    }
    let log = server.log();
    assert!(!log.contains("database is locked") && !log.contains(" ERROR "), "{log}");

    // Every terminal answers, in its own sandbox.
    for (i, id) in ids.iter().enumerate() {
        let mut term = Term::open(&c, "default", id, 0).await;
        term.expect(&format!("fake-agent ready: parallel {i}")).await;
        term.send(b"hello\r").await;
        term.expect("echo: hello").await;
    }

    // All killed at once: every sandbox deleted, nothing left running.
    let kills: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let path = format!("/v1/organizations/default/tasks/{id}/kill");
            async move { c.post(&path, json!({})).await }
        })
        .collect();
    for r in futures_util::future::join_all(kills).await {
        assert_eq!((r.status, r.body["task"]["status"].as_str()), (200, Some("killed")), "{r:?}");
    }
    for sandbox in &sandboxes {
        assert_eq!(fake.sandbox_state(sandbox), None, "sandbox {sandbox} deleted");
    }
    let data_dir = server.data_dir();
    eventually(Duration::from_secs(30), "no process of the killed tasks left", || {
        let left = processes_of(&homes, &data_dir);
        async move { left.is_empty().then_some(()) }
    })
    .await;
}
