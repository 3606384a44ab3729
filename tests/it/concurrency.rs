//! Concurrency: parallel writers through one writer connection never see
//! "database is locked".

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// `n` task creations on `repo`, all sent at once; answers the replies.
async fn create_all_at_once(c: &Client, repo: &str, n: usize) -> Vec<Reply> {
    let creates: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            async move {
                c.post("/v1/organizations/default/tasks", json!({"repo": repo, "description": format!("parallel {i}")})).await
            }
        })
        .collect();
    futures_util::future::join_all(creates).await
}

#[actix_web::test]
async fn fifty_parallel_creates_make_fifty_tasks() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let replies = create_all_at_once(&c, "app", 50).await;
    for r in &replies {
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut ids: Vec<&str> = replies.iter().map(|r| r.body["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    let listed = c.get("/v1/organizations/default/tasks?limit=100").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 50);
    let created = c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "task.created").count();
    assert_eq!(created, 50);
    assert!(!server.log().contains("database is locked"));
}

#[actix_web::test]
async fn parallel_registrations_of_one_repository_make_one_row() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    let regs: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let body = json!({"source": src.to_str().unwrap()});
            async move { c.post("/v1/organizations/default/repos", body).await }
        })
        .collect();
    let replies = futures_util::future::join_all(regs).await;
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1, "{replies:?}");
    assert_eq!(replies.iter().filter(|r| r.status == 200).count(), 7, "{replies:?}");
    assert_eq!(c.get("/v1/organizations/default/repos").await.body["items"].as_array().unwrap().len(), 1);
}

/// The statuses of every task of the default organization, by id.
async fn statuses(c: &Client) -> std::collections::BTreeMap<String, Value> {
    let listed = c.get("/v1/organizations/default/tasks?limit=500").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    listed.body["items"].as_array().unwrap().iter().map(|t| (t["id"].as_str().unwrap().to_string(), t.clone())).collect()
}

/// Regression: `git worktree prune` ran outside the mirror's lock, concurrently
/// with other tasks' `worktree add`, and provisioning failed with "failed to read
/// worktrees/<id>/commondir" or "could not open 'worktrees/<id>/locked'".
#[actix_web::test]
async fn fifty_tasks_created_together_all_run_and_all_go_away_cleanly() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let replies = create_all_at_once(&c, "app", 50).await;
    let ids: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{r:?}");
            r.body["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Each waits its turn on the mirror: generous, since the machine may be slow.
    eventually(Duration::from_secs(300), "all fifty tasks running", || {
        let c = c.clone();
        let ids = ids.clone();
        async move {
            let all = statuses(&c).await;
            let failed: Vec<String> = all
                .values()
                .filter(|t| t["status"] == "failed")
                .map(|t| format!("{}: {}", t["id"], t["status_reason"]))
                .collect();
            assert!(failed.is_empty(), "provisioning failed: {failed:#?}");
            ids.iter().all(|id| all[id]["status"] == "running").then_some(())
        }
    })
    .await;
    let worktrees = server.data_dir().join("worktrees/default/app");
    for id in &ids {
        assert!(worktrees.join(id).join("README.md").is_file(), "worktree of {id}");
    }

    // And down again, all at once: half killed, half archived.
    let downs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let c = c.clone();
            let action = if i % 2 == 0 { "kill" } else { "archive" };
            async move { (action, c.post(&format!("/v1/organizations/default/tasks/{id}/{action}"), json!({})).await) }
        })
        .collect();
    for (action, r) in futures_util::future::join_all(downs).await {
        assert_eq!(r.status, 200, "{action}: {r:?}");
        let expected = if action == "kill" { "killed" } else { "archived" };
        assert_eq!(r.body["task"]["status"], expected, "{r:?}");
    }
    let all = statuses(&c).await;
    assert!(ids.iter().all(|id| all[id]["status"] == "killed" || all[id]["status"] == "archived"));
    let left: Vec<_> = std::fs::read_dir(&worktrees).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "worktree folders left: {left:?}");
    let mirror = server.data_dir().join("repos/default/app.git");
    let listed = git(&mirror, &["worktree", "list", "--porcelain"]);
    assert_eq!(listed.matches("worktree ").count(), 1, "only the mirror itself is left: {listed}");
    assert!(!mirror.join("worktrees").exists() || std::fs::read_dir(mirror.join("worktrees")).unwrap().next().is_none());
    let destroyed = c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "sandbox.destroyed").count();
    assert_eq!(destroyed, 50);
}
