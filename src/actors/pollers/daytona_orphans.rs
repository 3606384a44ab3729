//! The sweep of Daytona sandboxes, at boot and then every
//! `tasks.orphan_sweep_secs` while Kiln runs: for each organization with a
//! `daytona` key, the sandboxes labelled with it are listed; one whose task is
//! gone, or over (`failed`, `archived`, `killed`: their work was saved before
//! they ended, or there was none), is reported once as `sandbox.orphaned`, then
//! deleted once `tasks.orphan_grace_secs` have passed (a sweep is due then;
//! `sandbox.orphan_deleted`) unless it is gone or no longer orphaned by then.
//! Active tasks' sandboxes are their TaskActors' (`Recover` reconnects them).
//! Writes no table: it reads tasks and emits events; what it has reported is
//! kept in memory (after a restart, an orphan is reported again and gets a
//! full grace period).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::actors::history::NewEvent;
use crate::actors::task::state::TaskStatus;
use crate::actors::Kiln;
use crate::db::queries;
use crate::error::AppResult;
use crate::providers::daytona::provider::{delete_sandbox, labelled_sandboxes, Labelled};
use crate::util::now_ms;

/// The orphans reported so far, by organization and sandbox id: when.
type Reported = HashMap<(String, String), i64>;
/// An orphaned sandbox, with its task's status (`None`: the task is gone).
type Orphan = (Labelled, Option<String>);

