//! The API contract: an OpenAPI 3.1 document derived from the handlers' own
//! types (`dto`, the row types, the views) and the `#[utoipa::path]` attribute
//! on each handler, served at `GET /v1/openapi.json` without a token and
//! committed as `docs/openapi.json` (a test fails when that copy is stale;
//! `kiln openapi > docs/openapi.json` writes it again).
//!
//! What every route shares is added here once, by [`Conventions`], from the same
//! facts the middleware and extractors enforce: the bearer token (401/403) on
//! every route but health, this document and the webhook; the query and path
//! checks (400); the body checks (400/413/422) on routes that read a body; the
//! retryable 503s and the 500 on every route that reaches the database. Each
//! handler lists only what it adds. A body read with `OptionalJson` is described
//! as "Optional: …", which makes it not required here.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde::Deserialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::{admin, agents, changes, dashboard, events, notifications, organizations, repos, sessions, stream, tasks, terminal, webhooks};

/// The JSON body of every error answer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ApiError {
    /// The stable snake_case code, for programs (the routes list theirs).
    pub error: String,
    /// What happened and what to do, for people. Never quotes a value sent.
    pub message: String,
}

/// `{org}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
}

/// `{org}/repos/{repo}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RepoPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
    /// The repository's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub repo: String,
}

/// `{org}/tasks/{task}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
    /// The task's id: 8 lowercase hex characters.
    #[param(pattern = "^[0-9a-f]{8}$")]
    pub task: String,
}

/// `{org}/tasks/{task}/sessions/{session}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
    /// The task's id: 8 lowercase hex characters.
    #[param(pattern = "^[0-9a-f]{8}$")]
    pub task: String,
    /// The session's id: 12 lowercase hex characters.
    #[param(pattern = "^[0-9a-f]{12}$")]
    pub session: String,
}

