//! PrSyncPoller (`org/{org}/repo/{repo}/pr-sync`): one per repository on GitHub,
//! every `github.pr_poll_ms` (30 s). It asks its RepositoryActor for the GitHub
//! client and the task branches (`PlanPrPoll`), lists every pull request page by
//! page with `If-None-Match` (an unchanged page is a free 304), and for the open
//! pull requests of task branches reads mergeability, CI (check runs plus the
//! combined status, folded into one state and kept as a list of checks) and the
//! review decision (and, when a review reaction is on, the review comments),
//! also conditionally. It reports
//! `PullRequestsObserved` and writes nothing. Rate limits: a 403/429 pauses it
//! for `retry-after` (or until the reset), doubling on repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::actors::registry::ActorMeta;
use crate::actors::repository::{PlanPrPoll, PrObservation, PrPlan, PullRequestsObserved};
use crate::actors::task::git_ops::pull_row;
use crate::actors::Kiln;
use crate::integrations::github::{checks_of, combine_ci, review_decision, GitHub, GitHubError};
use crate::util::now_ms;

use super::{note_failure, PollError};

/// Responses kept for conditional requests: URL → (etag, body, next page).
type Cache = HashMap<String, (String, Value, Option<String>)>;

/// What one poll cost, for `/admin/pollers` and the benchmark.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PollCost {
    pub requests: u64,
    pub not_modified: u64,
    pub rate_limit_remaining: Option<u64>,
    pub millis: u64,
}

pub struct PrSyncPoller {
    kiln: Kiln,
    org: String,
    repo: String,
    meta: Arc<ActorMeta>,
    interval: Duration,
    timer: Option<SpawnHandle>,
    busy: bool,
    /// Asked to poll while a cycle ran: one more cycle follows it.
    again: bool,
    cache: Option<Cache>,
    paused_until: i64,
    failures: u32,
    polls: u64,
    last_poll_at: Option<i64>,
    last_error: Option<String>,
    pub last_cost: PollCost,
}

impl PrSyncPoller {
    pub fn new(kiln: Kiln, org: String, repo: String, meta: Arc<ActorMeta>, interval: Duration) -> Self {
        PrSyncPoller {
            kiln,
            org,
            repo,
            meta,
            interval,
            timer: None,
            busy: false,
            again: false,
            cache: Some(HashMap::new()),
            paused_until: 0,
            failures: 0,
            polls: 0,
            last_poll_at: None,
            last_error: None,
            last_cost: PollCost::default(),
        }
    }


    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        if now_ms() < self.paused_until {
            return;
        }
        self.busy = true;
        self.meta.touch();
        let mut cache = self.cache.take().unwrap_or_default();
        let (kiln, org, repo) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        let work = async move {
            let result = async {
                let Some(plan) = kiln.repository(&org, &repo).send(PlanPrPoll {}).await?? else { return Ok(None) };
                let mut cost = PollCost::default();
                let started = std::time::Instant::now();
                let observed = poll_github(&plan, &mut cache, &mut cost).await;
                cost.millis = started.elapsed().as_millis() as u64;
                let pulls = observed?;
                kiln.repository(&org, &repo).send(PullRequestsObserved { pulls }).await??;
                Ok::<_, PollError>(Some(cost))
            }
            .await;
            (result, cache)
        };
        ctx.spawn(work.into_actor(self).map(|(result, cache), act, ctx| {
            act.cache = Some(cache);
            act.busy = false;
            act.polls += 1;
            act.last_poll_at = Some(now_ms());
            match result {
                Ok(Some(cost)) => {
                    act.failures = 0;
                    act.last_error = None;
                    act.last_cost = cost;
                }
                Ok(None) => {
                    // Asked again meanwhile (a token or setting changed): plan anew first.
                    if std::mem::take(&mut act.again) {
                        act.poll(ctx);
                    } else {
                        ctx.stop();
                    }
                    return;
                }
                Err(e) => note_failure(e, &mut act.failures, &mut act.paused_until, &mut act.last_error),
            }
            if std::mem::take(&mut act.again) {
                act.poll(ctx);
            }
        }));
    }
}


