//! The repository settings form's issue intake (docs/git.md, "Issues in";
//! docs/dashboard.md, "Choices in the forms"): a switch, the label, the agent as
//! a select from `GET …/agents` (the server's default is `null`) and
//! `max_active`, saved as the API's `issues` object; the API's refusals shown in
//! its words with the focus on the field it names; another client's change shown
//! live; a save of the rest of the form keeps them. Screenshots at desktop and
//! phone width, light and dark.

use serde_json::json;

use crate::browser::Browser;
use crate::common::{git_repo, Client, Server};

/// Scrolls the "Issues in" heading to just under the sticky header.
const SCROLL: &str = "const h = [...document.querySelectorAll('#settings-form h2')].find(e => e.textContent === 'Issues in'); \
                      window.scrollTo(0, h.getBoundingClientRect().top + window.scrollY - document.querySelector('header').offsetHeight - 8)";

fn js_set(id: &str, value: &str) -> String {
    format!("const e = document.getElementById('{id}'); e.value = {}; e.dispatchEvent(new Event('input', {{bubbles: true}}));", json!(value))
}

const REFUSAL: &str = "const e = document.getElementById('settings-error'); return !e.hidden && e.innerText";
const SUBMIT: &str = "#settings-form button[type='submit']";

#[actix_web::test]
async fn in_a_browser_issue_intake_is_switched_labelled_given_an_agent_and_bounded_and_saved_as_the_api_has_it() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    admin.add_repo("default", &git_repo(dir.path(), "app")).await;
    // A local source: intake needs the GitHub repository it reads the issues of.
    let r = admin.put("/v1/organizations/default/repos/app/settings", json!({"github": "acme/app"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin.post("/v1/organizations/default/tokens", json!({"name": "browser"})).await;
    let token = r.body["token"].as_str().unwrap().to_string();

    let browser = Browser::start().await;
    let r = Client::new(&server.url, Some(&token)).post("/v1/dashboard/codes", json!({})).await;
    browser.goto(&format!("{}{}", server.url, r.body["path"].as_str().unwrap())).await;
    browser.wait_for(".board").await;
    browser.goto(&format!("{}/repos/app", server.url)).await;
    browser.wait_for("#settings-form #issues-enabled").await;

    // Settings never set: the API's defaults; the agents are the server's profiles.
    let options = browser
        .until(
            "the agents loaded",
            "const s = document.getElementById('issues-agent'); return s.options.length > 1 && [...s.options].map(o => [o.value, o.textContent])",
            json!([]),
        )
        .await;
    let options = options.as_array().unwrap();
    assert_eq!(options[0], json!(["", "Server default (fake)"]), "{options:?}");
    for name in ["fake", "quick", "acp"] {
        assert!(options.iter().any(|o| o[0] == name), "{name} offered: {options:?}");
    }
    let shown = browser
        .eval(
            "const v = id => document.getElementById(id); \
             return [v('issues-enabled').checked, v('issues-enabled').getAttribute('role'), v('issues-label').value, v('issues-agent').value, v('issues-max_active').value]",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!([false, "switch", "kiln", "", "5"]), "off by default, the API's defaults");

    // Switched on with a label, an agent and a bound past the API's: refused in
    // its words, with the focus on the field it names, and nothing saved.
    browser.click("#issues-enabled").await;
    browser.eval(&js_set("issues-label", "Kiln-Tasks"), json!([])).await;
    browser.select("#issues-agent", "quick").await;
    browser.eval(&js_set("issues-max_active", "101"), json!([])).await;
    browser.click(SUBMIT).await;
    let refused = browser.until("the bound refused", REFUSAL, json!([])).await;
    let refused = refused.as_str().unwrap();
    assert!(refused.starts_with("Not saved:") && refused.contains("issues.max_active"), "{refused}");
    assert_eq!(browser.eval("return document.activeElement.id", json!([])).await, "issues-max_active", "focus on the field");
    // A label the API refuses (the list filter separates labels with commas).
    browser.eval(&js_set("issues-max_active", "2"), json!([])).await;
    browser.eval(&js_set("issues-label", "kiln,urgent"), json!([])).await;
    browser.click(SUBMIT).await;
    let refused = browser.until("the label refused", REFUSAL, json!([])).await;
    assert!(refused.as_str().unwrap().contains("issues.label"), "{refused}");
    assert_eq!(browser.eval("return document.activeElement.id", json!([])).await, "issues-label", "focus on the label");
    let settings = admin.get("/v1/organizations/default/repos/app").await.body["settings"].clone();
    assert_eq!(settings["issues"], json!({"enabled": false, "label": "kiln", "agent": null, "max_active": 5}), "nothing was saved: {settings}");

    browser.eval(&js_set("issues-label", "Kiln-Tasks"), json!([])).await;
    browser.click(SUBMIT).await;
    browser.until("saved", "const e = document.getElementById('settings-saved'); return !e.hidden && document.getElementById('settings-error').hidden", json!([])).await;
    let settings = admin.get("/v1/organizations/default/repos/app").await.body["settings"].clone();
    assert_eq!(settings["issues"], json!({"enabled": true, "label": "Kiln-Tasks", "agent": "quick", "max_active": 2}), "{settings}");

    // "Server default" is `null`; saving another part of the form keeps the rest.
    browser.select("#issues-agent", "").await;
    browser.eval("document.getElementById('rs-idle-commit').scrollIntoView({block: 'center'})", json!([])).await;
    browser.click("#rs-idle-commit").await;
    browser.click(SUBMIT).await;
    browser
        .until(
            "saved again",
            "return !document.getElementById('settings-saved').hidden && document.getElementById('issues-agent').value === ''",
            json!([]),
        )
        .await;
    let settings = admin.get("/v1/organizations/default/repos/app").await.body["settings"].clone();
    assert_eq!(settings["issues"], json!({"enabled": true, "label": "Kiln-Tasks", "agent": null, "max_active": 2}), "{settings}");
    assert_eq!(settings["automation"]["on_idle"]["commit"], true);

    // Another client's change shows in the untouched form, live.
    let mut other = settings.clone();
    other["issues"] = json!({"enabled": true, "label": "from-the-cli", "agent": "acp", "max_active": 7});
    assert_eq!(admin.put("/v1/organizations/default/repos/app/settings", other).await.status, 200);
    let live = browser
        .until(
            "the stream's settings",
            "const v = id => document.getElementById(id).value; \
             return v('issues-label') === 'from-the-cli' && [v('issues-agent'), v('issues-max_active')]",
            json!([]),
        )
        .await;
    assert_eq!(live, json!(["acp", "7"]));

    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-issues-desktop").await;
    browser.viewport(390, 844).await;
    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-issues-phone").await;
    let overflow = browser.eval("return document.documentElement.scrollWidth > window.innerWidth", json!([])).await;
    assert_eq!(overflow, false, "no sideways scrolling at phone width");
    browser.dark(true).await;
    browser.eval(SCROLL, json!([])).await;
    browser.screenshot("repo-issues-phone-dark").await;
    browser.dark(false).await;
    browser.viewport(1280, 800).await;
}
