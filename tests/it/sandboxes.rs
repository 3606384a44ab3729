//! Worktree sandboxes, agents in terminal hosts, attach, and what survives a
//! server restart.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

#[actix_web::test]
async fn the_whole_path_from_create_to_archive() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "Fix it", "agent": "quick"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    let running = c.wait_status("default", &id, "running").await;
    assert_eq!(running["sandbox"]["state"], "ready");
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    assert_eq!(git(&worktree, &["rev-parse", "--abbrev-ref", "HEAD"]), t["branch"].as_str().unwrap());
    // The description was handed over as an argument; quiet for a second → idle.
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("fake-agent ready: Fix it").await;
    c.wait_status("default", &id, "idle").await;

    // Input through the API makes it run again, and shows in the terminal.
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/input"), json!({"text": "hello there\r"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    term.expect("echo: hello there").await;
    // Typing through the attached terminal works too.
    term.send(b"spam 3\r").await;
    term.expect("line 3").await;
    let runtime = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["runtime"].clone();
    assert!(runtime["pid"].as_i64().unwrap() > 0, "{runtime}");

    // Detach, then reattach from the offset reached: only what is new arrives.
    let offset = term.offset;
    drop(term);
    c.post(&format!("/v1/organizations/default/tasks/{id}/input"), json!({"text": "while away\r"})).await;
    let mut again = Term::open(&c, "default", &id, offset).await;
    again.expect("echo: while away").await;
    assert!(!again.text().contains("fake-agent ready"), "no duplicate from before the offset");

    // The agent wrote a file it never committed; archive saves it to the snapshot ref.
    again.send(b"write notes.txt\r").await;
    again.expect("wrote notes.txt").await;
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/archive"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["task"]["status"], "archived");
    let snapshot = r.body["snapshot_ref"].as_str().unwrap().to_string();
    assert_eq!(snapshot, format!("refs/kiln/snapshots/{id}"));
    assert!(!worktree.exists(), "the worktree is removed");
    let mirror = server.data_dir().join("repos/default/app.git");
    assert_eq!(git(&mirror, &["show", &format!("{snapshot}:notes.txt")]), "agent was here");
    // The branch is kept.
    git(&mirror, &["rev-parse", "--verify", t["branch"].as_str().unwrap()]);
    let task = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["sandbox"]["state"], "destroyed");
    // Its terminal log stays readable after the end.
    let mut log = Term::open(&c, "default", &id, 0).await;
    log.until(WAIT, "the whole log and a close", |t| t.closed.is_some()).await;
    assert!(log.text().contains("fake-agent ready") && log.text().contains("wrote notes.txt"));
}

#[actix_web::test]
async fn two_attachers_share_one_terminal() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "shared").await["id"].as_str().unwrap().to_string();
    let mut a = Term::open(&c, "default", &id, 0).await;
    let mut b = Term::open(&c, "default", &id, 0).await;
    a.expect("fake-agent ready").await;
    b.expect("fake-agent ready").await;
    a.send(b"from a\r").await;
    b.send(b"from b\r").await;
    for t in [&mut a, &mut b] {
        t.expect("echo: from a").await;
        t.expect("echo: from b").await;
    }
    // Resize messages keep both sessions alive (what size wins is checked by
    // `the_terminal_size_follows_the_most_recently_active_client`).
    a.control(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    b.control(json!({"type": "resize", "cols": 90, "rows": 25})).await;
    b.send(b"x\r").await;
    b.expect("echo: x").await;
    let state_dir = server.data_dir().join(format!("sandboxes/{id}"));
    let log = std::fs::read_to_string(state_dir.join("terminal.log")).unwrap();
    assert!(log.contains("echo: from a") && log.contains("echo: from b"));
    // Bad control messages get an answer, not a disconnect.
    a.control(json!({"type": "dance"})).await;
    a.until(WAIT, "an error control", |t| t.controls.iter().any(|c| c["type"] == "error")).await;
}

