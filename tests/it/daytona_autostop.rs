//! Auto-stop of Daytona sandboxes (docs/providers.md, "Auto-stop"), against
//! the fake Daytona with the real sandbox-agent inside: an idle task's sandbox
//! is stopped after `auto_stop_minutes` (a fraction here: 3 s), the task detail
//! and the events say so, and the next attach, input, session open or push
//! starts it again transparently (one start for two clients at once), the
//! terminal log carrying on; a sandbox stopped outside Kiln is handled the same.


use serde_json::{json, Value};

use crate::common::{eventually, git, Client, Server, Term};
use crate::daytona_provider::{bin, client, fast, port, sandbox_id, Remote, WAIT};
use crate::fake_daytona::FakeDaytona;

/// A server whose `default` organization has a daytona profile on `fake` that
/// stops an idle sandbox after 3 s (`auto_stop_minutes` as the CLI sends it),
/// and the repository `app` registered by its URL.
async fn server(fake: &FakeDaytona, remote: &Remote) -> (Server, tempfile::TempDir) {
    server_stopping_after(fake, remote, "0.05").await
}

/// The same, stopping an idle sandbox after `minutes`.
async fn server_stopping_after(fake: &FakeDaytona, remote: &Remote, minutes: &str) -> (Server, tempfile::TempDir) {
    let (server, dir) = Server::start(&[("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#)]);
    let c = server.client();
    let profile = json!({
        "config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port(), "auto_stop_minutes": minutes},
        "secrets": {"api_key": fake.key()},
    });
    let r = c.put("/v1/organizations/default/providers/daytona", profile).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["config"]["auto_stop_minutes"], minutes.parse::<f64>().unwrap(), "stored as a number: {r:?}");
    let r = c.post("/v1/organizations/default/repos", json!({"source": remote.with_password(), "name": "app"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    (server, dir)
}

/// The task detail's sandbox row.
async fn sandbox_row(c: &Client, task: &str) -> Value {
    c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["sandbox"].clone()
}

/// Waits until Kiln has stopped the task's sandbox for idleness (the `n`th
/// time), and answers the detail's sandbox row.
async fn wait_auto_stopped(c: &Client, fake: &FakeDaytona, id: &str, task: &str, n: usize) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events = c.events_since("default", 0).await;
        let stops = events.iter().filter(|e| e["kind"] == "sandbox.auto_stopped").count();
        let row = sandbox_row(c, task).await;
        let state = fake.sandbox_state(id);
        if stops >= n && row["run_state"] == "stopped" && state.as_deref() == Some("stopped") {
            return row;
        }
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        assert!(std::time::Instant::now() < deadline, "the idle sandbox never stopped ({n}): Daytona says {state:?}, Kiln {row}, events {kinds:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The `sandbox.resumed` events so far, by cause.
async fn resumes(c: &Client) -> Vec<String> {
    let events = c.events_since("default", 0).await;
    events.iter().filter(|e| e["kind"] == "sandbox.resumed").map(|e| e["data"]["cause"].as_str().unwrap_or_default().to_string()).collect()
}

/// How many times Kiln asked Daytona to start the sandbox.
fn starts(fake: &FakeDaytona, id: &str) -> usize {
    fake.calls().iter().filter(|c| c.method == "POST" && c.path == format!("/api/sandbox/{id}/start")).count()
}

#[actix_web::test]
async fn an_idle_sandbox_is_stopped_and_the_next_attach_session_or_push_starts_it_again() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = server(&fake, &remote).await;
    let c = server.client();
    // `quick`: idle after one quiet second.
    let created = c
        .create_task_with("default", json!({"repo": "app", "description": "Nap time", "provider": "daytona", "agent": "quick"}))
        .await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");
    assert_eq!(sandbox_row(&c, &task).await["run_state"], "started");
    let sent = fake.creates().into_iter().find(|c| c["name"] == format!("kiln-{task}")).expect("a create");
    assert_eq!(sent["autoStopInterval"], 0, "Daytona's own auto-stop stays off: Kiln's decides");

    // Idle, nobody attached: Kiln stops the sandbox (its files kept); the task
    // stays idle and says so.
    let row = wait_auto_stopped(&c, &fake, &id, &task, 1).await;
    assert_eq!(row["stopped_by"], "kiln", "{row}");
    assert!(row["auto_stopped_at"].as_i64().is_some(), "{row}");
    let detail = c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body;
    assert_eq!(detail["status"], "idle", "{detail}");
    let events = c.events_since("default", 0).await;
    let stopped = events.iter().find(|e| e["kind"] == "sandbox.auto_stopped").unwrap();
    assert_eq!(stopped["data"]["by"], "kiln");
    assert!(stopped["data"]["idle_secs"].as_i64().unwrap() >= 3, "{stopped}");
    assert!(fake.home(&id).unwrap().join("app/.git").is_dir(), "the checkout is kept");
    // It stays stopped, and the task is not taken for ended.
    let stopped_polls = fake.calls().len();
    eventually(WAIT, "more polls", || async { (fake.calls().len() >= stopped_polls + 5).then_some(()) }).await;
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["status"], "idle");
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("stopped"));
    assert_eq!(starts(&fake, &id), 0);

    // Two clients attach at once: one start, both attached to the agent started
    // again (its resume command), the log carrying on with Kiln's notes.
    let (mut a, mut b) = tokio::join!(Term::open(&c, "default", &task, 0), Term::open(&c, "default", &task, 0));
    assert_eq!(starts(&fake, &id), 1, "two attaches at once start the sandbox once");
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("started"));
    a.expect("fake-agent ready: --resumed").await;
    b.expect("fake-agent ready: --resumed").await;
    let text = a.text();
    let (first, note_stop, note_resume, second) = (
        text.find("fake-agent ready: Nap time").expect("the first run's output"),
        text.find("[kiln: sandbox stopped while idle").expect("the stop noted"),
        text.find("[kiln: sandbox resumed]").expect("the resume noted"),
        text.find("fake-agent ready: --resumed").unwrap(),
    );
    assert!(first < note_stop && note_stop < note_resume && note_resume < second, "in order, one log:\n{text}");
    // Typed input reaches the agent in the sandbox.
    a.send(b"write resumed.txt\r").await;
    a.expect("wrote resumed.txt").await;
    assert_eq!(std::fs::read_to_string(fake.home(&id).unwrap().join("app/resumed.txt")).unwrap(), "agent was here\n");
    assert_eq!(resumes(&c).await, ["terminal"]);
    let row = sandbox_row(&c, &task).await;
    assert_eq!((row["run_state"].clone(), row["auto_stopped_at"].clone()), (json!("started"), Value::Null), "{row}");

    // Attached, it is never stopped, however idle.
    c.wait_status("default", &task, "idle").await;
    let polls = fake.calls().len();
    eventually(WAIT, "4 s of polls", || async { (fake.calls().len() >= polls + 25).then_some(()) }).await;
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("started"), "an attached terminal holds the sandbox");
    drop((a, b));

    // Detached: stopped again; an ACP session open starts it again (the `mock`
    // agent then cannot open a session, as in daytona_provider.rs).
    wait_auto_stopped(&c, &fake, &id, &task, 2).await;
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/sessions"), json!({"agent": "mock"})).await;
    assert_eq!((r.status, r.code()), (502, "agent_error"), "reached the sandbox's sandbox-agent: {r:?}");
    assert_eq!(resumes(&c).await, ["terminal", "session"]);
    assert_eq!(starts(&fake, &id), 2);

    // Stopped again; a push starts it again and pushes the work.
    wait_auto_stopped(&c, &fake, &id, &task, 3).await;
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/push"), json!({"commit": "Work from before the nap"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(resumes(&c).await, ["terminal", "session", "push"]);
    let served = remote.dir.path().join("served/app.git");
    let branch = created["branch"].as_str().unwrap();
    assert_eq!(git(&served, &["show", &format!("{branch}:resumed.txt")]), "agent was here");
}

#[actix_web::test]
async fn a_sandbox_stopped_outside_kiln_is_taken_as_auto_stopped_and_input_starts_it_again() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = server(&fake, &remote).await;
    let c = server.client();
    // Never idle on its own (`fake`): only Daytona's stop makes it so.
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Keep at it", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");
    let dc = client(&fake);
    let sid = id.clone();
    kiln::providers::daytona::api::on_arbiter(move || async move { dc.stop(&sid).await }).await.unwrap();

    let row = wait_auto_stopped(&c, &fake, &id, &task, 1).await;
    assert_eq!(row["stopped_by"], "daytona", "{row}");
    let detail = c.wait_status("default", &task, "idle").await;
    assert_eq!(detail["sandbox"]["run_state"], "stopped");

    // Typed input starts it again and reaches the agent (started again).
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/input"), json!({"text": "are you there\r"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(resumes(&c).await, ["input"]);
    let mut term = Term::open(&c, "default", &task, 0).await;
    term.expect("echo: are you there").await;
    assert!(term.text().contains("[kiln: the sandbox was stopped outside Kiln"), "{}", term.text());
    assert_eq!(sandbox_row(&c, &task).await["run_state"], "started");
}

