//! The pure part of notifications: which events make a notification and of
//! which kind, what it says, the body in each format, the signature, and what
//! an attempt's outcome means for its delivery. No I/O: unit-tested below.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Every notification kind, in the order the docs list them.
pub const KINDS: &[&str] =
    &["needs_input", "idle", "ci_failed", "changes_requested", "ready_to_merge", "merged", "conflict_predicted", "agent_stuck"];

/// The event kinds that can make a notification. The history tells the
/// notifier about a batch only when it holds one of these. `task.conflict_predicted`,
/// `reaction.fired` and `reaction.escalated` are matched by name: they come from
/// the conflict prediction and the reactions.
pub const WATCHED: &[&str] = &[
    "task.awaiting_input",
    "task.status_changed",
    "pr.ci_changed",
    "task.ci_feedback_exhausted",
    "reaction.escalated",
    "reaction.fired",
    "pr.review_changed",
    "pr.merged",
    "task.merged",
    "task.conflict_predicted",
];

/// Whether events of `kind` can make a notification.
pub fn watched(kind: &str) -> bool {
    WATCHED.contains(&kind)
}

/// What the classifier needs to know about the event's repository, now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// Kiln hands CI failures back to the agent in this repository
    /// (`automation.on_ci_failure` or the `ci_failed` reaction): a failure
    /// notifies only once those retries are spent.
    pub ci_retries: bool,
}

/// The notification kind an event makes, if any.
pub fn classify(kind: &str, data: &Value, facts: Facts) -> Option<&'static str> {
    let s = |k: &str| data.get(k).and_then(Value::as_str);
    match kind {
        "task.awaiting_input" => (data["awaiting_input"] == true).then_some("needs_input"),
        "task.status_changed" => (s("to") == Some("idle")).then_some("idle"),
        "pr.ci_changed" => (s("to") == Some("failure") && !facts.ci_retries).then_some("ci_failed"),
        "task.ci_feedback_exhausted" => Some("ci_failed"),
        "pr.review_changed" => (s("to") == Some("changes_requested")).then_some("changes_requested"),
        "pr.merged" | "task.merged" => Some("merged"),
        "task.conflict_predicted" => Some("conflict_predicted"),
        "reaction.escalated" => match s("cause") {
            Some("ci_failed") => Some("ci_failed"),
            Some("changes_requested") => Some("changes_requested"),
            _ => None,
        },
        "reaction.fired" => match (s("cause"), s("outcome")) {
            (Some("agent_stuck"), _) => Some("agent_stuck"),
            (Some("approved_and_green"), Some("notified")) => Some("ready_to_merge"),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a repository's settings (as stored, JSON) hand CI failures to the agent.
pub fn ci_retries(settings: &Value) -> bool {
    settings["automation"]["on_ci_failure"]["enabled"] == true || settings["reactions"]["ci_failed"]["enabled"] == true
}

/// Some kinds notify once per task, whatever repeats them (a merge seen both
/// by the `merge` action and by the PR poller).
pub fn once_per_task(kind: &str) -> bool {
    kind == "merged"
}

/// The words a person reads for a kind.
pub fn label(kind: &str) -> &'static str {
    match kind {
        "needs_input" => "Needs input",
        "idle" => "Went idle",
        "ci_failed" => "CI failed",
        "changes_requested" => "Changes requested",
        "ready_to_merge" => "Ready to merge",
        "merged" => "Merged",
        "conflict_predicted" => "Conflict predicted",
        "agent_stuck" => "Agent stuck",
        "test" => "Test",
        _ => "Notification",
    }
}

/// What a notification is about, to render it.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub delivery: &'a str,
    pub kind: &'a str,
    pub organization: &'a str,
    pub repo: Option<&'a str>,
    pub task: Option<&'a str>,
    /// The task's title, when there is a task.
    pub title: Option<&'a str>,
    /// The event (`{id, kind, at, data}`); `None` for a test.
    pub event: Option<Value>,
}

impl Notice<'_> {
    /// One line: "Went idle: Fix the login form (acme/app)".
    pub fn text(&self) -> String {
        let subject = match (self.title, self.task) {
            (Some(t), _) => t.to_string(),
            (None, Some(id)) => format!("task {id}"),
            (None, None) if self.kind == "test" => "a test delivery from Kiln".to_string(),
            (None, None) => self.organization.to_string(),
        };
        let place = match self.repo {
            Some(repo) => format!(" ({}/{repo})", self.organization),
            None => format!(" ({})", self.organization),
        };
        format!("{}: {subject}{place}", label(self.kind))
    }
}

