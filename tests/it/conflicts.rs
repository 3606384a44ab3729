//! Conflict prediction across parallel tasks (`GET …/repos/{repo}/conflicts`,
//! `kiln conflicts`, `task.conflict_predicted` / `task.conflict_cleared`),
//! against real repositories: true positives (committed and uncommitted work),
//! true negatives (the same file in other places, other files), a task against
//! a base that moved, clearing, one event per change, and other organizations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
const SHARED: &str = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n";

/// A bare origin with `main`: `shared.txt` (ten lines) and `other.txt`;
/// answers (bare, a scratch clone to push upstream changes from).
fn origin(dir: &Path) -> (PathBuf, PathBuf) {
    let bare = dir.join("app.git");
    git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    let work = dir.join("upstream");
    git(dir, &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]);
    git(&work, &["checkout", "-q", "-b", "main"]);
    std::fs::write(work.join("shared.txt"), SHARED).unwrap();
    std::fs::write(work.join("other.txt"), "other\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "main"]);
    (bare, work)
}

/// `SHARED` with line `n` (1-based) replaced.
fn with_line(n: usize, text: &str) -> String {
    SHARED.lines().enumerate().map(|(i, l)| format!("{}\n", if i + 1 == n { text } else { l })).collect()
}

async fn worktree(c: &Client, task: &str) -> PathBuf {
    let r = c.get(&format!("/v1/organizations/default/tasks/{task}")).await;
    PathBuf::from(r.body["sandbox"]["path"].as_str().expect("the admin sees the worktree"))
}

async fn conflicts(c: &Client) -> Vec<Value> {
    let r = c.get("/v1/organizations/default/repos/app/conflicts").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["items"].as_array().cloned().unwrap()
}

/// The conflict events so far, as (task, kind, other, files).
async fn conflict_events(c: &Client) -> Vec<(String, String, String, Value, Value)> {
    c.events_since("default", 0)
        .await
        .into_iter()
        .filter(|e| e["kind"].as_str().unwrap_or("").starts_with("task.conflict_"))
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (s(&e["task"]), s(&e["kind"]), s(&e["data"]["other"]), e["data"]["files"].clone(), e["data"]["reason"].clone())
        })
        .collect()
}

/// How many polls the repository's branch poller has made.
async fn polls(c: &Client) -> u64 {
    let r = c.get("/admin/pollers").await;
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "org/default/repo/app/branch-sync")
        .and_then(|p| p["polls"].as_u64())
        .unwrap_or(0)
}

/// Waits until the branch poller has finished `n` more polls than now.
async fn more_polls(c: &Client, n: u64) {
    let from = polls(c).await;
    eventually(WAIT, "the branch poller polls again", || async { (polls(c).await >= from + n).then_some(()) }).await;
}