/// What any RFC 6455 client may send: a message in fragments (continuation
/// frames) and a paste over 64 KiB in one frame. Both reach the agent whole (they
/// used to be dropped, and to cut the connection without a close frame); a message
/// over the 1 MiB limit is closed with 1009 and a reason.
#[actix_web::test]
async fn terminal_input_may_come_fragmented_or_large() {
    use actix_http::ws::Item;
    use futures_util::SinkExt;
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "fragments").await["id"].as_str().unwrap().to_string();
    let mut t = Term::open(&c, "default", &id, 0).await;
    t.expect("fake-agent ready").await;
    let fragments = |first: Item, rest: Vec<Item>| std::iter::once(first).chain(rest).map(awc::ws::Message::Continuation);
    for m in fragments(Item::FirstBinary("frag".into()), vec![Item::Continue("men".into()), Item::Last("ted\r".into())]) {
        t.ws.framed.send(m).await.unwrap();
    }
    t.expect("echo: fragmented").await;
    // A control message in fragments is read whole too (this one is refused as unknown).
    for m in fragments(Item::FirstText(r#"{"type":"#.into()), vec![Item::Last(r#""dance"}"#.into())]) {
        t.ws.framed.send(m).await.unwrap();
    }
    t.until(WAIT, "an error control", |t| t.controls.iter().any(|c| c["type"] == "error")).await;
    // An 84 KB paste in one frame: every line reaches the agent.
    let paste: String = (0..12000).map(|i| format!("l{i:05}\r")).collect();
    assert!(paste.len() > 64 * 1024);
    t.send(paste.as_bytes()).await;
    // The echo is about 250 KB: a reader that falls behind on a loaded machine
    // is cut and would resume from its offset, so the kept log is what is read.
    let log = server.data_dir().join(format!("sandboxes/{id}/terminal.log"));
    eventually(WAIT, "every pasted line echoed", || {
        let log = log.clone();
        async move {
            let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            (text.contains("echo: l00000") && text.contains("echo: l11999")).then_some(())
        }
    })
    .await;
    let mut t = Term::open(&c, "default", &id, 0).await;
    t.expect("echo: l11999").await;
    // Over the limit (here a fragmented message, so the server has read every byte
    // before it closes): 1009, with the limit in the reason.
    let half = || actix_web::web::Bytes::from(vec![b'x'; 512 * 1024]);
    for m in fragments(Item::FirstBinary(half()), vec![Item::Continue(half()), Item::Last("x".into())]) {
        let _ = t.ws.framed.send(m).await;
    }
    t.until(WAIT, "the close", |t| t.closed.is_some()).await;
    let reason = t.closed.clone().flatten().expect("a close frame with a reason");
    assert_eq!(reason.code, awc::ws::CloseCode::Size, "{reason:?}");
    assert!(reason.description.unwrap_or_default().contains("at most 1048576 bytes"));
}

#[actix_web::test]
async fn agents_outlive_a_killed_server_and_nothing_printed_is_lost() {
    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "survive").await["id"].as_str().unwrap().to_string();
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("fake-agent ready").await;
    // Through the API: answered once the host has the input.
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/input"), json!({"text": "sleep 1\r"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let host_pid: i32 = std::fs::read_to_string(server.data_dir().join(format!("sandboxes/{id}/host.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    server.kill();
    // While the server is down the agent keeps running and printing ("slept").
    assert_eq!(unsafe { libc::kill(host_pid, 0) }, 0, "the host survived the server's SIGKILL");
    let state_dir = server.data_dir().join(format!("sandboxes/{id}"));
    eventually(WAIT, "the agent to print while the server is down", || {
        let state_dir = state_dir.clone();
        async move {
            let log = kiln::terminal::log::TerminalLog::read_only(&state_dir).ok()?;
            let (_, bytes) = log.read_at(0, 1 << 20).ok()?;
            String::from_utf8_lossy(&bytes).contains("slept").then_some(())
        }
    })
    .await;
    server.restart();
    let c = server.client();
    let task = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["status"], "running", "re-attached, not interrupted: {task}");
    let mut after = Term::open(&c, "default", &id, 0).await;
    after.expect("slept").await;
    assert!(after.text().starts_with("fake-agent ready"), "the whole scrollback: {}", after.text());
    after.send(b"still there?\r").await;
    after.expect("echo: still there?").await;
    let actors = c.get("/admin/pollers").await;
    assert!(actors.text.contains(&format!("task/{id}/status-sync")), "the poller is back: {actors:?}");
}

