//! The `kiln` CLI against a real server.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(out.0, 0, "stdout: {}\nstderr: {}", out.1, out.2);
    out.1
}

#[actix_web::test]
async fn walk_through() {
    let (server, dir) = Server::start(&[]);
    let src = git_repo(dir.path(), "app");

    let out = ok(cli(&server, &["repo", "add", src.to_str().unwrap()]));
    assert!(out.starts_with("registered `app`"), "{out}");
    // The same source again is not a new registration, and the CLI says so.
    let out = ok(cli(&server, &["repo", "add", src.to_str().unwrap()]));
    assert!(out.starts_with("already registered `app`"), "{out}");
    let repos: Value = serde_json::from_str(&ok(cli(&server, &["repo", "list", "--json"]))).unwrap();
    assert_eq!(repos[0]["name"], "app");
    let table = ok(cli(&server, &["repo", "list"]));
    assert!(table.starts_with("NAME"), "{table}");

    let out = ok(cli(&server, &["create", "--repo", "app", "Fix", "the", "flaky", "test"]));
    assert!(out.contains("kiln/fix-the-flaky-test-"), "{out}");
    let created: Value =
        serde_json::from_str(&ok(cli(&server, &["create", "-r", "app", "--title", "Second", "--json", "do it"]))).unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let tasks: Value = serde_json::from_str(&ok(cli(&server, &["list", "--json"]))).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 2);
    let table = ok(cli(&server, &["list"]));
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("STATUS") && header.contains("BRANCH"), "{table}");
    assert_eq!(table.lines().count(), 3);

    server.client().wait_status("default", &id, "running").await;
    let out = ok(cli(&server, &["show", &id]));
    assert!(out.contains("Second") && out.contains("running"), "{out}");
    let out = ok(cli(&server, &["kill", &id]));
    assert!(out.contains("killed") && out.contains("no uncommitted work to save"), "{out}");
    let killed: Value = serde_json::from_str(&ok(cli(&server, &["list", "--status", "killed", "--json"]))).unwrap();
    assert_eq!(killed.as_array().unwrap().len(), 1);

    let events = ok(cli(&server, &["events", "--json"]));
    let kinds: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"task.created".to_string()) && kinds.contains(&"task.status_changed".to_string()), "{kinds:?}");
    let human = ok(cli(&server, &["events", "--kind", "task.created"]));
    assert_eq!(human.lines().count(), 2, "{human}");
}

#[actix_web::test]
async fn organizations_and_tokens() {
    let (server, _dir) = Server::start(&[]);
    let out = ok(cli(&server, &["organization", "create", "acme", "--display-name", "Acme"]));
    assert!(out.contains("acme"));
    let orgs: Value = serde_json::from_str(&ok(cli(&server, &["organization", "list", "--json"]))).unwrap();
    assert_eq!(orgs.as_array().unwrap().len(), 2);

    // `use` sets the default for later commands.
    ok(cli(&server, &["organization", "use", "acme"]));
    let config = std::fs::read_to_string(server.dir.join("config/kiln/config.toml")).unwrap();
    assert!(config.contains("default_organization = \"acme\""), "{config}");
    let table = ok(cli(&server, &["organization", "list"]));
    assert!(table.contains("acme*"), "{table}");

    let created: Value = serde_json::from_str(&ok(cli(&server, &["token", "create", "ci", "--json"]))).unwrap();
    let secret = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let list: Value = serde_json::from_str(&ok(cli(&server, &["token", "list", "--json"]))).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    // The org token works for its own organization through the CLI...
    let repos = cli(&server, &["--token", &secret, "repo", "list", "--json"]);
    assert_eq!(repos.0, 0, "{repos:?}");
    // ...but not for another, with a clear message and a non-zero exit.
    let other = cli(&server, &["--token", &secret, "-o", "default", "repo", "list"]);
    assert_eq!(other.0, 1);
    assert!(other.2.contains("403") && other.2.contains("acme"), "{}", other.2);
    ok(cli(&server, &["token", "revoke", &id]));
    let revoked = cli(&server, &["--token", &secret, "repo", "list"]);
    assert_eq!(revoked.0, 1);
    assert!(revoked.2.contains("401"), "{}", revoked.2);
}

