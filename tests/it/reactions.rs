//! Reactions (docs/git.md, "Reactions") against the fake GitHub and real git:
//! each fires once per cause and respects its bounds, bots are kept apart from
//! humans, a restart does not fire anything again, and the message reaches the
//! agent's terminal as one bracketed paste.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::fake_github::FakeGithub;
use crate::git_lifecycle::bare_origin;

/// Generous: the machine may be busy; every wait polls for its condition.
const WAIT: Duration = Duration::from_secs(90);
const FULL: &str = "acme/app";

struct Setup {
    server: Server,
    c: Client,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

/// A server polling the fake GitHub every 200 ms, with `app`'s origin on it
/// as `acme/app`, and these reactions.
async fn setup(gh: &FakeGithub, reactions: Value) -> Setup {
    setup_with(gh, reactions, &[]).await
}

/// [`setup`], with more of the server's environment.
async fn setup_with(gh: &FakeGithub, reactions: Value, env: &[(&str, &str)]) -> Setup {
    let dir = tempdir();
    let mut all = vec![("KILN_GITHUB__PR_POLL_MS", "200"), ("KILN_TASKS__STATUS_POLL_MS", "200")];
    all.extend_from_slice(env);
    let server = Server::start_in(dir.path(), &all);
    let c = server.client();
    let (bare, work) = bare_origin(dir.path());
    c.add_repo("default", &bare).await;
    gh.add_repo(FULL, &bare);
    let r = c
        .put(
            "/v1/organizations/default/providers/github",
            json!({"config": {"api_url": gh.url}, "secrets": {"token": gh.token(), "webhook_secret": gh.webhook_secret()}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    put_reactions(&c, reactions).await;
    Setup { server, c, work, _dir: dir }
}

async fn put_reactions(c: &Client, reactions: Value) {
    let r = c.put("/v1/organizations/default/repos/origin/settings", json!({"github": FULL, "reactions": reactions})).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A task whose work on `file` is pushed with an open PR; answers (id, worktree, PR number).
async fn task_with_pr(s: &Setup, file: &str, content: &str) -> (String, PathBuf, u64) {
    let t = s.c.create_task("default", "origin", &format!("change {file}")).await;
    let id = t["id"].as_str().unwrap().to_string();
    s.c.wait_status("default", &id, "running").await;
    let worktree = s.server.data_dir().join(format!("worktrees/default/origin/{id}"));
    std::fs::write(worktree.join(file), content).unwrap();
    let r = act(&s.c, &id, "push", json!({"commit": format!("change {file}")})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = act(&s.c, &id, "pr", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let detail = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await;
    let number = detail.body["pull_request"]["number"].as_u64().expect("a PR");
    (id, worktree, number)
}

async fn act(c: &Client, id: &str, action: &str, body: Value) -> Reply {
    c.post(&format!("/v1/organizations/default/tasks/{id}/{action}"), body).await
}

/// The task's events of `kind` (and, when given, with this `cause`).
async fn fired(c: &Client, task: &str, kind: &str, cause: &str) -> Vec<Value> {
    c.events_since("default", 0).await.into_iter().filter(|e| e["task"] == task && e["kind"] == kind && e["data"]["cause"] == cause).collect()
}

async fn wait_fired(c: &Client, task: &str, kind: &str, cause: &str, n: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{n} {kind} {cause}"), || {
        let c = c.clone();
        async move {
            let got = fired(&c, task, kind, cause).await;
            (got.len() >= n).then_some(got)
        }
    })
    .await
}

/// Waits until the PR poller has listed the pulls `n` more times.
async fn polls(gh: &FakeGithub, n: usize) {
    let count = || gh.requests().iter().filter(|r| r.path.contains("/pulls?state=all")).count();
    let start = count();
    eventually(WAIT, "more PR polls", || {
        let now = count();
        async move { (now >= start + n).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn ci_failed_hands_each_failure_over_once_says_when_it_repeats_then_escalates_and_survives_a_restart() {
    let gh = FakeGithub::start();
    let mut s = setup(&gh, json!({"ci_failed": {"enabled": true, "max_attempts": 2}})).await;
    let (id, worktree, _) = task_with_pr(&s, "feature.txt", "work\n").await;
    let mut term = Term::open(&s.c, "default", &id, 0).await;
    let log: String = (1..=60).map(|i| format!("log line {i}\n")).collect();

    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_failed_check_run(FULL, &head, "tests", "3 tests failed", &log, &[("src/lib.rs", 3, "expected 2, got 3")]);
    gh.add_check_run(FULL, &head, "lint", "completed", Some("success"), "clean");
    term.until(WAIT, "the CI hand-over", |t| {
        let text = t.text();
        text.contains("\x1b[200~CI failed on your pull request #1") && text.contains("log line 60") && text.contains("\x1b[201~")
    })
    .await;
    let text = term.text();
    assert!(text.contains("1. tests: failure (https://github.com/acme/app/runs/"), "{text}");
    assert!(text.contains("src/lib.rs:3 (failure): expected 2, got 3"), "the annotation: {text}");
    assert!(text.contains("3 tests failed"));
    assert!(!text.contains("log line 30") && !text.contains("lint:"), "only the tail, only the failure: {text}");
    let first = wait_fired(&s.c, &id, "reaction.fired", "ci_failed", 1).await;
    assert_eq!((first[0]["data"]["attempt"].as_i64(), first[0]["data"]["outcome"].as_str()), (Some(1), Some("delivered")));
    assert_eq!(first[0]["data"]["via"], "terminal");
    assert_eq!(first[0]["data"]["checks"][0]["name"], "tests");
    polls(&gh, 5).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "ci_failed").await.len(), 1, "once per cause");

    // The agent pushes a fix; the same check fails again on the new head.
    std::fs::write(worktree.join("feature.txt"), "fix 1\n").unwrap();
    assert_eq!(act(&s.c, &id, "push", json!({"commit": "fix 1"})).await.status, 200);
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_failed_check_run(FULL, &head, "tests", "1 test failed", "still broken\n", &[]);
    term.until(WAIT, "failed before on an earlier head (1 time)", |t| t.text().contains("failed before on an earlier head (1 time)")).await;
    let second = wait_fired(&s.c, &id, "reaction.fired", "ci_failed", 2).await;
    assert_eq!(second[1]["data"]["attempt"], 2);
    assert_eq!(second[1]["data"]["checks"][0]["failed_before"], 1);

    // A third failure is past max_attempts: escalated, once, and not typed.
    std::fs::write(worktree.join("feature.txt"), "fix 2\n").unwrap();
    assert_eq!(act(&s.c, &id, "push", json!({"commit": "fix 2"})).await.status, 200);
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_failed_check_run(FULL, &head, "tests", "round three", "", &[]);
    let escalated = wait_fired(&s.c, &id, "reaction.escalated", "ci_failed", 1).await;
    assert_eq!((escalated[0]["data"]["attempts"].as_i64(), escalated[0]["data"]["max_attempts"].as_i64()), (Some(2), Some(2)));
    polls(&gh, 5).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "ci_failed").await.len(), 2);
    assert_eq!(fired(&s.c, &id, "reaction.escalated", "ci_failed").await.len(), 1);
    assert!(!term.text().contains("round three"));

    // The task detail and `kiln show` list what fired.
    let detail = s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await;
    let rows = detail.body["reactions"].as_array().unwrap().clone();
    assert!(rows.iter().any(|r| r["cause"] == "ci_failed" && r["outcome"] == "escalated"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["outcome"] == "delivered").count(), 2, "{rows:?}");
    let (code, out, err) = cli(&s.server, &["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reaction      ci_failed #1 delivered: tests@"), "{out}");
    assert!(out.contains("ci_failed #3 escalated: escalated"), "{out}");

    // A restart forgets nothing: no cause fires again.
    s.server.stop();
    s.server.restart();
    s.c = s.server.client();
    polls(&gh, 5).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "ci_failed").await.len(), 2, "no re-fire after a restart");
    assert_eq!(fired(&s.c, &id, "reaction.escalated", "ci_failed").await.len(), 1);
}

#[actix_web::test]
async fn review_comments_reach_the_agent_as_one_message_with_bots_kept_apart() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({"changes_requested": {"enabled": true}, "bot_logins": ["ci-helper"]})).await;
    let (id, _, pr) = task_with_pr(&s, "feature.txt", "work\n").await;
    let mut term = Term::open(&s.c, "default", &id, 0).await;
    let hunk = "@@ -0,0 +1 @@\n+work";
    let review = gh.add_review_with_body(FULL, pr, "alice", "CHANGES_REQUESTED", "Please rename the file.");
    gh.add_review_comment(FULL, pr, "alice", "feature.txt", 1, hunk, "Say what work.", Some(review));
    gh.add_review_comment(FULL, pr, "lint[bot]", "feature.txt", 1, hunk, "Trailing newline missing (bot).", None);
    gh.add_review_comment(FULL, pr, "ci-helper", "feature.txt", 1, hunk, "Coverage dropped (helper).", None);
    term.until(WAIT, "the human review", |t| t.text().contains("Say what work.") && t.text().contains("\x1b[201~")).await;
    let text = term.text();
    assert!(text.contains("\x1b[200~New review feedback from reviewers on your pull request #1: 2 items"), "{text}");
    assert!(text.contains("alice requested changes") && text.contains("Please rename the file."), "{text}");
    assert!(text.contains("alice on feature.txt:1") && text.contains("> +work"), "file, line, quoted code: {text}");
    let human = wait_fired(&s.c, &id, "reaction.fired", "changes_requested", 1).await;
    assert_eq!(human[0]["data"]["comments"], 2);
    assert_eq!(human[0]["data"]["authors"], json!(["alice"]));
    polls(&gh, 5).await;
    assert!(!term.text().contains("(bot)") && !term.text().contains("(helper)"), "bots have their own switch");
    // The terminal shows it as typed and as the fake agent echoes it.
    let shown = term.text().matches("Say what work.").count();
    assert_eq!(fired(&s.c, &id, "reaction.fired", "changes_requested").await.len(), 1, "once per comment");

    // The bots' switch: both bots in one message, apart from the humans'.
    put_reactions(&s.c, json!({"changes_requested": {"enabled": true}, "bot_comments": {"enabled": true}, "bot_logins": ["ci-helper"]})).await;
    term.until(WAIT, "the bots' comments", |t| t.text().contains("(bot)") && t.text().contains("(helper)")).await;
    assert!(term.text().contains("New review feedback from bots on your pull request #1: 2 items"), "{}", term.text());
    let bots = wait_fired(&s.c, &id, "reaction.fired", "bot_comments", 1).await;
    assert_eq!(bots[0]["data"]["authors"], json!(["ci-helper", "lint[bot]"]));

    // A new human comment is a new firing carrying only itself.
    gh.add_review_comment(FULL, pr, "bob", "feature.txt", 1, hunk, "One more thing.", None);
    term.until(WAIT, "One more thing.", |t| t.text().contains("One more thing.")).await;
    let again = wait_fired(&s.c, &id, "reaction.fired", "changes_requested", 2).await;
    assert_eq!((again[1]["data"]["attempt"].as_i64(), again[1]["data"]["comments"].as_i64()), (Some(2), Some(1)));
    assert_eq!(term.text().matches("Say what work.").count(), shown, "an old comment is not sent again");
}

#[actix_web::test]
async fn a_merge_conflict_names_the_files_or_is_synced_by_kiln_when_clean() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({"merge_conflict": {"enabled": true}})).await;
    let (id, _, _) = task_with_pr(&s, "README.md", "the task's readme\n").await;
    let mut term = Term::open(&s.c, "default", &id, 0).await;
    // Someone changes the same file on main: the PR can no longer merge.
    std::fs::write(s.work.join("README.md"), "main's readme\n").unwrap();
    git(&s.work, &["commit", "-qam", "upstream readme"]);
    git(&s.work, &["push", "-q", "origin", "main"]);
    term.until(WAIT, "the conflict message", |t| t.text().contains("These files conflict:") && t.text().contains("rebase onto origin/main")).await;
    assert!(term.text().contains("#1 no longer merges cleanly with main") && term.text().contains("- README.md"), "{}", term.text());
    let got = wait_fired(&s.c, &id, "reaction.fired", "merge_conflict", 1).await;
    assert_eq!(got[0]["data"]["files"], json!(["README.md"]));
    polls(&gh, 5).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "merge_conflict").await.len(), 1);

    // With auto_sync, a PR GitHub calls unmergeable but that rebases cleanly is synced and pushed by Kiln.
    put_reactions(&s.c, json!({"merge_conflict": {"enabled": true, "auto_sync": true}})).await;
    let (other, worktree, pr) = task_with_pr(&s, "other-file.txt", "independent\n").await;
    let before = git(&worktree, &["rev-parse", "HEAD"]);
    // main moves on elsewhere, and GitHub (as it may) calls the PR unmergeable.
    std::fs::write(s.work.join("elsewhere.txt"), "upstream\n").unwrap();
    git(&s.work, &["add", "elsewhere.txt"]);
    git(&s.work, &["commit", "-qm", "upstream elsewhere"]);
    git(&s.work, &["push", "-q", "origin", "main"]);
    gh.set_mergeable(FULL, pr, Some(false));
    let synced = wait_fired(&s.c, &other, "reaction.fired", "merge_conflict", 1).await;
    assert_eq!(synced[0]["data"]["outcome"], "synced", "{synced:?}");
    let events = s.c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["task"] == other.as_str() && e["kind"] == "task.synced"));
    assert!(events.iter().any(|e| e["task"] == other.as_str() && e["kind"] == "task.pushed" && e["data"]["sha"] != before.as_str()));
    assert!(worktree.join("elsewhere.txt").exists(), "rebased onto the new main");
}