/// The body of a delivery in `format` (`json` or `slack`).
pub fn body(format: &str, n: &Notice) -> String {
    let value = match format {
        "slack" => slack(n),
        _ => json!({
            "delivery": n.delivery,
            "kind": n.kind,
            "label": label(n.kind),
            "text": n.text(),
            "organization": n.organization,
            "repo": n.repo,
            "task": n.task,
            "title": n.title,
            "event": n.event,
        }),
    };
    value.to_string()
}

/// Slack's incoming-webhook message: `text` (the fallback and the notification
/// line) and blocks with the same, formatted.
fn slack(n: &Notice) -> Value {
    let subject = match (n.title, n.task) {
        (Some(t), _) => slack_escape(t),
        (None, Some(id)) => format!("task `{id}`"),
        (None, None) => slack_escape(&n.text()),
    };
    let mut context = vec![slack_escape(n.organization)];
    if let Some(repo) = n.repo {
        context.push(slack_escape(repo));
    }
    if let Some(task) = n.task {
        context.push(format!("task `{}`", slack_escape(task)));
    }
    json!({
        "text": slack_escape(&n.text()),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*: {subject}", label(n.kind))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context.join(" · ")}]},
        ],
    })
}

/// Slack's three control characters in text, escaped as its docs ask.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `X-Kiln-Signature-256`: `sha256=` and the hex HMAC-SHA256, keyed with the
/// webhook's secret, of `<timestamp>.<body>` (the timestamp as sent in
/// `X-Kiln-Timestamp`, then a dot, then the raw body bytes).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered this status.
    Status(u16),
    /// No answer: could not connect, timed out, broke off.
    Failed(String),
    /// The host is refused by the policy (the server's own network).
    Refused(String),
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again at this time (unix ms).
    Retry { at: i64, error: String },
    /// Given up, for this reason.
    Failed { error: String },
}