#[actix_web::test]
async fn errors_are_clear_and_exit_non_zero() {
    let (server, dir) = Server::start(&[]);
    let out = cli(&server, &["repo", "add", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.0, 1);
    assert!(out.2.starts_with("error: ") && out.2.contains("repo_path_not_found"), "{}", out.2);
    let out = cli(&server, &["create", "-r", "nope", "x"]);
    assert_eq!(out.0, 1);
    assert!(out.2.contains("no repository `nope`"), "{}", out.2);
    // Nothing listening.
    let out = std::process::Command::new(BIN)
        .args(["--url", "http://127.0.0.1:9", "--token", "x", "list"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `kiln serve` running?"));
    // A config with a typo is refused before anything runs.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nbnd = 1\n").unwrap();
    let out = cli(&server, &["--config", bad.to_str().unwrap(), "list"]);
    assert_eq!(out.0, 2);
    assert!(out.2.contains("bnd"), "{}", out.2);
}

/// `kiln events --follow` with a token that gets revoked stops at once with a
/// clear error: it does not announce a reconnect that can only be refused.
#[actix_web::test]
async fn events_follow_ends_when_its_token_is_revoked() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let created: Value = serde_json::from_str(&ok(cli(&server, &["token", "create", "watcher", "--json"]))).unwrap();
    let (secret, id) = (created["token"].as_str().unwrap(), created["id"].as_str().unwrap());
    let mut child = std::process::Command::new(BIN)
        .args(["--url", &server.url, "--token", secret, "events", "--follow"])
        .env("HOME", &server.dir)
        .env("KILN_DATA_DIR", server.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the follower's stream is open", || {
        let c = c.clone();
        async move {
            let r = c.get("/metrics").await;
            r.text.lines().any(|l| l.strip_prefix("kiln_stream_subscribers ").is_some_and(|v| v.trim() != "0")).then_some(())
        }
    })
    .await;
    ok(cli(&server, &["token", "revoke", id]));
    let status = eventually(Duration::from_secs(10), "the follower ends", || {
        let done = child.try_wait().unwrap();
        async move { done }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the token was revoked"), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
}

/// `kiln attach` with a token that gets revoked ends with an error and a non-zero
/// exit, like `events --follow`, not as if the user had detached.
#[actix_web::test]
async fn attach_ends_with_an_error_when_its_token_is_revoked() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "watched").await["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let created: Value = serde_json::from_str(&ok(cli(&server, &["token", "create", "viewer", "--json"]))).unwrap();
    let (secret, id) = (created["token"].as_str().unwrap(), created["id"].as_str().unwrap());
    let mut child = std::process::Command::new(BIN)
        .args(["--url", &server.url, "--token", secret, "attach", &task])
        .env("HOME", &server.dir)
        .env("KILN_DATA_DIR", server.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Attached once the replayed scrollback shows the agent's banner.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("fake-agent ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("attach replays the terminal");
    ok(cli(&server, &["token", "revoke", id]));
    let status = eventually(Duration::from_secs(10), "attach ends", || {
        let done = child.try_wait().unwrap();
        async move { done }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the token was revoked"), "{stderr}");
}

/// `kiln list | head -1`: a reader that closes the pipe early ends the command
/// quietly (SIGPIPE, as `ls` does), never with a panic and a backtrace.
#[actix_web::test]
async fn a_closed_stdout_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (server, _dir) = Server::start(&[]);
    for args in [&["organization", "list"][..], &["list", "--json"], &["events"]] {
        // The read end is closed before the command starts: its first print fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(BIN)
            .args(["--url", &server.url])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &server.dir)
            .env("XDG_CONFIG_HOME", server.dir.join("config"))
            .env("KILN_DATA_DIR", server.data_dir())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?} {stderr}", out.status);
    }
}

#[actix_web::test]
async fn events_follow_streams_new_events() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let mut child = std::process::Command::new(BIN)
        .args(["--url", &server.url, "events", "--follow", "--json", "--kind", "task."])
        .env("HOME", &server.dir)
        .env("KILN_DATA_DIR", server.data_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Keep creating until the follower shows one (it may still be connecting).
    let mut created = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let line = loop {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "events --follow printed nothing");
        created.push(c.create_task("default", "app", "followed").await["id"].as_str().unwrap().to_string());
    };
    let _ = child.kill();
    let _ = child.wait();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "task.created");
    assert!(created.contains(&event["task"].as_str().unwrap().to_string()));
}

