//! A Daytona task's changes (docs/providers.md, "The diff of a remote task"),
//! against the fake Daytona with the real sandbox-agent inside: `GET …/diff`
//! shows committed, staged, unstaged and untracked work of the sandbox's
//! checkout with the worktree diff's JSON (a binary file marked), starts a
//! sandbox stopped while idle, leaves the checkout and its index as they were,
//! and answers calls at once alike; conflict prediction counts the state the
//! last diff brought in, without waking a stopped sandbox.

use serde_json::{json, Value};

use crate::common::{eventually, git, Client, Server};
use crate::daytona_provider::{bin, fast, port, sandbox_id, Remote, WAIT};
use crate::fake_daytona::FakeDaytona;

/// A server whose `default` organization has a daytona profile on `fake` that
/// stops an idle sandbox after 3 s, and the repository `app` registered by its URL.
async fn server(fake: &FakeDaytona, remote: &Remote, extra: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let mut env = vec![("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#)];
    env.extend_from_slice(extra);
    let (server, dir) = Server::start(&env);
    let c = server.client();
    let profile = json!({
        "config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port(), "auto_stop_minutes": "0.05"},
        "secrets": {"api_key": fake.key()},
    });
    let r = c.put("/v1/organizations/default/providers/daytona", profile).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.post("/v1/organizations/default/repos", json!({"source": remote.with_password(), "name": "app"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    (server, dir)
}

/// Waits until Kiln stopped the task's sandbox for idleness.
async fn wait_stopped(c: &Client, fake: &FakeDaytona, id: &str, task: &str) {
    eventually(WAIT, "the idle sandbox stopped", || async {
        let row = c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["sandbox"].clone();
        (row["run_state"] == "stopped" && fake.sandbox_state(id).as_deref() == Some("stopped")).then_some(())
    })
    .await;
}

fn file<'a>(diff: &'a Value, path: &str) -> &'a Value {
    diff["files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap_or_else(|| panic!("{path} not in the diff: {diff}"))
}

fn added_lines(f: &Value) -> Vec<String> {
    f["hunks"].as_array().unwrap().iter().flat_map(|h| h["lines"].as_array().unwrap().clone()).filter(|l| l["kind"] == "add").map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

/// Toolbox commands Kiln ran in the sandbox so far.
fn executes(fake: &FakeDaytona) -> usize {
    fake.calls().iter().filter(|c| c.path.ends_with("/process/execute")).count()
}

#[actix_web::test]
async fn the_diff_of_a_daytona_task_shows_its_committed_and_uncommitted_work_and_wakes_a_stopped_sandbox() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = server(&fake, &remote, &[]).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Diff me", "provider": "daytona", "agent": "quick"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");
    let checkout = fake.home(&id).unwrap().join("app");

    // Work of every kind in the sandbox's checkout: a commit, a staged file, an
    // unstaged edit, an untracked file, an untracked binary, an ignored file.
    std::fs::write(checkout.join("committed.txt"), "one\n").unwrap();
    git(&checkout, &["add", "committed.txt"]);
    git(&checkout, &["-c", "user.name=Agent", "-c", "user.email=agent@example.invalid", "commit", "-q", "-m", "agent commit"]);
    std::fs::write(checkout.join("staged.txt"), "staged\n").unwrap();
    git(&checkout, &["add", "staged.txt"]);
    std::fs::write(checkout.join("README.md"), "hello\nedited in the sandbox\n").unwrap();
    std::fs::write(checkout.join("untracked.txt"), "new here\n").unwrap();
    std::fs::write(checkout.join("blob.bin"), [0u8, 159, 146, 150, 0, 1, 2, 3]).unwrap();
    std::fs::write(checkout.join(".gitignore"), "ignored.log\n").unwrap();
    std::fs::write(checkout.join("ignored.log"), "noise\n").unwrap();
    let head = git(&checkout, &["rev-parse", "HEAD"]);
    let status_before = git(&checkout, &["status", "--porcelain"]);

    // Idle and unattached, the sandbox is stopped; the diff starts it again.
    wait_stopped(&c, &fake, &id, &task).await;
    let r = c.get(&format!("/v1/organizations/default/tasks/{task}/diff")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let diff = r.body;
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("started"));
    let events = c.events_since("default", 0).await;
    let causes: Vec<&str> = events.iter().filter(|e| e["kind"] == "sandbox.resumed").filter_map(|e| e["data"]["cause"].as_str()).collect();
    assert_eq!(causes, ["diff"], "woken by the diff");

    // The worktree diff's answer: against the merge-base with main.
    let mirror = server.data_dir().join("repos/default/app.git");
    assert_eq!(diff["base_branch"], "main");
    assert_eq!(diff["head"], head.as_str());
    assert_eq!(diff["base_commit"], git(&mirror, &["rev-parse", "refs/heads/main"]).as_str());
    assert_eq!(diff["truncated"], false);
    assert_eq!(diff["limits"]["max_files"], 2000);
    let mut paths: Vec<&str> = diff["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, [".gitignore", "README.md", "blob.bin", "committed.txt", "staged.txt", "untracked.txt"], "{diff}");
    assert_eq!(file(&diff, "committed.txt")["status"], "added");
    assert_eq!(added_lines(file(&diff, "committed.txt")), ["one"]);
    assert_eq!(added_lines(file(&diff, "staged.txt")), ["staged"]);
    assert_eq!(added_lines(file(&diff, "untracked.txt")), ["new here"]);
    let readme = file(&diff, "README.md");
    assert_eq!((readme["status"].clone(), readme["additions"].clone(), readme["deletions"].clone()), (json!("modified"), json!(1), json!(0)));
    assert_eq!(added_lines(readme), ["edited in the sandbox"]);
    let blob = file(&diff, "blob.bin");
    assert_eq!((blob["binary"].clone(), blob["additions"].clone(), blob["hunks"].clone()), (json!(true), Value::Null, json!([])), "{blob}");
    assert_eq!(diff["additions"], 5);

    // The checkout and its index are as they were; the state is in the mirror.
    assert_eq!(git(&checkout, &["status", "--porcelain"]), status_before);
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), head);
    let state = git(&mirror, &["rev-parse", &format!("refs/kiln/diff/{task}")]);
    assert_eq!(git(&mirror, &["rev-parse", &format!("{state}^")]), head, "the uncommitted work, as a commit on HEAD");
    assert_eq!(git(&mirror, &["show", &format!("{state}:untracked.txt")]), "new here");

    // Attached, the sandbox is not stopped again meanwhile.
    let _term = crate::common::Term::open(&c, "default", &task, 0).await;
    // Nothing changed: the same commit, so one command and no bundle.
    let before = executes(&fake);
    let again = c.get(&format!("/v1/organizations/default/tasks/{task}/diff")).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, diff);
    assert_eq!(executes(&fake), before + 1, "an unchanged sandbox brings nothing again");

    // Calls at once, with a change between: each answer whole, none broken.
    std::fs::write(checkout.join("later.txt"), "later\n").unwrap();
    let url = format!("/v1/organizations/default/tasks/{task}/diff");
    let answers = futures_util::future::join_all((0..4).map(|_| c.get(&url))).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(added_lines(file(&r.body, "later.txt")), ["later"]);
        assert_eq!(r.body["files"].as_array().unwrap().len(), 7);
    }
    let leftovers: Vec<String> = std::fs::read_dir(fake.home(&id).unwrap().join(".kiln"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".bundle") || n.ends_with(".index"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left in the sandbox: {leftovers:?}");
    assert_eq!(git(&checkout, &["for-each-ref", "refs/kiln/bundle"]), "", "no temporary ref left");

    // A review is delivered to the agent in the sandbox as for a worktree.
    let review = json!({"comments": [{"path": "untracked.txt", "line": 1, "text": "Say more"}]});
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/review"), review).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["delivered_via"], "terminal");

    // Killed, the task has no sandbox: the branch and snapshot keep the work.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.get(&url).await;
    assert_eq!((r.status, r.code()), (409, "no_worktree"), "{r:?}");
}

#[actix_web::test]
async fn conflict_prediction_counts_the_state_a_diff_brought_in_without_waking_a_stopped_sandbox() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = server(&fake, &remote, &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "3600")]).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Remote edit", "provider": "daytona", "agent": "quick"})).await;
    let remote_task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &remote_task, "running").await;
    let id = sandbox_id(&fake, &remote_task).await.expect("the sandbox");
    let checkout = fake.home(&id).unwrap().join("app");
    // The sandbox's checkout and a worktree task change README.md's line two,
    // both uncommitted.
    std::fs::write(checkout.join("README.md"), "hello\nas the sandbox says\n").unwrap();
    let local = c.create_task("default", "app", "Local edit").await["id"].as_str().unwrap().to_string();
    let worktree = c.get(&format!("/v1/organizations/default/tasks/{local}")).await.body["sandbox"]["path"].as_str().unwrap().to_string();
    std::fs::write(std::path::Path::new(&worktree).join("README.md"), "hello\nas the worktree says\n").unwrap();
    let conflicts = || async {
        let r = c.get("/v1/organizations/default/repos/app/conflicts").await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["items"].as_array().cloned().unwrap()
    };

    // Once a diff has brought the sandbox's work into the mirror, the pair is
    // predicted to conflict, the sandbox stopped meanwhile and left stopped.
    let r = c.get(&format!("/v1/organizations/default/tasks/{remote_task}/diff")).await;
    assert_eq!(r.status, 200, "{r:?}");
    wait_stopped(&c, &fake, &id, &remote_task).await;
    let starts = || fake.calls().iter().filter(|c| c.method == "POST" && c.path.ends_with(&format!("/sandbox/{id}/start"))).count();
    let started_before = starts();
    let found = eventually(WAIT, "the Daytona task and the worktree task predicted to conflict", || async {
        let items = conflicts().await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    let mut pair = [found[0]["task"].as_str().unwrap().to_string(), found[0]["other"].as_str().unwrap().to_string()];
    pair.sort();
    let mut expected = [remote_task.clone(), local.clone()];
    expected.sort();
    assert_eq!((found.len(), pair, found[0]["files"].clone()), (1, expected, json!(["README.md"])), "{found:?}");
    assert_eq!(starts(), started_before, "prediction never starts a sandbox");
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("stopped"));
    // The sandbox's state is not the mirror's business once it is killed.
    let r = c.post(&format!("/v1/organizations/default/tasks/{remote_task}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mirror = server.data_dir().join("repos/default/app.git");
    assert_eq!(git(&mirror, &["for-each-ref", &format!("refs/kiln/diff/{remote_task}")]), "");
}