/// The headers of a WebSocket upgrade (RFC 6455), as the WebSocket routes
/// check them; a client library sends them itself.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its parameters are used, in the document.
pub struct WebSocketUpgrade {
    /// `websocket`.
    #[param(rename = "Upgrade", pattern = "[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]")]
    upgrade: String,
    /// `Upgrade`.
    #[param(rename = "Connection", pattern = "^[Uu][Pp][Gg][Rr][Aa][Dd][Ee]$")]
    connection: String,
    /// `13`.
    #[param(rename = "Sec-WebSocket-Version", pattern = "^(13|8|7)$")]
    sec_websocket_version: String,
    /// A random base64 nonce.
    #[param(rename = "Sec-WebSocket-Key")]
    sec_websocket_key: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln",
        description = "Run many coding agents side by side: sandboxes, terminals, events and the git lifecycle. \
            The narrative (concepts, the order of checks, WebSocket frames, close codes) is docs/api.md; \
            this document is the contract for every route, field and status code.",
    ),
    paths(
        admin::health,
        serve,
        organizations::list, organizations::create, organizations::get, organizations::update, organizations::delete,
        organizations::get_provider, organizations::put_provider,
        organizations::list_tokens, organizations::create_token, organizations::revoke_token,
        repos::list, repos::create, repos::get, repos::delete, repos::put_setup, repos::put_settings,
        repos::branches, repos::pulls, repos::conflicts,
        agents::list,
        tasks::list, tasks::create, tasks::get, tasks::action,
        changes::diff, changes::review,
        terminal::connect,
        sessions::list, sessions::create, sessions::get, sessions::close, sessions::transcript,
        sessions::prompt, sessions::cancel, sessions::answer_permission,
        events::list,
        stream::connect,
        notifications::list_webhooks, notifications::create_webhook, notifications::get_webhook, notifications::update_webhook, notifications::delete_webhook,
        notifications::test_webhook, notifications::list_deliveries, notifications::get_delivery,
        notifications::inbox, notifications::mark_read,
        webhooks::github,
        dashboard::create_code, dashboard::create_session, dashboard::get_session, dashboard::delete_session,
        admin::actors, admin::config, admin::checkpoint, admin::backup, admin::maintain_repos, admin::pollers, admin::poller_control,
        admin::metrics,
    ),
    components(schemas(ApiError)),
    modifiers(&Conventions),
    tags(
        (name = "health", description = "Liveness, and this document."),
        (name = "organizations", description = "Organizations, their provider profiles and tokens."),
        (name = "repos", description = "Repositories: registration, setup, settings, branches, pull requests, predicted conflicts."),
        (name = "tasks", description = "Tasks: an agent in its own worktree, and the git lifecycle."),
        (name = "sessions", description = "ACP sessions with a task's agent."),
        (name = "events", description = "The event history and its live stream."),
        (name = "notifications", description = "Outbound webhooks (signed, retried, with a delivery log) and the inbox."),
        (name = "webhooks", description = "GitHub deliveries, signed with HMAC-SHA256."),
        (name = "dashboard", description = "Signing a browser in to the web dashboard (a session cookie acts as the token it was made with)."),
        (name = "admin", description = "Operator routes: the admin token only."),
    ),
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as pretty JSON with a final newline: what `docs/openapi.json` holds.
pub fn json() -> String {
    // Serializing plain maps and strings cannot fail.
    let mut value = serde_json::to_value(document()).unwrap_or_default();
    link_created(&mut value);
    list_error_codes(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// This document: OpenAPI 3.1, no token needed.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "health",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> HttpResponse {
    static BODY: OnceLock<String> = OnceLock::new();
    HttpResponse::Ok().content_type("application/json").body(BODY.get_or_init(json).clone())
}

/// The methods the document lists for a route pattern as actix spells it
/// (`/admin/pollers/{key:.+}/{op}`), as an `Allow` header value.
pub fn allowed_methods(pattern: &str) -> Option<String> {
    // `{name:regex}` in actix is `{name}` in OpenAPI.
    let mut path = String::with_capacity(pattern.len());
    let (mut in_param, mut in_regex) = (false, false);
    for c in pattern.chars() {
        match c {
            '{' => in_param = true,
            '}' => (in_param, in_regex) = (false, false),
            ':' if in_param => in_regex = true,
            _ => {}
        }
        if !in_regex {
            path.push(c);
        }
    }
    let item = document().paths.paths.get(&path)?;
    let methods: Vec<&str> = [
        (item.get.is_some(), "GET"),
        (item.post.is_some(), "POST"),
        (item.put.is_some(), "PUT"),
        (item.patch.is_some(), "PATCH"),
        (item.delete.is_some(), "DELETE"),
    ]
    .into_iter()
    .filter_map(|(has, m)| has.then_some(m))
    .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Whether the document has an operation for `method` on this request path
/// (`{param}` matches one segment; `{key}`, a poller's key, one or more).
pub fn has_operation(method: &actix_web::http::Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // As routing does: a literal segment (`…/terminal`) wins over a parameter (`…/{action}`).
    let best = document()
        .paths
        .paths
        .iter()
        .filter(|(template, _)| matches(&template.split('/').collect::<Vec<_>>(), &segments))
        .max_by_key(|(template, _)| template.split('/').filter(|s| !s.starts_with('{')).count());
    let Some((_, item)) = best else { return false };
    match *method {
        actix_web::http::Method::GET => item.get.is_some(),
        actix_web::http::Method::POST => item.post.is_some(),
        actix_web::http::Method::PUT => item.put.is_some(),
        actix_web::http::Method::PATCH => item.patch.is_some(),
        actix_web::http::Method::DELETE => item.delete.is_some(),
        _ => false,
    }
}

fn matches(template: &[&str], segments: &[&str]) -> bool {
    match (template.split_first(), segments.split_first()) {
        (None, None) => true,
        (Some((&"{key}", rest)), Some(_)) => (1..=segments.len()).any(|n| matches(rest, &segments[n..])),
        (Some((t, rest)), Some((s, more))) if t.starts_with('{') => !s.is_empty() && matches(rest, more),
        (Some((t, rest)), Some((s, more))) => t == s && matches(rest, more),
        _ => false,
    }
}

/// Adds the security scheme and the answers every route shares (see the module doc).
struct Conventions;

/// Routes with no bearer token.
const OPEN: &[&str] = &["/v1/health", "/v1/openapi.json", "/v1/webhooks/github", "/v1/dashboard/sessions"];
/// Routes that never reach the database or an actor.
const NO_STATE: &[&str] = &["/v1/health", "/v1/openapi.json"];

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token, or an organization's token (`kiln_…`). WebSocket upgrades may pass it as `?access_token=`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "kiln_session",
                    "The web dashboard's session cookie: it acts as the token it was signed in with. Changes need the dashboard's own `Origin`.",
                ),
            )),
        );
        doc.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = OPEN.contains(&path.as_str());
            let stateful = !NO_STATE.contains(&path.as_str());
            let has_path_params = path.contains('{');
            for op in operations(item) {
                // A body read with `OptionalJson` says so in its description.
                if let Some(body) = op.request_body.as_mut() {
                    if body.description.as_deref().is_some_and(|d| d.starts_with("Optional")) {
                        body.required = Some(utoipa::openapi::Required::False);
                    }
                }
                // Handlers' names repeat across resources (`list`, `create`): an
                // operation id is the tag and the name (`repos_list`).
                if let (Some(tag), Some(id)) = (op.tags.as_ref().and_then(|t| t.first()), op.operation_id.as_mut()) {
                    if !id.starts_with(tag.as_str()) {
                        *id = format!("{tag}_{id}");
                    }
                }
                let reads_body = op.request_body.is_some();
                let mut bad = vec!["`invalid_query`: a query parameter this route does not read, or a bad value"];
                if has_path_params {
                    bad.push("`invalid_path`: a path parameter that does not parse");
                }
                if reads_body {
                    bad.push("`expected_json`: the body is not sent as `application/json`");
                    bad.push("`malformed_json`: the body is not valid JSON");
                    bad.push("`bad_body`: the body could not be read");
                }
                add(op, "400", "Bad request", &bad);
                if reads_body {
                    add(op, "413", "The body is larger than this route accepts", &["`payload_too_large`"]);
                    add(
                        op,
                        "422",
                        "The body is JSON of the wrong shape",
                        &["`invalid_body`: not an object, an unknown or missing field, or a wrong type (the message names the field)"],
                    );
                }
                if !open {
                    add(op, "401", "No bearer token, or an unknown or revoked one (with `WWW-Authenticate: Bearer`)", &["`unauthorized`"]);
                    add(
                        op,
                        "403",
                        "The token cannot do this",
                        &["`forbidden`: a token of another organization, or an organization token on an admin route"],
                    );
                }
                if stateful {
                    add(
                        op,
                        "503",
                        "Busy or stopping: retry shortly",
                        &["`database_busy`", "`shutting_down`", "`busy`"],
                    );
                    add(op, "500", "A bug or an environment failure; the server log has the details", &["`internal_error`"]);
                }
                if open {
                    op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::default()]);
                }
            }
        }
    }
}

