//! A task's changes and their review over the API: `GET …/diff` shows what the
//! worktree has against the merge-base with its base (committed, staged,
//! unstaged, untracked, deleted, renamed, binary, symlinks as links) without
//! touching the user's index, bounded; `POST …/review` reaches the agent through
//! its terminal (one bracketed paste) or its open ACP session, and is recorded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{cli, eventually, git, git_repo, Client, Server, Term};
use crate::fake_sandbox_agent::fake_sandbox_agent_bin;
use crate::web_support::{worktree, write};

const WAIT: Duration = Duration::from_secs(30);

fn file<'a>(diff: &'a Value, path: &str) -> &'a Value {
    diff["files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap_or_else(|| panic!("{path} is not in the diff: {diff}"))
}

fn texts(f: &Value, kind: &str) -> Vec<String> {
    f["hunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["lines"].as_array().unwrap().iter())
        .filter(|l| l["kind"] == kind)
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

#[actix_rt::test]
async fn the_diff_shows_committed_staged_unstaged_and_untracked_work_and_leaves_the_index_alone() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let repo = git_repo(dir.path(), "app");
    write(&repo, "old.txt", "one\ntwo\nthree\nfour\nfive\n");
    write(&repo, "gone.txt", "bye\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "more"]);
    c.add_repo("default", &repo).await;
    let task = c.create_task("default", "app", "change things").await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/v1/organizations/default/tasks/{id}/diff");

    // Nothing changed yet: an empty diff against the base.
    let empty = c.get(&path).await;
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(empty.body["files"], json!([]));
    assert_eq!(empty.body["base_branch"], "main");
    assert_eq!(empty.body["base_commit"], empty.body["head"]);
    assert_eq!(empty.body["truncated"], false);

    let wt = worktree(&c, "default", id).await;
    // Committed on the task branch: a rename with an edit, a new file.
    git(&wt, &["mv", "old.txt", "renamed.txt"]);
    write(&wt, "renamed.txt", "one\ntwo\nTHREE\nfour\nfive\n");
    write(&wt, "committed.txt", "from a commit\n");
    git(&wt, &["add", "-A"]);
    git(&wt, &["commit", "-q", "-m", "agent work"]);
    // Staged, unstaged, deleted, untracked (in a new folder), binary, a symlink out of the worktree.
    write(&wt, "staged.txt", "staged\n");
    git(&wt, &["add", "staged.txt"]);
    write(&wt, "README.md", "hello\nworld\n");
    std::fs::remove_file(wt.join("gone.txt")).unwrap();
    write(&wt, "new dir/untracked file.txt", "untracked\n");
    std::fs::write(wt.join("blob.bin"), [0u8, 1, 2, 3, 0, 255]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", wt.join("escape")).unwrap();
    write(&wt, ".gitignore", "ignored.log\n");
    write(&wt, "ignored.log", "never shown\n");
    let status_before = git(&wt, &["status", "--porcelain", "--untracked-files=all"]);
    let index_before = std::fs::read(git_path(&wt, "index")).unwrap();

    let r = c.get(&path).await;
    assert_eq!(r.status, 200, "{r:?}");
    let d = &r.body;
    assert_ne!(d["base_commit"], d["head"]);
    let renamed = file(d, "renamed.txt");
    assert_eq!((renamed["status"].as_str(), renamed["old_path"].as_str()), (Some("renamed"), Some("old.txt")));
    assert_eq!(texts(renamed, "del"), ["three"]);
    assert_eq!(texts(renamed, "add"), ["THREE"]);
    let add = renamed["hunks"][0]["lines"].as_array().unwrap().iter().find(|l| l["kind"] == "add").unwrap();
    assert_eq!((add["old_no"].clone(), add["new_no"].clone()), (Value::Null, json!(3)));
    assert_eq!(file(d, "committed.txt")["status"], "added");
    assert_eq!(texts(file(d, "staged.txt"), "add"), ["staged"]);
    let readme = file(d, "README.md");
    assert_eq!((readme["status"].as_str(), readme["additions"].as_u64(), readme["deletions"].as_u64()), (Some("modified"), Some(1), Some(0)));
    assert_eq!(texts(readme, "add"), ["world"]);
    let gone = file(d, "gone.txt");
    assert_eq!((gone["status"].as_str(), texts(gone, "del")), (Some("deleted"), vec!["bye".to_string()]));
    let untracked = file(d, "new dir/untracked file.txt");
    assert_eq!((untracked["status"].as_str(), texts(untracked, "add")), (Some("added"), vec!["untracked".to_string()]));
    let blob = file(d, "blob.bin");
    assert_eq!((blob["binary"].as_bool(), blob["additions"].clone(), blob["hunks"].clone()), (Some(true), Value::Null, json!([])));
    // The link is shown as a link: its target, never the file it points at.
    let link = file(d, "escape");
    assert_eq!((link["symlink"].as_bool(), link["status"].as_str()), (Some(true), Some("added")));
    assert_eq!(texts(link, "add"), ["/etc/passwd"]);
    assert!(!r.text.contains("root:"), "the link was followed");
    assert!(d["files"].as_array().unwrap().iter().all(|f| f["path"] != "ignored.log"), "ignored files are not shown");
    let sum = |k: &str| d["files"].as_array().unwrap().iter().filter_map(|f| f[k].as_u64()).sum::<u64>();
    assert_eq!((d["additions"].as_u64(), d["deletions"].as_u64()), (Some(sum("additions")), Some(sum("deletions"))));

    // The user's index and status are exactly as they were.
    assert_eq!(git(&wt, &["status", "--porcelain", "--untracked-files=all"]), status_before);
    assert_eq!(std::fs::read(git_path(&wt, "index")).unwrap(), index_before);
    assert!(!git(&wt, &["ls-files"]).contains("untracked"));

    // Another organization's token cannot read it.
    let other = c.post("/v1/organizations", json!({"name": "other"})).await;
    assert_eq!(other.status, 201);
    let token = c.post("/v1/organizations/other/tokens", json!({"name": "t"})).await.body["token"].as_str().unwrap().to_string();
    let theirs = c.with_token(Some(&token)).get(&path).await;
    assert_eq!(theirs.status, 403, "{theirs:?}");
    assert_eq!(c.get("/v1/organizations/default/tasks/00000000/diff").await.code(), "task_not_found");

    // Killed: no worktree, a clear 409.
    assert_eq!(c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await.status, 200);
    let none = c.get(&path).await;
    assert_eq!((none.status, none.code()), (409, "no_worktree"), "{none:?}");
}

/// `git rev-parse --git-path` in a worktree, absolute.
fn git_path(wt: &Path, name: &str) -> PathBuf {
    PathBuf::from(git(wt, &["rev-parse", "--path-format=absolute", "--git-path", name]))
}

#[actix_rt::test]
async fn a_huge_diff_is_bounded_and_a_10_000_line_change_is_shown_whole() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let repo = git_repo(dir.path(), "app");
    c.add_repo("default", &repo).await;
    let task = c.create_task("default", "app", "big").await;
    let id = task["id"].as_str().unwrap();
    let wt = worktree(&c, "default", id).await;
    // 10,000 lines over 10 files: shown whole.
    for f in 0..10 {
        let text: String = (0..1000).map(|i| format!("file {f} line {i}\n")).collect();
        write(&wt, &format!("src/f{f}.txt"), &text);
    }
    let r = c.get(&format!("/v1/organizations/default/tasks/{id}/diff")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["additions"].as_u64(), r.body["truncated"].as_bool()), (Some(10_000), Some(false)));
    let shown: usize = r.body["files"].as_array().unwrap().iter().map(|f| texts(f, "add").len()).sum();
    assert_eq!(shown, 10_000);

    // One file over the per-file limit: listed, counted, no lines.
    let limit = r.body["limits"]["max_file_lines"].as_u64().unwrap();
    let text: String = (0..=limit).map(|i| format!("{i}\n")).collect();
    write(&wt, "huge.txt", &text);
    let r = c.get(&format!("/v1/organizations/default/tasks/{id}/diff")).await;
    let huge = file(&r.body, "huge.txt");
    assert_eq!((huge["too_large"].as_bool(), huge["additions"].as_u64(), huge["hunks"].clone()), (Some(true), Some(limit + 1), json!([])));
    assert_eq!(file(&r.body, "src/f0.txt")["too_large"], false, "the other files keep their lines");
}

/// The terminal output of the task's agent, until it holds every needle.
async fn terminal_shows(c: &Client, task: &str, needles: &[&str]) -> String {
    let mut term = Term::open(c, "default", task, 0).await;
    let wanted: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
    term.until(WAIT, &format!("{needles:?}"), move |t| wanted.iter().all(|n| t.text().contains(n.as_str()))).await;
    term.text()
}

#[actix_rt::test]
async fn a_review_reaches_the_agent_s_terminal_as_one_paste_and_is_recorded() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let repo = git_repo(dir.path(), "app");
    c.add_repo("default", &repo).await;
    let task = c.create_task("default", "app", "review me").await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/v1/organizations/default/tasks/{id}/review");
    let body = json!({
        "comments": [
            {"path": "src/a.rs", "line": 12, "side": "new", "code": "let x = 1;", "text": "Name it count"},
            {"path": "README.md", "line": 1, "text": "Say what it does\u{1b}[201~"}
        ],
        "message": "Nearly there"
    });
    let r = c.post(&path, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["delivered_via"].as_str(), r.body["session"].clone(), r.body["comments"].as_u64()), (Some("terminal"), Value::Null, Some(2)));
    // The fake agent echoes each line it reads: the whole message arrived, in one paste.
    let out = terminal_shows(&c, id, &["\x1b[200~Review of your changes: 2 comments", "1. src/a.rs:12", "> let x = 1;", "Name it count", "2. README.md:1", "Say what it does[201~", "Nearly there\x1b[201~"]).await;
    assert_eq!(out.matches("\x1b[201~").count(), 1, "a comment cannot end the paste early: {out:?}");
    let events = c.events_since("default", 0).await;
    let sent = events.iter().find(|e| e["kind"] == "task.review_sent").expect("task.review_sent");
    assert_eq!(sent["id"], r.body["event_id"]);
    assert_eq!(sent["task"], id);
    assert_eq!(sent["data"], json!({"via": "terminal", "session": null, "comments": 2, "files": ["src/a.rs", "README.md"], "chars": r.body["text"].as_str().unwrap().chars().count()}));

    // Refused before anything is sent.
    for (bad, needle) in [
        (json!({"comments": []}), "at least one"),
        (json!({"comments": [{"path": "../x", "line": 1, "text": "t"}]}), ".."),
        (json!({"comments": [{"path": "/etc/passwd", "line": 1, "text": "t"}]}), "relative"),
        (json!({"comments": [{"path": "a", "line": 0, "text": "t"}]}), "start at 1"),
        (json!({"comments": [{"path": "a", "line": 1, "text": "t", "side": "left"}]}), "side"),
        (json!({"comments": vec![json!({"path": "a", "line": 1, "text": "t"}); 101]}), "at most 100"),
    ] {
        let r = c.post(&path, bad).await;
        assert_eq!((r.status, r.code()), (422, "invalid_review"), "{r:?}");
        assert!(r.body["message"].as_str().unwrap().contains(needle), "{r:?}");
    }
    assert_eq!(c.post(&path, json!({"comments": [{"path": "a", "line": 1}]})).await.code(), "invalid_body");

    // The CLI: comments from arguments, and JSON from stdin.
    let (code, out, err) = cli(&server, &["--token", &server.token, "review", id, "--comment", "src/b.rs:7:Use a constant", "--message", "From the CLI"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("terminal") && out.contains("1 comment"), "{out}");
    let (code, out, err) = cli(&server, &["--token", &server.token, "review", id, "--comment", "src/b.rs:7:x", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).expect("--json prints the answer");
    assert_eq!(answer["delivered_via"], "terminal");
    terminal_shows(&c, id, &["1. src/b.rs:7", "Use a constant", "From the CLI"]).await;
    // A whole request on stdin.
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["--url", &server.url, "--token", &server.token, "review", id, "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(br#"{"comments": [{"path": "lib/c.rs", "line": 9, "side": "old", "text": "Keep this check"}]}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    terminal_shows(&c, id, &["1. lib/c.rs:9 (a deleted line, numbered in the base)", "Keep this check"]).await;
    let (code, _, err) = cli(&server, &["--token", &server.token, "review", id, "--comment", "nocolon"]);
    assert_ne!(code, 0);
    assert!(err.contains("path:line:text"), "{err}");

    // No running agent: a clear 409, and no event.
    assert_eq!(c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await.status, 200);
    let r = c.post(&path, json!({"comments": [{"path": "a", "line": 1, "text": "t"}]})).await;
    assert_eq!((r.status, r.code()), (409, "agent_not_running"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("killed"), "{r:?}");
    let count = c.events_since("default", 0).await.iter().filter(|e| e["kind"] == "task.review_sent").count();
    assert_eq!(count, 4);
}

#[actix_rt::test]
async fn a_review_goes_to_the_open_session_as_a_prompt() {
    let bin = fake_sandbox_agent_bin();
    let (server, dir) = Server::start(&[("KILN_SANDBOX_AGENT_BIN", bin.to_str().unwrap())]);
    let c = server.client();
    let repo = git_repo(dir.path(), "app");
    c.add_repo("default", &repo).await;
    let task = c.create_task("default", "app", "sessions").await;
    let id = task["id"].as_str().unwrap();
    let sessions = format!("/v1/organizations/default/tasks/{id}/sessions");
    let r = c.post(&sessions, json!({"agent": "fake"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let sid = r.body["id"].as_str().unwrap().to_string();

    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/review"), json!({"comments": [{"path": "src/lib.rs", "line": 3, "code": "fn f() {}", "text": "Document f"}]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["delivered_via"].as_str(), r.body["session"].as_str()), (Some("session"), Some(sid.as_str())));
    let text = r.body["text"].as_str().unwrap().to_string();
    assert!(text.contains("1. src/lib.rs:3") && text.contains("> fn f() {}") && text.contains("Document f"), "{text}");
    // The session's transcript has it as the user's prompt.
    eventually(WAIT, "the review in the transcript", || async {
        let t = c.get(&format!("{sessions}/{sid}/transcript")).await;
        let items = t.body["transcript"]["items"].as_array().cloned().unwrap_or_default();
        items.iter().any(|i| i["type"] == "user" && i["text"] == text.as_str()).then_some(())
    })
    .await;
    let events = c.events_since("default", 0).await;
    let sent = events.iter().find(|e| e["kind"] == "task.review_sent").expect("task.review_sent");
    assert_eq!((sent["data"]["via"].as_str(), sent["data"]["session"].as_str()), (Some("session"), Some(sid.as_str())));

    // Closed: the terminal again.
    assert_eq!(c.delete(&format!("{sessions}/{sid}")).await.status, 200);
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/review"), json!({"comments": [{"path": "a", "line": 1, "text": "t"}]})).await;
    assert_eq!(r.body["delivered_via"], "terminal", "{r:?}");
}
