//! The dashboard's attention features in a real Chromium (`browser.rs`): the
//! inbox and browser notifications from the live event stream, the page title's
//! count, the command palette and the shortcuts sheet, and dark mode, with
//! screenshots at desktop and phone width.

use serde_json::json;

use crate::browser::Browser;
use std::time::Duration;

use crate::common::{eventually, git_repo, Server, Term};
use crate::web_support::{assert_no_overflow, id, org_with_token, running_task, sign_in_live};

const CONTROL: &str = "\u{E009}";
const ESCAPE: &str = "\u{E00C}";
const TAB: &str = "\u{E004}";

const TITLE: &str = "return document.title";
const UNREAD: &str = "return document.getElementById('inbox-count')?.textContent || '0'";
/// The notifications the page made: the real constructor, recorded.
const RECORD_NOTIFICATIONS: &str = "window.__notes = []; const Real = window.__RealNotification ||= window.Notification; \
    window.Notification = class extends Real { constructor(title, options) { super(title, options); window.__notes.push({title, tag: options && options.tag}); } }; \
    return Real.permission;";
const NOTES: &str = "return window.__notes.map(n => n.title)";
const NOTES_SOON: &str = "return window.__notes.length && window.__notes.map(n => n.title)";

#[actix_web::test]
async fn in_a_browser_a_task_going_idle_live_makes_an_inbox_entry_a_notification_and_counts_in_the_title() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    // Before the page opens: one task went idle (history: listed, never notified).
    let old = admin.create_task_with("acme", json!({"repo": "app", "title": "Tidy the README", "description": "Tidy the README", "agent": "quick"})).await;
    admin.wait_status("acme", &id(&old), "idle").await;
    let busy = admin.create_task_with("acme", json!({"repo": "app", "title": "Port the CLI", "description": "Port the CLI"})).await;
    admin.wait_status("acme", &id(&busy), "running").await;

    let browser = Browser::start().await;
    sign_in_live(&browser, &server, &token, "acme").await;
    browser.until("the history's entry is unread", &format!("{UNREAD} === '1'"), json!([])).await;
    assert_eq!(browser.eval(TITLE, json!([])).await, "(1) Kiln", "the title counts what needs you");

    // Notifications: the inbox offers the switch while the browser has not been asked.
    browser.click("#inbox-button").await;
    browser.wait_for("#inbox[role=dialog] #enable-notifications").await;
    let entries = browser.eval("return [...document.querySelectorAll('.inbox-entry a')].map(a => a.dataset.task)", json!([])).await;
    assert_eq!(entries, json!([id(&old)]), "the history's idle task is listed");
    browser.press(&[ESCAPE]).await;
    browser.until("Escape closes the inbox", "return !document.getElementById('inbox')", json!([])).await;
    browser.set_permission("notifications", "granted").await;
    assert_eq!(browser.eval(RECORD_NOTIFICATIONS, json!([])).await, "granted");

    // The board keeps the cards that did not change (it patches, not redraws: docs/performance.md).
    browser.eval("window.__busyCard = document.querySelector(`a.card[data-task=\"${arguments[0]}\"]`); return !!window.__busyCard", json!([id(&busy)])).await;
    // Live: a task goes idle while the page is on the board.
    let live = admin.create_task_with("acme", json!({"repo": "app", "title": "Fix the flaky login test", "description": "Fix it", "agent": "quick"})).await;
    let live_id = id(&live);
    admin.wait_status("acme", &live_id, "idle").await;
    browser.until("the live entry is unread", &format!("{UNREAD} === '2'"), json!([])).await;
    browser.until("the title counts it", "return document.title === '(2) Kiln'", json!([])).await;
    let kept = browser.eval("return document.querySelector(`a.card[data-task=\"${arguments[0]}\"]`) === window.__busyCard", json!([id(&busy)])).await;
    assert_eq!(kept, true, "an unchanged card is the same element after a live update");
    let notes = browser.until("a notification", "return window.__notes.length && window.__notes", json!([])).await;
    assert_eq!(notes, json!([{"title": "Went idle: Fix the flaky login test", "tag": format!("kiln:acme:{live_id}")}]), "only the live event notifies");

    browser.click("#inbox-button").await;
    browser.wait_for(&format!(".inbox-entry.unread a[data-task='{live_id}']")).await;
    let order = browser.eval("return [...document.querySelectorAll('.inbox-entry a')].map(a => a.dataset.task)", json!([])).await;
    assert_eq!(order, json!([live_id.clone(), id(&old)]), "newest first");
    assert!(browser.text().await.contains("Notifications are on"));
    browser.screenshot("inbox-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("inbox-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.viewport(1280, 800).await;

    // A click opens the task and marks the entry read; the mark outlives a reload.
    browser.eval("window.__sameDocument = true", json!([])).await;
    browser.click(&format!(".inbox-entry a[data-task='{live_id}']")).await;
    browser.until("the task page", &format!("return location.pathname === '/tasks/{live_id}'"), json!([])).await;
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "no reload");
    browser.until("one unread left", &format!("{UNREAD} === '1'"), json!([])).await;
    // The mark is the server's (the organization's inbox, shared with `kiln inbox`), not the browser's.
    let marked = eventually(Duration::from_secs(10), "the read mark on the server", || async {
        let r = admin.get("/v1/organizations/acme/inbox").await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        items.iter().any(|e| e["task"] == live_id.as_str() && e["read_at"].is_i64()).then_some(items)
    })
    .await;
    assert!(marked.iter().any(|e| e["task"] == id(&old).as_str() && e["read_at"].is_null()), "only that entry: {marked:?}");
    let stored = browser.eval("return Object.keys(localStorage).filter(k => k.startsWith('kiln:inbox-read:'))", json!([])).await;
    assert_eq!(stored, json!([]), "no read marks in the browser");

    // The task's page is showing and focused: its next idle is listed, not notified.
    browser.eval(RECORD_NOTIFICATIONS, json!([])).await;
    browser.until("the page has the focus", "return document.hasFocus()", json!([])).await;
    let mut term = Term::open(&admin, "acme", &live_id, 0).await;
    term.send(b"wake up\n").await;
    term.expect("echo: wake up").await;
    admin.wait_status("acme", &live_id, "running").await;
    admin.wait_status("acme", &live_id, "idle").await;
    browser
        .until("the second idle is listed", &format!("return document.getElementById('inbox-count')?.textContent === '2' && document.title === '(2) Kiln' && '{live_id}'"), json!([]))
        .await;
    assert_eq!(browser.eval(NOTES, json!([])).await, json!([]), "no notification for the task on screen");

    // Mark all read; a reload keeps it, and replays no notification.
    browser.click("#inbox-button").await;
    browser.click("#inbox-mark-all").await;
    browser.until("nothing unread", "return !document.querySelector('.inbox-entry.unread') && document.getElementById('inbox-count').textContent === ''", json!([])).await;
    browser.goto(&format!("{}/", server.url)).await;
    browser.wait_for(".board").await;
    browser.eval(RECORD_NOTIFICATIONS, json!([])).await;
    browser.click("#inbox-button").await;
    browser.until("the entries are back, read", "return document.querySelectorAll('.inbox-entry').length === 3 && !document.querySelector('.inbox-entry.unread')", json!([])).await;
    assert_eq!(browser.eval(UNREAD, json!([])).await, "0");
    assert_eq!(browser.eval("return document.title", json!([])).await, "(2) Kiln", "the title still counts the idle tasks");
    assert_eq!(browser.eval(NOTES, json!([])).await, json!([]));
}

