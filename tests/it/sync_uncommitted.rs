//! `sync` over uncommitted work that conflicts with the new base (docs/git.md,
//! "sync", step 3), through the HTTP API on a real task: git's autostash would
//! rebase, fail to put the work back, exit 0 and leave the work parked in
//! `git stash` with conflict markers in the files. Kiln undoes the sync instead
//! and answers the conflict: `409 sync_conflict` naming the file,
//! `task.sync_conflict`, the files, the index and `HEAD` exactly as they were,
//! and no stash entry left behind. For a worktree task and for a Daytona task
//! (whose sync runs as a script in the sandbox).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::daytona_provider::{daytona_server, fast, sandbox_id, Remote};
use crate::fake_daytona::FakeDaytona;
use crate::git_lifecycle::bare_origin;

const WAIT: Duration = Duration::from_secs(60);

/// What must not change in a checkout: `HEAD`, `git status` (index included) and README.md.
fn state(checkout: &Path) -> (String, String, String) {
    (
        git(checkout, &["rev-parse", "HEAD"]),
        git(checkout, &["status", "--porcelain"]),
        std::fs::read_to_string(checkout.join("README.md")).unwrap(),
    )
}

/// Commits `content` to README.md on main in `work` (a clone of origin) and pushes it.
fn upstream_readme(work: &Path, content: &str) {
    std::fs::write(work.join("README.md"), content).unwrap();
    git(work, &["commit", "-q", "-am", "main's readme"]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
}

/// Syncs (in `mode`) and checks the refusal, its event (the `n`th) and that nothing moved.
async fn sync_is_refused_and_undone(c: &Client, task: &str, mode: &str, checkout: &Path, n: usize) {
    let before = state(checkout);
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/sync"), json!({"mode": mode})).await;
    assert_eq!((r.status, r.code()), (409, "sync_conflict"), "{mode}: {r:?}");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("README.md") && message.contains("main"), "{mode}: {message}");
    assert_eq!(state(checkout), before, "{mode}: HEAD, index and files exactly as before");
    assert_eq!(std::fs::read_to_string(checkout.join("README.md")).unwrap(), "the task's uncommitted readme\n");
    assert!(!std::fs::read_to_string(checkout.join("README.md")).unwrap().contains("<<<<<<<"), "no conflict markers");
    assert_eq!(git(checkout, &["stash", "list"]), "", "{mode}: nothing parked in the stash");
    let events = c.events_since("default", 0).await;
    let conflicts: Vec<_> = events.iter().filter(|e| e["task"] == task && e["kind"] == "task.sync_conflict").collect();
    assert_eq!(conflicts.len(), n, "{conflicts:?}");
    assert_eq!((conflicts[n - 1]["data"]["files"].clone(), conflicts[n - 1]["data"]["base"].clone()), (json!(["README.md"]), json!("main")));
    assert!(!events.iter().any(|e| e["task"] == task && e["kind"] == "task.synced"), "{mode}: not reported synced");
}

#[actix_web::test]
async fn syncing_a_worktree_over_uncommitted_work_that_conflicts_with_the_new_base_is_refused_and_undone() {
    let dir = tempdir();
    let server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    let (bare, upstream) = bare_origin(dir.path());
    c.add_repo("default", &bare).await;
    let t = c.create_task("default", "origin", "edit the readme").await;
    let id = t["id"].as_str().unwrap().to_string();
    c.wait_status("default", &id, "running").await;
    let worktree = server.data_dir().join(format!("worktrees/default/origin/{id}"));
    // Uncommitted work: README.md changed, and a new file staged (the index must come back too).
    std::fs::write(worktree.join("README.md"), "the task's uncommitted readme\n").unwrap();
    std::fs::write(worktree.join("staged.txt"), "staged\n").unwrap();
    git(&worktree, &["add", "staged.txt"]);
    upstream_readme(&upstream, "main's readme\n");

    sync_is_refused_and_undone(&c, &id, "rebase", &worktree, 1).await;
    assert_eq!(git(&worktree, &["status", "--porcelain"]), "M README.md\nA  staged.txt");
    // The worktrees share the mirror's refs (a bare repository has no `git stash
    // list`: its refs/stash is the stash every worktree lists): none there either.
    let mirror = server.data_dir().join("repos/default/origin.git");
    assert!(git(&mirror, &["for-each-ref", "refs/stash"]).is_empty(), "no refs/stash in the mirror");
    sync_is_refused_and_undone(&c, &id, "merge", &worktree, 2).await;
    assert!(git(&mirror, &["for-each-ref", "refs/stash"]).is_empty());

    // The work committed, the same sync conflicts as a rebase would, and is aborted.
    git(&worktree, &["commit", "-q", "-am", "the task's readme"]);
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/sync"), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "sync_conflict"), "{r:?}");
    assert_eq!(git(&worktree, &["rev-parse", "HEAD"]), head);
}

#[actix_web::test]
async fn syncing_a_daytona_sandbox_over_uncommitted_work_that_conflicts_with_the_new_base_is_refused_and_undone() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Edit the readme", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");
    let checkout = fake.home(&id).unwrap().join("app");
    std::fs::write(checkout.join("README.md"), "the task's uncommitted readme\n").unwrap();
    std::fs::write(checkout.join("staged.txt"), "staged\n").unwrap();
    git(&checkout, &["add", "staged.txt"]);

    // Someone pushes another README.md to main.
    let served = remote.dir.path().join("served/app.git");
    let upstream = remote.dir.path().join("upstream");
    git(remote.dir.path(), &["clone", "-q", served.to_str().unwrap(), upstream.to_str().unwrap()]);
    upstream_readme(&upstream, "main's readme\n");

    sync_is_refused_and_undone(&c, &task, "rebase", &checkout, 1).await;
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "M README.md\nA  staged.txt");
    assert!(git(&checkout, &["for-each-ref", "refs/stash"]).is_empty(), "no refs/stash in the sandbox's checkout");
    sync_is_refused_and_undone(&c, &task, "merge", &checkout, 2).await;
    // Still a working task: the status poller has nothing to say about it.
    eventually(WAIT, "the task still running", || async {
        (c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["status"] == "running").then_some(())
    })
    .await;
}
