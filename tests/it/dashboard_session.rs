//! The task page's Session and Pull request panes in a real Chromium
//! (`browser.rs`): a session opened from the page with the fake sandbox-agent
//! (tests/fake_sandbox_agent.rs), prompts, the agent's streamed answer, a
//! permission answered, a turn cancelled, agent text that is never markup; and
//! a pull request opened from the page on the fake GitHub, its checks (with
//! links) and review decision arriving live from the PR poller's events.
//! Screenshots of both at desktop and phone width.

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::{git, Client, Server};
use crate::web_support::{org_with_token, running_task, sign_in};
use crate::fake_github::FakeGithub;
use crate::fake_sandbox_agent::fake_sandbox_agent_bin;
use crate::git_lifecycle::bare_origin;

/// WebDriver's keys: Enter, Shift, and "release the modifiers".
const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";
const RELEASE: &str = "\u{E000}";

/// The transcript's text (what a person reads in it).
/// The transcript's text (an expression).
const TRANSCRIPT: &str = "(document.querySelector('.transcript')?.innerText || '')";

/// Whether the page has no sideways scrolling.
const NO_OVERFLOW: &str = "return document.documentElement.scrollWidth <= window.innerWidth";

async fn transcript_has(browser: &Browser, what: &str, text: &str) {
    browser.until(what, &format!("return {TRANSCRIPT}.includes(arguments[0])"), json!([text])).await;
}

