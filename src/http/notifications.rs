//! `/v1/organizations/{org}/notifications/…` and `/v1/organizations/{org}/inbox`:
//! an organization's outbound webhooks (the secret shown once, at creation), a
//! test delivery, the delivery log, and the inbox with its read marks, which
//! the dashboard and the CLI share (docs/notifications.md).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{token_id, Caller};
use super::dto;
use super::extract::{Json, Query};
use super::openapi::{ApiError, OrgPath};
use super::organization_or_404;
use crate::actors::notify::view::{self, Delivery, InboxEntry, Webhook};
use crate::actors::notify::{self, CreateWebhook, DeleteWebhook, MarkRead, ReadWhich, TestWebhook, UpdateWebhook};
use crate::actors::Kiln;
use crate::error::{AppError, AppResult};

/// What a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Kiln's JSON: `{delivery, kind, label, text, organization, repo, task, title, event}`.
    Json,
    /// Slack's incoming-webhook message: `{text, blocks}`.
    Slack,
}

/// A notification kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    NeedsInput,
    Idle,
    CiFailed,
    ChangesRequested,
    ReadyToMerge,
    Merged,
    ConflictPredicted,
    AgentStuck,
}

impl NotificationKind {
    fn as_str(self) -> &'static str {
        match self {
            NotificationKind::NeedsInput => "needs_input",
            NotificationKind::Idle => "idle",
            NotificationKind::CiFailed => "ci_failed",
            NotificationKind::ChangesRequested => "changes_requested",
            NotificationKind::ReadyToMerge => "ready_to_merge",
            NotificationKind::Merged => "merged",
            NotificationKind::ConflictPredicted => "conflict_predicted",
            NotificationKind::AgentStuck => "agent_stuck",
        }
    }
}

/// `POST …/notifications/webhooks`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookBody {
    /// Where deliveries go: `https://` or `http://`, no user name or password, no
    /// fragment. Its host must pass the server's host policy (public addresses only,
    /// unless the operator allows the host).
    #[schema(max_length = 2048)]
    pub url: String,
    /// 1-100 characters (default: the URL's host).
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// `json` (the default) or `slack`.
    pub format: Option<WebhookFormat>,
    /// The kinds it gets (default: all of them).
    #[schema(schema_with = kinds_schema)]
    pub kinds: Option<Vec<NotificationKind>>,
}

/// `PATCH …/notifications/webhooks/{webhook}`: what to change; a field left
/// out (or `null`) is kept.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookBody {
    /// A new URL, checked as at creation (shape and the server's host policy).
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    pub format: Option<WebhookFormat>,
    /// The kinds it gets; `[]`: all of them.
    #[schema(schema_with = kinds_schema)]
    pub kinds: Option<Vec<NotificationKind>>,
    /// `false`: no delivery is made for it (events meanwhile are skipped, not
    /// kept) and its pending deliveries wait; `true`: they resume.
    pub enabled: Option<bool>,
    /// `true`: a new secret replaces the old one at once (pending retries are
    /// signed with it) and is answered, this once.
    pub rotate_secret: Option<bool>,
}

/// A list of kinds, each at most once (`invalid_kinds` otherwise), or `null`.
fn kinds_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    use utoipa::openapi::Ref;
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(Ref::from_schema_name("NotificationKind"))
        .max_items(Some(8))
        .unique_items(true)
        .description(Some("The notification kinds it gets, each at most once; empty or left out: all of them."))
        .build()
}

/// The webhook after a `PATCH`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpdatedWebhook {
    pub id: String,
    pub name: String,
    /// The full URL when this request changed it, else `scheme://host[:port]/…`.
    pub url: String,
    pub format: String,
    pub kinds: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub created_by: Option<String>,
    /// The new `whsec_…` secret when `rotate_secret` was `true` (shown this once); else `null`.
    pub secret: Option<String>,
}

/// The created webhook: its full URL and its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    pub id: String,
    pub name: String,
    /// The full URL (later answers show only `scheme://host[:port]/…`).
    pub url: String,
    pub format: String,
    pub kinds: Vec<String>,
    pub created_at: i64,
    pub created_by: Option<String>,
    /// `whsec_…`: the HMAC-SHA256 key of `X-Kiln-Signature-256`. Not shown again.
    pub secret: String,
}