#[actix_web::test]
async fn an_agent_that_exits_while_the_server_is_down_is_reported_with_its_code() {
    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "exit later").await["id"].as_str().unwrap().to_string();
    server.kill();
    // Tell the agent to exit while nobody watches: straight through its host.
    let state_dir = server.data_dir().join(format!("sandboxes/{id}"));
    kiln::terminal::client::send_input(&state_dir, b"exit 7\r").unwrap();
    eventually(WAIT, "the host records the exit", || {
        let f = state_dir.join("exit.json");
        async move { f.exists().then_some(()) }
    })
    .await;
    server.restart();
    let c = server.client();
    let task = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["status"], "interrupted", "{task}");
    assert!(task["status_reason"].as_str().unwrap().contains("code 7"), "{task}");
    assert_eq!(task["runtime"]["exit_code"], 7);
    let exited: Vec<_> = c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "task.agent_exited").collect();
    assert_eq!(exited[0]["data"]["code"], 7);
    // Resume relaunches it in the same worktree with the resume command.
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/resume"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.wait_status("default", &id, "running").await;
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("fake-agent ready: --resumed").await;
}

#[actix_web::test]
async fn a_dead_host_interrupts_the_task_and_resume_brings_it_back() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "fragile").await["id"].as_str().unwrap().to_string();
    let state_dir = server.data_dir().join(format!("sandboxes/{id}"));
    let host_pid: i32 = std::fs::read_to_string(state_dir.join("host.pid")).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(host_pid, libc::SIGKILL) };
    let task = c.wait_status("default", &id, "interrupted").await;
    assert!(task["status_reason"].as_str().unwrap().contains("resume"), "{task}");
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/resume"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.wait_status("default", &id, "running").await;
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("--resumed").await;
    term.send(b"ok?\r").await;
    term.expect("echo: ok?").await;
}