/// Sweeps at once, then every `tasks.orphan_sweep_secs`, until Kiln stops.
pub async fn run(kiln: Kiln) {
    let every = Duration::from_secs(kiln.config.tasks.orphan_sweep_secs.max(1));
    let mut shutdown = kiln.shutdown.subscribe();
    let mut reported = Reported::new();
    let grace_ms = kiln.config.tasks.orphan_grace_secs as i64 * 1000;
    loop {
        sweep(&kiln, &mut reported).await;
        // Sooner when a reported orphan's grace period ends first.
        let due = reported.values().map(|at| at + grace_ms - now_ms()).min();
        let next = match due {
            Some(ms) => every.min(Duration::from_millis(ms.max(1000) as u64)),
            None => every,
        };
        tokio::select! {
            _ = actix_rt::time::sleep(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over every organization with Daytona.
async fn sweep(kiln: &Kiln, reported: &mut Reported) {
    let orgs = match kiln.db.read(queries::daytona_organizations).await {
        Ok(orgs) => orgs,
        Err(e) => return log::warn!("listing the organizations with Daytona failed: {e}"),
    };
    // An organization no longer using Daytona has nothing left to delete here.
    reported.retain(|(org, _), _| orgs.contains(org));
    for org in orgs {
        if let Err(e) = sweep_org(kiln, &org, reported).await {
            log::warn!("organization {org}: looking for orphaned Daytona sandboxes failed: {e}");
        }
    }
}

/// What a sweep does with the orphans it found, given what was reported
/// before: report the new ones, delete those reported at least `grace_ms`
/// ago; a sandbox reported before and not found now (gone, or its task
/// active again) is forgotten. Pure.
fn plan<'a>(reported: &mut HashMap<String, i64>, found: &'a [Orphan], now: i64, grace_ms: i64) -> (Vec<&'a Orphan>, Vec<&'a Orphan>) {
    reported.retain(|id, _| found.iter().any(|(s, _)| &s.id == id));
    let (mut report, mut delete) = (Vec::new(), Vec::new());
    for orphan in found {
        match reported.get(&orphan.0.id) {
            None => {
                reported.insert(orphan.0.id.clone(), now);
                report.push(orphan);
                if grace_ms <= 0 {
                    delete.push(orphan);
                }
            }
            Some(at) if now - at >= grace_ms => delete.push(orphan),
            Some(_) => {}
        }
    }
    (report, delete)
}

async fn sweep_org(kiln: &Kiln, org: &str, all: &mut Reported) -> AppResult<()> {
    let mut orphans: Vec<Orphan> = Vec::new();
    for sandbox in labelled_sandboxes(kiln.db.clone(), org.to_string()).await? {
        let (o, t) = (org.to_string(), sandbox.task.clone());
        let task = kiln.db.read(move |c| queries::task(c, &o, &t)).await?;
        let over = match &task {
            None => Some(None),
            Some(task) => match task.status.parse::<TaskStatus>() {
                Ok(status) if status.is_terminal() => Some(Some(status.as_str().to_string())),
                _ => None,
            },
        };
        if let Some(status) = over {
            orphans.push((sandbox, status));
        }
    }
    let grace = kiln.config.tasks.orphan_grace_secs;
    let mut mine: HashMap<String, i64> =
        all.iter().filter(|((o, _), _)| o == org).map(|((_, id), at)| (id.clone(), *at)).collect();
    let (report, delete) = plan(&mut mine, &orphans, now_ms(), grace as i64 * 1000);
    all.retain(|(o, _), _| o != org);
    all.extend(mine.into_iter().map(|(id, at)| ((org.to_string(), id), at)));
    for (sandbox, status) in report {
        let why = match status {
            None => "its task no longer exists".to_string(),
            Some(s) => format!("its task is {s}"),
        };
        log::warn!("organization {org}: Daytona sandbox {} is orphaned ({why}); deleting it in {grace} s", sandbox.id);
        let data = json!({"sandbox": sandbox.id, "name": sandbox.name, "task": sandbox.task, "state": sandbox.state,
                          "reason": why, "delete_in_secs": grace});
        kiln.emit_one(org, NewEvent::new("sandbox.orphaned", data)).await?;
    }
    for (sandbox, _) in delete {
        match delete_sandbox(kiln.db.clone(), org.to_string(), sandbox.id.clone()).await {
            Ok(()) => {
                all.remove(&(org.to_string(), sandbox.id.clone()));
                kiln.emit_one(org, NewEvent::new("sandbox.orphan_deleted", json!({"sandbox": sandbox.id, "task": sandbox.task}))).await?;
            }
            // Kept as reported: the next sweep tries again.
            Err(e) => log::warn!("organization {org}: deleting the orphaned sandbox {} failed: {e}", sandbox.id),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(id: &str) -> Orphan {
        (Labelled { id: id.into(), name: None, task: format!("t-{id}"), state: "started".into() }, None)
    }

    fn ids(v: &[&Orphan]) -> Vec<String> {
        v.iter().map(|(s, _)| s.id.clone()).collect()
    }

    #[test]
    fn an_orphan_is_reported_once_then_deleted_after_the_grace_period() {
        let mut reported = HashMap::new();
        let found = vec![orphan("a")];
        let (report, delete) = plan(&mut reported, &found, 1_000, 600_000);
        assert_eq!((ids(&report), ids(&delete)), (vec!["a".to_string()], vec![]));
        // The next sweeps, within the grace period: nothing new.
        let (report, delete) = plan(&mut reported, &found, 300_000, 600_000);
        assert!(report.is_empty() && delete.is_empty());
        // A second orphan appears while Kiln runs: reported on its own clock.
        let found = vec![orphan("a"), orphan("b")];
        let (report, delete) = plan(&mut reported, &found, 601_000, 600_000);
        assert_eq!((ids(&report), ids(&delete)), (vec!["b".to_string()], vec!["a".to_string()]));
    }

    #[test]
    fn a_sandbox_no_longer_orphaned_is_forgotten_and_gets_a_new_grace_period() {
        let mut reported = HashMap::new();
        plan(&mut reported, &[orphan("a")], 0, 10_000);
        // Gone (or its task active again) at the next sweep: forgotten.
        plan(&mut reported, &[], 5_000, 10_000);
        assert!(reported.is_empty());
        // Orphaned again later: reported again, not deleted at once.
        let found = [orphan("a")];
        let (report, delete) = plan(&mut reported, &found, 20_000, 10_000);
        assert_eq!((report.len(), delete.len()), (1, 0));
    }

    #[test]
    fn no_grace_deletes_at_the_first_sweep() {
        let mut reported = HashMap::new();
        let found = [orphan("a")];
        let (report, delete) = plan(&mut reported, &found, 0, 0);
        assert_eq!((report.len(), delete.len()), (1, 1));
    }
}
