//! `GET /v1/organizations/{org}/events`: the history, oldest first.

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::dto;
use super::openapi::{ApiError, OrgPath};
use super::extract::Query;
use super::organization_or_404;
use crate::actors::history::Event;
use crate::actors::Kiln;
use crate::db::queries::{self, EventFilter};
use crate::error::{AppError, AppResult};

/// Lists events after `since`, filtered by `repo`, `task`, `session` and `kind` (exact, or a
/// prefix ending in `.` or `.*`); or, with `tail=N`, the newest N of those. `next_since`
/// continues the listing.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/events", tag = "events", params(OrgPath, dto::EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = dto::EventPage),
        (status = 400, description = "Bad query:\n- `invalid_limit`\n- `invalid_since`", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found` (an organization token only: the admin may read a deleted organization's history)", body = ApiError),
    ),
)]
pub async fn list(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    query: Query<dto::EventsQuery>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    // The admin may read the history of a deleted organization, for audits.
    if caller != Caller::Admin {
        organization_or_404(&kiln, &org).await?;
    } else {
        crate::validate::name("organization", &org)
            .map_err(|_| AppError::not_found("organization_not_found", format!("organization `{org}` does not exist")))?;
    }
    let q = query.into_inner();
    let in_range = |n: Option<i64>| n.is_none_or(|n| (1..=1000).contains(&n));
    if !in_range(q.limit) || !in_range(q.tail) {
        return Err(AppError::bad_request("invalid_limit", "limit and tail must be between 1 and 1000"));
    }
    let limit = q.tail.or(q.limit).unwrap_or(100);
    let since = q.since.unwrap_or(0);
    if since < 0 {
        return Err(AppError::bad_request("invalid_since", "since must be an event id, 0 or more"));
    }
    let filter =
        EventFilter { since, repo: q.repo, task: q.task, kind: q.kind, session: q.session, limit, newest: q.tail.is_some() };
    let rows = kiln.db.read(move |c| queries::events_list(c, &org, &filter)).await?;
    let next_since = rows.last().map(|e| e.id).unwrap_or(since);
    let events: Vec<Event> = rows.into_iter().map(Event::from).collect();
    Ok(HttpResponse::Ok().json(dto::EventPage { items: events, next_since }))
}