#[actix_web::test]
async fn an_agent_stuck_is_said_once_per_quiet_spell() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({"agent_stuck": {"enabled": true, "silent_secs": 1, "idle_without_pr_secs": 1}})).await;
    // `fake` never goes idle: running, and silent after its banner.
    let t = s.c.create_task("default", "origin", "be quiet").await;
    let id = t["id"].as_str().unwrap().to_string();
    let first = wait_fired(&s.c, &id, "reaction.fired", "agent_stuck", 1).await;
    assert_eq!((first[0]["data"]["reason"].as_str(), first[0]["data"]["attempt"].as_i64()), (Some("running_without_output"), Some(1)));
    // Many status polls later (every 200 ms; ten PR polls take as long), still once.
    polls(&gh, 10).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "agent_stuck").await.len(), 1, "once per quiet spell");
    // Output starts a new spell, which is said again when it lasts.
    let mut term = Term::open(&s.c, "default", &id, 0).await;
    term.send(b"hello\r").await;
    term.until(WAIT, "echo: hello", |t| t.text().contains("echo: hello")).await;
    let second = wait_fired(&s.c, &id, "reaction.fired", "agent_stuck", 2).await;
    assert_eq!(second[1]["data"]["attempt"], 2);

    // `quick` goes idle after a second; with no PR that is stuck too.
    let t = s.c.create_task_with("default", json!({"repo": "origin", "description": "idle", "agent": "quick"})).await;
    let idle = t["id"].as_str().unwrap().to_string();
    eventually(WAIT, "idle without a pull request", || {
        let (c, idle) = (s.c.clone(), idle.clone());
        async move {
            let got = fired(&c, &idle, "reaction.fired", "agent_stuck").await;
            got.iter().any(|e| e["data"]["reason"] == "idle_without_pull_request" && e["data"]["status"] == "idle").then_some(())
        }
    })
    .await;
}

