//! The git lifecycle: push, sync, pull requests, merges, the branch and PR
//! pollers, webhooks and automation, against real bare repositories as `origin`
//! and the fake GitHub server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::fake_github::FakeGithub;

const WAIT: Duration = Duration::from_secs(30);
const FULL: &str = "acme/app";

/// A bare repository with `main` and one commit, as `origin`; answers (bare, scratch clone).
pub(crate) fn bare_origin(dir: &Path) -> (PathBuf, PathBuf) {
    let bare = dir.join("origin.git");
    git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    let work = dir.join("upstream-work");
    git(dir, &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]);
    git(&work, &["checkout", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "hello\n").unwrap();
    std::fs::write(work.join("other.txt"), "other\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "main"]);
    (bare, work)
}

/// Commits `content` to `file` on `branch` in the scratch clone and pushes it to origin.
fn upstream_commit(work: &Path, branch: &str, file: &str, content: &str) {
    git(work, &["fetch", "-q", "origin"]);
    let exists = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "-q", &format!("origin/{branch}")])
        .current_dir(work)
        .status()
        .unwrap()
        .success();
    if exists {
        git(work, &["checkout", "-q", "-B", branch, &format!("origin/{branch}")]);
    } else {
        git(work, &["checkout", "-q", "-B", branch]);
    }
    std::fs::write(work.join(file), content).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", &format!("upstream change to {file}")]);
    git(work, &["push", "-q", "-f", "origin", branch]);
}