/// `{org}/notifications/webhooks/{webhook}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WebhookPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
    /// The webhook's id: `wh_` and 12 lowercase hex characters.
    #[param(pattern = "^wh_[0-9a-f]{12}$")]
    pub webhook: String,
}

/// `{org}/notifications/webhooks/{webhook}/deliveries/{delivery}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    /// The organization's name.
    #[param(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub org: String,
    /// The webhook's id.
    #[param(pattern = "^wh_[0-9a-f]{12}$")]
    pub webhook: String,
    /// The delivery's id: `dlv_` and 16 lowercase hex characters.
    #[param(pattern = "^dlv_[0-9a-f]{16}$")]
    pub delivery: String,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// At most this many, newest first (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Only unread entries.
    pub unread: Option<bool>,
    /// Entries with an id below this (the `next_before` of the last page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// `GET …/inbox`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InboxPage {
    /// Newest first.
    pub items: Vec<InboxEntry>,
    /// Unread entries in the whole inbox (not only this page).
    pub unread: i64,
    /// Pass as `before` for the next page; `null` when this page is the last.
    pub next_before: Option<i64>,
}

/// `POST …/inbox/read`: `ids`, or `all`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReadBody {
    /// Entries to mark read (ids of other organizations' entries, or of none, are ignored).
    #[schema(value_type = Option<Vec<u64>>, max_items = 500)]
    pub ids: Option<Vec<i64>>,
    /// `true`: every entry.
    pub all: Option<bool>,
}

/// What `POST …/inbox/read` marked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MarkedRead {
    /// The entries this request marked read (those already read are not listed).
    pub marked: Vec<i64>,
    /// Unread entries left.
    pub unread: i64,
}

/// A valid webhook id, or 404 (it cannot name one).
fn webhook_id(id: &str) -> AppResult<()> {
    let ok = id.strip_prefix("wh_").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(notify::webhook_not_found(id))
    }
}

async fn webhook_or_404(kiln: &Kiln, org: &str, id: &str) -> AppResult<view::WebhookRow> {
    webhook_id(id)?;
    let (o, i) = (org.to_string(), id.to_string());
    kiln.db.read(move |c| view::webhook(c, &o, &i)).await?.ok_or_else(|| notify::webhook_not_found(id))
}

/// Lists the organization's webhooks (never their secrets; URLs without path).
#[utoipa::path(
    get, path = "/v1/organizations/{org}/notifications/webhooks", tag = "notifications", params(OrgPath),
    responses(
        (status = 200, description = "The webhooks, oldest first", body = dto::Items<Webhook>),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
    ),
)]
pub async fn list_webhooks(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let rows = kiln.db.read(move |c| view::webhooks(c, &org)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: rows.iter().map(Webhook::from).collect::<Vec<_>>() }))
}

