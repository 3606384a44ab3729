//! A new task reaches `running` as soon as its agent starts, not one whole
//! status-poll interval later: the first polls of a task come quickly.

use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn a_new_task_runs_without_waiting_a_whole_poll_interval() {
    // An interval longer than the wait below: only the quick first polls can
    // see the agent start in time.
    let (server, dir) = Server::start(&[("KILN_TASKS__STATUS_POLL_MS", "120000")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    // A setup step that takes a while, so the first poll (at once) sees the setup phase.
    let r = c.put("/v1/organizations/default/repos/app/setup", json!({"commands": ["sleep 1"]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let task = c.create_task_with("default", json!({"repo": "app", "description": "quick"})).await;
    let id = task["id"].as_str().unwrap();
    // Within the helper's 30 s: one interval later would be two minutes.
    let running = c.wait_status("default", id, "running").await;
    assert_eq!(running["status_reason"], serde_json::Value::Null, "{running}");
}
