//! Predicted conflicts in the dashboard, in a real Chromium: the badge on the
//! board's cards (loaded with the page, then live from `task.conflict_*`
//! events) and the list on the task page, which goes away live when the
//! conflict is cleared. Screenshots at desktop and phone width, light and dark.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::{eventually, git, git_repo, Client, Server};
use crate::web_support::{assert_no_overflow, org_with_token, running_task, sign_in, worktree};

const WAIT: Duration = Duration::from_secs(60);
const GREETING: &str = "# Greeting\n\nHello, world.\n\nSay it once.\n";

fn app_repo(parent: &Path) -> PathBuf {
    let repo = git_repo(parent, "app");
    std::fs::write(repo.join("greeting.md"), GREETING).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "greeting"]);
    repo
}

async fn task(admin: &Client, title: &str) -> String {
    running_task(admin, "acme", json!({"repo": "app", "title": title, "description": title})).await
}

async fn predicted(admin: &Client) -> usize {
    admin.get("/v1/organizations/acme/repos/app/conflicts").await.body["items"].as_array().map(Vec::len).unwrap_or(0)
}

const BADGE_WITH: &str = "const b = document.querySelector(`.card[data-task=\"${arguments[0]}\"] .badge.predicted`); return b && b.textContent.includes(arguments[1]) ? b.textContent : null";
const BADGE: &str = "const b = document.querySelector(`.card[data-task=\"${arguments[0]}\"] .badge.predicted`); return b ? b.textContent : null";

#[actix_web::test]
async fn in_a_browser_predicted_conflicts_show_on_cards_and_the_task_page_live() {
    let (server, dir) = Server::start(&[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "3600")]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &app_repo(dir.path())).await;
    let a = task(&admin, "Make the greeting warmer").await;
    let b = task(&admin, "Translate the greeting").await;
    let quiet = task(&admin, "Add a licence file").await;
    std::fs::write(worktree(&admin, "acme", &a).await.join("greeting.md"), GREETING.replace("Hello, world.", "Hello, dear world!")).unwrap();
    std::fs::write(worktree(&admin, "acme", &b).await.join("greeting.md"), GREETING.replace("Hello, world.", "Bonjour, le monde.")).unwrap();
    std::fs::write(worktree(&admin, "acme", &quiet).await.join("LICENCE"), "MIT\n").unwrap();
    eventually(WAIT, "a and b predicted to conflict", || async { (predicted(&admin).await == 1).then_some(()) }).await;

    // Loaded with the page.
    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.until("a's badge", BADGE, json!([a])).await;
    let said = browser.until("b's badge", BADGE, json!([b])).await;
    assert_eq!(said, "⚠Conflict predicted");
    assert_eq!(browser.eval(BADGE, json!([quiet])).await, Value::Null, "no badge on a task that conflicts with nothing");
    let title = browser.eval("return document.querySelector(`.card[data-task=\"${arguments[0]}\"] .badge.predicted`).title", json!([a])).await;
    assert_eq!(title, "Predicted to conflict: with “Translate the greeting” in greeting.md");

    // Live: a third task edits the same line; the cards change without a reload.
    browser.eval("window.__sameDocument = true", json!([])).await;
    let c = task(&admin, "Shorten the greeting").await;
    std::fs::write(worktree(&admin, "acme", &c).await.join("greeting.md"), GREETING.replace("Hello, world.", "Hi.")).unwrap();
    browser.until("c's badge", BADGE, json!([c])).await;
    let said = browser.until("a has two", BADGE_WITH, json!([a, "2 conflicts"])).await;
    assert_eq!(said, "⚠2 conflicts");
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "the page was not reloaded");
    browser.screenshot("conflicts-board-desktop").await;

    // The task page lists them, with links to the other tasks.
    browser.goto(&format!("{}/tasks/{a}", server.url)).await;
    let list = browser.until("the task page's list", "const l = document.getElementById('task-conflicts'); return l ? l.textContent : null", json!([])).await;
    let list = list.as_str().unwrap().to_string();
    assert!(list.contains("2 conflicts predicted") && list.contains("“Translate the greeting”") && list.contains("“Shorten the greeting”"), "{list}");
    assert!(list.contains("greeting.md"), "{list}");
    let link = browser.eval(&format!("return document.querySelector('#task-conflicts li[data-other=\"{b}\"] a').getAttribute('href')"), json!([])).await;
    assert_eq!(link, format!("/tasks/{b}"));
    browser.screenshot("conflicts-task-desktop").await;
    browser.color_scheme("dark").await;
    browser.screenshot("conflicts-task-dark-desktop").await;
    browser.color_scheme("light").await;
    browser.viewport(390, 844).await;
    browser.screenshot("conflicts-task-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.goto(&format!("{}/", server.url)).await;
    browser.until("a's badge at phone width", BADGE, json!([a])).await;
    browser.screenshot("conflicts-board-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling on the board at phone width").await;
    browser.viewport(1280, 800).await;

    // b and c give the line back: a's list goes away live.
    browser.goto(&format!("{}/tasks/{a}", server.url)).await;
    browser.wait_for("#task-conflicts").await;
    for t in [&b, &c] {
        std::fs::write(worktree(&admin, "acme", t).await.join("greeting.md"), GREETING).unwrap();
    }
    browser.until("the list cleared", "return document.getElementById('task-conflicts') ? null : true", json!([])).await;
    assert_eq!(predicted(&admin).await, 0);
}