/// Gives every error answer an `x-error-codes` list: the `error` codes its
/// description names (each on a line `- \`code\`…`), for programs.
fn list_error_codes(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return };
    for item in paths.values_mut().filter_map(serde_json::Value::as_object_mut) {
        for op in item.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(serde_json::Value::as_object_mut) else { continue };
            for (status, response) in responses.iter_mut() {
                if status.as_str() < "400" {
                    continue;
                }
                let codes: Vec<serde_json::Value> = response["description"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .filter_map(|l| l.strip_prefix("- `"))
                    .filter_map(|l| l.split('`').next())
                    .map(|c| serde_json::Value::String(c.to_string()))
                    .collect();
                if !codes.is_empty() {
                    response["x-error-codes"] = serde_json::Value::Array(codes);
                }
            }
        }
    }
}

/// The routes that create a resource, the path parameter that names it, and
/// where the answer holds its value.
const CREATES: &[(&str, &str, &str)] = &[
    ("/v1/organizations", "org", "/name"),
    ("/v1/organizations/{org}/repos", "repo", "/name"),
    ("/v1/organizations/{org}/tokens", "token", "/id"),
    ("/v1/organizations/{org}/tasks", "task", "/id"),
    ("/v1/organizations/{org}/tasks/{task}/sessions", "session", "/id"),
    ("/v1/organizations/{org}/notifications/webhooks", "webhook", "/id"),
];