/// Creates a webhook; answers its secret, this once.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/notifications/webhooks", tag = "notifications", params(OrgPath),
    request_body = CreateWebhookBody,
    responses(
        (status = 201, description = "Created; `secret` and the full `url` are shown this once", body = CreatedWebhook),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 409, description = "Conflict:\n- `too_many_webhooks`: the organization has 20 (delete one first)", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_webhook_url`: not an http(s) URL with a host, or with a user name, password or fragment\n- `webhook_host_refused`: the host is (or resolves to) a loopback, link-local or private address, does not resolve, or is not one the server's operator allows\n- `invalid_name`: not 1-100 characters\n- `invalid_kinds`: a kind listed twice", body = ApiError),
    ),
)]
pub async fn create_webhook(
    req: HttpRequest,
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<CreateWebhookBody>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let body = body.into_inner();
    let url = checked_url(&kiln, &body.url).await?;
    let name = match body.name {
        Some(n) => checked_name(&n)?,
        None => crate::actors::repository::hosts::target(&url).map(|t| t.host).unwrap_or_else(|| "webhook".into()),
    };
    let kinds = checked_kinds(body.kinds.unwrap_or_default())?;
    let format = format_str(body.format.unwrap_or(WebhookFormat::Json));
    let row = kiln
        .notifier()
        .send(CreateWebhook { org, name, url, format: format.into(), kinds: kinds.clone(), created_by: token_id(&req) })
        .await??;
    Ok(HttpResponse::Created().json(CreatedWebhook {
        id: row.id,
        name: row.name,
        url: row.url,
        format: row.format,
        kinds,
        created_at: row.created_at,
        created_by: row.created_by,
        secret: row.secret,
    }))
}

/// A webhook URL as given, trimmed, of the right shape and allowed by the host policy.
async fn checked_url(kiln: &Kiln, url: &str) -> AppResult<String> {
    let url = url.trim().to_string();
    notify::url_shape(&url).map_err(|m| AppError::invalid("invalid_webhook_url", m))?;
    let cfg = kiln.config.notifications.clone();
    let checked = url.clone();
    crate::db::pool::blocking(move || Ok(notify::policy(&cfg, &checked)))
        .await?
        .map_err(|m| AppError::invalid("webhook_host_refused", m))?;
    Ok(url)
}

fn checked_name(name: &str) -> AppResult<String> {
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::invalid("invalid_name", "name must be 1-100 characters"));
    }
    Ok(name)
}

fn checked_kinds(given: Vec<NotificationKind>) -> AppResult<Vec<String>> {
    let mut kinds: Vec<String> = Vec::new();
    for k in given {
        if kinds.iter().any(|x| x == k.as_str()) {
            return Err(AppError::invalid("invalid_kinds", format!("kind `{}` is listed twice", k.as_str())));
        }
        kinds.push(k.as_str().to_string());
    }
    Ok(kinds)
}

fn format_str(format: WebhookFormat) -> &'static str {
    match format {
        WebhookFormat::Json => "json",
        WebhookFormat::Slack => "slack",
    }
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}", tag = "notifications", params(WebhookPath),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`", body = ApiError),
    ),
)]
pub async fn get_webhook(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let row = webhook_or_404(&kiln, &org, &id).await?;
    Ok(HttpResponse::Ok().json(Webhook::from(&row)))
}

