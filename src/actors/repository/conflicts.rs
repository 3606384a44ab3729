//! Conflict prediction's bookkeeping, as a pure function: from the rows stored
//! in `task_conflicts` and one round of the branch poller's findings, which rows
//! change and which events say so. The RepositoryActor writes the rows and
//! emits the events (`ConflictsObserved`); the prediction itself is
//! `integrations::conflicts`.
//!
//! - A conflict found and not stored is new: `task.conflict_predicted`, on both
//!   tasks of a pair (each naming the other) or on the task alone against `base`.
//! - One stored whose files changed is said again, keeping its `since`.
//! - One stored and not found again, when both its tasks were looked at, is
//!   gone: `task.conflict_cleared` with `reason: "resolved"`. When one of them
//!   was not looked at this round (its worktree could not be read), it stays.
//! - One whose task (or other task) is no longer active is removed:
//!   `task.conflict_cleared` with `reason: "task_finished"`.
//! - Anything unchanged says nothing: a round where nothing moved emits nothing.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::db::models::TaskConflict;
use crate::integrations::conflicts::{Found, BASE};

/// One round, as the RepositoryActor hands it over.
pub struct Round<'a> {
    pub repo_id: i32,
    /// Tasks the prediction looked at.
    pub evaluated: &'a HashSet<String>,
    /// Tasks still active now (read when the round is applied).
    pub active: &'a HashSet<String>,
    pub found: &'a [Found],
    pub now: i64,
}

/// What a round changes.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub upserts: Vec<TaskConflict>,
    pub removed: Vec<TaskConflict>,
    /// (task, kind, data)
    pub events: Vec<(String, &'static str, Value)>,
}

pub const PREDICTED: &str = "task.conflict_predicted";
pub const CLEARED: &str = "task.conflict_cleared";

/// The rows and events one round calls for (see the module doc).
pub fn reconcile(stored: &[TaskConflict], round: Round<'_>) -> Changes {
    let mut out = Changes::default();
    let active = |t: &str| round.active.contains(t);
    let looked = |t: &str| round.evaluated.contains(t);
    let found: HashMap<(&str, &str), &Vec<String>> = round
        .found
        .iter()
        .filter(|f| active(&f.task) && (f.other == BASE || active(&f.other)))
        .map(|f| ((f.task.as_str(), f.other.as_str()), &f.files))
        .collect();
    let mut known = HashSet::new();
    for row in stored {
        let key = (row.task_id.as_str(), row.other.as_str());
        known.insert(key);
        let other_is_task = row.other != BASE;
        if !active(&row.task_id) || (other_is_task && !active(&row.other)) {
            say(&mut out, CLEARED, row, json!({"files": row.file_list(), "reason": "task_finished"}));
            out.removed.push(row.clone());
            continue;
        }
        match found.get(&key) {
            Some(files) if **files != row.file_list() => {
                let next = TaskConflict { files: json!(files).to_string(), updated_at: round.now, ..row.clone() };
                say(&mut out, PREDICTED, &next, json!({"files": files, "since": row.since}));
                out.upserts.push(next);
            }
            Some(_) => {}
            None if looked(&row.task_id) && (!other_is_task || looked(&row.other)) => {
                say(&mut out, CLEARED, row, json!({"files": row.file_list(), "reason": "resolved"}));
                out.removed.push(row.clone());
            }
            None => {}
        }
    }
    for f in round.found {
        let key = (f.task.as_str(), f.other.as_str());
        if known.contains(&key) || !found.contains_key(&key) {
            continue;
        }
        let row = TaskConflict {
            repo_id: round.repo_id,
            task_id: f.task.clone(),
            other: f.other.clone(),
            files: json!(f.files).to_string(),
            since: round.now,
            updated_at: round.now,
        };
        say(&mut out, PREDICTED, &row, json!({"files": f.files, "since": round.now}));
        out.upserts.push(row);
    }
    out
}