#[actix_web::test]
async fn tasks_editing_the_same_lines_are_predicted_to_conflict_and_others_are_not() {
    let dir = tempdir();
    let server = Server::start_in(dir.path(), &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "3600")]);
    let c = server.client();
    let (bare, _) = origin(dir.path());
    c.add_repo("default", &bare).await;
    let mut ids = Vec::new();
    for what in ["committed edit of line two", "uncommitted edit of line two", "edit of line nine", "edit of other.txt"] {
        ids.push(c.create_task("default", "app", what).await["id"].as_str().unwrap().to_string());
    }
    let (a, b, nine, other) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    // a commits its line two; b leaves its own line two uncommitted; `nine`
    // changes another region of the same file and adds a file; `other` touches
    // only another file.
    let wa = worktree(&c, a).await;
    std::fs::write(wa.join("shared.txt"), with_line(2, "two, as a says")).unwrap();
    git(&wa, &["commit", "-q", "-am", "a's line two"]);
    let wb = worktree(&c, b).await;
    std::fs::write(wb.join("shared.txt"), with_line(2, "two, as b says")).unwrap();
    let w9 = worktree(&c, nine).await;
    std::fs::write(w9.join("shared.txt"), with_line(9, "nine, as nine says")).unwrap();
    std::fs::write(w9.join("new.txt"), "new\n").unwrap();
    let wo = worktree(&c, other).await;
    std::fs::write(wo.join("other.txt"), "changed\n").unwrap();
    git(&wo, &["commit", "-q", "-am", "other"]);

    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let found = eventually(WAIT, "a and b predicted to conflict", || async {
        let items = conflicts(&c).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(found.len(), 1, "only a and b conflict: {found:?}");
    let pair = &found[0];
    assert_eq!(pair["task"], json!(first));
    assert_eq!(pair["other"], json!(second));
    assert_eq!(pair["files"], json!(["shared.txt"]));
    assert!(pair["task_branch"].as_str().unwrap().starts_with("kiln/"));
    assert!(pair["since"].as_i64().unwrap() > 0);

    // Said once on each side, and not again while nothing changes.
    let expected_events = |kind: &str| {
        let mut v = vec![(a.clone(), kind.to_string(), b.clone()), (b.clone(), kind.to_string(), a.clone())];
        v.sort();
        v
    };
    let said = |events: &[(String, String, String, Value, Value)], kind: &str| {
        let mut v: Vec<_> = events.iter().filter(|e| e.1 == kind).map(|e| (e.0.clone(), e.1.clone(), e.2.clone())).collect();
        v.sort();
        v
    };
    let events = eventually(WAIT, "both predicted events", || async {
        let events = conflict_events(&c).await;
        (said(&events, "task.conflict_predicted").len() >= 2).then_some(events)
    })
    .await;
    assert_eq!(said(&events, "task.conflict_predicted"), expected_events("task.conflict_predicted"));
    assert!(events.iter().all(|e| e.3 == json!(["shared.txt"])), "{events:?}");
    // Edit b's uncommitted line again (the same file count, new content): the
    // conflict stays the same conflict, nothing new is said.
    std::fs::write(wb.join("shared.txt"), with_line(2, "two, as b says now")).unwrap();
    more_polls(&c, 4).await;
    assert_eq!(conflict_events(&c).await.len(), 2, "no event while the conflict is unchanged");
    assert_eq!(conflicts(&c).await.len(), 1);

    // The CLI shows the same.
    let (code, out, err) = cli(&server, &["conflicts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(first.as_str()) && out.contains(second.as_str()) && out.contains("shared.txt"), "{out}");
    let (code, out, err) = cli(&server, &["conflicts", "--repo", "app", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["repo"], "app");
    assert_eq!(listed[0]["files"], json!(["shared.txt"]));

    // b gives its line back: cleared once on each side, as resolved.
    std::fs::write(wb.join("shared.txt"), SHARED).unwrap();
    let events = eventually(WAIT, "the conflict cleared", || async {
        let events = conflict_events(&c).await;
        (said(&events, "task.conflict_cleared").len() >= 2).then_some(events)
    })
    .await;
    assert_eq!(said(&events, "task.conflict_cleared"), expected_events("task.conflict_cleared"));
    assert!(events.iter().filter(|e| e.1 == "task.conflict_cleared").all(|e| e.4 == "resolved"), "{events:?}");
    assert!(conflicts(&c).await.is_empty());
    more_polls(&c, 3).await;
    assert_eq!(conflict_events(&c).await.len(), 4, "nothing more is said");
    let (code, out, _) = cli(&server, &["conflicts"]);
    assert_eq!((code, out.trim()), (0, "no conflicts predicted"));
}

#[actix_web::test]
async fn a_task_conflicts_with_its_base_once_the_base_moves_and_clears_when_it_finishes() {
    let dir = tempdir();
    let server = Server::start_in(dir.path(), &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "1")]);
    let c = server.client();
    let (bare, upstream) = origin(dir.path());
    c.add_repo("default", &bare).await;
    let task = c.create_task("default", "app", "edit line five").await["id"].as_str().unwrap().to_string();
    let w = worktree(&c, &task).await;
    std::fs::write(w.join("shared.txt"), with_line(5, "five, as the task says")).unwrap();
    more_polls(&c, 3).await;
    assert!(conflicts(&c).await.is_empty(), "the base has not moved: nothing conflicts");

    // Someone merges another line five into main.
    std::fs::write(upstream.join("shared.txt"), with_line(5, "five, as main says")).unwrap();
    git(&upstream, &["commit", "-q", "-am", "main's line five"]);
    git(&upstream, &["push", "-q", "origin", "main"]);
    let found = eventually(WAIT, "the task predicted to conflict with main", || async {
        let items = conflicts(&c).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["task"], json!(task));
    assert_eq!(found[0]["other"], "base");
    assert_eq!(found[0]["other_branch"], "main");
    assert_eq!(found[0]["files"], json!(["shared.txt"]));
    let events = conflict_events(&c).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].0.as_str(), events[0].1.as_str(), events[0].2.as_str()), (task.as_str(), "task.conflict_predicted", "base"));

    // The task ends: its conflict goes with it.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/archive"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    eventually(WAIT, "the conflict cleared", || async { conflicts(&c).await.is_empty().then_some(()) }).await;
    let events = conflict_events(&c).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[1].1.as_str(), events[1].2.as_str()), ("task.conflict_cleared", "base"));
    assert_eq!(events[1].4, "task_finished");
}

