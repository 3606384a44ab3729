//! `POST /admin/repos/maintain`: a repository's mirror gets packed (refs and
//! objects) without losing any object, never while a task of it is active, and
//! the worktrees made afterwards still work (docs/operations.md, "Mirror
//! maintenance").

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::{git, git_repo, Server};

fn count(mirror: &PathBuf, field: &str) -> u64 {
    git(mirror, &["count-objects", "-v"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")).map(|v| v.trim().parse().unwrap()))
        .unwrap()
}

#[actix_web::test]
async fn a_mirror_is_packed_only_without_active_tasks_and_keeps_every_object() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let src = git_repo(dir.path(), "app");
    admin.add_repo("default", &src).await;
    let mirror = server.data_dir().join("repos/default/app.git");

    // A running task with commits of its own in the shared object store.
    let task = admin.create_task("default", "app", "work").await["id"].as_str().unwrap().to_string();
    admin.wait_status("default", &task, "running").await;
    let r = admin.get(&format!("/v1/organizations/default/tasks/{task}")).await;
    let wt = PathBuf::from(r.body["sandbox"]["path"].as_str().unwrap());
    for i in 0..3 {
        std::fs::write(wt.join(format!("f{i}.txt")), format!("change {i}\n")).unwrap();
        git(&wt, &["add", "."]);
        git(&wt, &["commit", "-q", "-m", &format!("change {i}")]);
    }
    std::fs::write(wt.join("wip.txt"), "uncommitted\n").unwrap();
    // An object nothing reaches: maintenance must not drop it (no prune).
    std::fs::write(dir.path().join("orphan.txt"), "reached by nothing\n").unwrap();
    let dangling = git(&mirror, &["hash-object", "-w", dir.path().join("orphan.txt").to_str().unwrap()]);
    let loose = count(&mirror, "count");
    assert!(loose > 0, "loose objects to pack");

    // Not for an organization's token.
    let r = admin.post("/v1/organizations/default/tokens", json!({"name": "t"})).await;
    let org = admin.with_token(r.body["token"].as_str());
    assert_eq!(org.post("/admin/repos/maintain", json!({})).await.status, 403);
    // Junk in the body is a 4xx, not a 500.
    assert_eq!(admin.post("/admin/repos/maintain", json!({"nope": 1})).await.status / 100, 4);

    // An active task shares the store: skipped, nothing touched.
    let r = admin.post("/admin/repos/maintain", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let item = &r.body["items"][0];
    assert_eq!((item["organization"].as_str(), item["repo"].as_str(), item["outcome"].as_str()), (Some("default"), Some("app"), Some("skipped")), "{item}");
    assert!(item["reason"].as_str().unwrap().contains("1 active task"), "{item}");
    assert_eq!(count(&mirror, "count"), loose, "nothing packed under a live worktree");

    // Killed (its uncommitted work saved as a snapshot), the repository is idle.
    let r = admin.post(&format!("/v1/organizations/default/tasks/{task}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let snapshot = git(&mirror, &["rev-parse", &format!("refs/kiln/snapshots/{task}")]);
    let branch = r.body["task"]["branch"].as_str().map(str::to_string).unwrap_or_else(|| {
        git(&mirror, &["for-each-ref", "--format=%(refname:short)", "refs/heads/kiln/"])
    });
    let loose = count(&mirror, "count");

    // Another organization's filter finds nothing to do.
    let r = admin.post("/admin/repos/maintain", json!({"organization": "other"})).await;
    assert_eq!(r.body["items"], json!([]), "{r:?}");
    let r = admin.post("/admin/repos/maintain", json!({"organization": "default", "repo": "app"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let item: &Value = &r.body["items"][0];
    assert_eq!(item["outcome"], "packed", "{item}");
    assert_eq!(item["before"]["loose"], loose, "{item}");
    assert_eq!(item["after"]["loose"], 0, "every loose object packed: {item}");
    assert_eq!(item["after"]["packs"], 1, "into one pack: {item}");
    assert_eq!(count(&mirror, "count"), 0);
    // Every object is still there: the snapshot, the branch, the dangling blob.
    git(&mirror, &["cat-file", "-e", &format!("{dangling}^{{blob}}")]);
    assert!(git(&mirror, &["show", "--stat", &snapshot]).contains("wip.txt"));
    git(&mirror, &["rev-parse", "--verify", &branch]);
    git(&mirror, &["fsck", "--no-dangling"]);
    // Refs packed: no loose ref file under refs/heads.
    assert!(std::fs::read_to_string(mirror.join("packed-refs")).unwrap().contains(&branch), "refs packed");

    // A task made afterwards works: its agent runs, and Kiln commits and pushes
    // from its (confined) worktree into the packed store.
    let next = admin.create_task("default", "app", "after").await["id"].as_str().unwrap().to_string();
    admin.wait_status("default", &next, "running").await;
    let r = admin.get(&format!("/v1/organizations/default/tasks/{next}")).await;
    let wt = PathBuf::from(r.body["sandbox"]["path"].as_str().unwrap());
    assert!(wt.join("README.md").exists(), "checked out from the packed store");
    std::fs::write(wt.join("after.txt"), "after maintenance\n").unwrap();
    let r = admin.post(&format!("/v1/organizations/default/tasks/{next}/push"), json!({"commit": "after maintenance"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let pushed = r.body["task"]["branch"].as_str().unwrap().to_string();
    assert!(git(&src, &["show", "--stat", &pushed]).contains("after.txt"), "pushed to origin");
    git(&mirror, &["fsck", "--no-dangling"]);
}