/// The event of `kind` on each task of the row, naming the other side.
fn say(out: &mut Changes, kind: &'static str, row: &TaskConflict, data: Value) {
    let with_other = |other: &str| {
        let mut d = data.clone();
        d["other"] = json!(other);
        d
    };
    out.events.push((row.task_id.clone(), kind, with_other(&row.other)));
    if row.other != BASE {
        out.events.push((row.other.clone(), kind, with_other(&row.task_id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn found(task: &str, other: &str, files: &[&str]) -> Found {
        Found { task: task.into(), other: other.into(), files: files.iter().map(|s| s.to_string()).collect() }
    }

    fn row(task: &str, other: &str, files: &[&str], since: i64) -> TaskConflict {
        TaskConflict { repo_id: 1, task_id: task.into(), other: other.into(), files: json!(files).to_string(), since, updated_at: since }
    }

    fn run(stored: &[TaskConflict], evaluated: &[&str], active: &[&str], found: &[Found]) -> Changes {
        let (e, a) = (set(evaluated), set(active));
        reconcile(stored, Round { repo_id: 1, evaluated: &e, active: &a, found, now: 50 })
    }

    fn kinds(c: &Changes) -> Vec<(String, &'static str, String)> {
        c.events.iter().map(|(t, k, d)| (t.clone(), *k, d["other"].as_str().unwrap_or("").to_string())).collect()
    }

    #[test]
    fn a_new_pair_is_said_on_both_tasks_and_a_base_conflict_on_its_task() {
        let c = run(&[], &["a", "b"], &["a", "b"], &[found("a", "b", &["f.rs"]), found("a", "base", &["g.rs"])]);
        assert_eq!(c.upserts, vec![row("a", "b", &["f.rs"], 50), row("a", "base", &["g.rs"], 50)]);
        assert!(c.removed.is_empty());
        assert_eq!(
            kinds(&c),
            vec![("a".into(), PREDICTED, "b".into()), ("b".into(), PREDICTED, "a".into()), ("a".into(), PREDICTED, "base".into())]
        );
        assert_eq!(c.events[0].2["files"], json!(["f.rs"]));
        assert_eq!(c.events[0].2["since"], json!(50));
    }

    #[test]
    fn an_unchanged_conflict_says_nothing() {
        let stored = [row("a", "b", &["f.rs"], 10)];
        assert_eq!(run(&stored, &["a", "b"], &["a", "b"], &[found("a", "b", &["f.rs"])]), Changes::default());
    }

    #[test]
    fn new_files_are_said_again_with_the_first_since() {
        let stored = [row("a", "b", &["f.rs"], 10)];
        let c = run(&stored, &["a", "b"], &["a", "b"], &[found("a", "b", &["f.rs", "g.rs"])]);
        assert_eq!(c.upserts.len(), 1);
        assert_eq!(c.upserts[0].since, 10);
        assert_eq!(c.upserts[0].updated_at, 50);
        assert_eq!(kinds(&c), vec![("a".into(), PREDICTED, "b".into()), ("b".into(), PREDICTED, "a".into())]);
        assert_eq!(c.events[1].2["since"], json!(10));
    }

    #[test]
    fn a_conflict_not_found_again_is_cleared_only_when_both_sides_were_looked_at() {
        let stored = [row("a", "b", &["f.rs"], 10), row("a", "base", &["g.rs"], 10)];
        let c = run(&stored, &["a", "b"], &["a", "b"], &[]);
        assert_eq!(c.removed, stored.to_vec());
        assert_eq!(
            kinds(&c),
            vec![("a".into(), CLEARED, "b".into()), ("b".into(), CLEARED, "a".into()), ("a".into(), CLEARED, "base".into())]
        );
        assert_eq!(c.events[0].2["reason"], json!("resolved"));
        assert_eq!(c.events[0].2["files"], json!(["f.rs"]));
        // b's worktree could not be read: the pair stays, the base conflict of a goes.
        let c = run(&stored, &["a"], &["a", "b"], &[]);
        assert_eq!(c.removed, vec![stored[1].clone()]);
        // Nothing looked at: everything stays.
        assert_eq!(run(&stored, &[], &["a", "b"], &[]), Changes::default());
    }

    #[test]
    fn a_finished_task_takes_its_conflicts_with_it() {
        let stored = [row("a", "b", &["f.rs"], 10), row("b", "base", &["g.rs"], 10), row("a", "c", &["h.rs"], 10)];
        // b finished; a round that still found its pair (planned before it finished) does not bring it back.
        let c = run(&stored, &["a", "b", "c"], &["a", "c"], &[found("a", "b", &["f.rs"]), found("a", "c", &["h.rs"])]);
        assert_eq!(c.removed, vec![stored[0].clone(), stored[1].clone()]);
        assert!(c.upserts.is_empty());
        assert!(c.events.iter().all(|(_, k, d)| *k == CLEARED && d["reason"] == "task_finished"));
        assert_eq!(c.events.len(), 3);
    }
}
