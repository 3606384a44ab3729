//! IssueIntakePoller (`org/{org}/repo/{repo}/issue-intake`): one per repository
//! on GitHub with issue intake on (or a PR still to report on its issue), every
//! `github.pr_poll_ms` (30 s). It asks its RepositoryActor what to do
//! (`PlanIssuePoll`), lists the open issues with the intake label page by page
//! with `If-None-Match` (an unchanged list is a free 304, answered from its
//! cache), keeps the issues that ask for a task (pull requests, which the list
//! also answers, are skipped) and reports them as `IntakeIssues`; then asks
//! each task whose PR is not reported on its issue yet to report it
//! (`ReportPrToIssue`). It writes nothing. Rate limits: a 403/429 pauses it for
//! `retry-after` (or until the reset), doubling on repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::actors::registry::ActorMeta;
use crate::actors::repository::issues::{wanted, IssueSeen};
use crate::actors::repository::{IntakeIssues, IssuePlan, PlanIssuePoll};
use crate::actors::task::ReportPrToIssue;
use crate::actors::Kiln;
use crate::integrations::github::{query_value, GitHub};
use crate::util::now_ms;

use super::pr_sync::PollCost;
use super::{note_failure, PollError};

/// Responses kept for conditional requests: URL → (etag, body, next page).
type Cache = HashMap<String, (String, Value, Option<String>)>;

/// The most pages of 100 issues read per poll.
const MAX_PAGES: usize = 20;

pub struct IssueIntakePoller {
    kiln: Kiln,
    org: String,
    repo: String,
    meta: Arc<ActorMeta>,
    interval: Duration,
    timer: Option<SpawnHandle>,
    busy: bool,
    /// A poll was asked for while one ran: run another when it ends.
    again: bool,
    cache: Option<Cache>,
    /// Issues whose intake failed, with the `updated_at` they had: offered
    /// again only once the issue changes (or Kiln restarts).
    failed: HashMap<i64, String>,
    paused_until: i64,
    failures: u32,
    polls: u64,
    last_poll_at: Option<i64>,
    last_error: Option<String>,
    last_cost: PollCost,
}

impl IssueIntakePoller {
    pub fn new(kiln: Kiln, org: String, repo: String, meta: Arc<ActorMeta>, interval: Duration) -> Self {
        IssueIntakePoller {
            kiln,
            org,
            repo,
            meta,
            interval,
            timer: None,
            busy: false,
            again: false,
            cache: Some(HashMap::new()),
            failed: HashMap::new(),
            paused_until: 0,
            failures: 0,
            polls: 0,
            last_poll_at: None,
            last_error: None,
            last_cost: PollCost::default(),
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if now_ms() < self.paused_until {
            return;
        }
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        self.meta.touch();
        let mut cache = self.cache.take().unwrap_or_default();
        let failed = self.failed.clone();
        let (kiln, org, repo) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        let work = async move {
            let result = async {
                let Some(plan) = kiln.repository(&org, &repo).send(PlanIssuePoll {}).await?? else { return Ok(None) };
                let mut cost = PollCost::default();
                let started = std::time::Instant::now();
                let mut newly_failed = Vec::new();
                if let Some(label) = &plan.label {
                    let listed = list_issues(&plan, label, &mut cache, &mut cost).await;
                    cost.millis = started.elapsed().as_millis() as u64;
                    let issues: Vec<IssueSeen> = listed?
                        .iter()
                        .filter_map(|v| wanted(v, label))
                        .filter(|i| failed.get(&i.number) != Some(&i.updated_at))
                        .collect();
                    if !issues.is_empty() {
                        newly_failed = kiln.repository(&org, &repo).send(IntakeIssues { issues, via: "poll" }).await??;
                    }
                }
                for task in &plan.unreported {
                    if let Err(e) = kiln.task(&org, &repo, task).send(ReportPrToIssue {}).await.map_err(Into::into).and_then(|r| r) {
                        log::warn!("task {task}: reporting its PR on the issue failed: {e}");
                    }
                }
                Ok::<_, PollError>(Some((cost, newly_failed)))
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
                Ok(Some((cost, failed))) => {
                    act.failures = 0;
                    act.last_error = None;
                    act.last_cost = cost;
                    act.failed.extend(failed);
                }
                Ok(None) => {
                    // Asked again meanwhile (the settings changed): plan anew first.
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


/// Every page of open issues with `label`, oldest first, each page asked
/// conditionally: a 304 answers the cached page and costs no rate limit.
async fn list_issues(plan: &IssuePlan, label: &str, cache: &mut Cache, cost: &mut PollCost) -> Result<Vec<Value>, PollError> {
    let gh: &GitHub = &plan.github;
    let mut used = Cache::new();
    let mut url = format!("/issues?labels={}&state=open&sort=created&direction=asc&per_page=100", query_value(label));
    let mut listed = Vec::new();
    let mut outcome = Ok(());
    for _page in 0..MAX_PAGES {
        let etag = cache.get(&url).map(|(e, _, _)| e.clone());
        let res = match gh.send("GET", &url, None, etag.as_deref()).await {
            Ok(res) => res,
            Err(e) => {
                outcome = Err(e.into());
                break;
            }
        };
        cost.requests += 1;
        if res.remaining.is_some() {
            cost.rate_limit_remaining = res.remaining;
        }
        let (body, next) = match (res.status, cache.remove(&url)) {
            (304, Some(entry)) => {
                cost.not_modified += 1;
                let answer = (entry.1.clone(), res.next.clone().or_else(|| entry.2.clone()));
                used.insert(url.clone(), entry);
                answer
            }
            _ => {
                if let Some(tag) = &res.etag {
                    used.insert(url.clone(), (tag.clone(), res.body.clone(), res.next.clone()));
                }
                (res.body, res.next)
            }
        };
        listed.extend(body.as_array().cloned().unwrap_or_default());
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    // Pages asked this cycle become the cache; a failed cycle keeps the old ones too.
    if outcome.is_ok() {
        *cache = used;
    } else {
        cache.extend(used);
    }
    outcome.map(|()| listed)
}

poller_controls!(IssueIntakePoller, "issue_intake", |this| (Some(this.last_cost.clone()), (this.paused_until > now_ms()).then_some(this.paused_until)));