#[actix_web::test]
async fn approved_and_green_says_ready_or_merges_when_asked() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({"approved_and_green": {"enabled": true}})).await;
    let (id, worktree, pr) = task_with_pr(&s, "feature.txt", "work\n").await;
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_check_run(FULL, &head, "tests", "completed", Some("success"), "all passed");
    polls(&gh, 3).await;
    assert!(fired(&s.c, &id, "reaction.fired", "approved_and_green").await.is_empty(), "green is not enough: it needs an approval");
    gh.add_review(FULL, pr, "alice", "APPROVED");
    let ready = wait_fired(&s.c, &id, "reaction.fired", "approved_and_green", 1).await;
    assert_eq!(ready[0]["data"]["outcome"], "notified");
    polls(&gh, 5).await;
    assert_eq!(fired(&s.c, &id, "reaction.fired", "approved_and_green").await.len(), 1, "once per head");
    assert_eq!(s.c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body["status"], "running", "not merged unless asked");

    // Opted in: merged with the configured method, and the task archived.
    put_reactions(&s.c, json!({"approved_and_green": {"enabled": true, "merge": true, "method": "merge"}})).await;
    let (other, worktree, pr) = task_with_pr(&s, "other.txt", "more\n").await;
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_check_run(FULL, &head, "tests", "completed", Some("success"), "all passed");
    gh.add_review(FULL, pr, "alice", "APPROVED");
    let merged = wait_fired(&s.c, &other, "reaction.fired", "approved_and_green", 1).await;
    assert_eq!((merged[0]["data"]["outcome"].as_str(), merged[0]["data"]["method"].as_str()), (Some("merged"), Some("merge")), "{merged:?}");
    let events = s.c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["task"] == other.as_str() && e["kind"] == "task.merged" && e["data"]["method"] == "merge"));
    assert!(gh.pull(FULL, pr)["merged"] == true);
    s.c.wait_status("default", &other, "archived").await;
}

