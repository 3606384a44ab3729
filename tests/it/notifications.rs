//! Notifications out: webhooks against a local receiver (signatures, retries
//! with backoff, the delivery log, Slack's format), the host policy, a restart
//! with a delivery pending, and the inbox (unread, read, per organization).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

/// A local HTTP receiver: answers each request with the next scripted status
/// (200 once the script is spent; 0: no answer at all) and keeps what it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let url = format!("http://127.0.0.1:{}/hook/secret-path", listener.local_addr().unwrap().port());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<u16>>()));
        let (g, s) = (got.clone(), script.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (g, s) = (g.clone(), s.clone());
                // One thread per connection: a request told to hang holds only its own.
                std::thread::spawn(move || serve_one(stream, &g, &s));
            }
        });
        Receiver { url, got, script }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until it has received `n` requests.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let what = format!("{n} requests at the receiver");
        eventually(timeout, &what, || async { (self.got().len() >= n).then(|| self.got()) }).await
    }
}

/// Reads one request, records it, and answers the next scripted status; `0`
/// means: never answer (hold the connection for a minute).
fn serve_one(mut stream: std::net::TcpStream, got: &Mutex<Vec<Received>>, script: &Mutex<VecDeque<u16>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let status = script.lock().unwrap().pop_front().unwrap_or(200);
    got.lock().unwrap().push(Received { headers, body, at: Instant::now() });
    if status == 0 {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let _ = stream.write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
}

/// The signature a receiver computes: HMAC-SHA256 of `<timestamp>.<body>`.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A server whose webhooks may reach this machine's receivers, with quick retries.
fn server_with_local_receivers(extra: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let mut env = vec![
        ("KILN_NOTIFICATIONS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
        ("KILN_NOTIFICATIONS__RETRY_BASE_MS", "300"),
        ("KILN_NOTIFICATIONS__MAX_ATTEMPTS", "4"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

/// Creates organization `org` and a token of it; answers a client with that token.
async fn org_with_token(admin: &Client, org: &str) -> (Client, String) {
    let r = admin.post("/v1/organizations", json!({"name": org})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let t = admin.post(&format!("/v1/organizations/{org}/tokens"), json!({"name": "notify-test"})).await;
    assert_eq!(t.status, 201, "{t:?}");
    (admin.with_token(t.body["token"].as_str()), t.body["id"].as_str().unwrap().to_string())
}

/// Waits until a delivery is no longer pending; answers it.
async fn settled(c: &Client, org: &str, webhook: &str, delivery: &str) -> Value {
    let path = format!("/v1/organizations/{org}/notifications/webhooks/{webhook}/deliveries/{delivery}");
    eventually(Duration::from_secs(30), "the delivery to settle", || async {
        let r = c.get(&path).await;
        assert_eq!(r.status, 200, "{r:?}");
        (r.body["status"] != "pending").then_some(r.body)
    })
    .await
}

#[actix_web::test]
async fn deliveries_are_signed_retried_with_backoff_after_500s_and_logged() {
    let (server, _dir) = server_with_local_receivers(&[]);
    let admin = server.client();
    let (acme, token_id) = org_with_token(&admin, "acme").await;
    let receiver = Receiver::start(&[500, 503]);

    let r = acme.post("/v1/organizations/acme/notifications/webhooks", json!({"url": receiver.url, "name": "ops"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let (id, secret) = (r.body["id"].as_str().unwrap().to_string(), r.body["secret"].as_str().unwrap().to_string());
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{r:?}");
    assert_eq!(r.body["url"], receiver.url.as_str(), "the full URL, this once");
    assert_eq!(r.body["created_by"], token_id.as_str());

    // The secret is write-only, and the URL's path (a credential, for Slack) is not shown again.
    for r in [acme.get("/v1/organizations/acme/notifications/webhooks").await, acme.get(&format!("/v1/organizations/acme/notifications/webhooks/{id}")).await] {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.text.contains(&secret) && !r.text.contains("secret-path"), "{r:?}");
    }
    let listed = acme.get("/v1/organizations/acme/notifications/webhooks").await;
    assert_eq!(listed.body["items"][0]["url"], format!("{}/…", receiver.url.trim_end_matches("/hook/secret-path")));

    let t = acme.post(&format!("/v1/organizations/acme/notifications/webhooks/{id}/test"), json!({})).await;
    assert_eq!(t.status, 202, "{t:?}");
    let delivery = t.body["id"].as_str().unwrap().to_string();
    assert_eq!(t.body["status"], "pending");

    let got = receiver.wait_for(3, Duration::from_secs(30)).await;
    let done = settled(&acme, "acme", &id, &delivery).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(done["attempts"], 3);
    let codes: Vec<Value> = done["log"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, vec![json!(500), json!(503), json!(200)], "{done}");
    assert!(done["log"][0]["error"].as_str().unwrap().contains("500"), "{done}");
    assert!(done["log"][2]["error"].is_null());

    // Every attempt: the same delivery id, a fresh timestamp, a valid signature over the same body.
    for g in &got {
        assert_eq!(g.headers["x-kiln-delivery"], delivery);
        assert_eq!(g.headers["x-kiln-event"], "test");
        assert_eq!(g.headers["content-type"], "application/json");
        let ts = &g.headers["x-kiln-timestamp"];
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now - ts.parse::<i64>().unwrap()).abs() < 120, "a current timestamp: {ts}");
        assert_eq!(g.headers["x-kiln-signature-256"], expected_signature(&secret, ts, &g.body), "signature");
        assert_eq!(g.body, got[0].body, "a retry sends the same body");
        // A wrong secret does not verify.
        assert_ne!(g.headers["x-kiln-signature-256"], expected_signature("whsec_other", ts, &g.body));
    }
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["kind"], "test");
    assert_eq!(body["delivery"], delivery.as_str());
    assert_eq!(body["organization"], "acme");
    // Backoff: the wait doubles (300 ms, then 600 ms).
    let (gap1, gap2) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(gap1 >= Duration::from_millis(250), "first retry after {gap1:?}");
    assert!(gap2 >= Duration::from_millis(550) && gap2 > gap1, "second retry after {gap2:?} (first {gap1:?})");

    // The log lists it; after the bound, a delivery gives up.
    let log = acme.get(&format!("/v1/organizations/acme/notifications/webhooks/{id}/deliveries")).await;
    assert_eq!(log.status, 200, "{log:?}");
    assert_eq!(log.body["items"][0]["id"], delivery.as_str());
    *receiver.script.lock().unwrap() = VecDeque::from(vec![500, 500, 500, 500, 500]);
    let t = acme.post(&format!("/v1/organizations/acme/notifications/webhooks/{id}/test"), json!({})).await;
    let failed = settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 4, "max_attempts bounds it: {failed}");
    assert!(failed["last_error"].as_str().unwrap().contains("gave up after 4"), "{failed}");
    // A 4xx other than 408/429 is final at once.
    *receiver.script.lock().unwrap() = VecDeque::from(vec![410]);
    let t = acme.post(&format!("/v1/organizations/acme/notifications/webhooks/{id}/test"), json!({})).await;
    let gone = settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await;
    assert_eq!((gone["status"].as_str(), gone["attempts"].as_i64()), (Some("failed"), Some(1)), "{gone}");

    // Deleting the webhook removes it and its log.
    assert_eq!(acme.delete(&format!("/v1/organizations/acme/notifications/webhooks/{id}")).await.status, 204);
    assert_eq!(acme.get(&format!("/v1/organizations/acme/notifications/webhooks/{id}/deliveries")).await.code(), "webhook_not_found");
}

#[actix_web::test]
async fn a_task_going_idle_reaches_a_slack_webhook_and_the_inbox_and_another_organization_sees_none_of_it() {
    let (server, dir) = server_with_local_receivers(&[]);
    let admin = server.client();
    let (acme, acme_token) = org_with_token(&admin, "acme").await;
    let (other, _) = org_with_token(&admin, "other").await;
    let slack = Receiver::start(&[]);
    let everything = Receiver::start(&[]);
    let r = acme
        .post("/v1/organizations/acme/notifications/webhooks", json!({"url": slack.url, "format": "slack", "kinds": ["idle"]}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["kinds"], json!(["idle"]));
    let r = other.post("/v1/organizations/other/notifications/webhooks", json!({"url": everything.url})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let other_hook = r.body["id"].as_str().unwrap().to_string();

    let repo = git_repo(dir.path(), "app");
    admin.add_repo("acme", &repo).await;
    let task = admin.create_task_with("acme", json!({"repo": "app", "description": "Fix <the> login & more", "agent": "quick"})).await;
    let id = task["id"].as_str().unwrap().to_string();
    acme.wait_status("acme", &id, "idle").await;

    let got = slack.wait_for(1, Duration::from_secs(30)).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(got[0].headers["x-kiln-event"], "idle");
    let text = body["text"].as_str().unwrap();
    assert!(text.starts_with("Went idle: Fix &lt;the&gt; login &amp; more"), "Slack's escapes: {body}");
    assert!(text.ends_with("(acme/app)"), "{body}");
    assert_eq!(body["blocks"][0]["type"], "section");
    assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
    assert!(body["blocks"][1]["elements"][0]["text"].as_str().unwrap().contains(&id), "{body}");
    assert!(body.get("delivery").is_none(), "only Slack's fields: {body}");

    // The inbox: one unread `idle` entry, keyed by the event.
    let inbox = eventually(Duration::from_secs(20), "the inbox entry", || async {
        let r = acme.get("/v1/organizations/acme/inbox").await;
        assert_eq!(r.status, 200, "{r:?}");
        (r.body["unread"] == 1).then_some(r.body)
    })
    .await;
    let entry = &inbox["items"][0];
    assert_eq!(entry["kind"], "idle");
    assert_eq!(entry["label"], "Went idle");
    assert_eq!(entry["task"], id.as_str());
    assert_eq!(entry["repo"], "app");
    assert_eq!(entry["title"], task["title"]);
    assert!(entry["read_at"].is_null());
    let entry_id = entry["id"].as_i64().unwrap();
    let events = acme.events_since("acme", 0).await;
    assert!(events.iter().any(|e| e["id"] == entry_id && e["kind"] == "task.status_changed"), "the entry's id is its event's");
    assert!(events.iter().any(|e| e["kind"] == "inbox.added" && e["data"]["entry"]["id"] == entry_id), "announced on the stream");

    // Another organization sees none of it, and its webhook got nothing.
    let theirs = other.get("/v1/organizations/other/inbox").await;
    assert_eq!((theirs.body["unread"].as_i64(), theirs.body["items"].as_array().map(Vec::len)), (Some(0), Some(0)), "{theirs:?}");
    assert_eq!(other.get("/v1/organizations/acme/inbox").await.status, 403);
    assert_eq!(other.get("/v1/organizations/acme/notifications/webhooks").await.status, 403);
    assert_eq!(other.post("/v1/organizations/acme/inbox/read", json!({"all": true})).await.status, 403);
    let mine = other.post("/v1/organizations/other/inbox/read", json!({"ids": [entry_id]})).await;
    assert_eq!(mine.body["marked"], json!([]), "another organization's entry is not its to mark: {mine:?}");
    assert_eq!(acme.get(&format!("/v1/organizations/acme/notifications/webhooks/{other_hook}")).await.code(), "webhook_not_found");
    assert!(everything.got().is_empty(), "another organization's webhook got acme's events");

    // Mark read (for the organization, by this token), unread=true filters.
    let bad = acme.post("/v1/organizations/acme/inbox/read", json!({})).await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_read"));
    let r = acme.post("/v1/organizations/acme/inbox/read", json!({"ids": [entry_id]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"marked": [entry_id], "unread": 0}));
    let again = acme.post("/v1/organizations/acme/inbox/read", json!({"all": true})).await;
    assert_eq!(again.body, json!({"marked": [], "unread": 0}), "idempotent");
    let read = admin.get("/v1/organizations/acme/inbox").await;
    assert_eq!(read.body["items"][0]["read_by"], acme_token.as_str(), "read marks are the organization's: {read:?}");
    assert!(read.body["items"][0]["read_at"].is_i64());
    let unread = admin.get("/v1/organizations/acme/inbox?unread=true").await;
    assert_eq!(unread.body["items"], json!([]));
    assert_eq!(admin.get("/v1/organizations/acme/inbox?limit=0").await.code(), "invalid_limit");
    let events = acme.events_since("acme", 0).await;
    assert!(events.iter().any(|e| e["kind"] == "inbox.read" && e["data"]["ids"] == json!([entry_id])), "announced on the stream");
}

#[actix_web::test]
async fn webhooks_may_not_reach_the_servers_own_network_for_any_caller_and_it_is_checked_again_at_delivery() {
    let receiver = Receiver::start(&[]);
    let (mut server, _dir) = server_with_local_receivers(&[]);
    let admin = server.client();
    let (acme, _) = org_with_token(&admin, "acme").await;
    let r = acme.post("/v1/organizations/acme/notifications/webhooks", json!({"url": receiver.url})).await;
    assert_eq!(r.status, 201, "allowed by notifications.allowed_hosts: {r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();

    // Without the allowance, the same host is refused, at creation and at delivery.
    server.stop();
    server.set_env("KILN_NOTIFICATIONS__ALLOWED_HOSTS", None);
    server.restart();
    let admin = server.client();
    let acme = Client::new(&server.url, acme.token.as_deref());
    for client in [&acme, &admin] {
        for url in [
            receiver.url.as_str(),
            "http://localhost/x",
            "http://[::1]:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://0.0.0.0/x",
        ] {
            let r = client.post("/v1/organizations/acme/notifications/webhooks", json!({"url": url})).await;
            assert_eq!((r.status, r.code()), (422, "webhook_host_refused"), "{url}: {r:?}");
        }
        for url in ["ftp://example.com/x", "file:///etc/passwd", "http://user:pw@example.com/x", "https://example.com/x#f", "not a url", "http:///x"] {
            let r = client.post("/v1/organizations/acme/notifications/webhooks", json!({"url": url})).await;
            assert_eq!((r.status, r.code()), (422, "invalid_webhook_url"), "{url}: {r:?}");
        }
    }
    let t = acme.post(&format!("/v1/organizations/acme/notifications/webhooks/{id}/test"), json!({})).await;
    assert_eq!(t.status, 202, "{t:?}");
    let done = settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await;
    assert_eq!((done["status"].as_str(), done["attempts"].as_i64()), (Some("failed"), Some(1)), "refused at once: {done}");
    assert!(done["last_error"].as_str().unwrap().contains("loopback, link-local or private"), "{done}");
    assert!(done["log"][0]["status_code"].is_null());
    assert!(receiver.got().is_empty(), "nothing reached the refused host");

    // With only_allowed_hosts, public hosts are refused too, without resolving them.
    server.stop();
    server.set_env("KILN_NOTIFICATIONS__ONLY_ALLOWED_HOSTS", Some("true"));
    server.set_env("KILN_NOTIFICATIONS__ALLOWED_HOSTS", Some(r#"["hooks.example.invalid"]"#));
    server.restart();
    let admin = server.client();
    let r = admin.post("/v1/organizations/acme/notifications/webhooks", json!({"url": "https://example.com/hook"})).await;
    assert_eq!((r.status, r.code()), (422, "webhook_host_refused"), "{r:?}");
    let r = admin.post("/v1/organizations/acme/notifications/webhooks", json!({"url": "https://hooks.example.invalid/hook"})).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[actix_web::test]
async fn a_restart_does_not_lose_a_pending_delivery() {
    let receiver = Receiver::start(&[500]);
    // The retry is due 2 s after the first attempt: after the server is gone.
    let (mut server, _dir) = server_with_local_receivers(&[("KILN_NOTIFICATIONS__RETRY_BASE_MS", "2000")]);
    let admin = server.client();
    let r = admin.post("/v1/organizations/default/notifications/webhooks", json!({"url": receiver.url})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();
    let t = admin.post(&format!("/v1/organizations/default/notifications/webhooks/{id}/test"), json!({})).await;
    let delivery = t.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/organizations/default/notifications/webhooks/{id}/deliveries/{delivery}");
    eventually(Duration::from_secs(20), "the first attempt", || async {
        let r = admin.get(&path).await;
        (r.body["attempts"] == 1).then_some(())
    })
    .await;
    server.kill();
    assert_eq!(receiver.got().len(), 1);
    server.restart();
    let admin = server.client();
    let done = settled(&admin, "default", &id, &delivery).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let got = receiver.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].headers["x-kiln-delivery"], delivery, "the same delivery, resumed");
}

#[actix_web::test]
async fn the_cli_manages_webhooks_and_reads_the_inbox() {
    let (server, dir) = server_with_local_receivers(&[]);
    let receiver = Receiver::start(&[]);
    let (code, out, err) = cli(&server, &["notify", "add", &receiver.url, "--name", "ops", "--format", "slack", "--kind", "idle", "--kind", "merged"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("whsec_"), "the secret is printed once: {out}");
    let (code, out, err) = cli(&server, &["notify", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["kinds"], json!(["idle", "merged"]));
    assert!(!out.contains("whsec_"));
    let (code, out, err) = cli(&server, &["notify", "test", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delivered"), "{out}");
    assert_eq!(receiver.got().len(), 1);
    let (code, out, _) = cli(&server, &["notify", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("ops") && out.contains("slack"), "{out}");

    // The inbox, after a task went idle.
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task_with("default", json!({"repo": "app", "description": "Quiet one", "agent": "quick"})).await;
    c.wait_status("default", task["id"].as_str().unwrap(), "idle").await;
    let entries = eventually(Duration::from_secs(20), "an inbox entry", || async {
        let (code, out, _) = cli(&server, &["inbox", "--json"]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        (!v["items"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    assert_eq!(entries["unread"], 1);
    let entry = entries["items"][0]["id"].as_i64().unwrap().to_string();
    let (code, out, _) = cli(&server, &["inbox"]);
    assert_eq!(code, 0);
    assert!(out.contains("Went idle") && out.contains("Quiet one"), "{out}");
    let (code, out, err) = cli(&server, &["inbox", "read", &entry]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("marked 1"), "{out}");
    let (code, out, _) = cli(&server, &["inbox", "read", "--all"]);
    assert_eq!(code, 0);
    assert!(out.contains("marked 0"), "{out}");
    let (code, _, err) = cli(&server, &["inbox", "read"]);
    assert_ne!(code, 0, "an id or --all: {err}");
    let (code, out, err) = cli(&server, &["notify", "remove", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(&server, &["notify", "list", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
}

#[actix_web::test]
async fn a_receiver_that_never_answers_holds_up_no_other_delivery() {
    // A long deadline: the hanging attempt is still in flight when the test looks.
    let (server, _dir) = server_with_local_receivers(&[("KILN_NOTIFICATIONS__TIMEOUT_MS", "60000")]);
    let admin = server.client();
    let dead = Receiver::start(&[0, 0, 0]);
    let alive = Receiver::start(&[]);
    let mut hooks = Vec::new();
    for r in [&dead, &alive] {
        let c = admin.post("/v1/organizations/default/notifications/webhooks", json!({"url": r.url})).await;
        assert_eq!(c.status, 201, "{c:?}");
        hooks.push(c.body["id"].as_str().unwrap().to_string());
    }
    let test = |hook: String| {
        let admin = admin.clone();
        async move {
            let t = admin.post(&format!("/v1/organizations/default/notifications/webhooks/{hook}/test"), json!({})).await;
            assert_eq!(t.status, 202, "{t:?}");
            t.body["id"].as_str().unwrap().to_string()
        }
    };
    let stuck = test(hooks[0].clone()).await;
    dead.wait_for(1, Duration::from_secs(30)).await;
    // The dead receiver holds its attempt open; another webhook is delivered meanwhile.
    let fine = test(hooks[1].clone()).await;
    let done = settled(&admin, "default", &hooks[1], &fine).await;
    assert_eq!(done["status"], "delivered", "{done}");
    let held = admin.get(&format!("/v1/organizations/default/notifications/webhooks/{}/deliveries/{stuck}", hooks[0])).await;
    assert_eq!((held.body["status"].as_str(), held.body["attempts"].as_i64()), (Some("pending"), Some(0)), "still in flight: {held:?}");
    // So is the rest of the server.
    assert_eq!(admin.get("/v1/organizations/default/inbox").await.status, 200);
    assert_eq!(alive.got().len(), 1);
}

#[actix_web::test]
async fn a_webhook_is_changed_in_place_switched_off_and_on_and_its_secret_rotated() {
    let (server, _dir) = server_with_local_receivers(&[]);
    let admin = server.client();
    let (acme, _) = org_with_token(&admin, "acme").await;
    let (old, new) = (Receiver::start(&[]), Receiver::start(&[]));
    let r = acme.post("/v1/organizations/acme/notifications/webhooks", json!({"url": old.url, "kinds": ["idle"]})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let (id, secret) = (r.body["id"].as_str().unwrap().to_string(), r.body["secret"].as_str().unwrap().to_string());
    let hook = format!("/v1/organizations/acme/notifications/webhooks/{id}");

    // The same checks as at creation: shape, host policy, name, kinds; nothing changes on a refusal.
    for (body, code) in [
        (json!({"url": "http://user:pw@example.com/x"}), "invalid_webhook_url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data"}), "webhook_host_refused"),
        (json!({"url": "http://localhost/x"}), "webhook_host_refused"),
        (json!({"name": "  "}), "invalid_name"),
        (json!({"kinds": ["idle", "idle"]}), "invalid_kinds"),
    ] {
        let r = acme.patch(&hook, body.clone()).await;
        assert_eq!((r.status, r.code()), (422, code), "{body}: {r:?}");
    }
    let r = acme.patch(&hook, json!({"nope": 1})).await;
    assert_eq!(r.status, 422, "unknown fields are refused: {r:?}");
    let r = acme.patch("/v1/organizations/acme/notifications/webhooks/wh_000000000000", json!({"enabled": false})).await;
    assert_eq!((r.status, r.code()), (404, "webhook_not_found"));
    let r = admin.post("/v1/organizations", json!({"name": "other"})).await;
    assert_eq!(r.status, 201);
    let r = admin.patch(&format!("/v1/organizations/other/notifications/webhooks/{id}"), json!({"enabled": false})).await;
    assert_eq!((r.status, r.code()), (404, "webhook_not_found"), "another organization's webhook is not there: {r:?}");

    // New URL, name, format and kinds; the full URL is answered since it changed, no secret.
    let r = acme.patch(&hook, json!({"url": new.url, "name": "ops", "format": "slack", "kinds": ["merged", "idle"]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["url"].as_str(), r.body["name"].as_str(), r.body["format"].as_str()), (Some(new.url.as_str()), Some("ops"), Some("slack")));
    assert_eq!(r.body["kinds"], json!(["merged", "idle"]));
    assert!(r.body["secret"].is_null() && r.body["enabled"] == true, "{r:?}");
    let shown = acme.get(&hook).await;
    assert_eq!((shown.body["name"].as_str(), shown.body["enabled"].as_bool()), (Some("ops"), Some(true)));
    assert!(!shown.text.contains("secret-path"), "the path is not shown again: {shown:?}");

    // The test delivery goes to the new URL, signed with the old secret still.
    let t = acme.post(&format!("{hook}/test"), json!({})).await;
    assert_eq!(settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await["status"], "delivered");
    let got = new.wait_for(1, Duration::from_secs(30)).await;
    assert!(old.got().is_empty(), "nothing went to the old URL");
    let ts = &got[0].headers["x-kiln-timestamp"];
    assert_eq!(got[0].headers["x-kiln-signature-256"], expected_signature(&secret, ts, &got[0].body));
    let slack: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert!(slack["blocks"].is_array(), "the new format: {slack}");

    // Rotating: the new secret is answered once, and signs from now on.
    let r = acme.patch(&hook, json!({"rotate_secret": true})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = r.body["secret"].as_str().unwrap().to_string();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{r:?}");
    assert!(r.body["url"].as_str().unwrap().ends_with("/…"), "the URL did not change: masked {r:?}");
    assert!(!acme.get(&hook).await.text.contains(&rotated), "shown this once");
    let t = acme.post(&format!("{hook}/test"), json!({})).await;
    assert_eq!(settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await["status"], "delivered");
    let got = new.wait_for(2, Duration::from_secs(30)).await;
    let ts = &got[1].headers["x-kiln-timestamp"];
    assert_eq!(got[1].headers["x-kiln-signature-256"], expected_signature(&rotated, ts, &got[1].body), "the new secret signs");
    assert_ne!(got[1].headers["x-kiln-signature-256"], expected_signature(&secret, ts, &got[1].body), "the old one no longer does");

    // Switched off: a test is refused, and an event it wants makes no delivery, now or after it is on again.
    let r = acme.patch(&hook, json!({"enabled": false})).await;
    assert_eq!((r.status, r.body["enabled"].as_bool()), (200, Some(false)), "{r:?}");
    let t = acme.post(&format!("{hook}/test"), json!({})).await;
    assert_eq!((t.status, t.code()), (409, "webhook_disabled"), "{t:?}");
    let c = admin.clone();
    let dir = tempdir();
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let task = c.create_task_with("acme", json!({"repo": "app", "description": "Quiet one", "agent": "quick"})).await;
    c.wait_status("acme", task["id"].as_str().unwrap(), "idle").await;
    eventually(Duration::from_secs(20), "the inbox entry (the event was read)", || async {
        let r = acme.get("/v1/organizations/acme/inbox").await;
        (!r.body["items"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    let log = acme.get(&format!("{hook}/deliveries")).await;
    assert!(log.body["items"].as_array().unwrap().iter().all(|d| d["kind"] == "test"), "no delivery while off: {log:?}");
    let r = acme.patch(&hook, json!({"enabled": true})).await;
    assert_eq!((r.status, r.body["enabled"].as_bool()), (200, Some(true)));
    let t = acme.post(&format!("{hook}/test"), json!({})).await;
    assert_eq!(settled(&acme, "acme", &id, t.body["id"].as_str().unwrap()).await["status"], "delivered", "on again");
    let log = acme.get(&format!("{hook}/deliveries")).await;
    assert!(log.body["items"].as_array().unwrap().iter().all(|d| d["kind"] == "test"), "events from while it was off are not replayed: {log:?}");
    let events = acme.events_since("acme", 0).await;
    let updates: Vec<&Value> = events.iter().filter(|e| e["kind"] == "notification.webhook_updated").collect();
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert_eq!(updates[1]["data"]["changed"], json!(["secret"]));
    assert!(!serde_json::to_string(&events).unwrap().contains(&rotated), "the event never carries the secret");
}

#[actix_web::test]
async fn the_cli_updates_a_webhook() {
    let (server, _dir) = server_with_local_receivers(&[]);
    let receiver = Receiver::start(&[]);
    let (code, out, err) = cli(&server, &["notify", "add", &receiver.url, "--name", "ops"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(&server, &["notify", "list", "--json"]);
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"].as_str().unwrap().to_string();
    let (code, out, err) = cli(&server, &["notify", "update", &id, "--name", "pager", "--kind", "merged", "--disable", "--rotate-secret"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pager") && out.contains("off") && out.contains("kinds: merged"), "{out}");
    assert!(out.contains("whsec_"), "the new secret is printed once: {out}");
    let (_, out, _) = cli(&server, &["notify", "list"]);
    assert!(out.contains("pager") && out.contains("off"), "{out}");
    let (code, out, err) = cli(&server, &["notify", "update", &id, "--enable", "--all-kinds", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["enabled"].as_bool(), v["kinds"].clone(), v["secret"].is_null()), (Some(true), json!([]), true), "{v}");
    let (code, _, err) = cli(&server, &["notify", "update", &id, "--webhook-url", "http://169.254.169.254/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("host") || err.contains("webhook_host_refused"), "{err}");
}