/// A conditional GET: a 304 answers the cached body.
async fn get(
    gh: &GitHub,
    url: &str,
    cache: &mut Cache,
    used: &mut Cache,
    cost: &mut PollCost,
) -> Result<(Value, Option<String>), GitHubError> {
    let etag = cache.get(url).map(|(e, _, _)| e.clone());
    let res = gh.send("GET", url, None, etag.as_deref()).await?;
    cost.requests += 1;
    if res.remaining.is_some() {
        cost.rate_limit_remaining = res.remaining;
    }
    if res.status == 304 {
        cost.not_modified += 1;
        if let Some(entry) = cache.remove(url) {
            let answer = (entry.1.clone(), res.next.clone().or_else(|| entry.2.clone()));
            used.insert(url.to_string(), entry);
            return Ok(answer);
        }
    }
    if let Some(tag) = &res.etag {
        used.insert(url.to_string(), (tag.clone(), res.body.clone(), res.next.clone()));
    }
    Ok((res.body, res.next))
}

/// One cycle: every page of pull requests, then the details of task PRs.
async fn poll_github(plan: &PrPlan, cache: &mut Cache, cost: &mut PollCost) -> Result<Vec<PrObservation>, PollError> {
    // Entries used this cycle move to `used`, which becomes the cache: URLs no
    // longer asked (an old head's CI) drop out.
    let mut used = Cache::new();
    let result = poll_pages(plan, cache, &mut used, cost).await;
    if result.is_ok() {
        *cache = used;
    } else {
        cache.extend(used);
    }
    result
}

async fn poll_pages(plan: &PrPlan, cache: &mut Cache, used: &mut Cache, cost: &mut PollCost) -> Result<Vec<PrObservation>, PollError> {
    let (gh, repo_id, task_branches) = (&plan.github, plan.repo_id, &plan.task_branches);
    let mut url = "/pulls?state=all&per_page=100".to_string();
    let mut listed = Vec::new();
    for _page in 0..100 {
        let (body, next) = get(gh, &url, cache, used, cost).await?;
        listed.extend(body.as_array().cloned().unwrap_or_default());
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    let mut out = Vec::with_capacity(listed.len());
    for pr in listed {
        let mut row = pull_row(repo_id, &pr);
        let mut failed = Vec::new();
        let (mut reviews_seen, mut comments_seen) = (None, None);
        if row.state == "open" && task_branches.contains(&row.head_ref) {
            let (full, _) = get(gh, &format!("/pulls/{}", row.number), cache, used, cost).await?;
            row = pull_row(repo_id, &full);
            let (runs, _) = get(gh, &format!("/commits/{}/check-runs?per_page=100", row.head_sha), cache, used, cost).await?;
            let (status, _) = get(gh, &format!("/commits/{}/status", row.head_sha), cache, used, cost).await?;
            let (ci, failures) = combine_ci(&runs, &status);
            row.ci_state = ci;
            row.checks = serde_json::to_string(&checks_of(&runs, &status)).ok();
            failed = failures;
            let (reviews, _) = get(gh, &format!("/pulls/{}/reviews?per_page=100", row.number), cache, used, cost).await?;
            row.review_decision = review_decision(&reviews);
            if plan.review_comments {
                // For the review reactions: the line comments, also conditional.
                let (comments, _) = get(gh, &format!("/pulls/{}/comments?per_page=100", row.number), cache, used, cost).await?;
                comments_seen = Some(comments);
            }
            reviews_seen = Some(reviews);
        }
        out.push(PrObservation { row, failed_checks: failed, reviews: reviews_seen, review_comments: comments_seen });
    }
    Ok(out)
}

poller_controls!(PrSyncPoller, "pr_sync", |this| (Some(this.last_cost.clone()), (this.paused_until > now_ms()).then_some(this.paused_until)));