#[actix_web::test]
async fn reaction_settings_are_checked() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({})).await;
    for (bad, needle) in [
        (json!({"ci_failed": {"enabled": true, "max_attempts": 21}}), "reactions.ci_failed.max_attempts"),
        (json!({"bot_logins": ["not a login"]}), "reactions.bot_logins"),
        (json!({"agent_stuck": {"silent_secs": 0}}), "reactions.agent_stuck.silent_secs"),
        (json!({"approved_and_green": {"method": "octopus"}}), "reactions.approved_and_green.method"),
    ] {
        let r = s.c.put("/v1/organizations/default/repos/origin/settings", json!({"reactions": bad})).await;
        assert_eq!((r.status, r.code()), (422, "invalid_settings"), "{r:?}");
        assert!(r.body["message"].as_str().unwrap().contains(needle), "{r:?}");
    }
    let r = s.c.put("/v1/organizations/default/repos/origin/settings", json!({"reactions": {"ci_failed": {"enabled": true, "retries": 2}}})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"), "{r:?}");
    let r = s.c.get("/v1/organizations/default/repos/origin").await;
    assert_eq!(r.body["settings"]["reactions"]["merge_conflict"]["auto_sync"], false, "defaults shown: {r:?}");
    assert_eq!(r.body["settings"]["reactions"]["ci_failed"]["enabled"], false);
}

