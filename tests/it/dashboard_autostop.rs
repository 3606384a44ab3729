//! The dashboard's task page shows a Daytona sandbox stopped while idle, live
//! from the event stream (`sandbox.auto_stopped`, `sandbox.resumed`), at
//! desktop and phone width, light and dark.

use serde_json::json;

use crate::browser::Browser;
use crate::common::Client;
use crate::daytona_provider::{bin, fast, port, sandbox_id, Remote};
use crate::fake_daytona::FakeDaytona;

const SANDBOX: &str = "return document.getElementById('task-sandbox')?.textContent || ''";

#[actix_web::test]
async fn in_a_browser_the_task_page_shows_its_sandbox_stopped_while_idle_and_started_again_live() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = crate::common::Server::start(&[("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#)]);
    let c = server.client();
    let profile = json!({
        "config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port(), "auto_stop_minutes": 0.05},
        "secrets": {"api_key": fake.key()},
    });
    assert_eq!(c.put("/v1/organizations/default/providers/daytona", profile).await.status, 200);
    let r = c.post("/v1/organizations/default/repos", json!({"source": remote.with_password(), "name": "app"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let created = c
        .create_task_with("default", json!({"repo": "app", "title": "Nap between prompts", "description": "Nap", "provider": "daytona", "agent": "quick"}))
        .await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let id = sandbox_id(&fake, &task).await.unwrap();

    let browser = Browser::start().await;
    let r = c.post("/v1/dashboard/codes", json!({})).await;
    browser.goto(&format!("{}{}", server.url, r.body["path"].as_str().unwrap())).await;
    browser.wait_for(".board").await;
    // The events tab: the terminal pane would attach, which holds the sandbox.
    browser.goto(&format!("{}/tasks/{task}?tab=events", server.url)).await;
    browser.wait_for("#task-status").await;
    browser.until("the stream is live", "return document.getElementById('live')?.textContent === 'Live'", json!([])).await;
    assert_eq!(browser.eval(SANDBOX, json!([])).await, "", "a running sandbox needs no line");

    // Stopped while idle: the page says so without a reload.
    let text = browser.until("the sandbox shown stopped", &format!("const t = {}; return t.includes('Stopped while idle') && t", &SANDBOX[7..]), json!([])).await;
    assert!(text.as_str().unwrap().contains("starts again on the next input"), "{text}");
    assert_eq!(fake.sandbox_state(&id).as_deref(), Some("stopped"));
    browser.screenshot("task-sandbox-stopped-desktop").await;
    browser.dark(true).await;
    browser.screenshot("task-sandbox-stopped-dark").await;
    browser.dark(false).await;
    browser.viewport(390, 844).await;
    browser.screenshot("task-sandbox-stopped-phone").await;
    let overflow = browser.eval("return document.documentElement.scrollWidth > window.innerWidth", json!([])).await;
    assert_eq!(overflow, false, "no sideways scrolling at phone width");
    browser.viewport(1280, 800).await;

    // Typed input (here through the API) starts it again: the line goes, live.
    let r = Client::new(&server.url, Some(&server.token)).post(&format!("/v1/organizations/default/tasks/{task}/input"), json!({"text": "hello\r"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    browser.until("the line gone", &format!("return {} === ''", &SANDBOX[7..]), json!([])).await;
}
