//! Bad input on every route gets a clear 4xx with a JSON error: never a 500,
//! never a panic, never a half-made row.

use serde_json::json;

use crate::common::*;

/// Routes that take a JSON body.
fn body_routes(task: &str) -> Vec<(&'static str, String)> {
    let o = "/v1/organizations/default";
    vec![
        ("POST", "/v1/organizations".into()),
        ("PATCH", o.into()),
        ("PUT", format!("{o}/providers/worktree")),
        ("POST", format!("{o}/tokens")),
        ("POST", format!("{o}/repos")),
        ("POST", format!("{o}/tasks")),
        ("POST", format!("{o}/tasks/{task}/sessions")),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/prompt")),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/permissions/1")),
        // Actions take an optional body; a bad one is refused before the action.
        ("POST", format!("{o}/tasks/{task}/kill")),
    ]
}

fn assert_clean_4xx(r: &Reply, what: &str) {
    assert!((400..500).contains(&r.status), "{what}: expected 4xx, got {r:?}");
    assert!(r.body["error"].is_string() && r.body["message"].is_string(), "{what}: not a JSON error: {r:?}");
}

#[actix_web::test]
async fn malformed_bodies() {
    let (server, dir) = Server::start(&[("KILN_SERVER__MAX_BODY_BYTES", "4096")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let huge = json!({"name": "x".repeat(10_000), "description": "y".repeat(10_000)}).to_string();
    for (method, path) in body_routes(&task) {
        let cases: Vec<(&str, Vec<u8>, Option<&str>, Option<(u16, &str)>)> = vec![
            ("truncated json", b"{\"na".to_vec(), Some("application/json"), Some((400, "malformed_json"))),
            ("not json", b"hello".to_vec(), Some("application/json"), Some((400, "malformed_json"))),
            ("array", b"[1,2]".to_vec(), Some("application/json"), None),
            ("unknown field", br#"{"bogus_field": 1}"#.to_vec(), Some("application/json"), None),
            ("wrong types", br#"{"name": 5, "display_name": [], "source": {}, "repo": 1, "description": false, "config": 3}"#.to_vec(), Some("application/json"), None),
            ("oversized", huge.clone().into_bytes(), Some("application/json"), Some((413, "payload_too_large"))),
            ("wrong content type", b"{}".to_vec(), Some("text/plain"), None),
            ("invalid utf-8", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], Some("application/json"), None),
        ];
        for (what, body, ct, expect) in cases {
            let r = c.raw(method, &path, Some(&body), ct).await;
            let label = format!("{method} {path} ({what})");
            assert_clean_4xx(&r, &label);
            if let Some((status, code)) = expect {
                assert_eq!((r.status, r.code()), (status, code), "{label}");
            }
        }
    }
    // Unknown fields name the field.
    let r = c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": "x", "titel": "typo"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"));
    assert!(r.body["message"].as_str().unwrap().contains("titel"));
    // Nothing was made by any of it.
    let tasks = c.get("/v1/organizations/default/tasks").await;
    assert_eq!(tasks.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(c.get("/v1/organizations").await.body["items"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn bad_ids_and_queries() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let long = "a".repeat(300);
    let bad_orgs = ["UPPER", "..", "a%2F..%2Fb", "%00", long.as_str(), "%E2%98%83", "-x"];
    for org in bad_orgs {
        for path in [
            format!("/v1/organizations/{org}"),
            format!("/v1/organizations/{org}/repos"),
            format!("/v1/organizations/{org}/repos/app"),
            format!("/v1/organizations/{org}/tasks"),
            format!("/v1/organizations/{org}/tasks/{task}"),
            format!("/v1/organizations/{org}/events"),
            format!("/v1/organizations/{org}/providers/worktree"),
        ] {
            let r = c.get(&path).await;
            assert_clean_4xx(&r, &path);
            assert_eq!(r.status, 404, "{path}: {r:?}");
        }
    }
    let bad_tasks = ["zzzzzzzz", "ABCDEF12", "123", "..%2F..", long.as_str(), "%00"];
    for t in bad_tasks {
        for (method, path) in [
            ("GET", format!("/v1/organizations/default/tasks/{t}")),
            ("POST", format!("/v1/organizations/default/tasks/{t}/kill")),
        ] {
            let r = c.raw(method, &path, None, None).await;
            assert_eq!((r.status, r.code()), (404, "task_not_found"), "{method} {path}: {r:?}");
        }
    }
    for repo in ["UPPER", "..", long.as_str(), "nope"] {
        for suffix in ["", "/branches", "/pulls"] {
            let path = format!("/v1/organizations/default/repos/{repo}{suffix}");
            let r = c.get(&path).await;
            assert_eq!((r.status, r.code()), (404, "repo_not_found"), "{path}: {r:?}");
        }
    }
    let queries = [
        "/v1/organizations/default/tasks?limit=abc",
        "/v1/organizations/default/tasks?limit=0",
        "/v1/organizations/default/tasks?limit=100000",
        "/v1/organizations/default/tasks?status=bogus",
        "/v1/organizations/default/tasks?cursor=garbage",
        "/v1/organizations/default/tasks?cursor=1.zz",
        "/v1/organizations/default/tasks?unknown=1",
        "/v1/organizations/default/events?since=-1",
        "/v1/organizations/default/events?since=abc",
        "/v1/organizations/default/events?limit=0",
        "/v1/organizations/default/events?limit=5000",
        "/v1/organizations/default/events?since=1&tail=5000",
        "/v1/organizations/default/events?tail=5&limit=5000",
        "/v1/organizations/default/events?what=1",
        "/v1/organizations/default/stream?since=-5",
        "/v1/organizations/default/stream?since=x",
    ];
    for path in queries {
        let r = c.get(path).await;
        assert_clean_4xx(&r, path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    let r = c.get("/v1/organizations/default/tasks?repo=nope").await;
    assert_eq!((r.status, r.code()), (404, "repo_not_found"));
    // Names that are not valid are refused on create, with the rule in the message.
    for name in ["UPPER", "a/b", "", "..", " x"] {
        let r = c.post("/v1/organizations", json!({"name": name})).await;
        assert_eq!((r.status, r.code()), (422, "invalid_name"), "{name:?}: {r:?}");
    }
    let r = c.patch("/v1/organizations/default", json!({"display_name": "  "})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_display_name"));
    let r = c.post("/v1/organizations/default/tokens", json!({"name": ""})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_token_name"));
    let r = c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": "x".repeat(70_000)})).await;
    assert!(r.status == 413 || r.status == 422, "{r:?}");
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_json() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let r = c.get("/v1/nothing-here").await;
    assert_eq!((r.status, r.code()), (404, "route_not_found"));
    let r = c.raw("PUT", "/v1/organizations", None, None).await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    let r = c.raw("DELETE", "/v1/organizations/default/tasks", None, None).await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    let r = c.get("/v1/organizations/default/stream").await;
    assert_eq!((r.status, r.code()), (400, "websocket_required"), "plain GET on the stream: {r:?}");
    assert!(!server.log().contains("panicked"), "the server panicked");
}

/// How a route reads its body.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reads {
    /// A JSON object body (required or optional).
    Json,
    /// The raw bytes, checked by signature (the webhook).
    Raw,
    /// No body; one sent is ignored.
    Nothing,
}

/// Every route of api.md's table: (method, the path as the table writes it, a
/// concrete path to call, how it reads its body). Destructive routes point at
/// things that do not exist.
fn every_route(task: &str) -> Vec<(&'static str, &'static str, String, Reads)> {
    use Reads::*;
    let o = "/v1/organizations/default";
    let t = format!("{o}/tasks/{task}");
    let s = format!("{t}/sessions/0123456789ab");
    vec![
        ("GET", "/v1/health", "/v1/health".into(), Nothing),
        ("GET", "/v1/openapi.json", "/v1/openapi.json".into(), Nothing),
        ("GET", "/v1/organizations", "/v1/organizations".into(), Nothing),
        ("POST", "/v1/organizations", "/v1/organizations".into(), Json),
        ("GET", "/v1/organizations/{org}", o.into(), Nothing),
        ("PATCH", "/v1/organizations/{org}", o.into(), Json),
        ("DELETE", "/v1/organizations/{org}", "/v1/organizations/ghost".into(), Nothing),
        ("GET", "/v1/organizations/{org}/providers/{provider}", format!("{o}/providers/worktree"), Nothing),
        ("PUT", "/v1/organizations/{org}/providers/{provider}", format!("{o}/providers/worktree"), Json),
        ("GET", "/v1/organizations/{org}/tokens", format!("{o}/tokens"), Nothing),
        ("POST", "/v1/organizations/{org}/tokens", format!("{o}/tokens"), Json),
        ("DELETE", "/v1/organizations/{org}/tokens/{token}", format!("{o}/tokens/tok_000000000000"), Nothing),
        ("GET", "/v1/organizations/{org}/agents", format!("{o}/agents"), Nothing),
        ("GET", "/v1/organizations/{org}/repos", format!("{o}/repos"), Nothing),
        ("POST", "/v1/organizations/{org}/repos", format!("{o}/repos"), Json),
        ("GET", "/v1/organizations/{org}/repos/{repo}", format!("{o}/repos/app"), Nothing),
        ("DELETE", "/v1/organizations/{org}/repos/{repo}", format!("{o}/repos/ghost"), Nothing),
        ("PUT", "/v1/organizations/{org}/repos/{repo}/setup", format!("{o}/repos/app/setup"), Json),
        ("PUT", "/v1/organizations/{org}/repos/{repo}/settings", format!("{o}/repos/app/settings"), Json),
        ("GET", "/v1/organizations/{org}/repos/{repo}/branches", format!("{o}/repos/app/branches"), Nothing),
        ("GET", "/v1/organizations/{org}/repos/{repo}/pulls", format!("{o}/repos/app/pulls"), Nothing),
        ("GET", "/v1/organizations/{org}/repos/{repo}/conflicts", format!("{o}/repos/app/conflicts"), Nothing),
        ("GET", "/v1/organizations/{org}/tasks", format!("{o}/tasks"), Nothing),
        ("POST", "/v1/organizations/{org}/tasks", format!("{o}/tasks"), Json),
        ("GET", "/v1/organizations/{org}/tasks/{task}", t.clone(), Nothing),
        ("POST", "/v1/organizations/{org}/tasks/{task}/{action}", format!("{t}/kill"), Json),
        ("GET", "/v1/organizations/{org}/tasks/{task}/diff", format!("{t}/diff"), Nothing),
        ("POST", "/v1/organizations/{org}/tasks/{task}/review", format!("{t}/review"), Json),
        ("GET", "/v1/organizations/{org}/tasks/{task}/terminal", format!("{t}/terminal"), Nothing),
        ("GET", "/v1/organizations/{org}/tasks/{task}/sessions", format!("{t}/sessions"), Nothing),
        ("POST", "/v1/organizations/{org}/tasks/{task}/sessions", format!("{t}/sessions"), Json),
        ("GET", "/v1/organizations/{org}/tasks/{task}/sessions/{session}", s.clone(), Nothing),
        ("DELETE", "/v1/organizations/{org}/tasks/{task}/sessions/{session}", s.clone(), Nothing),
        ("POST", "/v1/organizations/{org}/tasks/{task}/sessions/{session}/prompt", format!("{s}/prompt"), Json),
        ("POST", "/v1/organizations/{org}/tasks/{task}/sessions/{session}/cancel", format!("{s}/cancel"), Nothing),
        ("POST", "/v1/organizations/{org}/tasks/{task}/sessions/{session}/permissions/{request}", format!("{s}/permissions/1"), Json),
        ("GET", "/v1/organizations/{org}/tasks/{task}/sessions/{session}/transcript", format!("{s}/transcript"), Nothing),
        ("GET", "/v1/organizations/{org}/notifications/webhooks", format!("{o}/notifications/webhooks"), Nothing),
        ("POST", "/v1/organizations/{org}/notifications/webhooks", format!("{o}/notifications/webhooks"), Json),
        ("GET", "/v1/organizations/{org}/notifications/webhooks/{webhook}", format!("{o}/notifications/webhooks/wh_000000000000"), Nothing),
        ("PATCH", "/v1/organizations/{org}/notifications/webhooks/{webhook}", format!("{o}/notifications/webhooks/wh_000000000000"), Json),
        ("DELETE", "/v1/organizations/{org}/notifications/webhooks/{webhook}", format!("{o}/notifications/webhooks/wh_000000000000"), Nothing),
        ("POST", "/v1/organizations/{org}/notifications/webhooks/{webhook}/test", format!("{o}/notifications/webhooks/wh_000000000000/test"), Nothing),
        ("GET", "/v1/organizations/{org}/notifications/webhooks/{webhook}/deliveries", format!("{o}/notifications/webhooks/wh_000000000000/deliveries"), Nothing),
        (
            "GET",
            "/v1/organizations/{org}/notifications/webhooks/{webhook}/deliveries/{delivery}",
            format!("{o}/notifications/webhooks/wh_000000000000/deliveries/dlv_0000000000000000"),
            Nothing,
        ),
        ("GET", "/v1/organizations/{org}/inbox", format!("{o}/inbox"), Nothing),
        ("POST", "/v1/organizations/{org}/inbox/read", format!("{o}/inbox/read"), Json),
        ("GET", "/v1/organizations/{org}/events", format!("{o}/events"), Nothing),
        ("GET", "/v1/organizations/{org}/stream", format!("{o}/stream"), Nothing),
        ("POST", "/v1/webhooks/github", "/v1/webhooks/github".into(), Raw),
        ("POST", "/v1/dashboard/codes", "/v1/dashboard/codes".into(), Json),
        ("POST", "/v1/dashboard/sessions", "/v1/dashboard/sessions".into(), Json),
        ("GET", "/v1/dashboard/session", "/v1/dashboard/session".into(), Nothing),
        ("DELETE", "/v1/dashboard/session", "/v1/dashboard/session".into(), Nothing),
        ("GET", "/admin/actors", "/admin/actors".into(), Nothing),
        ("GET", "/admin/config", "/admin/config".into(), Nothing),
        ("POST", "/admin/db/checkpoint", "/admin/db/checkpoint".into(), Nothing),
        ("POST", "/admin/db/backup", "/admin/db/backup".into(), Nothing),
        ("POST", "/admin/repos/maintain", "/admin/repos/maintain".into(), Json),
        ("GET", "/admin/pollers", "/admin/pollers".into(), Nothing),
        ("POST", "/admin/pollers/{key}/{poll\\|stop\\|interval}", "/admin/pollers/org/default/nope/interval".into(), Json),
        ("GET", "/metrics", "/metrics".into(), Nothing),
    ]
}

/// The (method, path) rows of api.md's "Routes at a glance" table.
fn documented_routes() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let table = doc.split("## Routes at a glance").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut out = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| ") && l.contains('`')) {
        let cols: Vec<&str> = line.split(" | ").collect();
        let methods = cols[0].trim_start_matches("| ");
        let path = cols[1].trim_matches('`').to_string();
        for m in methods.split_whitespace().filter(|m| !m.starts_with('(')) {
            out.push((m.to_string(), path.clone()));
        }
    }
    out
}

/// A fuzzer's sweep over every documented route: an array body, a scalar body, a
/// wrong Content-Type, an oversized body and an unknown query parameter. Each is
/// answered with the documented JSON error; nothing is ever text/plain or 5xx.
/// A route added to api.md's table without a row here fails this test.
#[actix_web::test]
async fn every_route_refuses_what_a_fuzzer_sends_with_a_json_error() {
    let (server, dir) = Server::start(&[("KILN_SERVER__MAX_BODY_BYTES", "4096")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let routes = every_route(&task);
    for (method, path) in documented_routes() {
        assert!(
            routes.iter().any(|(m, p, _, _)| *m == method && *p == path),
            "api.md documents {method} {path}, which this sweep does not cover: add it to every_route"
        );
    }
    let oversized = format!("{{\"name\": \"{}\"}}", "x".repeat(8192));
    let cases: [(&str, &[u8], &str); 5] = [
        ("array", b"[\"acme/app\", true]", "application/json"),
        ("empty array", b"[]", "application/json"),
        ("scalar", b"42", "application/json"),
        ("wrong content type", b"{}", "text/plain"),
        ("oversized", oversized.as_bytes(), "application/json"),
    ];
    for (method, _, path, reads) in &routes {
        for (what, body, ct) in cases {
            let r = c.raw(method, path, Some(body), Some(ct)).await;
            let label = format!("{method} {path} ({what})");
            assert!(r.status < 500, "{label}: {r:?}");
            if r.status >= 400 {
                assert_clean_4xx(&r, &label);
            }
            let expected = match (reads, what) {
                (Reads::Json, "wrong content type") => Some((400, "expected_json")),
                (Reads::Json, "oversized") => Some((413, "payload_too_large")),
                (Reads::Json, _) => Some((422, "invalid_body")),
                // No signature: refused before the body means anything.
                (Reads::Raw, _) => Some((401, "unauthorized")),
                (Reads::Nothing, _) => None,
            };
            if let Some((status, code)) = expected {
                assert_eq!((r.status, r.code()), (status, code), "{label}: {r:?}");
            }
        }
        let r = c.raw(method, &format!("{path}?zzz=1"), None, None).await;
        assert_eq!((r.status, r.code()), (400, "invalid_query"), "{method} {path}?zzz=1: {r:?}");
        assert!(r.body["message"].as_str().unwrap().contains("zzz"), "{r:?}");
    }
    // None of it changed anything: the task still runs, nothing was created.
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["status"], "running");
    assert_eq!(c.get("/v1/organizations").await.body["items"].as_array().unwrap().len(), 1);
    assert!(!server.log().contains("panicked"), "the server panicked");
}

#[actix_web::test]
async fn arrays_never_stand_in_for_objects() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let repo = "/v1/organizations/default/repos/app";
    let r = c.put(&format!("{repo}/setup"), json!({"commands": ["make"], "copy": [".env"]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let before = c.get(repo).await.body;
    // serde's positional form of the structs, at the top and nested.
    for (path, body) in [
        (format!("{repo}/setup"), json!([])),
        (format!("{repo}/setup"), json!([["rm -rf /"], []])),
        (format!("{repo}/settings"), json!(["acme/app", true])),
        (format!("{repo}/settings"), json!({"automation": [[true, true, true]]})),
        (format!("{repo}/settings"), json!({"automation": {"on_idle": [true, true, true]}})),
        ("/v1/organizations/default".to_string(), json!(["Renamed"])),
    ] {
        let r = c.raw(if path.ends_with("default") { "PATCH" } else { "PUT" }, &path, Some(body.to_string().as_bytes()), Some("application/json")).await;
        assert_eq!((r.status, r.code()), (422, "invalid_body"), "{path} {body}: {r:?}");
    }
    assert_eq!(c.get(repo).await.body, before, "nothing changed");
    assert_eq!(c.get("/v1/organizations/default").await.body["display_name"], "Default");
}

#[actix_web::test]
async fn error_messages_never_repeat_a_value_sent() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let secret = "sk-live-51HxQ2eZvKYlo2C0123456789";
    // The report: a secret sent where an object belongs was echoed in the 422.
    let r = c.put("/v1/organizations/default/providers/worktree", json!({"secrets": secret})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"), "{r:?}");
    assert!(!r.text.contains("sk-live"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("secrets"), "the field is named: {r:?}");
    // Every field of every body, with a value of the wrong kind that holds the secret.
    let o = "/v1/organizations/default";
    let fields: Vec<(&str, String, &[&str])> = vec![
        ("POST", "/v1/organizations".into(), &["name", "display_name"]),
        ("PATCH", o.into(), &["display_name"]),
        ("PUT", format!("{o}/providers/worktree"), &["config", "secrets"]),
        ("PUT", format!("{o}/providers/github"), &["config", "secrets"]),
        ("POST", format!("{o}/tokens"), &["name"]),
        ("POST", format!("{o}/repos"), &["source", "name"]),
        ("PUT", format!("{o}/repos/app/setup"), &["commands", "copy"]),
        ("PUT", format!("{o}/repos/app/settings"), &["github", "keep_after_merge", "automation"]),
        ("POST", format!("{o}/tasks"), &["repo", "description", "title", "base_branch", "agent", "provider"]),
        ("POST", format!("{o}/tasks/{task}/nope"), &["text", "commit", "mode", "draft", "method"]),
        ("POST", format!("{o}/tasks/{task}/sessions"), &["agent", "mode", "model"]),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/prompt"), &["text"]),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/permissions/1"), &["option_id", "outcome"]),
        ("POST", "/admin/pollers/nope/interval".into(), &["interval_ms"]),
    ];
    for (method, path, names) in &fields {
        for name in names.iter() {
            for value in [json!([secret]), json!(true), json!(7), json!({"nested": [secret]}), json!(format!("{secret}\u{0}"))] {
                // Only wrong kinds: a string where a string belongs is not an error.
                if value.is_string() && !["secrets", "config", "automation", "commands", "copy", "keep_after_merge", "draft", "interval_ms"].contains(name) {
                    continue;
                }
                let body = json!({ *name: value });
                let r = c.raw(method, path, Some(body.to_string().as_bytes()), Some("application/json")).await;
                if r.code() == "invalid_body" {
                    assert!(r.body["message"].as_str().unwrap().contains(name), "{method} {path} {body}: the field is named: {r:?}");
                }
                if r.status >= 400 {
                    assert!(!r.text.contains("sk-live"), "{method} {path} {body}: {r:?}");
                }
            }
        }
    }
}

/// A setup command the API refuses is named by its place, never quoted: shell
/// text may carry a credential (`TOKEN=… make`), and the 422 used to repeat it.
#[actix_web::test]
async fn a_refused_setup_command_is_named_not_quoted() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let path = "/v1/organizations/default/repos/app/setup";
    let secret = "TOKEN=sk-live-51HxQ2eZvKYlo2C0123456789 make deploy";
    for bad in [format!("{secret}\u{0}"), format!("{secret} {}", "x".repeat(4096)), "   ".to_string()] {
        let r = c.put(path, json!({"commands": ["npm ci", bad]})).await;
        assert_eq!((r.status, r.code()), (422, "invalid_setup"), "{r:?}");
        assert!(!r.text.contains("sk-live") && !r.text.contains("TOKEN"), "{r:?}");
        assert!(r.body["message"].as_str().unwrap().contains("commands[1]"), "the command is named by its place: {r:?}");
    }
    // Nothing was stored.
    assert_eq!(c.get("/v1/organizations/default/repos/app").await.body["setup"]["commands"], json!([]));
}

#[actix_web::test]
async fn raw_body_routes_answer_json_and_check_the_content_type() {
    let (server, dir) = Server::start(&[("KILN_SERVER__MAX_BODY_BYTES", "4096")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(5000));
    let poller = format!("org/default/repo/app/branch-sync");
    for path in [format!("/v1/organizations/default/tasks/{task}/input"), format!("/admin/pollers/{poller}/interval")] {
        let r = c.raw("POST", &path, Some(big.as_bytes()), Some("application/json")).await;
        assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{path}: {r:?}");
        assert!(r.body["message"].as_str().unwrap().contains("4096"), "{r:?}");
    }
    // The webhook has its own limit (5 MiB), answered as JSON too.
    let huge = vec![b' '; 5 * 1024 * 1024 + 1];
    let r = c.raw("POST", "/v1/webhooks/github", Some(&huge), Some("application/json")).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{:?}", r.status);
    // The poller interval needs JSON, like every body.
    let path = format!("/admin/pollers/{poller}/interval");
    let r = c.raw("POST", &path, Some(b"{\"interval_ms\": 1000}"), Some("text/plain")).await;
    assert_eq!((r.status, r.code()), (400, "expected_json"), "{r:?}");
    let r = c.raw("POST", &path, Some(b"{\"interval_ms\": 1000}"), None).await;
    assert_eq!((r.status, r.code()), (400, "expected_json"), "{r:?}");
    let r = c.post(&path, json!({})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"), "{r:?}");
    let r = c.post(&path, json!({"interval_ms": 1000})).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Poll and stop need no body (and no Content-Type).
    let r = c.raw("POST", &format!("/admin/pollers/{poller}/poll"), None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // An action with no body still needs none.
    let r = c.raw("POST", &format!("/v1/organizations/default/tasks/{task}/input"), Some(b"{\"text\": \"hi\\r\"}"), Some("text/plain")).await;
    assert_eq!((r.status, r.code()), (400, "expected_json"), "{r:?}");
    let r = c.raw("POST", &format!("/v1/organizations/default/tasks/{task}/kill"), None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[actix_web::test]
async fn unknown_query_parameters_are_refused_everywhere() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    for path in [
        "/v1/organizations/default?zzz=1",
        "/v1/organizations?zzz=1",
        "/v1/organizations/default/repos?zzz",
        "/v1/health?zzz=1",
        "/admin/actors?zzz=1",
        "/v1/organizations/default?access_token=x",
    ] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.code()), (400, "invalid_query"), "{path}: {r:?}");
    }
    // A value is never repeated (it may be a token).
    let r = c.get("/v1/organizations/default?access_token=kiln_secretvalue").await;
    assert!(!r.text.contains("kiln_secretvalue"), "{r:?}");
    // A bad query beats a 404, as for routes that read queries.
    let r = c.get("/v1/organizations/ghost?zzz=1").await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"), "{r:?}");
    // Known parameters still work; writes take none and change nothing.
    assert_eq!(c.get("/v1/organizations/default/events?limit=5").await.status, 200);
    let r = c.raw("PATCH", "/v1/organizations/default?zzz=1", Some(br#"{"display_name": "Changed"}"#), Some("application/json")).await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"), "{r:?}");
    assert_eq!(c.get("/v1/organizations/default").await.body["display_name"], "Default");
    // Unknown paths stay 404 whatever the query.
    assert_eq!(c.get("/v1/nothing-here?zzz=1").await.code(), "route_not_found");
}
