//! Auth on by default: no token is 401, another organization's token is 403 on
//! every route of that organization, and admin routes need the admin token.

use serde_json::{json, Value};

use crate::common::*;

/// Every organization-scoped route, with a body where it takes one.
fn org_routes(org: &str, repo: &str, task: &str, token_id: &str, source: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let o = format!("/v1/organizations/{org}");
    let mut routes = vec![
        ("GET", o.clone(), None),
        ("PATCH", o.clone(), Some(json!({"display_name": "pwned"}))),
        ("DELETE", o.clone(), None),
        ("GET", format!("{o}/providers/worktree"), None),
        ("PUT", format!("{o}/providers/worktree"), Some(json!({"secrets": {"k": "v"}}))),
        ("GET", format!("{o}/tokens"), None),
        ("POST", format!("{o}/tokens"), Some(json!({"name": "x"}))),
        ("DELETE", format!("{o}/tokens/{token_id}"), None),
        ("GET", format!("{o}/agents"), None),
        ("GET", format!("{o}/repos"), None),
        ("POST", format!("{o}/repos"), Some(json!({"source": source, "name": "stolen"}))),
        ("GET", format!("{o}/repos/{repo}"), None),
        ("DELETE", format!("{o}/repos/{repo}"), None),
        ("GET", format!("{o}/repos/{repo}/branches"), None),
        ("GET", format!("{o}/repos/{repo}/pulls"), None),
        ("GET", format!("{o}/tasks"), None),
        ("POST", format!("{o}/tasks"), Some(json!({"repo": repo, "description": "x"}))),
        ("GET", format!("{o}/tasks/{task}"), None),
        ("GET", format!("{o}/tasks/{task}/sessions"), None),
        ("POST", format!("{o}/tasks/{task}/sessions"), Some(json!({"agent": "mock"}))),
        ("GET", format!("{o}/tasks/{task}/sessions/0123456789ab"), None),
        ("DELETE", format!("{o}/tasks/{task}/sessions/0123456789ab"), None),
        ("GET", format!("{o}/tasks/{task}/sessions/0123456789ab/transcript"), None),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/prompt"), Some(json!({"text": "x"}))),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/cancel"), Some(json!({}))),
        ("POST", format!("{o}/tasks/{task}/sessions/0123456789ab/permissions/1"), Some(json!({"option_id": "x"}))),
        ("GET", format!("{o}/events"), None),
        ("GET", format!("{o}/stream"), None),
    ];
    for action in ["push", "sync", "pr", "merge", "archive", "kill", "resume", "input", "attach", "switch"] {
        routes.push(("POST", format!("{o}/tasks/{task}/{action}"), Some(json!({}))));
    }
    routes
}

fn admin_routes() -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("POST", "/v1/organizations".into(), Some(json!({"name": "new-org"}))),
        ("GET", "/admin/actors".into(), None),
        ("GET", "/admin/config".into(), None),
        ("POST", "/admin/db/checkpoint".into(), None),
        ("POST", "/admin/db/backup".into(), None),
        ("GET", "/metrics".into(), None),
    ]
}

async fn call(c: &Client, method: &str, path: &str, body: &Option<Value>) -> Reply {
    match body {
        Some(b) => c.raw(method, path, Some(b.to_string().as_bytes()), Some("application/json")).await,
        None => c.raw(method, path, None, None).await,
    }
}

#[actix_web::test]
async fn tokens_are_scoped_to_their_organization() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    for org in ["acme", "globex"] {
        assert_eq!(admin.post("/v1/organizations", json!({"name": org})).await.status, 201);
    }
    let src = git_repo(dir.path(), "secret-app");
    admin.add_repo("globex", &src).await;
    let task = admin.create_task("globex", "secret-app", "globex work").await["id"].as_str().unwrap().to_string();
    let globex_tok = admin.post("/v1/organizations/globex/tokens", json!({"name": "g"})).await;
    let globex_tok_id = globex_tok.body["id"].as_str().unwrap().to_string();
    let acme_tok = admin.post("/v1/organizations/acme/tokens", json!({"name": "ci"})).await;
    assert_eq!(acme_tok.status, 201);
    let secret = acme_tok.body["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("kiln_"));
    // Stored hashed: the secret is nowhere in the database file.
    let db = std::fs::read(server.data_dir().join("kiln.db")).unwrap();
    let wal = std::fs::read(server.data_dir().join("kiln.db-wal")).unwrap_or_default();
    let hay = [db, wal].concat();
    assert!(!hay.windows(secret.len()).any(|w| w == secret.as_bytes()), "token stored in plain text");

    let acme = admin.with_token(Some(&secret));
    let before = admin.events_since("globex", 0).await.len();
    for (method, path, body) in org_routes("globex", "secret-app", &task, &globex_tok_id, src.to_str().unwrap()) {
        let r = call(&acme, method, &path, &body).await;
        assert!(r.status == 403 || r.status == 404, "{method} {path} let another org in: {r:?}");
        assert!(r.body["error"].is_string(), "{method} {path}: {r:?}");
        assert!(!r.text.contains("globex work"), "{method} {path} leaked data");
    }
    // Nothing changed in globex.
    assert_eq!(admin.events_since("globex", 0).await.len(), before);
    assert_eq!(admin.get("/v1/organizations/globex").await.body["display_name"], "globex");
    // Listing shows only its own organization.
    let list = acme.get("/v1/organizations").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["items"][0]["name"], "acme");
    // Its own organization works.
    assert_eq!(acme.get("/v1/organizations/acme/repos").await.status, 200);
    assert_eq!(acme.get("/v1/organizations/acme/events").await.status, 200);
    // Admin-only routes are refused even for its own organization.
    for (method, path, body) in admin_routes() {
        let r = call(&acme, method, &path, &body).await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
    }
    for path in ["/v1/organizations/acme/tokens"] {
        assert_eq!(acme.get(path).await.status, 403);
    }
}