/// Changes a webhook: its URL (checked as at creation), name, format, kinds,
/// whether it is on; or rotates its secret.
#[utoipa::path(
    patch, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}", tag = "notifications", params(WebhookPath),
    request_body = UpdateWebhookBody,
    responses(
        (status = 200, description = "Changed; `secret` is the new secret when `rotate_secret` was `true`, and `url` is the full URL when it was changed", body = UpdatedWebhook),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_webhook_url`: not an http(s) URL with a host, or with a user name, password or fragment\n- `webhook_host_refused`: the host is (or resolves to) a loopback, link-local or private address, does not resolve, or is not one the server's operator allows\n- `invalid_name`: not 1-100 characters\n- `invalid_kinds`: a kind listed twice", body = ApiError),
    ),
)]
pub async fn update_webhook(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<UpdateWebhookBody>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    webhook_or_404(&kiln, &org, &id).await?;
    let body = body.into_inner();
    let url = match &body.url {
        Some(u) => Some(checked_url(&kiln, u).await?),
        None => None,
    };
    let name = body.name.as_deref().map(checked_name).transpose()?;
    let kinds = body.kinds.map(checked_kinds).transpose()?;
    let rotate_secret = body.rotate_secret.unwrap_or(false);
    let url_changed = url.is_some();
    let msg = UpdateWebhook {
        org,
        id,
        name,
        url,
        format: body.format.map(|f| format_str(f).to_string()),
        kinds,
        enabled: body.enabled,
        rotate_secret,
    };
    let row = kiln.notifier().send(msg).await??;
    let shown = Webhook::from(&row);
    Ok(HttpResponse::Ok().json(UpdatedWebhook {
        id: row.id,
        name: row.name,
        url: if url_changed { row.url } else { shown.url },
        format: row.format,
        kinds: shown.kinds,
        enabled: row.enabled,
        created_at: row.created_at,
        created_by: row.created_by,
        secret: rotate_secret.then_some(row.secret),
    }))
}

/// Deletes a webhook, its pending deliveries and its delivery log.
#[utoipa::path(
    delete, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}", tag = "notifications", params(WebhookPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`", body = ApiError),
    ),
)]
pub async fn delete_webhook(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    webhook_id(&id)?;
    kiln.notifier().send(DeleteWebhook { org, id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Queues a test delivery (kind `test`) to the webhook; its outcome shows in the delivery log.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}/test", tag = "notifications", params(WebhookPath),
    responses(
        (status = 202, description = "Queued: follow it at `…/deliveries/{id}`", body = Delivery),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`", body = ApiError),
        (status = 409, description = "Conflict:\n- `webhook_disabled`: the webhook is switched off", body = ApiError),
    ),
)]
pub async fn test_webhook(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    webhook_id(&id)?;
    let delivery = kiln.notifier().send(TestWebhook { org, id }).await??;
    Ok(HttpResponse::Accepted().json(delivery))
}

/// The delivery log: the webhook's newest deliveries with every attempt.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}/deliveries", tag = "notifications",
    params(WebhookPath, DeliveriesQuery),
    responses(
        (status = 200, description = "Newest first", body = dto::Items<Delivery>),
        (status = 400, description = "Bad query:\n- `invalid_limit`", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`", body = ApiError),
    ),
)]
pub async fn list_deliveries(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: Query<DeliveriesQuery>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let limit = query.into_inner().limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::bad_request("invalid_limit", "limit must be between 1 and 200"));
    }
    organization_or_404(&kiln, &org).await?;
    webhook_or_404(&kiln, &org, &id).await?;
    let items = kiln.db.read(move |c| view::deliveries(c, &org, &id, limit)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items }))
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}/notifications/webhooks/{webhook}/deliveries/{delivery}", tag = "notifications",
    params(DeliveryPath),
    responses(
        (status = 200, description = "The delivery and its attempts", body = Delivery),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `webhook_not_found`\n- `delivery_not_found`", body = ApiError),
    ),
)]
pub async fn get_delivery(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> AppResult<HttpResponse> {
    let (org, id, delivery) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    webhook_or_404(&kiln, &org, &id).await?;
    let missing = || {
        AppError::not_found("delivery_not_found", format!("no delivery `{}` of this webhook", crate::validate::truncate(&delivery, 40)))
    };
    let found = kiln
        .db
        .read({
            let (o, i, d) = (org.clone(), id.clone(), delivery.clone());
            move |c| view::delivery(c, &o, &i, &d)
        })
        .await?
        .ok_or_else(missing)?;
    Ok(HttpResponse::Ok().json(found))
}

/// The inbox: what needs a person, newest first, with the organization's read marks.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/inbox", tag = "notifications", params(OrgPath, InboxQuery),
    responses(
        (status = 200, description = "A page of the inbox", body = InboxPage),
        (status = 400, description = "Bad query:\n- `invalid_limit`\n- `invalid_before`", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
    ),
)]
pub async fn inbox(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>, query: Query<InboxQuery>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(AppError::bad_request("invalid_limit", "limit must be between 1 and 500"));
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(AppError::bad_request("invalid_before", "before must be an entry id, 1 or more"));
    }
    organization_or_404(&kiln, &org).await?;
    let (unread_only, before) = (q.unread.unwrap_or(false), q.before);
    let (items, unread) = kiln
        .db
        .read(move |c| Ok((view::inbox(c, &org, unread_only, before, limit)?, view::unread_count(c, &org)?)))
        .await?;
    let next_before = (items.len() as i64 == limit).then(|| items.last().map(|e| e.id)).flatten();
    Ok(HttpResponse::Ok().json(InboxPage { items, unread, next_before }))
}

/// Marks inbox entries read, for the whole organization.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/inbox/read", tag = "notifications", params(OrgPath),
    request_body = MarkReadBody,
    responses(
        (status = 200, description = "Marked", body = MarkedRead),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_read`: neither `ids` nor `all: true`, or both, or an id below 1", body = ApiError),
    ),
)]
pub async fn mark_read(
    req: HttpRequest,
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<MarkReadBody>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let body = body.into_inner();
    if body.ids.as_ref().is_some_and(|ids| ids.iter().any(|id| *id < 1)) {
        return Err(AppError::invalid("invalid_read", "entry ids are 1 or more"));
    }
    let which = match (body.ids, body.all.unwrap_or(false)) {
        (Some(ids), false) if ids.len() <= 500 => ReadWhich::Ids(ids),
        (Some(_), false) => return Err(AppError::invalid("invalid_read", "at most 500 ids at once (or send `all: true`)")),
        (None, true) => ReadWhich::All,
        _ => return Err(AppError::invalid("invalid_read", "send either `ids` (a list of entry ids) or `all: true`")),
    };
    let (marked, unread) = kiln.notifier().send(MarkRead { org, which, by: token_id(&req) }).await??;
    Ok(HttpResponse::Ok().json(MarkedRead { marked, unread }))
}
