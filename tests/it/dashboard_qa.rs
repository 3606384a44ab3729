//! The Changes pane keeps an open review comment's unsent text (and its focus
//! and caret) when the diff is redrawn: by a `branch.updated` from the branch
//! poller while the agent works, or by a switch of layout.

use serde_json::json;

use crate::browser::Browser;
use crate::common::{git, git_repo, Server};
use crate::web_support::{org_with_token, running_task, sign_in, worktree, write};

const FILE: &str = "return !!document.querySelector(`.diff-file[data-path=\"${arguments[0]}\"]`)";
/// The open comment box's text, and whether it has the focus.
const BOX: &str = "const t = document.querySelector('.comment-form textarea'); \
    return t ? { value: t.value, focused: document.activeElement === t, caret: t.selectionStart } : null";

#[actix_web::test]
async fn in_a_browser_an_open_comment_keeps_its_text_when_the_changes_are_redrawn() {
    let (server, dir) = Server::start(&[("KILN_REPOS__BRANCH_POLL_MS", "200")]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    let repo = git_repo(dir.path(), "app");
    write(&repo, "src/app.js", "export function greet(name) {\n  return 'Hello ' + name;\n}\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "app"]);
    admin.add_repo("acme", &repo).await;
    let id = running_task(&admin, "acme", json!({"repo": "app", "title": "Greet", "description": "Greet politely"})).await;
    let wt = worktree(&admin, "acme", &id).await;
    write(&wt, "src/app.js", "export function greet(name) {\n  return `Good morning, ${name}.`;\n}\n");

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.goto(&format!("{}/tasks/{id}?tab=changes", server.url)).await;
    browser.until("src/app.js in Changes", FILE, json!(["src/app.js"])).await;

    // A comment box opened on line 2, half typed, not added.
    let line = ".add-comment[data-path=\"src/app.js\"][data-line=\"2\"][data-side=\"new\"]";
    browser.wait_for(line).await;
    browser.click(line).await;
    browser.type_into(".comment-form textarea", "Drop the trailing per").await;
    let loaded = browser.eval("return Number(document.getElementById('diff-files').dataset.loaded)", json!([])).await;

    // The agent commits meanwhile: the branch poller's `branch.updated` redraws the diff.
    git(&wt, &["add", "."]);
    git(&wt, &["commit", "-q", "-m", "polite"]);
    write(&wt, "NOTES.md", "more work\n");
    browser.until("NOTES.md appears live", FILE, json!(["NOTES.md"])).await;
    let reloaded = browser.eval("return Number(document.getElementById('diff-files').dataset.loaded)", json!([])).await;
    assert!(reloaded.as_u64() > loaded.as_u64(), "the diff was redrawn: {loaded} → {reloaded}");
    let open = browser.eval(BOX, json!([])).await;
    assert_eq!(open["value"], "Drop the trailing per", "the unsent text survives the redraw: {open}");
    assert_eq!(open["focused"], true, "and keeps the focus: {open}");
    assert_eq!(open["caret"], 21, "and the caret at the end of what was typed: {open}");

    // Typing goes on where it was; a layout switch redraws again and keeps it too.
    browser.type_into(".comment-form textarea", "iod").await;
    browser.click("button[data-view='split']").await;
    browser.wait_for(".diff-table.split").await;
    let open = browser.eval(BOX, json!([])).await;
    assert_eq!(open["value"], "Drop the trailing period", "{open}");

    // Added, it becomes a pending comment and the box is gone for good.
    browser.click(".comment-form button[type='submit']").await;
    browser.until("one pending comment", "return document.getElementById('review-count')?.textContent === '1'", json!([])).await;
    write(&wt, "MORE.md", "and more\n");
    browser.until("MORE.md appears live", FILE, json!(["MORE.md"])).await;
    assert_eq!(browser.eval(BOX, json!([])).await, serde_json::Value::Null, "an added comment's box does not come back");
}