#[actix_web::test]
async fn the_idle_clock_and_a_stopped_sandbox_survive_a_restart_of_kiln() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    // 6 s: time enough to stop Kiln before the sandbox is due to stop.
    let (mut server, dir) = server_stopping_after(&fake, &remote, "0.1").await;
    let c = server.client();
    // A worktree task beside it, as idle for as long: auto-stop never touches it.
    c.add_repo("default", &crate::common::git_repo(dir.path(), "local")).await;
    let local = c.create_task_with("default", json!({"repo": "local", "description": "Stay put", "agent": "quick"})).await;
    let local = local["id"].as_str().unwrap().to_string();
    let created = c
        .create_task_with("default", json!({"repo": "app", "description": "Sleep through it", "provider": "daytona", "agent": "quick"}))
        .await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "idle").await;
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");

    // Kiln stops before the idle sandbox is due to stop; after the restart it is
    // still stopped (its clock is kept outside Kiln).
    server.kill();
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("started"));
    server.restart();
    let c = server.client();
    let row = wait_auto_stopped(&c, &fake, &id, &task, 1).await;
    assert_eq!(row["stopped_by"], "kiln");

    // Kiln restarts again while the sandbox is stopped: the task is still idle
    // (not taken for interrupted), and the next attach starts it again.
    server.kill();
    server.restart();
    let c = server.client();
    let polls = fake.calls().len();
    eventually(WAIT, "polls after the restart", || async { (fake.calls().len() >= polls + 5).then_some(()) }).await;
    let detail = c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body;
    assert_eq!((detail["status"].as_str(), detail["sandbox"]["run_state"].as_str()), (Some("idle"), Some("stopped")), "{detail}");
    let mut term = Term::open(&c, "default", &task, 0).await;
    term.expect("fake-agent ready: --resumed").await;
    term.send(b"good morning\r").await;
    term.expect("echo: good morning").await;
    assert_eq!(resumes(&c).await, ["terminal"]);

    let detail = c.get(&format!("/v1/organizations/default/tasks/{local}")).await.body;
    assert_eq!((detail["status"].as_str(), &detail["sandbox"]["run_state"]), (Some("idle"), &Value::Null), "{detail}");
    let events = c.events_since("default", 0).await;
    assert!(!events.iter().any(|e| e["task"] == local.as_str() && e["kind"].as_str().unwrap_or_default().starts_with("sandbox.auto_stop")), "{events:?}");
}