#[actix_web::test]
async fn ci_failed_hands_over_the_tail_of_an_actions_jobs_log_when_the_token_may_read_it() {
    let gh = FakeGithub::start();
    let s = setup(&gh, json!({"ci_failed": {"enabled": true, "max_attempts": 5}})).await;
    let (id, worktree, _) = task_with_pr(&s, "feature.txt", "work\n").await;
    let mut term = Term::open(&s.c, "default", &id, 0).await;

    // A runner's log: timestamps, colours, groups, a token that leaked into the output.
    let mut log: String = (1..=80).map(|i| format!("2024-05-01T12:00:{:02}.0000000Z compile step {i}\n", i % 60)).collect();
    log.push_str("2024-05-01T12:01:00.0000000Z \x1b[31merror[E0425]\x1b[0m: cannot find value `answer`\n");
    log.push_str(&format!("2024-05-01T12:01:01.0000000Z using {}\n", gh.token()));
    log.push_str("2024-05-01T12:01:02.0000000Z ##[error]Process completed with exit code 101.\n");
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    let job = gh.add_failed_actions_job(FULL, &head, "build", "1 error", &log);
    term.until(WAIT, "the CI hand-over with the job's log", |t| {
        let text = t.text();
        text.contains("error: Process completed with exit code 101.") && text.contains("\x1b[201~")
    })
    .await;
    let text = term.text();
    assert!(text.contains("1. build: failure (https://github.com/acme/app/actions/runs/"), "{text}");
    assert!(text.contains("Job log (last "), "{text}");
    assert!(text.contains("| error[E0425]: cannot find value `answer`"), "colours and timestamps stripped: {text}");
    assert!(!text.contains("[31m") && !text.contains("2024-05-01T12"), "{text}");
    assert!(!text.contains(gh.token()) && text.contains("using ***"), "the token is redacted: {text}");
    assert!(text.contains("compile step 80") && !text.contains("compile step 10"), "only the tail: {text}");
    let fired1 = wait_fired(&s.c, &id, "reaction.fired", "ci_failed", 1).await;
    assert_eq!(fired1[0]["data"]["checks"][0]["job_log"], true, "{fired1:?}");
    // The log came through the redirect, fetched from the signed URL without the token.
    let reqs = gh.requests();
    assert!(reqs.iter().any(|r| r.path.ends_with(&format!("/actions/jobs/{job}/logs")) && r.status == 302), "{reqs:?}");
    assert!(reqs.iter().any(|r| r.path.starts_with("/_blobs/") && r.status == 200), "no token sent to the blob: {reqs:?}");

    // A token without actions:read: the hand-over still comes, with the check run's output only.
    gh.set_actions_read(false);
    std::fs::write(worktree.join("feature.txt"), "fix 1\n").unwrap();
    assert_eq!(act(&s.c, &id, "push", json!({"commit": "fix 1"})).await.status, 200);
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_failed_actions_job(FULL, &head, "build", "still 1 error (round two)", "2024-05-01T12:00:00.0000000Z secret log line\n");
    let second = wait_fired(&s.c, &id, "reaction.fired", "ci_failed", 2).await;
    assert_eq!((second[1]["data"]["outcome"].as_str(), second[1]["data"]["checks"][0]["job_log"].as_bool()), (Some("delivered"), Some(false)));
    term.until(WAIT, "the second hand-over", |t| t.text().contains("still 1 error (round two)")).await;
    let text = term.text();
    assert!(!text.contains("secret log line"), "{text}");
    assert!(gh.requests().iter().any(|r| r.path.contains("/actions/jobs/") && r.status == 403), "it asked and was refused");
}

