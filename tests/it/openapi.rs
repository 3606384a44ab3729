//! The API contract: `GET /v1/openapi.json` serves the document the code
//! derives, `docs/openapi.json` is that very document, it names every route of
//! api.md's table, and every route it names reaches a handler.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[actix_web::test]
async fn the_document_is_served_without_a_token_and_is_openapi_3_1() {
    let (server, _dir) = Server::start(&[]);
    let anonymous = server.client().with_token(None);
    let r = anonymous.get("/v1/openapi.json").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "not OpenAPI 3.1: {}", r.body["openapi"]);
    let generated: Value = serde_json::from_str(&kiln::http::openapi::json()).expect("the generated document is JSON");
    assert_eq!(r.body, generated, "the server serves another document than the code generates");
    // The routes say who may call them: health, this document and the webhook are open.
    for (method, path) in operations(&r.body) {
        let op = &r.body["paths"][&path][method.to_lowercase()];
        let open = matches!(path.as_str(), "/v1/health" | "/v1/openapi.json" | "/v1/webhooks/github" | "/v1/dashboard/sessions");
        let security = op.get("security").cloned().unwrap_or_else(|| r.body["security"].clone());
        assert_eq!(security == serde_json::json!([{}]), open, "{method} {path}: security {security}");
        // The webhook and the dashboard's sign-in check a signature or a token of their own.
        let checks_its_own = matches!(path.as_str(), "/v1/webhooks/github" | "/v1/dashboard/sessions");
        assert_eq!(op["responses"].get("401").is_some(), !open || checks_its_own, "{method} {path}: 401");
        // Every error answer is the JSON error, with the codes it may carry.
        for (status, response) in op["responses"].as_object().expect("responses") {
            if status.as_str() < "400" {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ApiError", "{method} {path} {status}: {response}");
            let codes = response["x-error-codes"].as_array().map(Vec::len).unwrap_or(0);
            assert!(codes > 0, "{method} {path} {status} lists no error codes: {response}");
        }
    }
    // A query string is still refused here, as on every route that reads none.
    assert_eq!(anonymous.get("/v1/openapi.json?x=1").await.code(), "invalid_query");
}

#[test]
fn the_committed_document_is_up_to_date() {
    let generated = kiln::http::openapi::json();
    let path = committed_path();
    if std::env::var_os("KILN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: the handlers' types or attributes changed. Regenerate it with\n    \
         cargo run -q -- openapi > docs/openapi.json\n(or KILN_UPDATE_OPENAPI=1 cargo test --test it openapi), and commit it."
    );
}

/// api.md's "Routes at a glance" table and the document name the same routes.
#[test]
fn every_route_of_api_md_is_in_the_document() {
    let api_md = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/api.md")).expect("api.md");
    let table = api_md.split("## Routes at a glance").nth(1).expect("the routes table").split("\n## ").next().unwrap_or("");
    let mut documented = BTreeSet::new();
    for line in table.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split(" | ").map(|c| c.trim_matches(|c: char| c == '|' || c.is_whitespace())).collect();
        let (Some(methods), Some(path)) = (cells.first(), cells.get(1)) else { continue };
        if !path.starts_with('`') {
            continue;
        }
        let path = path.trim_matches('`').replace("{poll\\|stop\\|interval}", "{op}");
        for method in methods.split_whitespace().filter(|m| m.chars().all(|c| c.is_ascii_uppercase())) {
            documented.insert((method.to_string(), path.clone()));
        }
    }
    let generated: Value = serde_json::from_str(&kiln::http::openapi::json()).expect("json");
    let ops = operations(&generated);
    assert!(documented.len() > 40, "the table was not read: {documented:?}");
    let missing: Vec<_> = documented.difference(&ops).collect();
    let extra: Vec<_> = ops.difference(&documented).collect();
    assert!(missing.is_empty() && extra.is_empty(), "api.md's table and the document differ: only in api.md {missing:?}, only in the document {extra:?}");
}