#[actix_web::test]
async fn every_route_needs_a_token() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let src = git_repo(dir.path(), "app");
    admin.add_repo("default", &src).await;
    let task = admin.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let tok = admin.post("/v1/organizations/default/tokens", json!({"name": "t"})).await.body["id"].as_str().unwrap().to_string();
    let mut routes = org_routes("default", "app", &task, &tok, src.to_str().unwrap());
    routes.extend(admin_routes());
    routes.push(("GET", "/v1/organizations".into(), None));
    for bad in [None, Some("kiln_not-a-real-token")] {
        let c = admin.with_token(bad);
        for (method, path, body) in &routes {
            let r = call(&c, method, path, body).await;
            assert_eq!((r.status, r.code()), (401, "unauthorized"), "{method} {path} with {bad:?}: {r:?}");
        }
    }
    // Health stays open.
    assert_eq!(admin.with_token(None).get("/v1/health").await.status, 200);
}

#[actix_web::test]
async fn revoked_tokens_stop_working() {
    let (server, _dir) = Server::start(&[]);
    let admin = server.client();
    let created = admin.post("/v1/organizations/default/tokens", json!({"name": "temp"})).await;
    let (id, secret) = (created.body["id"].as_str().unwrap(), created.body["token"].as_str().unwrap());
    let c = admin.with_token(Some(secret));
    assert_eq!(c.get("/v1/organizations/default").await.status, 200);
    let listed = admin.get("/v1/organizations/default/tokens").await;
    assert_eq!(listed.body["items"][0]["id"], id);
    assert!(listed.body["items"][0].get("token").is_none() && listed.body["items"][0].get("token_hash").is_none());
    let r = admin.delete(&format!("/v1/organizations/default/tokens/{id}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body["revoked_at"].is_i64());
    assert_eq!(c.get("/v1/organizations/default").await.status, 401);
    let again = admin.delete(&format!("/v1/organizations/default/tokens/{id}")).await;
    assert_eq!((again.status, again.code()), (404, "token_not_found"));
}

#[actix_web::test]
async fn auth_can_be_turned_off_explicitly() {
    let (server, _dir) = Server::start(&[("KILN_AUTH__ENABLED", "false")]);
    let anon = server.client().with_token(None);
    assert_eq!(anon.get("/v1/organizations").await.status, 200);
    assert!(server.log().contains("auth is turned off"));
}

#[actix_web::test]
async fn a_bad_token_is_401_whatever_the_body() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client().with_token(Some("kiln_wrong"));
    for body in [&b"{not json"[..], b"[]", b"{\"unknown\":1}"] {
        let r = c.raw("POST", "/v1/organizations/default/tasks", Some(body), Some("application/json")).await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{r:?}");
    }
    let r = c.get("/v1/organizations/default/tasks?limit=abc").await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let r = c.get("/v1/no-such-route").await;
    assert_eq!(r.status, 401, "unknown routes reveal nothing without a token");
}

/// Reads the stream until it closes; answers the close reason (panics after `timeout`).
async fn close_of(ws: &mut Ws, timeout: std::time::Duration) -> Option<awc::ws::CloseReason> {
    loop {
        match ws.next(timeout).await {
            WsItem::Close(reason) => return reason,
            WsItem::Ended => return None,
            WsItem::Event(_) => {}
        }
    }
}

/// Sends terminal input without failing if the server already closed the socket.
async fn type_quietly(term: &mut Term, bytes: &[u8]) {
    use futures_util::SinkExt;
    let _ = term.ws.framed.send(awc::ws::Message::Binary(bytes.to_vec().into())).await;
}

#[actix_web::test]
async fn revoking_a_token_closes_its_streams_and_terminals_at_once() {
    use std::time::Duration;
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    admin.add_repo("default", &git_repo(dir.path(), "app")).await;
    let task = admin.create_task("default", "app", "revocation").await["id"].as_str().unwrap().to_string();
    let mint = |name: &'static str| {
        let admin = admin.clone();
        async move {
            let r = admin.post("/v1/organizations/default/tokens", json!({"name": name})).await;
            (r.body["id"].as_str().unwrap().to_string(), r.body["token"].as_str().unwrap().to_string())
        }
    };
    let (revoked_id, revoked_secret) = mint("revoked").await;
    let (_, kept_secret) = mint("kept").await;
    let doomed = admin.with_token(Some(&revoked_secret));
    let kept = admin.with_token(Some(&kept_secret));

    let mut stream = doomed.ws("/v1/organizations/default/stream").await;
    let mut term = Term::open(&doomed, "default", &task, 0).await;
    term.expect("fake-agent ready").await;
    // Connections of another token and of the admin are not touched.
    let mut kept_stream = kept.ws("/v1/organizations/default/stream").await;
    let mut admin_stream = admin.ws("/v1/organizations/default/stream").await;
    let mut watcher = Term::open(&admin, "default", &task, 0).await;
    watcher.expect("fake-agent ready").await;
    // Typing works before the revocation.
    term.send(b"before revocation\r").await;
    term.expect("echo: before revocation").await;

    let r = admin.delete(&format!("/v1/organizations/default/tokens/{revoked_id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Typed after the DELETE was answered: it must never reach the agent.
    type_quietly(&mut term, b"after revocation\r").await;

    // Both connections get the documented close code at once (not at a heartbeat,
    // which is 10 s away): before the fix they stayed open for good.
    let deadline = Duration::from_secs(5);
    let reason = close_of(&mut stream, deadline).await.expect("the stream gets a close frame");
    assert_eq!(reason.code, awc::ws::CloseCode::Other(4001), "{reason:?}");
    assert_eq!(reason.description.as_deref(), Some("token revoked"));
    term.until(deadline, "the terminal's close", |t| t.closed.is_some()).await;
    let reason = term.closed.clone().flatten().expect("the terminal gets a close frame");
    assert_eq!(reason.code, awc::ws::CloseCode::Other(4001), "{reason:?}");
    assert!(!term.text().contains("echo: after revocation"), "output after the revocation: {}", term.text());

    // The agent never saw the input: a line typed later by the admin is echoed,
    // and nothing typed through the revoked connection came before it.
    watcher.send(b"admin marker\r").await;
    watcher.expect("echo: admin marker").await;
    assert!(!watcher.text().contains("echo: after revocation"), "input after revocation reached the agent:\n{}", watcher.text());

    // The other token's and the admin's streams are still open and delivering.
    for ws in [&mut kept_stream, &mut admin_stream] {
        let event = ws.events(1, deadline).await.remove(0);
        assert_eq!(event["kind"], "token.revoked", "{event}");
    }
    let r = admin.patch("/v1/organizations/default", json!({"display_name": "Still here"})).await;
    assert_eq!(r.status, 200);
    for ws in [&mut kept_stream, &mut admin_stream] {
        assert_eq!(ws.events(1, deadline).await[0]["kind"], "organization.updated");
    }
    // And the revoked token cannot come back.
    let r = doomed.get("/v1/organizations/default/stream").await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
}

#[actix_web::test]
async fn deleting_an_organization_closes_the_streams_of_its_tokens() {
    use std::time::Duration;
    let (server, _dir) = Server::start(&[]);
    let admin = server.client();
    assert_eq!(admin.post("/v1/organizations", json!({"name": "acme"})).await.status, 201);
    let secret = admin.post("/v1/organizations/acme/tokens", json!({"name": "ws"})).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let member = admin.with_token(Some(&secret));
    let mut stream = member.ws("/v1/organizations/acme/stream").await;
    let mut replaying = member.ws("/v1/organizations/acme/stream?since=0").await;
    // The admin keeps watching a deleted organization (it can read its history too).
    let mut admin_stream = admin.ws("/v1/organizations/acme/stream").await;

    assert_eq!(admin.delete("/v1/organizations/acme").await.status, 204);
    for ws in [&mut stream, &mut replaying] {
        let reason = close_of(ws, Duration::from_secs(5)).await.expect("a close frame");
        assert_eq!(reason.code, awc::ws::CloseCode::Other(4004), "{reason:?}");
        assert_eq!(reason.description.as_deref(), Some("organization deleted"));
    }
    let event = admin_stream.events(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(event["kind"], "organization.deleted");
    assert_eq!(member.get("/v1/organizations/acme").await.status, 401);
}