#[actix_web::test]
async fn kill_saves_untracked_and_modified_work_and_keeps_the_branch() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    c.add_repo("default", &src).await;
    let t = c.create_task("default", "app", "edit things").await;
    let id = t["id"].as_str().unwrap();
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    std::fs::write(worktree.join("README.md"), "changed by the user\n").unwrap();
    std::fs::create_dir_all(worktree.join("new/dir")).unwrap();
    std::fs::write(worktree.join("new/dir/file.txt"), "brand new\n").unwrap();
    let out = cli(&server, &["kill", id]);
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.1.contains(&format!("uncommitted work saved to refs/kiln/snapshots/{id}")), "{}", out.1);
    assert!(out.1.contains(&format!("branch {} is kept", t["branch"].as_str().unwrap())), "{}", out.1);
    let mirror = server.data_dir().join("repos/default/app.git");
    let snap = format!("refs/kiln/snapshots/{id}");
    assert_eq!(git(&mirror, &["show", &format!("{snap}:README.md")]), "changed by the user");
    assert_eq!(git(&mirror, &["show", &format!("{snap}:new/dir/file.txt")]), "brand new");
    // The snapshot sits on top of the branch, which is untouched.
    let branch = t["branch"].as_str().unwrap();
    assert_eq!(git(&mirror, &["rev-parse", &format!("{snap}^")]), git(&mirror, &["rev-parse", branch]));
    let status = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(status["status"], "killed");
    // The agent and its host are gone.
    let state_dir = server.data_dir().join(format!("sandboxes/{id}"));
    let exit = kiln::terminal::client::exit_info(&state_dir).expect("the host recorded the end");
    assert_eq!(exit.signal, Some(libc::SIGHUP), "stopped by the hangup, as a closing terminal stops it");
    eventually(WAIT, "the host exits", || {
        let dir = state_dir.clone();
        async move { kiln::terminal::client::status(&dir).is_err().then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn failures_while_provisioning_are_clear_and_clean() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    // A missing agent.
    let t = c.create_task_with("default", json!({"repo": "app", "description": "x", "agent": "ghost"})).await;
    let id = t["id"].as_str().unwrap();
    let failed = c.wait_status("default", id, "failed").await;
    assert_eq!(
        failed["status_reason"],
        "agent `kiln-no-such-agent` not found on PATH: install it or choose another agent"
    );
    assert!(!server.data_dir().join(format!("worktrees/default/app/{id}")).exists(), "nothing half-made");
    let event = c.events_since("default", 0).await.into_iter().rev().find(|e| e["kind"] == "task.status_changed").unwrap();
    assert_eq!(event["data"]["to"], "failed");
    assert!(event["data"]["reason"].as_str().unwrap().contains("not found on PATH"));
    // A failing setup step keeps its output in the reason and the terminal.
    let r = c
        .put("/v1/organizations/default/repos/app/setup", json!({"commands": ["echo preparing", "echo broken >&2; exit 4"]}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = c.create_task_with("default", json!({"repo": "app", "description": "y"})).await;
    let id = t["id"].as_str().unwrap();
    let failed = c.wait_status("default", id, "failed").await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("setup failed (exit 4)") && reason.contains("broken"), "{reason}");
    eventually(WAIT, "the half-made worktree is removed", || {
        let w = server.data_dir().join(format!("worktrees/default/app/{id}"));
        async move { (!w.exists()).then_some(()) }
    })
    .await;
    let mut log = Term::open(&c, "default", id, 0).await;
    log.until(WAIT, "the setup output", |t| t.closed.is_some()).await;
    assert!(log.text().contains("preparing") && log.text().contains("broken"), "{}", log.text());
}

#[actix_web::test]
async fn setup_copies_included_files_and_runs_before_the_agent() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    std::fs::write(src.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(src.join(".worktreeinclude"), "# local files\n.env\n../escape\n").unwrap();
    std::fs::write(src.join("extra.cfg"), "x\n").unwrap();
    c.add_repo("default", &src).await;
    let r = c
        .put("/v1/organizations/default/repos/app/setup", json!({"commands": ["touch setup-ran"], "copy": ["extra.cfg"]}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.get("/v1/organizations/default/repos/app").await.body["setup"]["commands"], json!(["touch setup-ran"]));
    let id = c.create_task("default", "app", "go").await["id"].as_str().unwrap().to_string();
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    assert_eq!(std::fs::read_to_string(worktree.join(".env")).unwrap(), "SECRET=1\n");
    assert!(worktree.join("extra.cfg").exists());
    assert!(worktree.join("setup-ran").exists(), "setup ran in the worktree");
    for bad in [json!({"commands": [""]}), json!({"copy": ["../x"]}), json!({"copy": ["/etc/passwd"]}), json!({"commands": "ls"})] {
        let r = c.put("/v1/organizations/default/repos/app/setup", bad.clone()).await;
        assert!(r.status == 422, "{bad}: {r:?}");
    }
}

/// What the copy-in of task `id` reported skipping, as (path, reason).
async fn copy_skipped(c: &Client, id: &str) -> Vec<(String, String)> {
    c.events_since("default", 0)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "sandbox.copy_skipped" && e["task"] == id)
        .flat_map(|e| e["data"]["skipped"].as_array().cloned().unwrap_or_default())
        .map(|s| (s["path"].as_str().unwrap().to_string(), s["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// Regression: a committed `cfg -> /outside` plus the entry `cfg/local.env` made
/// provisioning write `/outside/local.env`; a committed link as the entry itself
/// was written through too.
#[actix_web::test]
async fn the_copy_in_never_writes_through_a_symlink_in_the_worktree() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let src = git_repo(dir.path(), "app");
    // Committed: two links out of the tree. Worktrees check them out as links.
    std::os::unix::fs::symlink(&outside, src.join("cfg")).unwrap();
    std::os::unix::fs::symlink(outside.join("top.env"), src.join("top.env")).unwrap();
    git(&src, &["add", "cfg", "top.env"]);
    git(&src, &["commit", "-q", "-m", "links"]);
    // The source checkout itself has real files there (uncommitted).
    std::fs::remove_file(src.join("cfg")).unwrap();
    std::fs::create_dir(src.join("cfg")).unwrap();
    std::fs::write(src.join("cfg/local.env"), "LOCAL=1\n").unwrap();
    std::fs::remove_file(src.join("top.env")).unwrap();
    std::fs::write(src.join("top.env"), "TOP=1\n").unwrap();
    std::fs::write(src.join(".env"), "FINE=1\n").unwrap();
    std::fs::write(src.join(".worktreeinclude"), "cfg/local.env\n.env\n").unwrap();
    c.add_repo("default", &src).await;
    let r = c.put("/v1/organizations/default/repos/app/setup", json!({"copy": ["top.env", "cfg"]})).await;
    assert_eq!(r.status, 200, "{r:?}");

    let id = c.create_task("default", "app", "go").await["id"].as_str().unwrap().to_string();
    let left: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "written outside the worktree: {left:?}");
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    assert!(std::fs::symlink_metadata(worktree.join("cfg")).unwrap().file_type().is_symlink(), "the link is left alone");
    assert_eq!(std::fs::read_to_string(worktree.join(".env")).unwrap(), "FINE=1\n", "the rest is still copied");
    let skipped = copy_skipped(&c, &id).await;
    let expected: Vec<(String, String)> = [("cfg/local.env", "symlink_in_worktree"), ("top.env", "symlink_in_worktree"), ("cfg", "symlink_in_worktree")]
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(skipped, expected);
}

/// Regression: `linkdir/secret.txt` with `linkdir -> /outside` in the source
/// checkout copied an outside file into the worktree, and the kill snapshot then
/// stored it. Also: the snapshot stores links an agent makes as links, never
/// what they point at.
#[actix_web::test]
async fn the_copy_in_never_reads_through_a_symlink_and_snapshots_keep_links_as_links() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP SECRET\n").unwrap();
    let src = git_repo(dir.path(), "app");
    std::os::unix::fs::symlink(&outside, src.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), src.join("direct.txt")).unwrap();
    std::fs::create_dir(src.join("conf")).unwrap();
    std::fs::write(src.join("conf/ok.txt"), "ok\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), src.join("conf/escape")).unwrap();
    std::fs::write(src.join(".env"), "FINE=1\n").unwrap();
    std::fs::write(src.join(".worktreeinclude"), ".env\nlinkdir/secret.txt\nlinkdir\ndirect.txt\nconf\n").unwrap();
    c.add_repo("default", &src).await;

    let id = c.create_task("default", "app", "go").await["id"].as_str().unwrap().to_string();
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    assert!(std::fs::symlink_metadata(worktree.join("linkdir")).is_err(), "nothing was made for linkdir");
    assert!(std::fs::symlink_metadata(worktree.join("direct.txt")).is_err());
    assert!(std::fs::symlink_metadata(worktree.join("conf/escape")).is_err(), "links in a copied folder are skipped");
    assert_eq!(std::fs::read_to_string(worktree.join("conf/ok.txt")).unwrap(), "ok\n");
    assert_eq!(std::fs::read_to_string(worktree.join(".env")).unwrap(), "FINE=1\n");
    let skipped = copy_skipped(&c, &id).await;
    let expected: Vec<(String, String)> =
        ["linkdir/secret.txt", "linkdir", "direct.txt", "conf/escape"].iter().map(|p| (p.to_string(), "symlink_in_source".to_string())).collect();
    assert_eq!(skipped, expected);

    // What an agent might leave: links out of the tree, to a file and a folder.
    std::os::unix::fs::symlink(outside.join("secret.txt"), worktree.join("leak")).unwrap();
    std::os::unix::fs::symlink(&outside, worktree.join("leakdir")).unwrap();
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let snapshot = r.body["snapshot_ref"].as_str().expect("a snapshot was saved").to_string();
    let mirror = server.data_dir().join("repos/default/app.git");
    let tree = git(&mirror, &["ls-tree", "-r", &snapshot]);
    let entries: Vec<(String, String, String)> = tree
        .lines()
        .map(|l| {
            let (meta, path) = l.split_once('\t').unwrap();
            let parts: Vec<&str> = meta.split_whitespace().collect();
            (parts[0].to_string(), parts[2].to_string(), path.to_string())
        })
        .collect();
    let paths: Vec<&str> = entries.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(paths, vec![".env", "README.md", "conf/ok.txt", "leak", "leakdir"], "{tree}");
    for (mode, object, path) in &entries {
        let content = git(&mirror, &["cat-file", "-p", object]);
        assert!(!content.contains("TOP SECRET"), "{path} holds the outside file");
        if path.starts_with("leak") {
            assert_eq!(mode, "120000", "{path} is stored as a link");
        }
    }
    assert!(outside.join("secret.txt").exists(), "the outside file is untouched");
}

#[actix_web::test]
async fn prompt_as_input_and_secrets_as_env() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    c.put("/v1/organizations/default/providers/worktree", json!({"secrets": {"ANTHROPIC_API_KEY": "sk-test-123"}})).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "typed in", "agent": "typed"})).await;
    let id = t["id"].as_str().unwrap();
    c.wait_status("default", id, "running").await;
    let mut term = Term::open(&c, "default", id, 0).await;
    term.expect("echo: typed in").await;
    assert!(term.text().contains("fake-agent ready: \r\n") || term.text().contains("fake-agent ready:\r\n"), "no argument: {}", term.text());
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    let environ = std::fs::read_to_string(format!(
        "/proc/{}/environ",
        c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["runtime"]["pid"]
    ))
    .unwrap();
    assert!(environ.contains("ANTHROPIC_API_KEY=sk-test-123"), "the secret reaches the agent's env");
    assert!(environ.contains(&format!("KILN_TASK={id}")));
    assert!(!environ.contains("KILN_DATA_DIR="), "the server's own settings stay with the server");
    assert!(worktree.exists());
    assert!(!server.log().contains("sk-test-123"), "secrets never reach the log");
}