/// The retry schedule.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Retry {
    /// The wait after attempt `n` (1-based) fails: base, 2×base, 4×base, … capped.
    pub fn delay_ms(&self, n: u32) -> u64 {
        let factor = 1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// Decides after attempt `n` (1-based) at `now`. A 2xx is delivered; 5xx,
    /// 408, 429 and no answer are retried until `max_attempts`; any other
    /// status (a redirect is not followed) and a refused host are final.
    pub fn next(&self, n: u32, outcome: &Outcome, now: i64) -> Next {
        let (retryable, error) = match outcome {
            Outcome::Status(s) if (200..300).contains(s) => return Next::Delivered,
            Outcome::Status(s) if (300..400).contains(s) => (false, format!("the receiver answered {s}: redirects are not followed")),
            Outcome::Status(s) if *s >= 500 || *s == 408 || *s == 429 => (true, format!("the receiver answered {s}")),
            Outcome::Status(s) => (false, format!("the receiver answered {s}")),
            Outcome::Failed(e) => (true, e.clone()),
            Outcome::Refused(e) => (false, e.clone()),
        };
        if !retryable {
            return Next::Failed { error };
        }
        if n >= self.max_attempts {
            return Next::Failed { error: format!("{error} (gave up after {n} attempts)") };
        }
        Next::Retry { at: now + self.delay_ms(n) as i64, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_make_the_kinds_the_docs_list() {
        let f = Facts::default();
        let on = Facts { ci_retries: true };
        assert_eq!(classify("task.awaiting_input", &json!({"awaiting_input": true}), f), Some("needs_input"));
        assert_eq!(classify("task.awaiting_input", &json!({"awaiting_input": false}), f), None);
        assert_eq!(classify("task.status_changed", &json!({"from": "running", "to": "idle"}), f), Some("idle"));
        assert_eq!(classify("task.status_changed", &json!({"from": "idle", "to": "running"}), f), None);
        assert_eq!(classify("pr.ci_changed", &json!({"to": "failure"}), f), Some("ci_failed"));
        assert_eq!(classify("pr.ci_changed", &json!({"to": "failure"}), on), None, "retries first");
        assert_eq!(classify("pr.ci_changed", &json!({"to": "success"}), f), None);
        assert_eq!(classify("task.ci_feedback_exhausted", &json!({"attempts": 3}), on), Some("ci_failed"));
        assert_eq!(classify("reaction.escalated", &json!({"cause": "ci_failed"}), on), Some("ci_failed"));
        assert_eq!(classify("reaction.escalated", &json!({"cause": "merge_conflict"}), on), None);
        assert_eq!(classify("pr.review_changed", &json!({"to": "changes_requested"}), f), Some("changes_requested"));
        assert_eq!(classify("pr.review_changed", &json!({"to": "approved"}), f), None);
        assert_eq!(classify("pr.merged", &json!({}), f), Some("merged"));
        assert_eq!(classify("task.merged", &json!({}), f), Some("merged"));
        assert_eq!(classify("task.conflict_predicted", &json!({}), f), Some("conflict_predicted"));
        assert_eq!(classify("reaction.fired", &json!({"cause": "agent_stuck"}), f), Some("agent_stuck"));
        assert_eq!(classify("reaction.fired", &json!({"cause": "approved_and_green", "outcome": "notified"}), f), Some("ready_to_merge"));
        assert_eq!(classify("reaction.fired", &json!({"cause": "approved_and_green", "outcome": "merged"}), f), None);
        assert_eq!(classify("reaction.fired", &json!({"cause": "ci_failed"}), f), None);
        assert_eq!(classify("task.created", &json!({}), f), None);
        for kind in WATCHED {
            assert!(watched(kind));
        }
        assert!(!watched("session.update"));
        assert!(ci_retries(&json!({"automation": {"on_ci_failure": {"enabled": true}}})));
        assert!(ci_retries(&json!({"reactions": {"ci_failed": {"enabled": true}}})));
        assert!(!ci_retries(&json!({})));
    }

    /// The documented test vector (docs/notifications.md), computed
    /// independently: `printf '1700000000.{"kind":"test"}' | openssl dgst -sha256 -hmac whsec_test`.
    #[test]
    fn the_signature_matches_the_documented_vector() {
        assert_eq!(
            signature("whsec_test", 1700000000, br#"{"kind":"test"}"#),
            "sha256=94f5692e57a0c550df2b9a1b63fcb9a1aab3b8c1b4c7776a94f40fa745a70389"
        );
    }

    #[test]
    fn slack_bodies_escape_and_carry_text_and_blocks() {
        let n = Notice {
            delivery: "dlv_1",
            kind: "idle",
            organization: "acme",
            repo: Some("app"),
            task: Some("2b0894e4"),
            title: Some("Fix <b> & co"),
            event: None,
        };
        let v: Value = serde_json::from_str(&body("slack", &n)).unwrap();
        assert_eq!(v["text"], "Went idle: Fix &lt;b&gt; &amp; co (acme/app)");
        assert_eq!(v["blocks"][0]["text"]["text"], "*Went idle*: Fix &lt;b&gt; &amp; co");
        assert_eq!(v["blocks"][1]["elements"][0]["text"], "acme · app · task `2b0894e4`");
        let j: Value = serde_json::from_str(&body("json", &n)).unwrap();
        assert_eq!(j["kind"], "idle");
        assert_eq!(j["delivery"], "dlv_1");
        assert_eq!(j["text"], "Went idle: Fix <b> & co (acme/app)");
    }

    #[test]
    fn retries_double_up_to_the_cap_and_stop_at_the_bound() {
        let r = Retry { max_attempts: 4, base_ms: 1000, max_ms: 3000 };
        assert_eq!([1, 2, 3, 4, 70].map(|n| r.delay_ms(n)), [1000, 2000, 3000, 3000, 3000]);
        assert_eq!(r.next(1, &Outcome::Status(204), 0), Next::Delivered);
        assert_eq!(r.next(1, &Outcome::Status(500), 0), Next::Retry { at: 1000, error: "the receiver answered 500".into() });
        assert_eq!(r.next(2, &Outcome::Status(429), 10), Next::Retry { at: 2010, error: "the receiver answered 429".into() });
        assert!(matches!(r.next(2, &Outcome::Failed("timed out".into()), 0), Next::Retry { at: 2000, .. }));
        assert!(matches!(r.next(4, &Outcome::Status(503), 0), Next::Failed { error } if error.contains("gave up after 4")));
        assert!(matches!(r.next(1, &Outcome::Status(404), 0), Next::Failed { .. }));
        assert!(matches!(r.next(1, &Outcome::Status(302), 0), Next::Failed { error } if error.contains("redirect")));
        assert!(matches!(r.next(1, &Outcome::Refused("private".into()), 0), Next::Failed { .. }));
    }
}
