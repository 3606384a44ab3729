//! The task page's Changes pane and its review, in a real Chromium: a file
//! changed in the worktree shows up (live, from the branch poller's event), the
//! unified and split views, and review comments that reach the agent — typed
//! into its terminal, or as a prompt to its open ACP session. Screenshots at
//! desktop and phone width. (The render time of a 10,000-line diff is measured
//! by `cargo bench --bench diff`, docs/performance.md.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::common::{eventually, git, git_repo, Server, Term};
use crate::fake_sandbox_agent::fake_sandbox_agent_bin;
use crate::web_support::{assert_no_overflow, org_with_token, running_task, sign_in, worktree, write};

const WAIT: Duration = Duration::from_secs(60);

/// A repository with a small app in it.
fn app_repo(parent: &Path) -> PathBuf {
    let repo = git_repo(parent, "app");
    write(&repo, "src/app.js", "export function greet(name) {\n  return 'Hello ' + name;\n}\n\nexport const VERSION = '1.0';\n");
    write(&repo, "docs/guide.md", "# Guide\n\nRun it.\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "app"]);
    repo
}

const FILE: &str = "return !!document.querySelector(`.diff-file[data-path=\"${arguments[0]}\"]`)";

/// Clicks a line's comment button and adds `text`.
async fn comment(browser: &Browser, path: &str, line: u32, text: &str) {
    let button = format!(".add-comment[data-path=\"{path}\"][data-line=\"{line}\"][data-side=\"new\"]");
    browser.wait_for(&button).await;
    browser.click(&button).await;
    browser.type_into(".comment-form textarea", text).await;
    browser.click(".comment-form button[type='submit']").await;
}

#[actix_web::test]
async fn in_a_browser_a_worktree_change_shows_in_changes_and_a_review_reaches_the_agent() {
    let bin = fake_sandbox_agent_bin();
    let (server, dir) = Server::start(&[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_SANDBOX_AGENT_BIN", bin.to_str().unwrap())]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &app_repo(dir.path())).await;
    let id = running_task(&admin, "acme", json!({"repo": "app", "title": "Greet politely", "description": "Make the greeting polite"})).await;
    let wt = worktree(&admin, "acme", &id).await;
    // The agent's work: a commit, an edit, a new file.
    write(&wt, "src/app.js", "export function greet(name) {\n  return `Good morning, ${name}.`;\n}\n\nexport const VERSION = '1.1';\n");
    git(&wt, &["commit", "-q", "-am", "polite greeting"]);
    write(&wt, "docs/guide.md", "# Guide\n\nRun it with `npm start`.\n\nIt greets you politely.\n");
    write(&wt, "src/polite.test.js", "import { greet } from './app.js';\n\ntest('greets', () => {\n  expect(greet('Ada')).toBe('Good morning, Ada.');\n});\n");

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.goto(&format!("{}/tasks/{id}?tab=changes", server.url)).await;
    browser.until("src/app.js in Changes", FILE, json!(["src/app.js"])).await;
    browser.until("the untracked test file in Changes", FILE, json!(["src/polite.test.js"])).await;
    let text = browser.text().await;
    assert!(text.contains("Good morning, ${name}.") && text.contains("'Hello ' + name"), "the edit, both sides: {text}");
    assert!(text.contains("3 files changed"), "{text}");

    // Changed in the worktree while the page is open: it appears with no reload
    // and no click (the branch poller's event).
    browser.eval("window.__sameDocument = true", json!([])).await;
    write(&wt, "CHANGELOG.md", "## 1.1\n\n- A polite greeting.\n");
    browser.until("CHANGELOG.md appears live", FILE, json!(["CHANGELOG.md"])).await;
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "the page was not reloaded");
    browser.screenshot("changes-desktop").await;

    // Split view: old and new side by side.
    browser.click("button[data-view='split']").await;
    browser.wait_for(".diff-table.split").await;
    browser.screenshot("changes-split-desktop").await;
    browser.click("button[data-view='unified']").await;
    browser.wait_for(".diff-table.unified").await;

    // Review: two comments and a note, sent to the agent's terminal.
    comment(&browser, "src/app.js", 2, "Use a template without the trailing period").await;
    comment(&browser, "src/polite.test.js", 4, "Also test an empty name").await;
    browser.until("two pending comments", "return document.getElementById('review-count')?.textContent === '2'", json!([])).await;
    browser.type_into("#review-note", "Otherwise good").await;
    browser.screenshot("review-desktop").await;
    browser.color_scheme("dark").await;
    browser.screenshot("review-dark-desktop").await;
    browser.color_scheme("light").await;
    browser.viewport(390, 844).await;
    browser.screenshot("changes-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width (the diff scrolls inside its box)").await;
    browser.viewport(1280, 800).await;
    browser.click("#review-send").await;
    let said = browser.until("the page says where it went", "const r = document.querySelector('.review-result'); return r && !r.hidden && r.textContent", json!([])).await;
    assert!(said.as_str().unwrap().contains("typed into the agent's terminal"), "{said}");
    assert_eq!(browser.eval("return document.getElementById('review-count').textContent", json!([])).await, "", "the draft is cleared");
    // The agent got it: the fake agent echoes each line it reads.
    let mut term = Term::open(&admin, "acme", &id, 0).await;
    term.until(WAIT, "the review in the terminal", |t| {
        let out = t.text();
        ["echo: 1. src/app.js:2", "Use a template without the trailing period", "echo: 2. src/polite.test.js:4", "Also test an empty name", "Otherwise good"]
            .iter()
            .all(|n| out.contains(n))
    })
    .await;
    let events = admin.events_since("acme", 0).await;
    let sent = events.iter().find(|e| e["kind"] == "task.review_sent").expect("task.review_sent");
    assert_eq!(sent["data"]["files"], json!(["src/app.js", "src/polite.test.js"]));

    // With an ACP session open, the next review is its prompt.
    let r = admin.post(&format!("/v1/organizations/acme/tasks/{id}/sessions"), json!({"agent": "fake"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let sid = r.body["id"].as_str().unwrap().to_string();
    comment(&browser, "CHANGELOG.md", 3, "Mention the test").await;
    browser.click("#review-send").await;
    let said = browser
        .until("sent to the session", "const r = document.querySelector('.review-result'); return r && /session/.test(r.textContent) && r.textContent", json!([]))
        .await;
    assert!(said.as_str().unwrap().contains(&sid), "{said}");
    eventually(WAIT, "the review in the session's transcript", || async {
        let t = admin.get(&format!("/v1/organizations/acme/tasks/{id}/sessions/{sid}/transcript")).await;
        let items = t.body["transcript"]["items"].as_array().cloned().unwrap_or_default();
        items.iter().any(|i| i["type"] == "user" && i["text"].as_str().is_some_and(|s| s.contains("1. CHANGELOG.md:3") && s.contains("Mention the test"))).then_some(())
    })
    .await;

    // Killed: the page says why nothing can be sent, in the API's words.
    assert_eq!(admin.delete(&format!("/v1/organizations/acme/tasks/{id}/sessions/{sid}")).await.status, 200);
    assert_eq!(admin.post(&format!("/v1/organizations/acme/tasks/{id}/kill"), json!({})).await.status, 200);
    browser.until("the diff says there is no worktree", "return /no worktree/.test(document.querySelector('.changes-main .error')?.textContent || '')", json!([])).await;
}
