//! `POST /v1/webhooks/github`: GitHub's deliveries. No bearer token: each is
//! verified with HMAC-SHA256 (`X-Hub-Signature-256`) over the raw body, in
//! constant time, against each organization's webhook secret (the `github`
//! profile's `webhook_secret`), before the body is parsed. A delivery id seen
//! before is refused as a replay. A valid delivery asks the matching
//! repositories' pollers to poll now; the pollers do the reading. The one
//! exception is an `issues` delivery (opened, labeled, reopened) for an issue
//! carrying a repository's intake label: it is taken from the payload at once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use actix_web::{web, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::extract::RawBody;
use crate::actors::history::NewEvent;
use crate::actors::repository::issues::wanted;
use crate::actors::repository::IntakeIssues;
use crate::actors::pollers::PollNow;
use crate::actors::Kiln;
use crate::db::queries;
use crate::error::{AppError, AppResult};

/// How many delivery ids are remembered for replay detection.
const REMEMBERED: usize = 10_000;

/// Delivery ids already accepted (in memory: a restart forgets them).
#[derive(Default)]
pub struct Deliveries {
    seen: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl Deliveries {
    /// Records `id`; `false` when it was seen before.
    fn first_time(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (order, set) = &mut *guard;
        if !set.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        if order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` with `secret`.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else { return false };
    let Ok(expected) = hex::decode(hex_sig.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A GitHub delivery, verified with HMAC-SHA256 against each organization's
/// `github` profile `webhook_secret`; no bearer token.
#[utoipa::path(
    post, path = "/v1/webhooks/github", tag = "webhooks",
    params(
        ("X-Hub-Signature-256" = Option<String>, Header, description = "`sha256=<hex HMAC of the body>`"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery's id; a repeated one is refused"),
        ("X-GitHub-Event" = Option<String>, Header, description = "The event's name"),
    ),
    request_body(content = Object, description = "GitHub's payload, up to 5 MiB"),
    responses(
        (status = 202, description = "Accepted", body = super::dto::WebhookAccepted),
        (status = 400, description = "Bad request:\n- `missing_delivery`\n- `malformed_json`", body = super::openapi::ApiError),
        (status = 401, description = "Not signed by any organization:\n- `unauthorized`", body = super::openapi::ApiError),
        (status = 409, description = "Conflict:\n- `replayed_delivery`", body = super::openapi::ApiError),
    ),
)]
pub async fn github(
    req: HttpRequest,
    body: RawBody,
    kiln: web::Data<Kiln>,
    deliveries: web::Data<Deliveries>,
) -> AppResult<HttpResponse> {
    let body = body.0;
    let event = header(&req, "x-github-event").unwrap_or("").to_string();
    let delivery = header(&req, "x-github-delivery").unwrap_or("").to_string();
    let signature = header(&req, "x-hub-signature-256").unwrap_or("").to_string();
    let secrets = kiln.db.read(queries::github_webhook_secrets).await?;
    let org = secrets.into_iter().find(|(_, secret)| verify(secret, &body, &signature)).map(|(org, _)| org);
    let Some(org) = org else {
        log::warn!("rejected a GitHub webhook delivery {delivery:?} ({event}): bad or missing signature");
        record_rejection(&kiln, &body, &delivery, &event).await;
        return Err(AppError::Unauthorized { message: "the X-Hub-Signature-256 signature does not match".into() });
    };
    if delivery.is_empty() {
        return Err(AppError::bad_request("missing_delivery", "X-GitHub-Delivery is required"));
    }
    if !deliveries.first_time(&delivery) {
        return Err(AppError::conflict("replayed_delivery", format!("delivery {delivery} was already received")));
    }
    let payload: Value = serde_json::from_slice(&body).map_err(|e| AppError::bad_request("malformed_json", e.to_string()))?;
    let full_name = payload["repository"]["full_name"].as_str().unwrap_or("").to_string();
    let o = org.clone();
    let matching: Vec<crate::db::models::Repo> = kiln
        .db
        .read(move |c| queries::repos_list(c, &o))
        .await?
        .into_iter()
        .filter(|r| r.github().as_deref() == Some(full_name.as_str()))
        .collect();
    let repos: Vec<String> = matching.iter().map(|r| r.name.clone()).collect();
    // Issues in: an issue opened, labelled or reopened with the intake label
    // is taken at once, from the delivery (the poller would find it too; the
    // task is made once either way).
    if event == "issues" && matches!(payload["action"].as_str(), Some("opened" | "labeled" | "reopened")) {
        for repo in &matching {
            let intake = repo.settings().issues;
            let Some(issue) = intake.enabled.then(|| wanted(&payload["issue"], &intake.label)).flatten() else { continue };
            let target = kiln.repository(&org, &repo.name);
            // Answered at once: GitHub waits 10 s at most for a delivery.
            actix::spawn(async move {
                match target.send(IntakeIssues { issues: vec![issue], via: "webhook" }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => log::warn!("issue intake from a webhook failed: {e}"),
                    Err(e) => log::warn!("issue intake from a webhook failed: {e}"),
                }
            });
        }
    }
    let wakes = matches!(event.as_str(), "pull_request" | "check_run" | "check_suite" | "status" | "pull_request_review" | "push");
    for repo in &repos {
        let _ = kiln
            .emit_one(&org, NewEvent::new("webhook.received", json!({"delivery": delivery, "event": event, "action": payload["action"]})).repo(repo))
            .await;
        if wakes {
            kiln.repo_pollers(&org, repo);
            let base = crate::actors::registry::repo_key(&org, repo);
            if let Some(p) = kiln.registry.get::<crate::actors::pollers::pr_sync::PrSyncPoller>(&format!("{base}/pr-sync")) {
                p.addr.do_send(PollNow {});
            }
            if event == "push" {
                if let Some(p) = kiln.registry.get::<crate::actors::pollers::branch_sync::BranchSyncPoller>(&format!("{base}/branch-sync")) {
                    p.addr.do_send(PollNow {});
                }
            }
        }
    }
    Ok(HttpResponse::Accepted().json(super::dto::WebhookAccepted { delivery, event, repositories: repos }))
}

/// Records a refused delivery as an event in the organizations that have the
/// repository it names (if it names one); the payload itself is never logged.
async fn record_rejection(kiln: &Kiln, body: &[u8], delivery: &str, event: &str) {
    let Ok(payload) = serde_json::from_slice::<Value>(body) else { return };
    let Some(full_name) = payload["repository"]["full_name"].as_str().map(str::to_string) else { return };
    let Ok(all) = kiln.db.read(queries::all_repos_full).await else { return };
    for repo in all.into_iter().filter(|r| r.github().as_deref() == Some(full_name.as_str())) {
        let data = json!({"delivery": delivery, "event": event, "reason": "bad signature"});
        let _ = kiln.emit_one(&repo.organization, NewEvent::new("webhook.rejected", data).repo(&repo.name)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_test_vector_verifies() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(super::verify("It's a Secret to Everybody", b"Hello, World!", sig));
        assert!(!super::verify("It's a Secret to Everybody", b"Hello, World?", sig));
        assert!(!super::verify("another secret", b"Hello, World!", sig));
        assert!(!super::verify("It's a Secret to Everybody", b"Hello, World!", "sha1=abc"));
        assert!(!super::verify("It's a Secret to Everybody", b"Hello, World!", "sha256=zz"));
    }
}