#[actix_web::test]
async fn a_terminal_client_that_falls_behind_resumes_at_its_offset() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "loud").await["id"].as_str().unwrap().to_string();
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("fake-agent ready").await;
    term.send(b"spam 2000\r").await;
    term.until(WAIT, "some of the spam", |t| t.text().contains("line 500")).await;
    let offset = term.offset;
    let seen = term.output.clone();
    drop(term);
    let mut rest = Term::open(&c, "default", &id, offset).await;
    rest.expect("line 2000").await;
    let mut whole = seen;
    whole.extend_from_slice(&rest.output);
    let text = String::from_utf8_lossy(&whole);
    for n in [1, 499, 500, 501, 1999, 2000] {
        assert_eq!(text.matches(&format!("line {n}\r\n")).count(), 1, "line {n} exactly once");
    }
}

#[actix_web::test]
async fn cli_attach_detaches_on_ctrl_backslash_and_send_types() {
    use std::io::{BufRead, Write};
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "attach me").await["id"].as_str().unwrap().to_string();
    let out = cli(&server, &["send", &id, "typed", "by", "send"]);
    assert_eq!(out.0, 0, "{out:?}");
    let mut child = std::process::Command::new(BIN)
        .args(["--url", &server.url, "attach", &id])
        .env("HOME", &server.dir)
        .env("KILN_DATA_DIR", server.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(line.clone());
            line.clear();
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let line = rx.recv_timeout(deadline - std::time::Instant::now()).unwrap_or_else(|_| panic!("attach never showed {needle}"));
            if line.contains(needle) {
                return;
            }
        }
    };
    wait_for("echo: typed by send");
    stdin.write_all(b"through attach\r").unwrap();
    stdin.flush().unwrap();
    wait_for("echo: through attach");
    stdin.write_all(&[0x1c]).unwrap();
    stdin.flush().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("detached"), "{}", String::from_utf8_lossy(&out.stderr));
    // The agent keeps running after the detach.
    let task = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["status"], "running");
    let path = cli(&server, &["switch", &id]);
    assert_eq!(path.1.trim(), server.data_dir().join(format!("worktrees/default/app/{id}")).to_str().unwrap());
}