struct Setup {
    server: Server,
    c: Client,
    bare: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

/// A server with `app` registered from a bare origin; with `github`, the repo is
/// `acme/app` on the fake GitHub with a token and webhook secret.
async fn setup(github: Option<&FakeGithub>, env: &[(&str, &str)]) -> Setup {
    let dir = tempdir();
    let server = Server::start_in(dir.path(), env);
    let c = server.client();
    let (bare, work) = bare_origin(dir.path());
    c.add_repo("default", &bare).await;
    if let Some(gh) = github {
        gh.add_repo(FULL, &bare);
        let r = c
            .put(
                "/v1/organizations/default/providers/github",
                json!({"config": {"api_url": gh.url}, "secrets": {"token": gh.token(), "webhook_secret": gh.webhook_secret()}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.put("/v1/organizations/default/repos/origin/settings", json!({"github": FULL})).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    Setup { server, c, bare, work, _dir: dir }
}

async fn task_with_work(s: &Setup, file: &str) -> (String, PathBuf) {
    let t = s.c.create_task("default", "origin", "make a change").await;
    let id = t["id"].as_str().unwrap().to_string();
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    std::fs::write(worktree.join(file), "task work\n").unwrap();
    (id, worktree)
}

async fn act(c: &Client, id: &str, action: &str, body: Value) -> Reply {
    c.post(&format!("/v1/organizations/default/tasks/{id}/{action}"), body).await
}

fn kinds(events: &[Value], task: &str) -> Vec<String> {
    events.iter().filter(|e| e["task"] == task).map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

#[actix_web::test]
async fn push_commits_and_pushes_and_never_replaces_someone_elses_push() {
    let s = setup(None, &[]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    let r = act(&s.c, &id, "push", json!({"commit": "Add the feature"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let branch = r.body["task"]["branch"].as_str().unwrap().to_string();
    assert_eq!(git(&s.bare, &["show", &format!("{branch}:feature.txt")]), "task work");
    assert_eq!(git(&s.bare, &["log", "-1", "--format=%s", &branch]), "Add the feature");
    assert_eq!(git(&worktree, &["rev-parse", "--abbrev-ref", "@{upstream}"]), format!("origin/{branch}"));
    let events = s.c.events_since("default", 0).await;
    assert!(kinds(&events, &id).contains(&"task.committed".to_string()) && kinds(&events, &id).contains(&"task.pushed".to_string()));

    let pushed = git(&s.bare, &["rev-parse", &branch]);
    let detail = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(detail["runtime"]["pushed_sha"], pushed.as_str(), "the lease is recorded: {detail}");
    assert_eq!(detail["runtime"]["pushed_branch"], branch.as_str());

    // Someone else pushes to the task branch, the base moves, and the task syncs
    // (a rebase): the push would have to replace their commit, and is refused.
    upstream_commit(&s.work, &branch, "theirs.txt", "theirs\n");
    let theirs = git(&s.bare, &["rev-parse", &branch]);
    upstream_commit(&s.work, "main", "other.txt", "base moved\n");
    let r = act(&s.c, &id, "sync", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    std::fs::write(worktree.join("more.txt"), "more\n").unwrap();
    let r = act(&s.c, &id, "push", json!({"commit": "More"})).await;
    assert_eq!((r.status, r.code()), (409, "remote_moved"), "{r:?}");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains(&theirs) && message.contains(&pushed), "names both commits: {message}");
    assert_eq!(git(&s.bare, &["rev-parse", &branch]), theirs, "their commit is still on the remote");
    assert_eq!(git(&s.bare, &["show", &format!("{branch}:theirs.txt")]), "theirs");
    let failed = s.c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "task.push_failed").expect("an event");
    assert_eq!(failed["data"]["code"], "remote_moved");

    // Asked to, Kiln replaces them (still only what it saw there), and says so.
    let r = act(&s.c, &id, "push", json!({"force": true})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    assert_eq!(git(&s.bare, &["rev-parse", &branch]), head);
    let forced = s.c.events_since("default", 0).await.into_iter().rev().find(|e| e["kind"] == "task.pushed").unwrap();
    assert_eq!((forced["data"]["forced"].clone(), forced["data"]["replaced"].clone()), (json!(true), json!(theirs)));
}

#[actix_web::test]
async fn a_branch_kiln_did_not_push_first_is_only_fast_forwarded() {
    let s = setup(None, &[]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    let branch = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["branch"].as_str().unwrap().to_string();
    // The branch exists on the remote before Kiln ever pushes it.
    upstream_commit(&s.work, &branch, "theirs.txt", "theirs\n");
    let theirs = git(&s.bare, &["rev-parse", &branch]);
    let r = act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    assert_eq!((r.status, r.code()), (409, "push_rejected"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("rejected"), "git's own words: {r:?}");
    assert_eq!(git(&s.bare, &["rev-parse", &branch]), theirs);
    let failed = s.c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "task.push_failed").expect("an event");
    assert!(failed["data"]["error"].as_str().unwrap().contains("rejected"));
    // Once the task has their commit, the push is a fast-forward.
    git(&worktree, &["pull", "--no-rebase", "--no-edit", "-q", "origin", &branch]);
    let r = act(&s.c, &id, "push", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(git(&s.bare, &["merge-base", "--is-ancestor", &theirs, &branch]).is_empty(), "theirs is kept");
    assert_eq!(git(&s.bare, &["show", &format!("{branch}:feature.txt")]), "task work");
}

/// The README's walk-through: push, the base moves on, sync (a rebase), push
/// again, open the pull request, merge it.
#[actix_web::test]
async fn the_readme_flow_push_sync_push_pr_merge() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    let r = act(&s.c, &id, "push", json!({"commit": "Add the feature"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let branch = r.body["task"]["branch"].as_str().unwrap().to_string();
    let first = git(&s.bare, &["rev-parse", &branch]);

    // Another clone pushes to main; the task rebases onto it, rewriting its branch.
    upstream_commit(&s.work, "main", "other.txt", "base moved\n");
    let r = act(&s.c, &id, "sync", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let rebased = git(&worktree, &["rev-parse", "HEAD"]);
    assert_ne!(rebased, first);
    let r = act(&s.c, &id, "push", json!({})).await;
    assert_eq!(r.status, 200, "the push after a sync replaces Kiln's own last push: {r:?}");
    assert_eq!(git(&s.bare, &["rev-parse", &branch]), rebased);
    let pushed = s.c.events_since("default", 0).await.into_iter().rev().find(|e| e["kind"] == "task.pushed").unwrap();
    assert_eq!((pushed["data"]["forced"].clone(), pushed["data"]["replaced"].clone()), (json!(true), json!(first)));

    // The PR pushes too: nothing new to replace.
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let number = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["pull_request"]["number"].as_u64().unwrap();
    assert_eq!(gh.pull(FULL, number)["head"]["sha"], rebased.as_str());

    // The base moves again: sync, and the PR pushes the rewritten branch itself.
    upstream_commit(&s.work, "main", "README.md", "base moved again\n");
    let r = act(&s.c, &id, "sync", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = act(&s.c, &id, "merge", json!({})).await;
    assert_eq!((r.status, r.code()), (409, "unpushed_commits"), "the rebase is not on GitHub yet: {r:?}");
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    assert_eq!(git(&s.bare, &["rev-parse", &branch]), head);
    assert_eq!(gh.pull(FULL, number)["head"]["sha"], head.as_str());

    let r = act(&s.c, &id, "merge", json!({"method": "squash"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(gh.pull(FULL, number)["merged"], true);
    assert_eq!(git(&s.bare, &["show", "main:feature.txt"]), "task work");
    assert_eq!(git(&s.bare, &["show", "main:README.md"]), "base moved again");
    assert_eq!(git(&s.bare, &["show", "main:other.txt"]), "base moved");
}

#[actix_web::test]
async fn sync_rebases_cleanly_and_a_conflict_leaves_the_worktree_as_it_was() {
    let s = setup(None, &[]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    upstream_commit(&s.work, "main", "other.txt", "changed upstream\n");
    let r = act(&s.c, &id, "sync", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(std::fs::read_to_string(worktree.join("other.txt")).unwrap(), "changed upstream\n");
    assert_eq!(git(&worktree, &["log", "-1", "--format=%s"]), "Feature", "our commit is on top");

    // Now a conflict: both sides change README.md; plus uncommitted work.
    std::fs::write(worktree.join("README.md"), "ours\n").unwrap();
    git(&worktree, &["commit", "-q", "-am", "ours"]);
    upstream_commit(&s.work, "main", "README.md", "theirs\n");
    std::fs::write(worktree.join("scratch.txt"), "uncommitted\n").unwrap();
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    let status = git(&worktree, &["status", "--porcelain"]);
    let r = act(&s.c, &id, "sync", json!({})).await;
    assert_eq!((r.status, r.code()), (409, "sync_conflict"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("README.md"));
    assert_eq!(git(&worktree, &["rev-parse", "HEAD"]), head, "HEAD unchanged");
    assert_eq!(git(&worktree, &["status", "--porcelain"]), status, "the worktree is exactly as it was");
    assert_eq!(std::fs::read_to_string(worktree.join("scratch.txt")).unwrap(), "uncommitted\n");
    let conflict = s.c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "task.sync_conflict").unwrap();
    assert_eq!(conflict["data"]["files"], json!(["README.md"]));
    // Merge mode conflicts the same way, also cleanly.
    let r = act(&s.c, &id, "sync", json!({"mode": "merge"})).await;
    assert_eq!((r.status, r.code()), (409, "sync_conflict"), "{r:?}");
    assert_eq!(git(&worktree, &["rev-parse", "HEAD"]), head);
    let r = act(&s.c, &id, "sync", json!({"mode": "sideways"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_mode"));
}

#[actix_web::test]
async fn a_pull_request_is_opened_or_adopted_and_a_moved_head_is_not_merged() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let branch = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["branch"].as_str().unwrap().to_string();
    // A PR for the branch already exists (opened by hand): Kiln adopts it.
    let existing = gh.add_pull(FULL, &branch, "main", "Opened by hand");
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let task = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["pull_request"]["number"], existing);
    let events = s.c.events_since("default", 0).await;
    assert!(kinds(&events, &id).contains(&"pr.adopted".to_string()), "{:?}", kinds(&events, &id));
    let creates = gh.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/pulls")).count();
    assert_eq!(creates, 1, "one create, refused, then adopted");

    // The branch moves on GitHub behind Kiln's back: the merge is refused.
    upstream_commit(&s.work, &branch, "sneaky.txt", "sneaky\n");
    let r = act(&s.c, &id, "merge", json!({"method": "squash"})).await;
    assert_eq!((r.status, r.code()), (409, "head_moved"), "{r:?}");
    assert_eq!(gh.pull(FULL, existing)["merged"], false);
    assert_eq!(s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["status"], "running");

    // After a sync the task is ahead of GitHub: Kiln says to push, not that GitHub moved.
    let r = act(&s.c, &id, "sync", json!({"mode": "merge"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    git(&worktree, &["pull", "--no-rebase", "--no-edit", "-q", "origin", &branch]);
    std::fs::write(worktree.join("local.txt"), "not pushed\n").unwrap();
    git(&worktree, &["add", "local.txt"]);
    git(&worktree, &["commit", "-q", "-m", "local only"]);
    let r = act(&s.c, &id, "merge", json!({"method": "squash"})).await;
    assert_eq!((r.status, r.code()), (409, "unpushed_commits"), "{r:?}");
    assert_eq!(gh.pull(FULL, existing)["merged"], false);
    let r = act(&s.c, &id, "push", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = act(&s.c, &id, "merge", json!({"method": "squash"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(gh.pull(FULL, existing)["merged"], true);
}

#[actix_web::test]
async fn a_new_pull_request_is_opened_and_merged_through_github() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    let r = act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = act(&s.c, &id, "pr", json!({"draft": true})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let task = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    let number = task["pull_request"]["number"].as_u64().unwrap();
    let pr = gh.pull(FULL, number);
    assert_eq!(pr["draft"], true);
    assert!(pr["body"].as_str().unwrap().contains("make a change") && pr["body"].as_str().unwrap().contains("Feature"));
    let r = act(&s.c, &id, "merge", json!({"method": "squash"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["task"]["status"], "archived", "a merged task is archived");
    assert_eq!(gh.pull(FULL, number)["merged"], true);
    assert_eq!(git(&s.bare, &["show", "main:feature.txt"]), "task work");
}

#[actix_web::test]
async fn a_repository_without_github_merges_locally() {
    let s = setup(None, &[]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!((r.status, r.code()), (422, "not_github"));
    let r = act(&s.c, &id, "merge", json!({"method": "merge"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(git(&s.bare, &["show", "main:feature.txt"]), "task work");
    assert_eq!(git(&s.bare, &["rev-list", "--count", "--merges", "main"]), "1", "a merge commit");
    assert_eq!(r.body["task"]["status"], "archived");
    let events = s.c.events_since("default", 0).await;
    assert!(kinds(&events, &id).contains(&"task.merged".to_string()));
}

fn metric_requests(gh: &FakeGithub) -> (usize, usize) {
    let reqs = gh.requests();
    (reqs.len(), reqs.iter().filter(|r| r.status == 304).count())
}

#[actix_web::test]
async fn the_pr_poller_spends_no_rate_limit_when_nothing_changed_and_backs_off_on_429() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "300")]).await;
    for i in 0..150 {
        gh.add_pull(FULL, &format!("feature-{i}"), "main", &format!("PR {i}"));
    }
    eventually(WAIT, "the PR cache is filled", || {
        let c = s.c.clone();
        async move { (c.get("/v1/organizations/default/repos/origin/pulls").await.body["items"].as_array().unwrap().len() == 150).then_some(()) }
    })
    .await;
    // Wait for a cycle that found every page unchanged, then measure.
    let key = "org/default/repo/origin/pr-sync";
    eventually(WAIT, "a cycle of nothing but 304s", || {
        let c = s.c.clone();
        async move {
            let body = c.get("/admin/pollers").await.body;
            let p = body["items"].as_array().unwrap().iter().find(|p| p["key"] == key)?.clone();
            let cost = &p["cost"];
            (cost["requests"].as_u64()? > 0 && cost["requests"] == cost["not_modified"]).then_some(())
        }
    })
    .await;
    let spent_before = gh.rate_limit_remaining();
    let (n_before, not_modified_before) = metric_requests(&gh);
    // A deadline, not a fixed wait: a loaded machine polls more slowly.
    let (n_after, not_modified_after) = eventually(WAIT, "it keeps polling (4 requests)", || {
        let counts = metric_requests(&gh);
        async move { (counts.0 - n_before >= 4).then_some(counts) }
    })
    .await;
    assert_eq!(n_after - n_before, not_modified_after - not_modified_before, "every request was a 304");
    assert_eq!(gh.rate_limit_remaining(), spent_before, "a 304 costs no rate limit");

    // 429 with retry-after: the poller pauses and says so, then recovers.
    // Long enough that observing the pause and a second of quiet fit inside it on a loaded machine.
    gh.fail_next(1, 429, 6);
    let paused = eventually(WAIT, "the poller pauses", || {
        let c = s.c.clone();
        async move {
            let body = c.get("/admin/pollers").await.body;
            body["items"].as_array().unwrap().iter().find(|p| p["key"] == key && p["paused_until"].is_i64()).cloned()
        }
    })
    .await;
    assert!(paused["last_error"].as_str().unwrap().contains("rate limited"), "{paused}");
    let pr_requests = || gh.requests().iter().filter(|r| r.path.contains("/pulls")).count();
    let during = pr_requests();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let until = paused["paused_until"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Only meaningful while the pause still holds (a very slow machine may have outlived it).
    if now < until {
        assert_eq!(pr_requests(), during, "no requests while paused");
    }
    eventually(WAIT, "the poller recovers", || {
        let c = s.c.clone();
        async move {
            let body = c.get("/admin/pollers").await.body;
            body["items"].as_array().unwrap().iter().find(|p| p["key"] == key && p["last_error"].is_null()).map(|_| ())
        }
    })
    .await;
}

#[actix_web::test]
async fn webhooks_are_verified_and_replays_refused() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "3600000")]).await;
    let body = json!({"action": "opened", "number": 1, "repository": {"full_name": FULL}}).to_string();
    let send = |sig: String, delivery: &'static str| {
        let c = s.c.with_token(None);
        let body = body.clone();
        async move {
            let client = awc::Client::default();
            let mut res = client
                .post(format!("{}/v1/webhooks/github", c.base))
                .insert_header(("X-GitHub-Event", "pull_request"))
                .insert_header(("X-GitHub-Delivery", delivery))
                .insert_header(("X-Hub-Signature-256", sig))
                .insert_header(("content-type", "application/json"))
                .send_body(body)
                .await
                .unwrap();
            let status = res.status().as_u16();
            let text = String::from_utf8_lossy(&res.body().await.unwrap()).to_string();
            (status, text)
        }
    };
    let bad = send(FakeGithub::sign("wrong secret", body.as_bytes()), "d-1").await;
    assert_eq!(bad.0, 401, "{bad:?}");
    let rejected = s.c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "webhook.rejected").expect("an event");
    assert_eq!(rejected["data"]["delivery"], "d-1");
    assert!(!s.server.log().contains("\"action\""), "the payload is not logged");
    let polls_before = gh.requests().len();
    let good = send(FakeGithub::sign(gh.webhook_secret(), body.as_bytes()), "d-2").await;
    assert_eq!(good.0, 202, "{good:?}");
    eventually(WAIT, "the webhook wakes the PR poller", || {
        let n = gh.requests().len();
        async move { (n > polls_before).then_some(()) }
    })
    .await;
    let replay = send(FakeGithub::sign(gh.webhook_secret(), body.as_bytes()), "d-2").await;
    assert_eq!(replay.0, 409, "{replay:?}");
    assert!(replay.1.contains("replayed_delivery"));
}

#[actix_web::test]
async fn ci_failures_go_to_the_agent_at_most_n_times() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "200")]).await;
    let r = s
        .c
        .put("/v1/organizations/default/repos/origin/settings", json!({"github": FULL, "automation": {"on_ci_failure": {"enabled": true, "max_attempts": 2}}}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    act(&s.c, &id, "pr", json!({})).await;
    let mut term = Term::open(&s.c, "default", &id, 0).await;
    for round in 1..=3 {
        let head = git(&worktree, &["rev-parse", "HEAD"]);
        gh.add_check_run(FULL, &head, "tests", "completed", Some("failure"), &format!("3 tests failed (round {round})"));
        if round <= 2 {
            term.expect(&format!("3 tests failed (round {round})")).await;
        } else {
            eventually(WAIT, "the loop stops", || {
                let c = s.c.clone();
                async move { c.events_since("default", 0).await.iter().any(|e| e["kind"] == "reaction.escalated").then_some(()) }
            })
            .await;
        }
        // The agent "fixes" it: a new commit, pushed.
        std::fs::write(worktree.join("feature.txt"), format!("fix {round}\n")).unwrap();
        let r = act(&s.c, &id, "push", json!({"commit": format!("fix {round}")})).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let events = s.c.events_since("default", 0).await;
    // The older setting still works: it is the `ci_failed` reaction now.
    let sent = events.iter().filter(|e| e["kind"] == "reaction.fired" && e["data"]["cause"] == "ci_failed").count();
    assert_eq!(sent, 2, "at most N hand-overs");
    assert!(!term.text().contains("round 3"), "no third hand-over");
    assert!(events.iter().any(|e| e["kind"] == "pr.ci_changed" && e["data"]["to"] == "failure"));
}

#[actix_web::test]
async fn a_pr_merged_outside_kiln_archives_its_task() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "200")]).await;
    s.c.put("/v1/organizations/default/repos/origin/settings", json!({"github": FULL, "automation": {"archive_on_external_merge": true}})).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    act(&s.c, &id, "pr", json!({})).await;
    let number = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["pull_request"]["number"].as_u64().unwrap();
    gh.merge_externally(FULL, number);
    let task = s.c.wait_status("default", &id, "archived").await;
    assert_eq!(task["pull_request"]["state"], "merged");
    let events = s.c.events_since("default", 0).await;
    assert!(kinds(&events, &id).contains(&"pr.merged".to_string()));
}

#[actix_web::test]
async fn five_hundred_pull_requests_are_rows_not_actors() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "500")]).await;
    for i in 0..500 {
        gh.add_pull(FULL, &format!("someone/feature-{i}"), "main", &format!("PR {i}"));
    }
    eventually(WAIT, "500 PR rows", || {
        let c = s.c.clone();
        async move { (c.get("/v1/organizations/default/repos/origin/pulls").await.body["items"].as_array().unwrap().len() == 500).then_some(()) }
    })
    .await;
    let actors = s.c.get("/admin/actors").await.body;
    let task_actors: Vec<_> = actors["items"].as_array().unwrap().iter().filter(|a| a["kind"] == "task").collect();
    assert!(task_actors.is_empty(), "no TaskActor for PRs without tasks: {task_actors:?}");
    // And no events for them either: rows only.
    let pr_events = s.c.events_since("default", 0).await.into_iter().filter(|e| e["kind"].as_str().unwrap().starts_with("pr.")).count();
    assert_eq!(pr_events, 0);
}

#[actix_web::test]
async fn the_branch_poller_reports_heads_ahead_behind_and_dirty_files() {
    let s = setup(None, &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "1")]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let branch = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["branch"].as_str().unwrap().to_string();
    upstream_commit(&s.work, "main", "other.txt", "moved on\n");
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    std::fs::write(worktree.join("wip.txt"), "wip\n").unwrap();
    let row = eventually(WAIT, "the branch row shows ahead 1, behind 1, 1 dirty file", || {
        let c = s.c.clone();
        let branch = branch.clone();
        async move {
            let body = c.get("/v1/organizations/default/repos/origin/branches").await.body;
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == branch.as_str() && b["ahead"] == 1 && b["behind"] == 1 && b["dirty_files"] == 1)
                .cloned()
        }
    })
    .await;
    assert_eq!(row["head_sha"].as_str().unwrap().len(), 40);
    let events = s.c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["kind"] == "branch.updated" && e["data"]["branch"] == branch.as_str()));
}

#[actix_web::test]
async fn on_idle_automation_commits_pushes_and_opens_a_draft_pr() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[]).await;
    let r = s
        .c
        .put(
            "/v1/organizations/default/repos/origin/settings",
            json!({"github": FULL, "automation": {"on_idle": {"commit": true, "push": true, "draft_pr": true}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The `quick` agent is idle after one quiet second.
    let t = s.c.create_task_with("default", json!({"repo": "origin", "description": "automate me", "agent": "quick"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    let running = s.c.wait_status("default", &id, "running").await;
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    std::fs::write(worktree.join("auto.txt"), "written by the agent\n").unwrap();
    let branch = running["branch"].as_str().unwrap().to_string();
    let task = eventually(WAIT, "a draft PR after the task goes idle", || {
        let c = s.c.clone();
        let id = id.clone();
        async move {
            let t = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
            (!t["pull_request"].is_null()).then_some(t)
        }
    })
    .await;
    assert_eq!(task["status"], "idle");
    assert_eq!(task["pull_request"]["draft"], true);
    assert_eq!(git(&s.bare, &["show", &format!("{branch}:auto.txt")]), "written by the agent");
    assert!(git(&s.bare, &["log", "-1", "--format=%s", &branch]).starts_with("kiln: work in progress"));
    let listed = s.c.get("/v1/organizations/default/tasks").await.body;
    assert_eq!(listed["items"][0]["pr"]["number"], task["pull_request"]["number"], "the list shows the PR");
    // One push, one `task.pushed` (the draft PR step used to push again).
    let events = s.c.events_since("default", 0).await;
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind && e["task"] == id.as_str()).count();
    assert_eq!((count("task.committed"), count("task.pushed")), (1, 1), "{events:?}");
}

#[test]
fn the_kiln_binary_answers_gits_askpass_prompts_from_its_environment() {
    let ask = |prompt: &str, token: Option<&str>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg(prompt).env("KILN_GIT_ASKPASS", "1");
        if let Some(t) = token {
            cmd.env("KILN_GIT_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(ask("Username for 'https://github.com': ", Some("ghs_secret")), (Some(0), "x-access-token".into()));
    assert_eq!(ask("Password for 'https://x-access-token@github.com': ", Some("ghs_secret")), (Some(0), "ghs_secret".into()));
    assert_eq!(ask("Password: ", None).0, Some(1), "no token, no answer");
}

#[actix_web::test]
async fn on_idle_commit_alone_commits_with_an_event() {
    let s = setup(None, &[]).await;
    let r = s
        .c
        .put("/v1/organizations/default/repos/origin/settings", json!({"automation": {"on_idle": {"commit": true}}}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = s.c.create_task_with("default", json!({"repo": "origin", "description": "commit me", "agent": "quick"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    s.c.wait_status("default", &id, "running").await;
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    std::fs::write(worktree.join("auto.txt"), "written by the agent\n").unwrap();
    let committed = eventually(WAIT, "task.committed", || {
        let c = s.c.clone();
        let id = id.clone();
        async move {
            let events = c.events_since("default", 0).await;
            events.into_iter().find(|e| e["kind"] == "task.committed" && e["task"] == id.as_str())
        }
    })
    .await;
    let sha = committed["data"]["sha"].as_str().unwrap();
    assert_eq!(git(&worktree, &["rev-parse", "HEAD"]), sha);
    assert!(git(&worktree, &["status", "--porcelain"]).is_empty(), "everything committed");
}

#[actix_web::test]
async fn kiln_show_shows_the_pull_request_ci_and_review() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "200")]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    let out = cli(&s.server, &["show", &id]);
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.1.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pr", "-"]), "no PR yet: {}", out.1);
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let r = act(&s.c, &id, "pr", json!({"draft": true})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_check_run(FULL, &head, "tests", "completed", Some("success"), "all green");
    let number = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["pull_request"]["number"].as_u64().unwrap();
    gh.add_review(FULL, number, "reviewer", "APPROVED");
    eventually(WAIT, "the PR poller records CI and the review", || {
        let c = s.c.clone();
        let id = id.clone();
        async move {
            let pr = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["pull_request"].clone();
            (pr["ci_state"] == "success" && pr["review_decision"] == "approved").then_some(())
        }
    })
    .await;
    let out = cli(&s.server, &["show", &id]);
    assert_eq!(out.0, 0, "{out:?}");
    let line = |key: &str| out.1.lines().find(|l| l.split_whitespace().next() == Some(key)).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
    let pr = line("pr").unwrap_or_default();
    assert!(pr.starts_with(&format!("#{number} open (draft) http")), "{}", out.1);
    assert_eq!(line("ci").as_deref(), Some("success"), "{}", out.1);
    assert_eq!(line("review").as_deref(), Some("approved"), "{}", out.1);
    assert_eq!(line("pushed"), Some(format!("{head} to {}", r.body["task"]["branch"].as_str().unwrap())), "{}", out.1);
}

#[actix_web::test]
async fn the_task_shows_its_pull_request_checks_with_links_and_each_change_is_an_event() {
    let gh = FakeGithub::start();
    let s = setup(Some(&gh), &[("KILN_GITHUB__PR_POLL_MS", "200")]).await;
    let (id, worktree) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let detail = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(detail["pull_request"]["checks"], json!([]), "no checks before the poller looks: {detail}");
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_check_run(FULL, &head, "tests", "completed", Some("success"), "all green");
    gh.add_check_run(FULL, &head, "lint", "in_progress", None, "");
    gh.set_status(FULL, &head, "ci/legacy", "pending", "waiting");
    let checks = |c: Client, id: String| async move {
        c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["pull_request"]["checks"].clone()
    };
    let seen = eventually(WAIT, "the poller records three checks", || {
        let (c, id) = (s.c.clone(), id.clone());
        async move { checks(c, id).await.as_array().filter(|a| a.len() == 3).cloned() }
    })
    .await;
    // By name: ci/legacy, lint, tests.
    let tests = &seen[2];
    assert_eq!((tests["kind"].as_str(), tests["name"].as_str(), tests["status"].as_str(), tests["conclusion"].as_str()), (Some("check_run"), Some("tests"), Some("completed"), Some("success")), "{seen:?}");
    assert!(tests["url"].as_str().is_some_and(|u| u.starts_with("https://github.com/acme/app/runs/")), "{seen:?}");
    assert_eq!((seen[1]["name"].as_str(), seen[1]["status"].as_str(), seen[1]["conclusion"].is_null()), (Some("lint"), Some("in_progress"), true));
    assert_eq!((seen[0]["kind"].as_str(), seen[0]["name"].as_str(), seen[0]["status"].as_str(), seen[0]["url"].is_null()), (Some("status"), Some("ci/legacy"), Some("pending"), true));

    // lint finishes: CI stays pending (the status still runs), but the list moved,
    // and the event carries the new list.
    gh.add_check_run(FULL, &head, "lint", "completed", Some("failure"), "2 errors");
    eventually(WAIT, "lint's failure is recorded", || {
        let (c, id) = (s.c.clone(), id.clone());
        async move { (checks(c, id).await[1]["conclusion"] == "failure").then_some(()) }
    })
    .await;
    let events: Vec<Value> = s.c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "pr.checks_changed" && e["task"] == id.as_str()).collect();
    assert!(events.len() >= 2, "{events:?}");
    let last = &events[events.len() - 1]["data"];
    assert_eq!((last["head_sha"].as_str(), last["checks"][1]["name"].as_str(), last["checks"][1]["conclusion"].as_str()), (Some(head.as_str()), Some("lint"), Some("failure")), "{last}");
    assert!(events.iter().all(|e| e["data"]["number"].is_u64()), "{events:?}");
    // The next polls see nothing new: no further event.
    let count = events.len();
    let pr_polls = |c: Client| async move {
        let r = c.get("/admin/pollers").await.body;
        r["items"].as_array().into_iter().flatten().find(|p| p["kind"] == "pr_sync").and_then(|p| p["polls"].as_u64()).unwrap_or(0)
    };
    let before = pr_polls(s.c.clone()).await;
    eventually(WAIT, "two more PR polls", || {
        let c = s.c.clone();
        async move { (pr_polls(c).await >= before + 2).then_some(()) }
    })
    .await;
    let again = s.c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "pr.checks_changed" && e["task"] == id.as_str()).count();
    assert_eq!(again, count, "an unchanged list is not an event");

    // `kiln show` lists them.
    let out = cli(&s.server, &["show", &id]);
    assert_eq!(out.0, 0, "{out:?}");
    let lines: Vec<&str> = out.1.lines().filter(|l| l.starts_with("check ")).collect();
    assert_eq!(lines.len(), 3, "{}", out.1);
    assert!(lines[0].ends_with("ci/legacy: pending"), "{}", out.1);
    assert!(lines[1].contains("lint: failure https://"), "{}", out.1);
    assert!(lines[2].contains("tests: success https://github.com/acme/app/runs/"), "{}", out.1);
}

/// A local merge (no GitHub) whose push is refused because the base moved on
/// origin in the meantime answers 409 `remote_moved`, like push, and says so in
/// `task.merge_failed`; an origin that cannot be reached stays a 502.
#[actix_web::test]
async fn a_local_merge_refused_because_the_base_moved_is_a_409() {
    // The poller fetches once, at its first poll, and not again during the test.
    let s = setup(None, &[("KILN_REPOS__FETCH_SECS", "3600"), ("KILN_REPOS__BRANCH_POLL_MS", "200")]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    eventually(WAIT, "the poller's first fetch", || {
        let c = s.c.clone();
        async move {
            let b = c.get("/v1/organizations/default/repos/origin/branches").await.body;
            b["items"].as_array().is_some_and(|items| !items.is_empty()).then_some(())
        }
    })
    .await;
    // Origin's main moves right after Kiln's next fetch, before its push: the
    // mirror runs this instead of git-upload-pack for its origin.
    let script = s.bare.join("move-after-fetch.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ngit-upload-pack \"$@\"; rc=$?\nif [ ! -e {b}/moved ]; then touch {b}/moved\n  c=$(git --git-dir={b} -c user.name=o -c user.email=o@o commit-tree main^{{tree}} -p main -m moved) && git --git-dir={b} update-ref refs/heads/main $c\nfi\nexit $rc\n",
            b = s.bare.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mirror = s.server.data_dir().join("repos/default/origin.git");
    git(&mirror, &["config", "remote.origin.uploadpack", script.to_str().unwrap()]);
    let r = act(&s.c, &id, "merge", json!({"method": "merge"})).await;
    assert_eq!((r.status, r.code()), (409, "remote_moved"), "{r:?}");
    assert!(s.bare.join("moved").exists(), "origin moved during the merge");
    assert_eq!(git(&s.bare, &["log", "-1", "--format=%s", "main"]), "moved", "nothing was merged");
    let events = s.c.events_since("default", 0).await;
    let failed = events.iter().find(|e| e["kind"] == "task.merge_failed").expect("task.merge_failed");
    assert_eq!(failed["data"]["code"], "remote_moved", "{failed}");
    // Merging again merges onto the new base.
    let r = act(&s.c, &id, "merge", json!({"method": "merge"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(git(&s.bare, &["show", "main:feature.txt"]), "task work");

    // An origin that is gone is not a conflict.
    let s = setup(None, &[]).await;
    let (id, _) = task_with_work(&s, "feature.txt").await;
    act(&s.c, &id, "push", json!({"commit": "Feature"})).await;
    let mirror = s.server.data_dir().join("repos/default/origin.git");
    git(&mirror, &["config", "remote.origin.uploadpack", "/nonexistent/upload-pack"]);
    let r = act(&s.c, &id, "merge", json!({"method": "merge"})).await;
    assert_eq!((r.status, r.code()), (502, "merge_failed"), "{r:?}");
}