#[actix_web::test]
async fn in_a_browser_a_session_is_opened_prompted_answered_and_cancelled_from_the_task_page() {
    let bin = fake_sandbox_agent_bin();
    let (server, dir) = Server::start(&[("KILN_SANDBOX_AGENT_BIN", bin.to_str().unwrap())]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &crate::common::git_repo(dir.path(), "app")).await;
    let id = running_task(&admin, "acme", json!({"repo": "app", "description": "Talk to me over ACP", "agent": "fake"})).await;

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.goto(&format!("{}/tasks/{id}?tab=session", server.url)).await;
    browser.wait_for("#session-open").await;
    assert!(browser.text().await.contains("No session open"));

    // A refused open shows the API's own words.
    let refused = admin.post(&format!("/v1/organizations/acme/tasks/{id}/sessions"), json!({"agent": "no such agent!"})).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    let message = refused.body["message"].as_str().unwrap().to_string();
    browser.type_into("#session-agent", "no such agent!").await;
    browser.click("#session-open").await;
    browser
        .until("the API's message", "return document.querySelector('.session .error')?.textContent.includes(arguments[0])", json!([message]))
        .await;

    // Open it from the page with the fake's agent.
    browser.eval("document.getElementById('session-agent').value = ''", json!([])).await;
    browser.type_into("#session-agent", "fake").await;
    browser.click("#session-open").await;
    browser.wait_for("#session-prompt").await;
    browser.until("the session is ready", "return document.getElementById('session-status')?.textContent === 'Ready'", json!([])).await;
    let sessions = admin.get(&format!("/v1/organizations/acme/tasks/{id}/sessions")).await.body;
    let sid = sessions["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(sessions["items"][0]["agent"], "fake", "{sessions}");
    browser.eval("window.__sameDocument = true", json!([])).await;

    // Enter sends; the agent's answer streams in over the organization stream.
    browser.type_into("#session-prompt", &format!("Say hello{ENTER}")).await;
    transcript_has(&browser, "the agent's answer", "Hello world").await;
    browser.until("the turn ends", "return [...document.querySelectorAll('.turn-end')].some(e => e.textContent.includes('end turn'))", json!([])).await;
    assert_eq!(browser.eval("return document.querySelector('#session-prompt').value", json!([])).await, "", "the box is cleared");
    let user = browser.eval("return document.querySelector('.msg-user .bubble').textContent", json!([])).await;
    assert_eq!(user, "Say hello");
    // The default turn's thought, plan and tool call, with its final status.
    assert_eq!(browser.eval("return document.querySelectorAll('.tool.tool-completed').length", json!([])).await, 1);
    assert!(browser.eval("return document.querySelectorAll('.plan li').length", json!([])).await.as_u64().unwrap() > 0, "the plan is shown");
    assert_eq!(browser.eval("return document.querySelectorAll('.thought').length", json!([])).await, 1);
    // The page folded the same transcript the server did.
    let served = admin.get(&format!("/v1/organizations/acme/tasks/{id}/sessions/{sid}/transcript")).await.body;
    let agent_text: Vec<&str> = served["transcript"]["items"].as_array().unwrap().iter().filter(|i| i["type"] == "agent").filter_map(|i| i["text"].as_str()).collect();
    assert_eq!(agent_text, ["Hello world"]);
    assert_eq!(browser.eval("return [...document.querySelectorAll('.msg-agent .bubble')].map(b => b.textContent)", json!([])).await, json!(["Hello world"]));

    // Shift+Enter is a new line, not a send; the permission request shows its options.
    browser.type_into("#session-prompt", &format!("May I ask for permission?{SHIFT}{ENTER}{RELEASE}Please.")).await;
    assert_eq!(browser.eval("return document.querySelector('#session-prompt').value", json!([])).await, "May I ask for permission?\nPlease.");
    browser.type_into("#session-prompt", ENTER).await;
    browser.wait_for(".permission-pending button[data-option='allow-once']").await;
    browser.until("waiting for an answer", "return document.getElementById('session-status')?.textContent === 'Waiting for your answer'", json!([])).await;
    let options = browser.eval("return [...document.querySelectorAll('.permission-pending button[data-option]')].map(b => b.textContent)", json!([])).await;
    assert_eq!(options, json!(["Allow once", "Reject"]));
    let task_awaits = admin.get(&format!("/v1/organizations/acme/tasks/{id}")).await.body["awaiting_input"].clone();
    assert_eq!(task_awaits, true);
    browser.screenshot("session-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("session-phone").await;
    assert_eq!(browser.eval(NO_OVERFLOW, json!([])).await, true, "no sideways scrolling at phone width");
    browser.viewport(1280, 800).await;
    browser.dark(true).await;
    browser.screenshot("session-dark").await;
    browser.dark(false).await;
    browser.click(".permission-pending button[data-option='allow-once']").await;
    transcript_has(&browser, "the agent goes on", "allowed").await;
    browser.until("the answer is shown", "return document.querySelector('.permission')?.textContent.includes('Answered: Allow once')", json!([])).await;
    assert_eq!(browser.eval("return document.querySelectorAll('.permission-pending').length", json!([])).await, 0);
    let user = browser.eval("return document.querySelectorAll('.msg-user .bubble')[1].textContent", json!([])).await;
    assert_eq!(user, "May I ask for permission?\nPlease.");

    // Cancel while a turn runs.
    browser.until("ready again", "return document.getElementById('session-status')?.textContent === 'Ready'", json!([])).await;
    browser.type_into("#session-prompt", &format!("wait for me{ENTER}")).await;
    transcript_has(&browser, "the agent waits", "waiting").await;
    browser.wait_for("#session-cancel:not([hidden])").await;
    assert_eq!(browser.eval("return document.getElementById('session-send').disabled", json!([])).await, true, "one turn at a time");
    browser.click("#session-cancel").await;
    browser.until("the turn is cancelled", "return [...document.querySelectorAll('.turn-end')].some(e => e.textContent.includes('cancelled'))", json!([])).await;
    browser.until("Cancel goes away", "return document.getElementById('session-cancel').hidden", json!([])).await;

    // Agent text is formatted, never parsed as markup.
    let record: Value = serde_json::from_slice(&std::fs::read(server.data_dir().join(format!("sandboxes/{id}/sandbox-agent.json"))).unwrap()).unwrap();
    let fake = Client::new(record["url"].as_str().unwrap(), record["token"].as_str());
    let text = "**Done.** See `src/lib.rs`:\n\n- one\n- two\n\n<img src=x onerror=\"window.__owned=1\"><script>window.__owned=2</script>";
    let update = json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "x", "update": {
        "sessionUpdate": "agent_message_chunk", "messageId": "m-injected", "content": {"type": "text", "text": text}}}});
    let r = fake.post(&format!("/_fake/emit/{sid}"), update).await;
    assert_eq!(r.status, 200, "{r:?}");
    transcript_has(&browser, "the injected text", "<img src=x").await;
    let last = "const b = [...document.querySelectorAll('.msg-agent .bubble')].find(b => b.textContent.includes('<img src=x')); \
                return b ? {img: b.querySelectorAll('img, script').length, strong: b.querySelector('strong')?.textContent, \
                        code: b.querySelector('code')?.textContent, items: b.querySelectorAll('li').length, owned: window.__owned || 0} : null;";
    let html = browser.eval("return document.querySelector('.transcript').innerHTML", json!([])).await;
    assert_eq!(browser.eval(last, json!([])).await, json!({"img": 0, "strong": "Done.", "code": "src/lib.rs", "items": 2, "owned": 0}), "{html}");
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "all of it without a reload");
}

