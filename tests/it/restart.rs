//! Restart: everything persisted is there after a clean stop or a SIGKILL, and a
//! stream client resuming with `since` misses nothing.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn state_survives_a_clean_stop_and_a_kill() {
    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    c.post("/v1/organizations", json!({"name": "acme"})).await;
    c.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push(c.create_task("acme", "app", &format!("task {i}")).await["id"].as_str().unwrap().to_string());
    }
    let token = c.post("/v1/organizations/acme/tokens", json!({"name": "ci"})).await.body["token"].as_str().unwrap().to_string();
    let events_before = c.events_since("acme", 0).await;
    let admin_token = server.token.clone();

    let status = server.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {}", server.log());
    server.restart();
    assert_eq!(server.token, admin_token, "the admin token is kept");
    let c = server.client();
    let listed = c.get("/v1/organizations/acme/tasks").await;
    let mut got: Vec<String> = listed.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    got.sort();
    tasks.sort();
    assert_eq!(got, tasks);
    // Every event from before is there, unchanged. Pollers (the branch poller's
    // `branch.updated`) may have added more since the snapshot; those come after.
    let events_after = c.events_since("acme", 0).await;
    assert!(events_after.len() >= events_before.len());
    assert_eq!(events_after[..events_before.len()], events_before[..]);
    assert_eq!(c.with_token(Some(&token)).get("/v1/organizations/acme/repos").await.status, 200, "org tokens survive");

    // Ctrl-C behaves the same.
    assert_eq!(server.signal(libc::SIGINT).code(), Some(0), "Ctrl-C exits 0");
    server.restart();
    let c = server.client();

    // SIGKILL: acknowledged writes are still there.
    let t = c.create_task("acme", "app", "right before the kill").await;
    server.kill();
    server.restart();
    let c = server.client();
    let r = c.get(&format!("/v1/organizations/acme/tasks/{}", t["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 200);
    let kinds: Vec<_> = c.events_since("acme", 0).await.into_iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "task.created").count(), 6, "the acknowledged event was not lost");
    // A second server on the same data dir is refused while the first runs.
    let second = std::process::Command::new(BIN)
        .arg("serve")
        .env("HOME", dir.path())
        .env("KILN_DATA_DIR", server.data_dir())
        .env("KILN_SERVER__BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already using"), "{}", String::from_utf8_lossy(&second.stderr));
}

#[actix_web::test]
async fn a_stream_client_resumes_across_a_restart_without_missing_anything() {
    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let mut ws = c.ws("/v1/organizations/default/stream?since=0").await;
    for i in 0..3 {
        c.create_task("default", "app", &format!("a{i}")).await;
    }
    let first = c.events_since("default", 0).await;
    let seen = ws.events(first.len(), Duration::from_secs(30)).await;
    let last = seen.last().unwrap()["id"].as_i64().unwrap();

    // The server goes down; the stream is closed first, quickly, with where to resume.
    let started = std::time::Instant::now();
    let status = server.stop();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "an open stream does not hold up shutdown");
    match ws.next(Duration::from_secs(30)).await {
        WsItem::Close(Some(reason)) => {
            assert_eq!(reason.code, awc::ws::CloseCode::Restart);
            assert!(reason.description.unwrap_or_default().contains(&format!("since={last}")));
        }
        other => panic!("expected a restart close, got {other:?}"),
    }
    server.restart();
    let c = server.client();
    // Events happen before the client is back.
    for i in 0..4 {
        c.create_task("default", "app", &format!("b{i}")).await;
    }
    let mut ws = c.ws(&format!("/v1/organizations/default/stream?since={last}")).await;
    c.create_task("default", "app", "live").await;
    let all = c.events_since("default", 0).await;
    let missed: Vec<_> = all.iter().filter(|e| e["id"].as_i64().unwrap() > last).cloned().collect();
    assert!(missed.iter().filter(|e| e["kind"] == "task.created").count() == 5, "{missed:?}");
    let got = ws.events(missed.len(), Duration::from_secs(30)).await;
    assert_eq!(got, missed);
}

#[actix_web::test]
async fn migrate_runs_alone() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let run = || {
        std::process::Command::new(BIN)
            .args(["migrate", "--data-dir", data.to_str().unwrap()])
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains(&format!("applied {} migrations", crate::common::migration_count())));
    assert!(data.join("kiln.db").exists());
    let second = run();
    assert!(String::from_utf8_lossy(&second.stdout).contains("applied 0 migrations"));
    // A server on the migrated database starts and serves.
    let server = Server::start_in(dir.path(), &[]);
    assert_eq!(server.client().get("/v1/organizations").await.status, 200);
}

/// A data dir too long for a task's terminal socket is refused at boot, with the
/// limit and the lengths in the message (it used to be found at the first task,
/// which then failed in provisioning); one byte shorter boots.
#[test]
fn serve_refuses_a_data_dir_too_long_for_the_terminal_sockets() {
    let dir = tempdir();
    // `<data>/sandboxes/<8-char id>/host.sock` adds 29 bytes; 100 is the limit.
    let base = dir.path().display().to_string();
    let data = |len: usize| format!("{base}/{}", "d".repeat(len - base.len() - 1));
    // Answers the exit code, or `None` when it started listening (then it is killed).
    let run = |data_dir: &str| {
        use std::io::BufRead;
        let mut child = std::process::Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("KILN_DATA_DIR", data_dir)
            .env("KILN_SERVER__BIND", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if rx.try_recv().is_ok_and(|l| l.starts_with("kiln listening on")) {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new());
            }
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                return (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string());
            }
            assert!(std::time::Instant::now() < deadline, "kiln serve neither refused nor started");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let too_long = data(72);
    let (code, stderr) = run(&too_long);
    assert_eq!(code, Some(1), "kiln serve started with a data dir of 72 bytes: {stderr}");
    assert!(stderr.contains(&too_long) && stderr.contains("101 bytes") && stderr.contains("at most 100 bytes"), "{stderr}");
    assert!(stderr.contains("at most 71 bytes (72 now)"), "{stderr}");
    assert!(!std::path::Path::new(&too_long).exists(), "nothing was made before the refusal");
    // 71 bytes: it boots.
    let (code, stderr) = run(&data(71));
    assert_eq!(code, None, "a data dir of 71 bytes is fine: {stderr}");
}