/// Every operation of the document reaches a handler: no documented route is
/// unrouted (404 `route_not_found`) or has another method (405).
#[actix_web::test]
async fn every_documented_route_is_routed() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let doc = c.get("/v1/openapi.json").await.body;
    for (method, path) in operations(&doc) {
        let concrete = path
            .replace("{org}", "default")
            .replace("{task}", "0badc0de")
            .replace("{session}", "0123456789ab")
            .replace("{op}", "poll")
            .replace("{action}", "push")
            .replace('{', "")
            .replace('}', "");
        let body = (method != "GET" && method != "DELETE").then_some(&b"{}"[..]);
        let r = c.raw(&method, &concrete, body, body.map(|_| "application/json")).await;
        assert!(
            !matches!(r.code(), "route_not_found" | "method_not_allowed"),
            "{method} {path} (as {concrete}) is documented but not routed: {r:?}"
        );
        if r.status >= 400 {
            let status = r.status.to_string();
            let op = &doc["paths"][&path][method.to_lowercase()];
            assert!(op["responses"].get(&status).is_some(), "{method} {path} answered {status}, which it does not document: {r:?}");
        }
    }
}

/// What Schemathesis found, fixed where every route is served: a 405 names the
/// allowed methods (RFC 9110), on every path, `/metrics` and `/admin/*` too; a
/// method no route takes is a 405 even with a query string; an integral number
/// is an integer; a value outside its set is refused by every task action.
#[actix_web::test]
async fn what_the_fuzzer_found() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let allow = |r: &awc::ClientResponse<_>| r.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_string);
    let http = awc::Client::default();
    for (method, path, expected) in [
        ("PUT", "/v1/organizations", "GET, POST"),
        ("TRACE", "/v1/organizations/default", "GET, PATCH, DELETE"),
        ("POST", "/v1/health", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/admin/db/backup", "POST"),
        ("GET", "/admin/pollers/org/default/app/pr-sync/poll", "POST"),
        ("POST", "/v1/organizations/default/events?since=1", "GET"),
        ("POST", "/v1/organizations/default/tasks/0badc0de/terminal?offset=0", "GET"),
    ] {
        let req = http
            .request(awc::http::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", server.url))
            .bearer_auth(&server.token);
        let mut res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!((res.status().as_u16(), body["error"].as_str()), (405, Some("method_not_allowed")), "{method} {path}: {body}");
        assert_eq!(allow(&res).as_deref(), Some(expected), "{method} {path}: Allow");
    }
    // A query string on a route that exists for the method is still refused first.
    let r = c.raw("DELETE", "/v1/organizations/default?force=1", None, None).await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"));
    // `5.0` is the integer 5 (JSON Schema says so): an integer field takes it.
    let r = c.raw("POST", "/admin/pollers/nope/interval", Some(br#"{"interval_ms": 5000.0}"#), Some("application/json")).await;
    assert_eq!((r.status, r.code()), (404, "poller_not_found"), "5000.0 as an integer: {r:?}");
    let r = c.raw("POST", "/admin/pollers/nope/interval", Some(br#"{"interval_ms": 5000.5}"#), Some("application/json")).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"), "a fraction is not an integer: {r:?}");
    // `since` and `tail` together: the newest N after `since`.
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let all = c.get("/v1/organizations/default/events?limit=1000").await.body["items"].as_array().cloned().unwrap_or_default();
    assert!(all.len() >= 3, "{all:?}");
    let first = all[0]["id"].as_i64().unwrap();
    let r = c.get(&format!("/v1/organizations/default/events?since={first}&tail=2")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ids: Vec<i64> = r.body["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let newest: Vec<i64> = all.iter().rev().take(2).rev().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, newest);
    // A sync mode or merge method outside its set is refused by any action.
    let task = c.create_task("default", "app", "x").await["id"].as_str().unwrap().to_string();
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/archive"), serde_json::json!({"mode": "merge*"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_mode"), "{r:?}");
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/kill"), serde_json::json!({"method": "octopus"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_method"), "{r:?}");
    let r = c.get(&format!("/v1/organizations/default/tasks/{task}")).await;
    assert_ne!(r.body["status"], "archived", "the refused action ran: {r:?}");
}