/// OpenAPI links from each creating `POST`'s success answers to the operations
/// on what it created, so a client (or a fuzzer) knows that `{repo}` is the
/// answer's `name`, not its `id`. Only to operations whose path parameters the
/// creating request and its answer supply. Written into the JSON (utoipa 5
/// spells a link's `operationId` as `operation_id`).
fn link_created(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return };
    let params_of = |path: &str| -> Vec<String> {
        path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).map(str::to_string).collect()
    };
    for (base, param, pointer) in CREATES {
        let prefix = format!("{base}/{{{param}}}");
        let known: Vec<String> = params_of(base).into_iter().chain([param.to_string()]).collect();
        let mut links = serde_json::Map::new();
        for (path, item) in paths.iter() {
            let params = params_of(path);
            if !(path == &prefix || path.starts_with(&format!("{prefix}/"))) || params.iter().any(|p| !known.contains(p)) {
                continue;
            }
            for op in item.as_object().into_iter().flat_map(|m| m.values()) {
                let Some(id) = op.get("operationId").and_then(serde_json::Value::as_str) else { continue };
                let parameters: serde_json::Map<String, serde_json::Value> = params
                    .iter()
                    .map(|p| {
                        let value = if p == param { format!("$response.body#{pointer}") } else { format!("$request.path.{p}") };
                        (p.clone(), serde_json::Value::String(value))
                    })
                    .collect();
                links.insert(id.to_string(), serde_json::json!({"operationId": id, "parameters": parameters}));
            }
        }
        let Some(responses) = paths.get_mut(*base).and_then(|i| i.get_mut("post")).and_then(|o| o.get_mut("responses")) else {
            continue;
        };
        for (status, response) in responses.as_object_mut().into_iter().flatten() {
            if status.starts_with('2') && !links.is_empty() {
                response["links"] = serde_json::Value::Object(links.clone());
            }
        }
    }
}

/// Every operation of a path.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// Adds the error codes `codes` to the operation's answer `status`, creating it
/// (with the error schema) when the handler did not list it.
fn add(op: &mut Operation, status: &str, summary: &str, codes: &[&str]) {
    let list = codes.iter().map(|c| format!("- {c}")).collect::<Vec<_>>().join("\n");
    match op.responses.responses.get_mut(status) {
        Some(RefOr::T(existing)) => {
            existing.description = format!("{}\n{list}", existing.description.trim_end());
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses.responses.insert(status.to_string(), RefOr::T(error_response(&format!("{summary}:\n{list}"))));
        }
    }
}

/// An error answer with the `ApiError` body.
pub fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError"))).build())
        .build()
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    #[test]
    fn allow_lists_the_documented_methods_of_an_actix_pattern() {
        assert_eq!(super::allowed_methods("/v1/organizations/{org}").as_deref(), Some("GET, PATCH, DELETE"));
        assert_eq!(super::allowed_methods("/admin/pollers/{key:.+}/{op}").as_deref(), Some("POST"));
        assert_eq!(super::allowed_methods("/v1/nothing"), None);
    }

    #[test]
    fn operations_are_found_as_routing_finds_them() {
        assert!(super::has_operation(&Method::DELETE, "/v1/organizations/acme"));
        assert!(!super::has_operation(&Method::PUT, "/v1/organizations/acme"));
        // A literal segment wins over a parameter, as in routing.
        assert!(!super::has_operation(&Method::POST, "/v1/organizations/acme/tasks/0badc0de/terminal"));
        assert!(super::has_operation(&Method::POST, "/v1/organizations/acme/tasks/0badc0de/push"));
        // A poller's key spans segments.
        assert!(super::has_operation(&Method::POST, "/admin/pollers/org/acme/repo/app/pr-sync/poll"));
        assert!(!super::has_operation(&Method::POST, "/v1/elsewhere"));
    }
}