#[actix_web::test]
async fn repository_setup_settings_and_provider_profiles() {
    use std::io::Write;
    let (server, dir) = Server::start(&[]);
    ok(cli(&server, &["repo", "add", git_repo(dir.path(), "app").to_str().unwrap()]));
    ok(cli(&server, &["repo", "setup", "app", "--command", "npm ci", "--command", "make", "--copy", ".env"]));
    let repo = server.client().get("/v1/organizations/default/repos/app").await.body;
    assert_eq!(repo["setup"]["commands"], serde_json::json!(["npm ci", "make"]));
    assert_eq!(repo["setup"]["copy"], serde_json::json!([".env"]));

    let out: Value = serde_json::from_str(&ok(cli(
        &server,
        &["repo", "settings", "app", "--github", "acme/app", "--on-idle", "commit,push", "--ci-feedback", "2", "--json"],
    )))
    .unwrap();
    assert_eq!(out["github"], "acme/app");
    assert_eq!(out["automation"]["on_idle"]["push"], true);
    assert_eq!(out["automation"]["on_idle"]["draft_pr"], false);
    // `--ci-feedback` sets the ci_failed reaction (the older on_ci_failure is cleared).
    assert_eq!(out["reactions"]["ci_failed"], serde_json::json!({"enabled": true, "max_attempts": 2}));
    assert_eq!(out["automation"]["on_ci_failure"]["enabled"], false);
    let out: Value = serde_json::from_str(&ok(cli(
        &server,
        &["repo", "settings", "app", "--reactions", "ci_failed,merge_conflict,approved_and_green", "--bot-logins", "renovate,ci-helper",
          "--sync-on-conflict", "true", "--merge-when-green", "rebase", "--stuck-after", "600", "--json"],
    )))
    .unwrap();
    let r = &out["reactions"];
    assert_eq!((r["ci_failed"]["enabled"].as_bool(), r["ci_failed"]["max_attempts"].as_u64()), (Some(true), Some(2)));
    assert_eq!((r["merge_conflict"]["enabled"].as_bool(), r["merge_conflict"]["auto_sync"].as_bool()), (Some(true), Some(true)));
    assert_eq!(r["changes_requested"]["enabled"], false);
    assert_eq!(r["bot_logins"], serde_json::json!(["renovate", "ci-helper"]));
    assert_eq!((r["approved_and_green"]["merge"].as_bool(), r["approved_and_green"]["method"].as_str()), (Some(true), Some("rebase")));
    assert_eq!((r["agent_stuck"]["silent_secs"].as_u64(), r["agent_stuck"]["idle_without_pr_secs"].as_u64()), (Some(600), Some(600)));
    let (code, _, err) = cli(&server, &["repo", "settings", "app", "--reactions", "ci_failed,nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("--reactions takes"), "{err}");
    // Flags not given keep their value.
    let out: Value = serde_json::from_str(&ok(cli(&server, &["repo", "settings", "app", "--keep-after-merge", "true", "--json"]))).unwrap();
    assert_eq!(out["github"], "acme/app");
    assert_eq!(out["keep_after_merge"], true);
    let bad = cli(&server, &["repo", "settings", "app", "--on-idle", "dance"]);
    assert_eq!(bad.0, 1);

    // A secret is read from standard input, never from the command line.
    let mut child = std::process::Command::new(BIN)
        .args(["--url", &server.url, "provider", "set", "github", "--setting", "api_url=http://127.0.0.1:9", "--secret", "token"])
        .env("HOME", &server.dir)
        .env("KILN_DATA_DIR", server.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ghp_from_stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let shown = ok(cli(&server, &["provider", "show", "github"]));
    assert!(shown.contains("token") && shown.contains("127.0.0.1:9") && !shown.contains("ghp_from_stdin"), "{shown}");
    ok(cli(&server, &["provider", "set", "github", "--remove-secret", "token"]));
    let shown = ok(cli(&server, &["provider", "show", "github"]));
    assert!(!shown.contains("token") && shown.contains("127.0.0.1:9"), "the config is kept: {shown}");
}