#[actix_web::test]
async fn pollers_can_be_listed_polled_slowed_and_stopped() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "polled").await["id"].as_str().unwrap().to_string();
    let key = format!("org/default/repo/app/task/{id}/status-sync");
    let find = |body: &serde_json::Value, key: &str| body["items"].as_array().unwrap().iter().find(|p| p["key"] == key).cloned();
    let me = find(&c.get("/admin/pollers").await.body, &key).expect("listed");
    assert_eq!(me["kind"], "task_status");
    assert_eq!(me["interval_ms"], 200);
    let branch_key = "org/default/repo/app/branch-sync";
    assert_eq!(find(&c.get("/admin/pollers").await.body, branch_key).expect("the branch poller runs")["kind"], "branch_sync");
    let r = c.post(&format!("/admin/pollers/{key}/interval"), json!({"interval_ms": 60000})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let before = find(&c.get("/admin/pollers").await.body, &key).unwrap()["polls"].as_u64().unwrap();
    let r = c.post(&format!("/admin/pollers/{key}/poll"), json!({})).await;
    assert_eq!(r.status, 200);
    eventually(WAIT, "the poll happens", || {
        let c = c.clone();
        let key = key.clone();
        async move {
            let body = c.get("/admin/pollers").await.body;
            let polls = body["items"].as_array().unwrap().iter().find(|p| p["key"] == key.as_str()).unwrap()["polls"].as_u64().unwrap();
            (polls > before).then_some(())
        }
    })
    .await;
    assert_eq!(find(&c.get("/admin/pollers").await.body, &key).unwrap()["interval_ms"], 60000);
    for (body, code) in [(json!({"interval_ms": 1}), "invalid_interval"), (json!({"secs": 1}), "invalid_body")] {
        let r = c.post(&format!("/admin/pollers/{key}/interval"), body).await;
        assert_eq!((r.status, r.code()), (422, code));
    }
    let r = c.post(&format!("/admin/pollers/{key}/explode"), json!({})).await;
    assert_eq!((r.status, r.code()), (404, "unknown_poller_action"));
    let r = c.post(&format!("/admin/pollers/{key}/stop"), json!({})).await;
    assert_eq!(r.status, 200);
    eventually(WAIT, "the poller is gone", || {
        let c = c.clone();
        let key = key.clone();
        async move {
            let body = c.get("/admin/pollers").await.body;
            (!body["items"].as_array().unwrap().iter().any(|p| p["key"] == key.as_str())).then_some(())
        }
    })
    .await;
    let r = c.post(&format!("/admin/pollers/{key}/poll"), json!({})).await;
    assert_eq!((r.status, r.code()), (404, "poller_not_found"));
    // An organization token cannot touch pollers.
    let tok = c.post("/v1/organizations/default/tokens", json!({"name": "t"})).await.body["token"].as_str().unwrap().to_string();
    assert_eq!(c.with_token(Some(&tok)).get("/admin/pollers").await.status, 403);
}