#[actix_web::test]
async fn in_a_browser_the_pull_request_pane_opens_a_pr_and_shows_its_checks_and_review_live() {
    let gh = FakeGithub::start();
    let (server, dir) = Server::start(&[("KILN_GITHUB__PR_POLL_MS", "200")]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    let (bare, _work) = bare_origin(dir.path());
    admin.add_repo("acme", &bare).await;
    gh.add_repo("acme/app", &bare);
    let r = admin
        .put(
            "/v1/organizations/acme/providers/github",
            json!({"config": {"api_url": gh.url}, "secrets": {"token": gh.token(), "webhook_secret": gh.webhook_secret()}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin.put("/v1/organizations/acme/repos/origin/settings", json!({"github": "acme/app"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = running_task(&admin, "acme", json!({"repo": "origin", "title": "Add the feature flag", "description": "Add the feature flag"})).await;

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.goto(&format!("{}/tasks/{id}?tab=pr", server.url)).await;
    browser.wait_for("#pr-open").await;
    assert!(browser.text().await.contains("No pull request yet"));
    // Nothing to propose yet: the page shows GitHub's refusal in the API's words.
    let refused = admin.post(&format!("/v1/organizations/acme/tasks/{id}/pr"), json!({})).await;
    assert!(refused.status >= 400, "{refused:?}");
    browser.click("#pr-open").await;
    browser
        .until("the API's message", "return document.querySelector('.pr-pane .error')?.textContent.includes(arguments[0])", json!([refused.body["message"]]))
        .await;

    // Work to propose, then Open PR from the page.
    let worktree = server.data_dir().join(format!("worktrees/acme/origin/{id}"));
    std::fs::write(worktree.join("flag.txt"), "on\n").unwrap();
    let r = admin.post(&format!("/v1/organizations/acme/tasks/{id}/push"), json!({"commit": "Add the feature flag"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    browser.eval("window.__sameDocument = true", json!([])).await;
    browser.click("#pr-open").await;
    browser.wait_for("#pr-link").await;
    let pr = admin.get(&format!("/v1/organizations/acme/tasks/{id}")).await.body["pull_request"].clone();
    let number = pr["number"].as_u64().unwrap();
    assert_eq!(browser.eval("return document.getElementById('pr-link').href", json!([])).await, pr["url"]);
    assert_eq!(browser.eval("return document.getElementById('pr-state').textContent", json!([])).await, "Open");
    assert_eq!(browser.eval("return document.getElementById('pr-review').textContent", json!([])).await, "No review yet");

    // CI and the review arrive from the poller's events, with no reload.
    let head = git(&worktree, &["rev-parse", "HEAD"]);
    gh.add_check_run("acme/app", &head, "unit tests", "completed", Some("success"), "all green");
    gh.add_check_run("acme/app", &head, "lint", "in_progress", None, "");
    gh.set_status("acme/app", &head, "deploy/preview", "pending", "building");
    gh.add_review("acme/app", number, "reviewer", "APPROVED");
    browser.until("three checks", "return document.querySelectorAll('.check').length === 3", json!([])).await;
    browser.until("the review", "return document.getElementById('pr-review').textContent === 'Approved'", json!([])).await;
    let rows = "return [...document.querySelectorAll('.check')].map(c => [c.querySelector('.check-name').textContent, \
                c.querySelector('.check-state').textContent, c.querySelector('a.check-name')?.href || null])";
    let seen = browser.eval(rows, json!([])).await;
    assert_eq!(seen[0], json!(["deploy/preview", "Queued", null]), "{seen}");
    assert_eq!((seen[1][0].as_str(), seen[1][1].as_str()), (Some("lint"), Some("Running")), "{seen}");
    assert_eq!((seen[2][0].as_str(), seen[2][1].as_str()), (Some("unit tests"), Some("Passed")), "{seen}");
    assert!(seen[2][2].as_str().is_some_and(|u| u.starts_with("https://github.com/acme/app/runs/")), "a link to the run: {seen}");
    assert_eq!(browser.eval("return document.getElementById('pr-ci').textContent.trim()", json!([])).await, "Running");
    browser.screenshot("pull-request-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("pull-request-phone").await;
    assert_eq!(browser.eval(NO_OVERFLOW, json!([])).await, true, "no sideways scrolling at phone width");
    browser.viewport(1280, 800).await;
    browser.dark(true).await;
    browser.screenshot("pull-request-dark").await;
    browser.dark(false).await;

    // lint fails: the check and the CI state move live.
    gh.add_check_run("acme/app", &head, "lint", "completed", Some("failure"), "2 errors");
    gh.set_status("acme/app", &head, "deploy/preview", "success", "ready");
    browser.until("lint failed", "return document.querySelector(\"[data-check='lint'] .check-state\")?.textContent === 'Failed'", json!([])).await;
    browser.until("CI is failing", "return document.getElementById('pr-ci').textContent.trim() === 'Failing'", json!([])).await;
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "all of it without a reload");
}