#[actix_web::test]
async fn a_task_without_a_pr_is_told_once_when_its_work_no_longer_merges_with_its_moving_base() {
    let dir = tempdir();
    let server = Server::start_in(
        dir.path(),
        &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "1"), ("KILN_TASKS__STATUS_POLL_MS", "200")],
    );
    let c = server.client();
    let (bare, upstream) = bare_origin(dir.path());
    c.add_repo("default", &bare).await;
    let r = c
        .put("/v1/organizations/default/repos/origin/settings", json!({"reactions": {"merge_conflict": {"enabled": true, "auto_sync": true, "max_attempts": 3}}}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = c.create_task("default", "origin", "edit the readme").await;
    let id = t["id"].as_str().unwrap().to_string();
    let worktree = server.data_dir().join(format!("worktrees/default/origin/{id}"));
    let mut term = Term::open(&c, "default", &id, 0).await;
    // Uncommitted work: the prediction sees it.
    std::fs::write(worktree.join("README.md"), "hello from the task\n").unwrap();
    branch_polls(&c, 3).await;
    assert!(fired(&c, &id, "reaction.fired", "merge_conflict").await.is_empty(), "the base has not moved");

    // main moves on with another README.
    std::fs::write(upstream.join("README.md"), "hello from main\n").unwrap();
    git(&upstream, &["commit", "-q", "-am", "main's readme"]);
    git(&upstream, &["push", "-q", "origin", "main"]);
    term.until(WAIT, "the conflict message", |t| {
        let text = t.text();
        text.contains("\x1b[200~Your work (committed and uncommitted) no longer merges cleanly with main") && text.contains("\x1b[201~")
    })
    .await;
    assert!(term.text().contains("- README.md"), "{}", term.text());
    let got = wait_fired(&c, &id, "reaction.fired", "merge_conflict", 1).await;
    let d = &got[0]["data"];
    assert_eq!((d["source"].as_str(), d["outcome"].as_str(), d["attempt"].as_i64()), (Some("prediction"), Some("delivered"), Some(1)), "{d}");
    assert_eq!((d["base"].clone(), d["files"].clone()), (json!("main"), json!(["README.md"])));
    // auto_sync does not rebase uncommitted work (git's autostash would park it in
    // the stash on a conflict): the agent is told, and the worktree is untouched.
    let events = c.events_since("default", 0).await;
    assert!(!events.iter().any(|e| e["task"] == id.as_str() && e["kind"].as_str().unwrap().starts_with("task.sync")), "no sync tried");
    assert_eq!(std::fs::read_to_string(worktree.join("README.md")).unwrap(), "hello from the task\n");

    // The conflict stands while the agent keeps editing and commits: the same cause, not fired again.
    std::fs::write(worktree.join("README.md"), "hello from the task, edited more\n").unwrap();
    std::fs::write(worktree.join("other.txt"), "more work\n").unwrap();
    git(&worktree, &["commit", "-q", "-am", "the task's readme"]);
    let predicted = || async {
        c.events_since("default", 0).await.into_iter().filter(|e| e["task"] == id.as_str() && e["kind"] == "task.conflict_predicted").count()
    };
    let before = predicted().await;
    // Rounds enough for the edit to be seen (the same files predicted again say nothing new).
    branch_polls(&c, 5).await;
    assert_eq!(predicted().await, before);
    assert_eq!(fired(&c, &id, "reaction.fired", "merge_conflict").await.len(), 1, "once per cause");
}

/// Waits until `origin`'s branch poller has finished `n` more polls than now.
async fn branch_polls(c: &Client, n: u64) {
    let count = || async {
        let r = c.get("/admin/pollers").await;
        r.body["items"].as_array().unwrap().iter().find(|p| p["key"] == "org/default/repo/origin/branch-sync").and_then(|p| p["polls"].as_u64()).unwrap_or(0)
    };
    let from = count().await;
    eventually(WAIT, "the branch poller polls again", || async { (count().await >= from + n).then_some(()) }).await;
}

#[actix_web::test]
async fn a_task_without_a_pr_whose_committed_work_rebases_cleanly_is_synced_by_kiln_onto_its_moved_base() {
    let dir = tempdir();
    let server = Server::start_in(
        dir.path(),
        &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "1"), ("KILN_TASKS__STATUS_POLL_MS", "200")],
    );
    let c = server.client();
    let (bare, upstream) = bare_origin(dir.path());
    c.add_repo("default", &bare).await;
    let r = c
        .put("/v1/organizations/default/repos/origin/settings", json!({"reactions": {"merge_conflict": {"enabled": true, "auto_sync": true}}}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = c.create_task("default", "origin", "rewrite the readme").await;
    let id = t["id"].as_str().unwrap().to_string();
    c.wait_status("default", &id, "running").await;
    let worktree = server.data_dir().join(format!("worktrees/default/origin/{id}"));
    // Two commits on README.md, and nothing left uncommitted.
    std::fs::write(worktree.join("README.md"), "v1\n").unwrap();
    git(&worktree, &["commit", "-q", "-am", "readme v1"]);
    std::fs::write(worktree.join("README.md"), "v2\n").unwrap();
    git(&worktree, &["commit", "-q", "-am", "readme v2"]);
    assert_eq!(git(&worktree, &["status", "--porcelain"]), "", "a clean worktree");
    let before = git(&worktree, &["rev-parse", "HEAD"]);

    // main takes the task's first commit as its own (the same change): merging
    // the branch now conflicts on README.md (hello→v1 against hello→v2), yet a
    // rebase drops the commit main has and puts the second on top, cleanly.
    std::fs::write(upstream.join("README.md"), "v1\n").unwrap();
    git(&upstream, &["commit", "-q", "-am", "readme v1 (picked)"]);
    git(&upstream, &["push", "-q", "origin", "main"]);
    let main = git(&upstream, &["rev-parse", "HEAD"]);

    let got = wait_fired(&c, &id, "reaction.fired", "merge_conflict", 1).await;
    let d = &got[0]["data"];
    assert_eq!((d["source"].as_str(), d["outcome"].as_str(), d["attempt"].as_i64()), (Some("prediction"), Some("synced"), Some(1)), "{d}");
    assert_eq!((d["base"].clone(), d["files"].clone()), (json!("main"), json!(["README.md"])));
    let events = c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["task"] == id.as_str() && e["kind"] == "task.conflict_predicted" && e["data"]["other"] == "base"));
    let synced = events.iter().find(|e| e["task"] == id.as_str() && e["kind"] == "task.synced").expect("task.synced");
    // The branch is now on top of the moved base, with the second commit only.
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    assert_ne!(head, before);
    assert_eq!(synced["data"]["head"], head.as_str(), "{synced}");
    assert_eq!(git(&worktree, &["rev-parse", "HEAD~1"]), main, "the branch sits right on main");
    assert_eq!(git(&worktree, &["log", "-1", "--format=%s"]), "readme v2");
    assert_eq!(std::fs::read_to_string(worktree.join("README.md")).unwrap(), "v2\n");
    assert_eq!(git(&worktree, &["status", "--porcelain"]), "");
    // Nothing was published for review, and the agent was told nothing.
    assert!(!events.iter().any(|e| e["task"] == id.as_str() && e["kind"] == "task.pushed"), "no push without a PR");
    // The conflict clears once the branch is on the base, and nothing fires again.
    eventually(WAIT, "the conflict cleared", || async {
        let events = c.events_since("default", 0).await;
        events.iter().any(|e| e["task"] == id.as_str() && e["kind"] == "task.conflict_cleared" && e["data"]["reason"] == "resolved").then_some(())
    })
    .await;
    branch_polls(&c, 3).await;
    let all = fired(&c, &id, "reaction.fired", "merge_conflict").await;
    assert_eq!(all.len(), 1, "{all:?}");
}

