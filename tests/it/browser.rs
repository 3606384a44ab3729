//! A real browser for the dashboard tests: Debian's Chromium, headless, driven
//! over WebDriver (chromedriver speaks plain HTTP and JSON, so the test client
//! is enough). Missing Chromium or chromedriver fails the test with the install
//! command; it never skips.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver";

fn find(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&paths) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A chromedriver process and one browser session in it. Both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: awc::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, at
    /// desktop size (1280x800).
    pub async fn start() -> Browser {
        let chromium = find(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("Chromium is not installed; the dashboard tests need it: {INSTALL}"));
        let chromedriver =
            find(&["chromedriver"]).unwrap_or_else(|| panic!("chromedriver is not installed; the dashboard tests need it: {INSTALL}"));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut res) = http.get(format!("{base}/status")).send().await {
                let body: Value = res.json().await.unwrap_or(Value::Null);
                if body["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::Builder::new().prefix("kiln-chromium-").tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,800".into(),
            "--force-color-profile=srgb".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
        }}});
        let mut res = http.post(format!("{base}/session")).send_json(&caps).await.expect("new session");
        let body: Value = res.json().limit(1 << 20).await.expect("session body");
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {body}"))
            .to_string();
        let browser = Browser { driver, base, session, http, _profile: profile };
        browser.viewport(1280, 800).await;
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self.http.request(method, url);
        let mut res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let value: Value = res.json().limit(64 << 20).await.unwrap_or(Value::Null);
        if !res.status().is_success() {
            return Err(format!("webdriver {path} answered {}: {}", res.status(), value["value"]["message"]));
        }
        Ok(value["value"].clone())
    }

    /// Finds `css` and acts on it; a live page may redraw it between the two,
    /// so a stale element is found again (a few times).
    async fn on_element(&self, css: &str, action: &str, body: Value) {
        for attempt in 0.. {
            let id = self.wait_for(css).await;
            match self.try_call("POST", &format!("/element/{id}/{action}"), Some(body.clone())).await {
                Ok(_) => return,
                Err(e) if e.contains("stale element") && attempt < 5 => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Sizes the page's viewport (CSS pixels), as a phone or a desktop would.
    pub async fn viewport(&self, width: u32, height: u32) {
        let mobile = width < 600;
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setDeviceMetricsOverride",
                        "params": {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}})),
        )
        .await;
    }

    /// Emulates the system's dark (or light) colour scheme.
    pub async fn dark(&self, on: bool) {
        self.color_scheme(if on { "dark" } else { "light" }).await;
    }

    /// Emulates the system's light or dark setting (`prefers-color-scheme`).
    pub async fn color_scheme(&self, scheme: &str) {
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}})),
        )
        .await;
    }

    /// Sets a permission for the page's origin (WebDriver's Permissions
    /// extension), e.g. `notifications` to `granted`.
    pub async fn set_permission(&self, name: &str, state: &str) {
        self.call("POST", "/permissions", Some(json!({"descriptor": {"name": name}, "state": state}))).await;
    }

    /// Presses a chord on whatever has the focus, as a keyboard would: every key
    /// down in order, then up in reverse (`"\u{E009}"` is Control, `"\u{E00C}"` Escape).
    pub async fn press(&self, keys: &[&str]) {
        let mut actions: Vec<Value> = keys.iter().map(|k| json!({"type": "keyDown", "value": k})).collect();
        actions.extend(keys.iter().rev().map(|k| json!({"type": "keyUp", "value": k})));
        self.call("POST", "/actions", Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}))).await;
        self.call("DELETE", "/actions", None).await;
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.call("GET", "/url", None).await.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and answers its value.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Runs an async script: it must call `arguments[arguments.length - 1](value)`.
    pub async fn eval_async(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", Some(json!({"script": script, "args": args}))).await
    }

    /// The text of the whole page.
    pub async fn text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : ''", json!([])).await.as_str().unwrap_or_default().to_string()
    }

    /// Waits until `script` answers something truthy; answers it.
    pub async fn until(&self, what: &str, script: &str, args: Value) -> Value {
        // Generous: a deadline, not a wait; a loaded machine is slow.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(script, args.clone()).await;
            let truthy = !(v.is_null() || v == false || v == "" || v == 0);
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for: {what}\npage text:\n{}", self.text().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an element matches `css`; answers its element id.
    pub async fn wait_for(&self, css: &str) -> String {
        self.until(&format!("an element {css}"), "return !!document.querySelector(arguments[0])", json!([css])).await;
        self.find(css).await
    }

    pub async fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", json!({})).await;
    }

    /// Types `text` into the element (WebDriver key events, as a person would).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text })).await;
    }

    /// Picks the option with `value` in a select.
    pub async fn select(&self, css: &str, value: &str) {
        self.wait_for(&format!("{css} option[value=\"{value}\"]")).await;
        self.eval(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        )
        .await;
    }

    /// The cookies the browser holds for the current page's site.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None).await.as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the viewport to `name`.png in the screenshot folder
    /// (`KILN_SCREENSHOTS`, else `target/dashboard-screenshots`).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        // Let fonts and the last frame settle: wait for two animation frames.
        self.eval_async("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));", json!([]))
            .await;
        let data = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Where screenshots go: `KILN_SCREENSHOTS` (docs/dashboard to refresh the
/// committed ones), else the target dir.
pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("KILN_SCREENSHOTS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)
            }
        }
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots"),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (Chromium exits), then the driver.
        let url = format!("{}/session/{}", self.base, self.session);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let _ = awc::Client::default().delete(url).send().await;
            });
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