#[actix_web::test]
async fn terminal_logs_rotate_and_attach_skips_ahead() {
    let (server, dir) = Server::start(&[("KILN_TERMINAL__LOG_MAX_BYTES", "8192")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "chatty").await["id"].as_str().unwrap().to_string();
    let mut live = Term::open(&c, "default", &id, 0).await;
    c.post(&format!("/v1/organizations/default/tasks/{id}/input"), json!({"text": "spam 3000\r"})).await;
    live.expect("line 3000").await;
    assert!(live.text().contains("fake-agent ready"), "a live attacher saw everything");
    // A new attacher from 0 gets what is kept, told where it starts.
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("line 3000").await;
    let skipped = term.controls.iter().find(|v| v["type"] == "offset").expect("an offset control: old output was dropped");
    assert!(skipped["offset"].as_u64().unwrap() > 0);
    assert!(!term.text().contains("fake-agent ready"), "the rotated-away start is gone");
    let state = server.data_dir().join(format!("sandboxes/{id}"));
    let total: u64 = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("terminal.log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= 2 * 8192 + 65536, "bounded: {total}");
}

/// An attach from past the end starts at the end, says so, and gets live output
/// (it used to wait, silent, until output reached the offset asked for).
#[actix_web::test]
async fn an_attach_past_the_end_starts_at_the_end_and_gets_live_output() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "far ahead").await["id"].as_str().unwrap().to_string();
    let mut live = Term::open(&c, "default", &id, 0).await;
    live.expect("fake-agent ready").await;
    let before = live.offset;
    const FAR: u64 = 999_999_999;
    let mut ahead = Term::open(&c, "default", &id, FAR).await;
    ahead.until(WAIT, "the offset control", |t| t.controls.iter().any(|v| v["type"] == "offset")).await;
    assert_eq!(ahead.controls[0], json!({"type": "attached", "offset": FAR}), "{:?}", ahead.controls);
    let moved = ahead.controls[1]["offset"].as_u64().unwrap();
    assert!(moved >= before && moved < FAR, "moved back to the end ({before}..): {:?}", ahead.controls);
    assert!(ahead.output.is_empty(), "told before any output");
    // Typing through it reaches the agent, and its output comes back live.
    ahead.send(b"past the end\r").await;
    ahead.expect("echo: past the end").await;
    live.expect("echo: past the end").await;
    assert!(!ahead.text().contains("fake-agent ready"), "nothing from before the end");
    // Both attachers place the echo at the same stream offset.
    let end_of = |t: &Term| {
        let needle = b"echo: past the end";
        let at = t.output.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len();
        t.offset - (t.output.len() - at) as u64
    };
    assert_eq!(end_of(&ahead), end_of(&live), "the offsets told are the stream's");
}

