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
        // Actions take no body today; they must still not choke on one.
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
            if path.ends_with("/kill") {
                // No body is read: the action itself answers.
                assert!(r.status != 500, "{label}: {r:?}");
                continue;
            }
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
        "/v1/organizations/default/events?since=1&tail=5",
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