#[actix_web::test]
async fn another_organization_never_sees_the_conflicts_and_junk_is_refused() {
    let dir = tempdir();
    let server = Server::start_in(dir.path(), &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "3600")]);
    let admin = server.client();
    let (bare, _) = origin(dir.path());
    admin.add_repo("default", &bare).await;
    assert_eq!(admin.post("/v1/organizations", json!({"name": "beta"})).await.status, 201);
    let t = admin.post("/v1/organizations/beta/tokens", json!({"name": "t"})).await;
    let beta = admin.with_token(Some(t.body["token"].as_str().unwrap()));
    let mut ids = Vec::new();
    for n in ["x", "y"] {
        let id = admin.create_task("default", "app", &format!("task {n}")).await["id"].as_str().unwrap().to_string();
        std::fs::write(worktree(&admin, &id).await.join("shared.txt"), with_line(3, n)).unwrap();
        ids.push(id);
    }
    eventually(WAIT, "x and y predicted to conflict", || async { (!conflicts(&admin).await.is_empty()).then_some(()) }).await;

    // beta cannot read default's conflicts, and its history has none of them.
    let r = beta.get("/v1/organizations/default/repos/app/conflicts").await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = beta.get("/v1/organizations/beta/repos/app/conflicts").await;
    assert_eq!((r.status, r.code()), (404, "repo_not_found"), "{r:?}");
    let theirs = beta.events_since("beta", 0).await;
    assert!(theirs.iter().all(|e| !e["kind"].as_str().unwrap_or("").starts_with("task.conflict_")), "{theirs:?}");
    assert!(theirs.iter().all(|e| e["task"].is_null() || !ids.contains(&e["task"].as_str().unwrap_or("").to_string())));

    // Junk answers 4xx, never 500.
    for (path, status) in [
        ("/v1/organizations/default/repos/nope/conflicts", 404),
        ("/v1/organizations/default/repos/..%2F..%2Fetc/conflicts", 404),
        ("/v1/organizations/default/repos/app/conflicts?task=x", 400),
        ("/v1/organizations/no-such-org/repos/app/conflicts", 404),
        ("/v1/organizations/%00/repos/app/conflicts", 404),
    ] {
        let r = admin.get(path).await;
        assert_eq!(r.status, status, "{path}: {r:?}");
    }
    let r = admin.post("/v1/organizations/default/repos/app/conflicts", json!({})).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    let r = admin.with_token(None).get("/v1/organizations/default/repos/app/conflicts").await;
    assert_eq!(r.status, 401, "{r:?}");
}
