//! The dashboard's inbox on the inbox API (`GET …/inbox`, `POST …/inbox/read`):
//! read marks belong to the organization, so what the CLI (or another page)
//! marks read updates an open page live from the event stream, and entries of
//! every notification kind show with their words, at desktop and phone width.

use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::{cli, eventually, git_repo, Server};
use crate::web_support::{assert_no_overflow, sign_in_live, token_of};

const UNREAD: &str = "return document.getElementById('inbox-count')?.textContent || '0'";

#[actix_web::test]
async fn in_a_browser_the_inbox_is_the_organizations_and_a_read_mark_from_the_cli_shows_live() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let token = token_of(&admin, "default", "phone").await;
    admin.add_repo("default", &git_repo(dir.path(), "app")).await;
    let mut ids = Vec::new();
    for title in ["Tidy the README", "Speed up the build"] {
        let t = admin.create_task_with("default", json!({"repo": "app", "title": title, "description": title, "agent": "quick"})).await;
        let id = t["id"].as_str().unwrap().to_string();
        admin.wait_status("default", &id, "idle").await;
        ids.push(id);
    }
    let entries: Vec<Value> = eventually(Duration::from_secs(20), "two inbox entries", || async {
        let r = admin.get("/v1/organizations/default/inbox").await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2).then_some(items)
    })
    .await;

    let browser = Browser::start().await;
    sign_in_live(&browser, &server, &token, "default").await;
    browser.until("two unread", &format!("{UNREAD} === '2'"), json!([])).await;
    browser.click("#inbox-button").await;
    browser.wait_for(&format!(".inbox-entry.unread a[data-task='{}']", ids[1])).await;
    let listed = browser.eval("return [...document.querySelectorAll('.inbox-entry a')].map(a => [a.dataset.entry, a.dataset.reason])", json!([])).await;
    assert_eq!(
        listed,
        json!([[entries[0]["id"].to_string(), "idle"], [entries[1]["id"].to_string(), "idle"]]),
        "the server's entries, newest first"
    );
    browser.screenshot("inbox-api-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("inbox-api-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.viewport(1280, 800).await;

    // The CLI (another token: the admin's) marks one read: the open page follows, live.
    let first = entries[1]["id"].to_string();
    let (code, out, err) = cli(&server, &["inbox", "read", &first]);
    assert_eq!(code, 0, "{out}{err}");
    browser.until("one unread, from the stream", &format!("{UNREAD} === '1'"), json!([])).await;
    browser
        .until("the entry shows read", &format!("return !document.querySelector(\".inbox-entry.unread a[data-entry='{first}']\")"), json!([]))
        .await;

    // Marking all read in the page is the organization's: the CLI sees it.
    browser.click("#inbox-mark-all").await;
    browser.until("nothing unread", &format!("{UNREAD} === '0'"), json!([])).await;
    let unread = eventually(Duration::from_secs(10), "the server's count", || async {
        let (_, out, _) = cli(&server, &["inbox", "--json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["unread"] == 0).then_some(v)
    })
    .await;
    assert!(unread["items"].as_array().unwrap().iter().all(|e| e["read_at"].is_i64()), "{unread}");
    let stored = browser.eval("return Object.keys(localStorage).filter(k => k.includes('inbox'))", json!([])).await;
    assert_eq!(stored, json!([]), "nothing about the inbox is kept in the browser");
}
