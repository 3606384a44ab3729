//! Pollers: read-only child actors, each with one timer. They observe the outside
//! world and report to their parent actor; they never touch the database. Each
//! takes the same control messages, which `/admin/pollers` sends.

pub mod branch_sync;
pub mod pr_sync;
pub mod task_status;

use actix::prelude::*;
use serde::Serialize;

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

#[derive(Debug, Clone, Serialize)]
pub struct PollerInfo {
    pub key: String,
    pub kind: &'static str,
    pub interval_ms: u64,
    pub polls: u64,
    pub last_poll_at: Option<i64>,
    pub last_error: Option<String>,
    /// What the last poll cost (pull-request pollers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<pr_sync::PollCost>,
    /// Paused by a rate limit until then (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<i64>,
}
