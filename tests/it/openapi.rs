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
        let open = matches!(path.as_str(), "/v1/health" | "/v1/openapi.json" | "/v1/webhooks/github");
        let security = op.get("security").cloned().unwrap_or_else(|| r.body["security"].clone());
        assert_eq!(security == serde_json::json!([{}]), open, "{method} {path}: security {security}");
        assert_eq!(op["responses"].get("401").is_some(), !open || path == "/v1/webhooks/github", "{method} {path}: 401");
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