#[actix_web::test]
async fn shutdown_closes_attached_terminals_at_once_and_recovers_queued_tasks() {
    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "attached").await["id"].as_str().unwrap().to_string();
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("fake-agent ready").await;
    let started = std::time::Instant::now();
    assert_eq!(server.stop().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "an attached terminal does not hold up shutdown");
    term.until(WAIT, "a close", |t| t.closed.is_some()).await;
    let reason = term.closed.clone().flatten().expect("a close reason");
    assert_eq!(reason.code, awc::ws::CloseCode::Restart);
    assert!(reason.description.unwrap().contains("offset="));
    server.restart();
    let c = server.client();
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["status"], "running");
}

#[actix_web::test]
async fn the_terminal_size_follows_the_most_recently_active_client() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "sizes", "agent": "shell"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    c.wait_status("default", &id, "running").await;
    let mut a = Term::open(&c, "default", &id, 0).await;
    let mut b = Term::open(&c, "default", &id, 0).await;
    // Each step waits for its answer: frames from two connections have no order.
    a.control(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    a.send(b"stty size\r").await;
    a.expect("30 100").await;
    b.control(json!({"type": "resize", "cols": 90, "rows": 25})).await;
    b.send(b"stty size\r").await;
    b.expect("25 90").await;
    // Typing makes `a` the most recent again: its size comes back.
    let seen = a.output.len();
    a.send(b"stty size\r").await;
    a.until(WAIT, "a second 30 100", |t| String::from_utf8_lossy(&t.output[seen..]).contains("30 100")).await;
}

/// The first `name` on PATH.
fn on_path(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

#[actix_web::test]
async fn a_git_killed_by_a_signal_is_named_in_the_error() {
    let dir = tempdir();
    // A `git` first on the server's PATH that kills itself (SIGKILL, printing
    // nothing) to clone a source named `doomed`, or to add a worktree.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *' clone '*doomed*|*'worktree add'*) kill -9 $$ ;;\nesac\nexec '{}' \"$@\"\n",
            on_path("git").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let server = Server::start_in(dir.path(), &[("PATH", &path)]);
    let c = server.client();

    let doomed = git_repo(dir.path(), "doomed");
    let r = c.post("/v1/organizations/default/repos", json!({"source": doomed.to_str().unwrap()})).await;
    assert_eq!((r.status, r.code()), (422, "clone_failed"), "{r:?}");
    assert_eq!(r.body["message"], "cannot clone the repository: git was killed by signal 9 (SIGKILL) and printed nothing");

    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "x"})).await;
    let failed = c.wait_status("default", t["id"].as_str().unwrap(), "failed").await;
    assert_eq!(failed["status_reason"], "git worktree add failed: git was killed by signal 9 (SIGKILL) and printed nothing");
}

#[actix_web::test]
async fn a_failed_setup_reports_its_output_as_plain_text() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    // What `npm ci` prints when it fails: colours, bold, a cleared line, a title.
    let npm = r"printf '\033]0;npm ci\007\033[1m\033[31mnpm\033[39m \033[31mERR!\033[39m\033[22m missing script: ci\033[K\n'; exit 1";
    let r = c.put("/v1/organizations/default/repos/app/setup", json!({"commands": [npm]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = c.create_task_with("default", json!({"repo": "app", "description": "y"})).await;
    let failed = c.wait_status("default", t["id"].as_str().unwrap(), "failed").await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.starts_with("setup failed (exit 1): "), "{reason:?}");
    assert!(reason.ends_with("\nnpm ERR! missing script: ci"), "{reason:?}");
    assert!(!reason.chars().any(|ch| ch.is_control() && ch != '\n'), "no escape codes or control characters: {reason:?}");
}