#[actix_web::test]
async fn a_task_with_an_open_pr_is_left_to_the_pull_requests_merge_conflict_not_the_predictions() {
    let gh = FakeGithub::start();
    let env = [("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "1")];
    let s = setup_with(&gh, json!({"merge_conflict": {"enabled": true}}), &env).await;
    let (id, _, pr) = task_with_pr(&s, "README.md", "the task's readme\n").await;
    // main changes the same file: the prediction sees the conflict with the base,
    // and GitHub calls the PR unmergeable.
    std::fs::write(s.work.join("README.md"), "main's readme\n").unwrap();
    git(&s.work, &["commit", "-qam", "upstream readme"]);
    git(&s.work, &["push", "-q", "origin", "main"]);
    eventually(WAIT, "the conflict with the base predicted", || {
        let c = s.c.clone();
        let id = id.clone();
        async move {
            let events = c.events_since("default", 0).await;
            events.iter().any(|e| e["task"] == id.as_str() && e["kind"] == "task.conflict_predicted" && e["data"]["other"] == "base").then_some(())
        }
    })
    .await;
    let got = wait_fired(&s.c, &id, "reaction.fired", "merge_conflict", 1).await;
    assert_eq!((got[0]["data"]["source"].as_str(), got[0]["data"]["number"].as_u64()), (Some("pull_request"), Some(pr)), "{got:?}");
    // Rounds of prediction and PR polls later, the task was told once, by the PR's path.
    branch_polls(&s.c, 5).await;
    polls(&gh, 3).await;
    let all = fired(&s.c, &id, "reaction.fired", "merge_conflict").await;
    assert!(all.iter().all(|e| e["data"]["source"] == "pull_request"), "no firing from the prediction: {all:?}");
    assert_eq!(all.len(), 1, "{all:?}");
}
