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

/// Refuses a `since` past the newest event there is. A client only learns ids
/// that were stored, so one from the future means the history was restored from
/// a backup or reset: reading on from it would show nothing until new ids caught
/// up, and the client would never know what it missed.
pub(super) async fn since_not_ahead(kiln: &Kiln, since: i64) -> AppResult<()> {
    if since == 0 {
        return Ok(());
    }
    let newest = kiln.db.read(queries::newest_event_id).await?;
    if since > newest {
        return Err(AppError::bad_request(
            "invalid_since",
            format!(
                "since {since} is ahead of the newest event, {newest}: the history was restored or reset; go on from since={newest}"
            ),
        ));
    }
    Ok(())
}

/// Where a caller's view of an organization's history starts (events with a
/// greater id): for an organization token, at the organization's latest
/// `organization.created`. An earlier organization of the same name was deleted,
/// and its events, kept for the admin's audits, are not the new one's to read.
pub(super) async fn history_floor(kiln: &Kiln, caller: &Caller, org: &str) -> AppResult<i64> {
    if *caller == Caller::Admin {
        return Ok(0);
    }
    let org = org.to_string();
    let began = kiln.db.read(move |c| queries::organization_began(c, &org)).await?;
    Ok((began - 1).max(0))
}

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
    since_not_ahead(&kiln, since).await?;
    let since = since.max(history_floor(&kiln, &caller, &org).await?);
    let filter =
        EventFilter { since, repo: q.repo, task: q.task, kind: q.kind, session: q.session, limit, newest: q.tail.is_some() };
    let rows = kiln.db.read(move |c| queries::events_list(c, &org, &filter)).await?;
    let next_since = rows.last().map(|e| e.id).unwrap_or(since);
    let events: Vec<Event> = rows.into_iter().map(Event::from).collect();
    Ok(HttpResponse::Ok().json(dto::EventPage { items: events, next_since }))
}
