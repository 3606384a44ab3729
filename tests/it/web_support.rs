//! What the dashboard's tests (`dashboard*.rs`) share: an organization with a
//! token, signing a browser in with a one-time link (or getting the session
//! cookie without one), requests with exactly the given headers, a task's
//! worktree and files written into it (the API's own changes tests, `changes.rs`,
//! use those two as well), and the phone-width overflow check of screenshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::{Client, Server};

/// A raw answer: status, headers, body.
pub struct Raw {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).to_string()
    }
}

/// One request with exactly these headers (no token unless given), no redirects followed.
pub async fn raw(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Raw {
    let http = awc::Client::builder().disable_redirects().timeout(Duration::from_secs(60)).finish();
    let mut req = http.request(awc::http::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let bytes = res.body().limit(16 << 20).await.unwrap().to_vec();
    Raw { status: res.status().as_u16(), headers: res.headers().clone(), body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), bytes }
}

/// The `kiln_session=…` pair of a Set-Cookie header.
pub fn cookie_of(res: &Raw) -> String {
    let set = res.header("set-cookie");
    set.split(';').next().unwrap_or_default().to_string()
}

/// Creates organization `org` with a token; answers (token secret, token id).
pub async fn org_with_token_id(admin: &Client, org: &str) -> (String, String) {
    let r = admin.post("/v1/organizations", json!({"name": org})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = admin.post(&format!("/v1/organizations/{org}/tokens"), json!({"name": "dashboard"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    (r.body["token"].as_str().unwrap().to_string(), r.body["id"].as_str().unwrap().to_string())
}

/// Creates organization `org` with a token; answers the token's secret.
pub async fn org_with_token(admin: &Client, org: &str) -> String {
    org_with_token_id(admin, org).await.0
}

/// A new token named `name` of the existing organization `org`; answers its secret.
pub async fn token_of(admin: &Client, org: &str, name: &str) -> String {
    let r = admin.post(&format!("/v1/organizations/{org}/tokens"), json!({"name": name})).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["token"].as_str().unwrap().to_string()
}

/// A sign-in link's path, made with `token`.
pub async fn sign_in_path(server: &Server, token: &str, body: Value) -> String {
    let r = Client::new(&server.url, Some(token)).post("/v1/dashboard/codes", body).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["path"].as_str().unwrap().to_string()
}

/// Opens a link made by `token` for `org` without a browser; answers the `kiln_session=…` cookie.
pub async fn session_cookie(server: &Server, token: &str, org: &str) -> String {
    let path = sign_in_path(server, token, json!({"organization": org})).await;
    let opened = raw("GET", &format!("{}{path}", server.url), &[("sec-fetch-site", "none")], None).await;
    assert_eq!(opened.status, 303);
    cookie_of(&opened)
}

/// Signs `browser` in to `org` with a fresh link made with `token`; waits for the board.
pub async fn sign_in(browser: &Browser, server: &Server, token: &str, org: &str) {
    let path = sign_in_path(server, token, json!({"organization": org})).await;
    browser.goto(&format!("{}{path}", server.url)).await;
    browser.wait_for(".board").await;
    assert_eq!(browser.url().await, format!("{}/", server.url), "no code is left in the address bar");
}

/// Waits until the page's event stream is live.
pub async fn wait_live(browser: &Browser) {
    browser.until("the stream is live", "return document.getElementById('live')?.textContent === 'Live'", json!([])).await;
}

/// `sign_in`, then waits until the page's event stream is live.
pub async fn sign_in_live(browser: &Browser, server: &Server, token: &str, org: &str) {
    sign_in(browser, server, token, org).await;
    wait_live(browser).await;
}

/// The id of a task as the API answered it.
pub fn id(task: &Value) -> String {
    task["id"].as_str().unwrap().to_string()
}

/// Creates a task in `org` from `body` and waits until it runs; answers its id.
pub async fn running_task(admin: &Client, org: &str, body: Value) -> String {
    let id = id(&admin.create_task_with(org, body).await);
    admin.wait_status(org, &id, "running").await;
    id
}

/// The worktree of `task`, as the admin sees it.
pub async fn worktree(admin: &Client, org: &str, task: &str) -> PathBuf {
    let r = admin.get(&format!("/v1/organizations/{org}/tasks/{task}")).await;
    PathBuf::from(r.body["sandbox"]["path"].as_str().expect("the admin sees the worktree"))
}

/// Writes `text` to `dir/name`, making its folders.
pub fn write(dir: &Path, name: &str, text: &str) {
    if let Some(parent) = Path::new(name).parent() {
        std::fs::create_dir_all(dir.join(parent)).unwrap();
    }
    std::fs::write(dir.join(name), text).unwrap();
}

/// Asserts that nothing on the page scrolls sideways; `message` says what failed.
pub async fn assert_no_overflow(browser: &Browser, message: &str) {
    let overflow = browser.eval("return document.documentElement.scrollWidth > window.innerWidth", json!([])).await;
    assert_eq!(overflow, false, "{message}");
}
