//! The repository settings form's reactions (docs/git.md, "Reactions"): a switch
//! and its bounds per reaction, bot logins and the merge method, saved as the
//! API's `reactions` object; the older `on_ci_failure` shows as `ci_failed` and is
//! cleared on save; the API's refusal is shown; another client's change shows
//! live. Screenshots at desktop and phone width, light and dark.

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::{git_repo, Server};
use crate::web_support::{assert_no_overflow, sign_in, token_of};

/// Scrolls the reactions' heading to just under the sticky header.
const SCROLL: &str = "const h = [...document.querySelectorAll('#settings-form h2')].find(e => e.textContent === 'Reactions'); \
                      window.scrollTo(0, h.getBoundingClientRect().top + window.scrollY - document.querySelector('header').offsetHeight - 8)";

fn js_set(id: &str, value: &str) -> String {
    format!("const e = document.getElementById('{id}'); e.value = {}; e.dispatchEvent(new Event('input', {{bubbles: true}}));", json!(value))
}

#[actix_web::test]
async fn in_a_browser_each_reaction_is_switched_and_bounded_and_saved_as_the_api_has_it() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    admin.add_repo("default", &git_repo(dir.path(), "app")).await;
    // Set by an older client: the old name of ci_failed.
    let r = admin
        .put("/v1/organizations/default/repos/app/settings", json!({"automation": {"on_ci_failure": {"enabled": true, "max_attempts": 4}}}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = token_of(&admin, "default", "browser").await;

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "default").await;
    browser.goto(&format!("{}/repos/app", server.url)).await;
    browser.wait_for("#settings-form #rx-ci_failed").await;
    let shown = browser
        .until(
            "the old setting shown as ci_failed",
            "const c = document.getElementById('rx-ci_failed'); return c.checked && document.getElementById('rx-ci_failed-max').value",
            json!([]),
        )
        .await;
    assert_eq!(shown, "4");
    let defaults = browser
        .eval(
            "return ['rx-changes_requested', 'rx-merge_conflict', 'rx-agent_stuck', 'rx-approved_and_green'].map(id => document.getElementById(id).checked) \
             .concat([document.getElementById('rx-agent_stuck-silent_secs').value, document.getElementById('rx-approved_and_green-method').value, \
             document.getElementById('rx-ci_failed').getAttribute('role')])",
            json!([]),
        )
        .await;
    assert_eq!(defaults, json!([false, false, false, false, "1800", "squash", "switch"]), "off by default, the API's defaults");

    // Switch them on, with bounds, bot logins and a merge method.
    for id in ["#rx-changes_requested", "#rx-bot_comments", "#rx-merge_conflict", "#rx-merge_conflict-auto_sync", "#rx-agent_stuck", "#rx-approved_and_green", "#rx-approved_and_green-merge"] {
        browser.click(id).await;
    }
    for (id, v) in [("rx-ci_failed-max", "2"), ("rx-bot_comments-max", "1"), ("rx-agent_stuck-silent_secs", "600"), ("rx-bot_logins", "ci-helper, Renovate")] {
        browser.eval(&js_set(id, v), json!([])).await;
    }
    browser.select("#rx-approved_and_green-method", "rebase").await;
    // A bound past the API's is refused by the API, in its words, with the focus on the field.
    browser.eval(&js_set("rx-merge_conflict-max", "21"), json!([])).await;
    browser.click("#settings-form button[type='submit']").await;
    let refused = browser.until("the bound refused", "const e = document.getElementById('settings-error'); return !e.hidden && e.innerText", json!([])).await;
    assert!(refused.as_str().unwrap().starts_with("Not saved:") && refused.as_str().unwrap().contains("merge_conflict.max_attempts"), "{refused}");
    assert_eq!(browser.eval("return document.activeElement.id", json!([])).await, "rx-merge_conflict-max", "focus on the field");
    // A bot login the API refuses: its own message.
    browser.eval(&js_set("rx-merge_conflict-max", "3"), json!([])).await;
    browser.eval(&js_set("rx-bot_logins", "ci-helper, bad/login"), json!([])).await;
    browser.click("#settings-form button[type='submit']").await;
    let refused = browser.until("the API's refusal", "const e = document.getElementById('settings-error'); return !e.hidden && e.innerText", json!([])).await;
    assert!(refused.as_str().unwrap().contains("bot_logins"), "{refused}");
    let settings = admin.get("/v1/organizations/default/repos/app").await.body["settings"].clone();
    assert_eq!(settings["reactions"]["ci_failed"]["enabled"], false, "nothing was saved: {settings}");
    browser.eval(&js_set("rx-bot_logins", "ci-helper, Renovate"), json!([])).await;
    browser.click("#settings-form button[type='submit']").await;
    browser.until("saved", "const e = document.getElementById('settings-saved'); return !e.hidden && document.getElementById('settings-error').hidden", json!([])).await;
    let settings = admin.get("/v1/organizations/default/repos/app").await.body["settings"].clone();
    assert_eq!(
        settings["reactions"],
        json!({
            "ci_failed": {"enabled": true, "max_attempts": 2},
            "changes_requested": {"enabled": true, "max_attempts": 3},
            "bot_comments": {"enabled": true, "max_attempts": 1},
            "bot_logins": ["ci-helper", "Renovate"],
            "merge_conflict": {"enabled": true, "max_attempts": 3, "auto_sync": true},
            "agent_stuck": {"enabled": true, "silent_secs": 600, "idle_without_pr_secs": 3600},
            "approved_and_green": {"enabled": true, "merge": true, "method": "rebase"},
        }),
        "{settings}"
    );
    assert_eq!(settings["automation"]["on_ci_failure"]["enabled"], false, "the old name is cleared: {settings}");

    // Another client's change shows in the untouched form, live.
    let mut other: Value = settings.clone();
    other["reactions"]["approved_and_green"]["method"] = json!("merge");
    other["reactions"]["agent_stuck"]["enabled"] = json!(false);
    assert_eq!(admin.put("/v1/organizations/default/repos/app/settings", other).await.status, 200);
    browser
        .until(
            "the stream's settings",
            "return document.getElementById('rx-approved_and_green-method').value === 'merge' && !document.getElementById('rx-agent_stuck').checked",
            json!([]),
        )
        .await;

    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-reactions-desktop").await;
    browser.viewport(390, 844).await;
    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-reactions-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.dark(true).await;
    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-reactions-phone-dark").await;
    browser.dark(false).await;
    browser.viewport(1280, 800).await;
}
