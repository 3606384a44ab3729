//! Pollers: read-only child actors, each with one timer. They observe the outside
//! world and report to their parent actor; they never touch the database. Each
//! takes the same control messages, which `/admin/pollers` sends.

/// Makes a poller type an actor (it polls at once, then on its timer, and leaves
/// the registry when it stops) and gives it the four control messages. The type
/// has `kiln`, `meta`, `interval`, `timer`, `polls`, `last_poll_at` and
/// `last_error` fields and a `poll(&mut self, ctx)` method; `$extras` answers
/// the `(cost, paused_until)` it reports.
macro_rules! poller_controls {
    ($ty:ty, $kind:literal, |$this:ident| $extras:expr) => {
        impl actix::Actor for $ty {
            type Context = actix::Context<Self>;

            fn started(&mut self, ctx: &mut Self::Context) {
                self.schedule(ctx);
                self.poll(ctx);
            }

            fn stopped(&mut self, _: &mut Self::Context) {
                self.kiln.registry.remove(&self.meta);
            }
        }

        impl $ty {
            fn schedule(&mut self, ctx: &mut actix::Context<Self>) {
                use actix::AsyncContext;
                if let Some(timer) = self.timer.take() {
                    ctx.cancel_future(timer);
                }
                self.timer = Some(ctx.run_interval(self.interval, |act, ctx| act.poll(ctx)));
            }
        }

        impl actix::Handler<$crate::actors::pollers::PollNow> for $ty {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::pollers::PollNow, ctx: &mut Self::Context) {
                self.poll(ctx);
            }
        }

        impl actix::Handler<$crate::actors::pollers::StopPoller> for $ty {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::pollers::StopPoller, ctx: &mut Self::Context) {
                actix::ActorContext::stop(ctx);
            }
        }

        impl actix::Handler<$crate::actors::pollers::SetInterval> for $ty {
            type Result = ();
            fn handle(&mut self, msg: $crate::actors::pollers::SetInterval, ctx: &mut Self::Context) {
                self.interval = std::time::Duration::from_millis(msg.millis.max(100));
                self.schedule(ctx);
            }
        }

        impl actix::Handler<$crate::actors::pollers::DescribePoller> for $ty {
            type Result = actix::MessageResult<$crate::actors::pollers::DescribePoller>;
            fn handle(&mut self, _: $crate::actors::pollers::DescribePoller, _: &mut Self::Context) -> Self::Result {
                let $this = &*self;
                let (cost, paused_until) = $extras;
                actix::MessageResult($crate::actors::pollers::PollerInfo {
                    key: self.meta.key.clone(),
                    kind: $kind,
                    interval_ms: self.interval.as_millis() as u64,
                    polls: self.polls,
                    last_poll_at: self.last_poll_at,
                    last_error: self.last_error.clone(),
                    cost,
                    paused_until,
                })
            }
        }
    };
}

pub mod branch_sync;
pub mod daytona_orphans;
pub mod issue_intake;
pub mod pr_sync;
pub mod task_status;

use actix::prelude::*;
use serde::Serialize;

/// Why a GitHub poller's cycle failed: rate limited (pause for at least this
/// long), or anything else (said in `last_error`, tried again next cycle).
pub enum PollError {
    RateLimited(std::time::Duration),
    Other(String),
}

impl From<crate::error::AppError> for PollError {
    fn from(e: crate::error::AppError) -> Self {
        PollError::Other(e.to_string())
    }
}

impl From<actix::MailboxError> for PollError {
    fn from(e: actix::MailboxError) -> Self {
        PollError::Other(e.to_string())
    }
}

impl From<crate::integrations::github::GitHubError> for PollError {
    fn from(e: crate::integrations::github::GitHubError) -> Self {
        match e {
            crate::integrations::github::GitHubError::RateLimited { retry_after } => PollError::RateLimited(retry_after),
            other => PollError::Other(other.to_string()),
        }
    }
}

/// How long a GitHub poller pauses after its `failures`-th rate limit in a row:
/// GitHub's wait (at least 1 s), doubled for each failure before, at most 16 times.
pub fn rate_limit_backoff(wait: std::time::Duration, failures: u32) -> std::time::Duration {
    wait.max(std::time::Duration::from_secs(1)) * 2u32.saturating_pow(failures.saturating_sub(1)).min(16)
}

/// A GitHub poller's bookkeeping after a failed cycle: a rate limit pauses it
/// (backing off), anything else is only said in `last_error`.
pub fn note_failure(e: PollError, failures: &mut u32, paused_until: &mut i64, last_error: &mut Option<String>) {
    match e {
        PollError::RateLimited(wait) => {
            *failures += 1;
            let backoff = rate_limit_backoff(wait, *failures);
            *paused_until = crate::util::now_ms() + backoff.as_millis() as i64;
            *last_error = Some(format!("rate limited; paused for {} s", backoff.as_secs()));
        }
        PollError::Other(e) => *last_error = Some(e),
    }
}

/// Polls at once, without waiting for the timer.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PollNow {}

/// Stops the poller.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct StopPoller {}

/// Changes the poll interval.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct SetInterval {
    pub millis: u64,
}

/// Describes the poller for `/admin/pollers`.
#[derive(Message, Clone)]
#[rtype(result = "PollerInfo")]
pub struct DescribePoller {}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PollerInfo {
    pub key: String,
    pub kind: &'static str,
    pub interval_ms: u64,
    pub polls: u64,
    pub last_poll_at: Option<i64>,
    pub last_error: Option<String>,
    /// What the last poll cost (pull-request pollers).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub cost: Option<pr_sync::PollCost>,
    /// Paused by a rate limit until then (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<i64>,
}