#[actix_web::test]
async fn in_a_browser_the_palette_finds_a_task_runs_its_actions_and_every_view_works_in_dark_mode() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.add_repo("acme", &git_repo(dir.path(), "api")).await;
    let a = admin.create_task_with("acme", json!({"repo": "app", "title": "Add dark mode to settings", "description": "Add dark mode"})).await;
    let b = admin.create_task_with("acme", json!({"repo": "api", "title": "Rate-limit the login endpoint", "description": "Rate-limit it", "agent": "quick"})).await;
    let c = admin.create_task_with("acme", json!({"repo": "app", "title": "Upgrade the date library", "description": "Upgrade it"})).await;
    let (a, b, c) = (id(&a), id(&b), id(&c));
    admin.wait_status("acme", &a, "running").await;
    admin.wait_status("acme", &b, "idle").await;
    admin.wait_status("acme", &c, "running").await;

    let browser = Browser::start().await;
    sign_in_live(&browser, &server, &token, "acme").await;
    browser.eval("window.__sameDocument = true", json!([])).await;

    // Ctrl+K opens the palette, focused, as a modal dialog.
    browser.press(&[CONTROL, "k"]).await;
    browser.wait_for("#palette[role=dialog][aria-modal=true]").await;
    assert_eq!(browser.eval("return document.activeElement.id", json!([])).await, "palette-input");
    // Focus stays inside: Tab from the last control comes back around.
    for _ in 0..3 {
        browser.press(&[TAB]).await;
        assert_eq!(browser.eval("return !!document.activeElement.closest('#palette')", json!([])).await, true, "focus left the dialog");
    }
    browser.press(&[ESCAPE]).await;
    browser.until("Escape closes it", "return !document.getElementById('palette')", json!([])).await;

    // Find a task by a word of its title, and go there with Enter.
    browser.press(&[CONTROL, "k"]).await;
    browser.wait_for("#palette-input").await;
    browser.type_into("#palette-input", "date lib").await;
    browser
        .until("c is the first result", "const o = document.querySelector('#palette-list [role=option]'); return o && o.dataset.task === arguments[0] && o.getAttribute('aria-selected') === 'true'", json!([c]))
        .await;
    browser.screenshot("palette-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("palette-phone").await;
    browser.viewport(1280, 800).await;
    browser.press(&["\u{E007}"]).await; // Enter
    browser.until("c's page", "return location.pathname === `/tasks/${arguments[0]}`", json!([c])).await;
    assert_eq!(browser.eval("return !document.getElementById('palette')", json!([])).await, true, "the palette closed");
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "no reload");
    // An id works as well as a title.
    browser.press(&[CONTROL, "k"]).await;
    browser.type_into("#palette-input", &a[..6]).await;
    browser.until("a by its id", "const o = document.querySelector('#palette-list [role=option][data-kind=task]'); return o && o.dataset.task === arguments[0]", json!([a])).await;
    browser.press(&[ESCAPE]).await;

    // On a task page the palette has the actions its status allows, and runs them.
    browser.until("c is running", "return document.getElementById('task-status')?.textContent === 'Running'", json!([])).await;
    browser.press(&[CONTROL, "k"]).await;
    browser.type_into("#palette-input", "push").await;
    browser.until("the push action", "return [...document.querySelectorAll('#palette-list .palette-label')].some(l => l.textContent.startsWith('Push:'))", json!([])).await;
    let labels = browser.eval("document.getElementById('palette-input').value = ''; document.getElementById('palette-input').dispatchEvent(new Event('input')); return [...document.querySelectorAll('#palette-list [data-kind=command] .palette-label')].map(l => l.textContent)", json!([])).await;
    let labels: Vec<String> = serde_json::from_value(labels).unwrap();
    for want in ["Push:", "Sync:", "Open PR:", "Merge:", "Archive:", "Kill:"] {
        assert!(labels.iter().any(|l| l.starts_with(want)), "{want} in {labels:?}");
    }
    assert!(!labels.iter().any(|l| l.starts_with("Resume:")), "a running task cannot resume: {labels:?}");
    // Push runs the page's own action code: its answer shows as the button's would.
    browser.type_into("#palette-input", "push").await;
    browser.until("push is selected", "return document.querySelector('#palette-list [aria-selected=true] .palette-label')?.textContent.startsWith('Push:')", json!([])).await;
    browser.press(&["\u{E007}"]).await;
    let answered = browser
        .until("push answered", "const e = document.querySelector('.task-head ~ p.error'); const a = document.getElementById('announce'); return (e && !e.hidden && e.textContent) || (a && a.textContent)", json!([]))
        .await;
    let answered = answered.as_str().unwrap();
    assert!(answered == "Push: done" || answered.starts_with("Push failed: "), "{answered}");
    let pushed = admin.get(&format!("/v1/organizations/acme/events?task={c}&kind=task.pushed")).await.body;
    assert_eq!(pushed["items"].as_array().map(|i| i.len()), Some(usize::from(answered == "Push: done")), "{pushed}");

    // ? shows the shortcuts; Escape closes it.
    browser.eval("document.activeElement.blur()", json!([])).await;
    browser.press(&["?"]).await;
    browser.wait_for("#shortcuts[role=dialog]").await;
    assert!(browser.text().await.contains("Command palette"));
    browser.press(&[ESCAPE]).await;
    browser.until("closed", "return !document.getElementById('shortcuts')", json!([])).await;

    // Dark mode: the system's setting, then the toggle. Every view, desktop and phone.
    browser.color_scheme("dark").await;
    browser.goto(&format!("{}/", server.url)).await;
    browser.wait_for(".board .card").await;
    let bg = "return getComputedStyle(document.body).backgroundColor";
    assert_eq!(browser.eval(bg, json!([])).await, "rgb(13, 17, 23)", "the page follows prefers-color-scheme");
    browser.screenshot("board-dark-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("board-dark-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.viewport(1280, 800).await;
    browser.click(&format!("a.card[data-task='{a}']")).await;
    browser.until("the terminal shows output", "return (document.querySelector('.xterm-rows')?.textContent || '').trim().length > 0", json!([])).await;
    browser.screenshot("task-dark-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("task-dark-phone").await;
    browser.viewport(1280, 800).await;
    browser.click("#tab-events").await;
    browser.until("the events list", "return document.querySelectorAll('.event').length > 0", json!([])).await;
    browser.screenshot("task-events-dark-desktop").await;
    browser.click("a[href='/new']").await;
    browser.wait_for("#nt-agent option[value='typed']").await;
    browser.screenshot("new-task-dark-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("new-task-dark-phone").await;
    browser.viewport(1280, 800).await;
    browser.click("a[href='/']").await;
    browser.click("#inbox-button").await;
    browser.wait_for(&format!(".inbox-entry a[data-task='{b}']")).await;
    browser.screenshot("inbox-dark-desktop").await;
    browser.press(&[ESCAPE]).await;
    browser.press(&[CONTROL, "k"]).await;
    browser.wait_for("#palette-input").await;
    browser.screenshot("palette-dark-desktop").await;
    browser.press(&[ESCAPE]).await;

    // The toggle overrides the system, and is kept: light, on a dark system.
    browser.click("#theme-button").await; // system → light
    assert_eq!(browser.eval("return document.documentElement.dataset.theme", json!([])).await, "light");
    assert_eq!(browser.eval(bg, json!([])).await, "rgb(246, 247, 249)");
    browser.goto(&format!("{}/", server.url)).await;
    browser.wait_for(".board .card").await;
    assert_eq!(browser.eval(bg, json!([])).await, "rgb(246, 247, 249)", "the choice outlives a reload");
    browser.click("#theme-button").await; // light → dark
    browser.color_scheme("light").await;
    assert_eq!(browser.eval(bg, json!([])).await, "rgb(13, 17, 23)", "dark on a light system");
    browser.click("#theme-button").await; // dark → system (light)
    assert_eq!(browser.eval(bg, json!([])).await, "rgb(246, 247, 249)");

    // Signed out, in dark: the sign-in page.
    browser.color_scheme("dark").await;
    browser.click("#sign-out").await;
    browser.wait_for("form #token").await;
    browser.screenshot("sign-in-dark-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("sign-in-dark-phone").await;
}

#[actix_web::test]
async fn in_a_browser_a_permission_request_arriving_live_is_a_needs_input_entry_and_the_title_follows_it() {
    let bin = crate::fake_sandbox_agent::fake_sandbox_agent_bin();
    let (server, dir) = Server::start(&[("KILN_SANDBOX_AGENT_BIN", bin.to_str().unwrap())]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "widget")).await;
    let task = running_task(&admin, "acme", json!({"repo": "widget", "title": "Wire up the widget", "description": "Wire it up"})).await;

    let browser = Browser::start().await;
    sign_in_live(&browser, &server, &token, "acme").await;
    assert_eq!(browser.eval(TITLE, json!([])).await, "Kiln", "nothing needs you yet");
    browser.set_permission("notifications", "granted").await;
    browser.eval(RECORD_NOTIFICATIONS, json!([])).await;

    // A session opens: once it is ready for a prompt, the task is idle (live: an entry, a notification).
    let sessions = format!("/v1/organizations/acme/tasks/{task}/sessions");
    let r = admin.post(&sessions, json!({"agent": "fake"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let sid = r.body["id"].as_str().unwrap().to_string();
    browser.until("the idle entry", &format!("{UNREAD} === '1'"), json!([])).await;
    browser.until("the title counts it", "return document.title === '(1) Kiln'", json!([])).await;
    assert_eq!(browser.until("a notification", NOTES_SOON, json!([])).await, json!(["Went idle: Wire up the widget"]));
    browser.eval(RECORD_NOTIFICATIONS, json!([])).await;

    // The agent asks for a permission: the task needs input, live.
    let r = admin.post(&format!("{sessions}/{sid}/prompt"), json!({"text": "this needs permission"})).await;
    assert_eq!(r.status, 202, "{r:?}");
    browser.until("a needs-input entry", &format!("{UNREAD} === '2'"), json!([])).await;
    assert_eq!(browser.until("a notification", NOTES_SOON, json!([])).await, json!(["Needs input: Wire up the widget"]));
    let badge = "return [...document.querySelectorAll(`a.card[data-task=\"${arguments[0]}\"] .badge.attn`)].map(b => b.textContent).join()";
    browser.until("the card says why", &format!("{badge} === 'Needs input'"), json!([task])).await;
    assert_eq!(browser.eval(TITLE, json!([])).await, "(1) Kiln", "one task needs you, once");
    browser.click("#inbox-button").await;
    let reasons = browser.eval("return [...document.querySelectorAll('.inbox-entry a')].map(a => a.dataset.reason)", json!([])).await;
    assert_eq!(reasons, json!(["input", "idle"]), "newest first");
    browser.screenshot("inbox-needs-input-desktop").await;
    browser.press(&[ESCAPE]).await;

    // Answered: the turn ends, the task is idle again (another entry); it no longer needs input.
    let session = admin.get(&format!("{sessions}/{sid}")).await.body;
    let request = session["pending_permissions"][0]["request"].as_str().expect("a pending permission").to_string();
    let r = admin.post(&format!("{sessions}/{sid}/permissions/{request}"), json!({"option_id": "allow-once"})).await;
    assert_eq!(r.status, 202, "{r:?}");
    browser.until("no longer needs input", &format!("{badge} === ''"), json!([task])).await;
    browser.until("idle again", &format!("{UNREAD} === '3'"), json!([])).await;
    assert_eq!(browser.eval(TITLE, json!([])).await, "(1) Kiln", "still one task, idle");
}
