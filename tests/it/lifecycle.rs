//! Actor lifecycles and the admin endpoints.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

fn actor_keys(body: &serde_json::Value) -> Vec<String> {
    body["items"].as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap().to_string()).collect()
}

#[actix_web::test]
async fn task_actors_start_on_demand_and_stop_when_quiet() {
    let (server, dir) = Server::start(&[("KILN_TASKS__ACTOR_IDLE_SECS", "1")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let key = format!("org/default/repo/app/task/{id}");
    let poller = format!("{key}/status-sync");
    let actors = c.get("/admin/actors").await;
    assert_eq!(actors.status, 200);
    let keys = actor_keys(&actors.body);
    assert!(keys.contains(&key), "{keys:?}");
    assert!(keys.contains(&"org/default/history".to_string()));
    // (The repository's actor is not asserted: with a 1 s idle limit it may
    // already have stopped on a loaded machine, and it starts again on demand.)
    let row = actors.body["items"].as_array().unwrap().iter().find(|a| a["key"] == key.as_str()).unwrap().clone();
    assert_eq!(row["kind"], "task");
    assert!(row["last_activity_at"].as_i64().unwrap() >= row["started_at"].as_i64().unwrap());
    assert!(row["mailbox_backlog"].as_i64().unwrap() >= 0);
    assert!(keys.contains(&poller), "a running task has its status poller: {keys:?}");

    // While the task runs, its poller keeps the actor alive; once it ends, the
    // poller stops and the quiet actor goes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(actor_keys(&c.get("/admin/actors").await.body).contains(&key), "an active task keeps its actor");
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/archive"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    eventually(Duration::from_secs(20), "the quiet task actor stops", || {
        let (c, key) = (c.clone(), key.clone());
        async move { (!actor_keys(&c.get("/admin/actors").await.body).contains(&key)).then_some(()) }
    })
    .await;
    // Reading a task never starts its actor; acting on it does, from its rows.
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{id}")).await.status, 200);
    assert!(!actor_keys(&c.get("/admin/actors").await.body).contains(&key));
    assert!(!actor_keys(&c.get("/admin/actors").await.body).contains(&poller), "the poller stopped");
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"), "{r:?}");
    assert!(actor_keys(&c.get("/admin/actors").await.body).contains(&key), "the message started it again");
}

#[actix_web::test]
async fn pull_requests_never_start_task_actors_and_bulk_reads_start_nothing() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    for i in 0..20 {
        c.create_task("default", "app", &format!("t{i}")).await;
    }
    let before = actor_keys(&c.get("/admin/actors").await.body);
    c.get("/v1/organizations/default/tasks?limit=100").await;
    c.get("/v1/organizations/default/repos/app/pulls").await;
    c.get("/v1/organizations/default/events?limit=1000").await;
    let after = actor_keys(&c.get("/admin/actors").await.body);
    let started: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
    assert!(started.is_empty(), "listing started actors: {started:?}");
}

#[actix_web::test]
async fn admin_backup_checkpoint_config_and_metrics() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    c.create_task("default", "app", "backed up").await;

    let r = c.raw("POST", "/admin/db/checkpoint", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["wal_frames"].is_i64());

    let r = c.raw("POST", "/admin/db/backup", None, None).await;
    assert_eq!(r.status, 201, "{r:?}");
    let path = std::path::PathBuf::from(r.body["path"].as_str().unwrap());
    assert!(path.starts_with(server.data_dir().join("backups")));
    assert!(r.body["bytes"].as_u64().unwrap() > 0);
    // The backup is a complete database: a server started on it has the task.
    let restore = tempdir();
    std::fs::create_dir_all(restore.path().join("data")).unwrap();
    std::fs::copy(&path, restore.path().join("data/kiln.db")).unwrap();
    let restored = Server::start_in(restore.path(), &[]);
    let tasks = restored.client().get("/v1/organizations/default/tasks").await;
    assert_eq!(tasks.body["items"][0]["title"], "backed up");

    let r = c.get("/admin/config").await;
    assert_eq!(r.status, 200);
    assert!(r.body["agents"]["claude"]["command"].is_array());
    assert_eq!(r.body["data_dir"], server.data_dir().to_str().unwrap());

    let r = c.get("/metrics").await;
    assert_eq!(r.status, 200);
    for name in [
        "kiln_http_requests_total{class=\"2xx\"}",
        "kiln_events_appended_total",
        "kiln_stream_subscribers",
        "kiln_live_actors",
    ] {
        assert!(r.text.contains(name), "{name} missing from\n{}", r.text);
    }
    let appended: u64 = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("kiln_events_appended_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(appended >= 3, "{appended}");
}
