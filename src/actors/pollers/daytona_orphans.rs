//! The boot-time sweep of Daytona sandboxes: for each organization with a
//! `daytona` key, the sandboxes labelled with it are listed; one whose task is
//! gone, or over (`failed`, `archived`, `killed`: their work was saved before
//! they ended, or there was none), is reported as `sandbox.orphaned`, then
//! deleted after `tasks.orphan_grace_secs` (`sandbox.orphan_deleted`) unless it
//! is gone by then. Active tasks' sandboxes are their TaskActors' (`Recover`
//! reconnects them). Writes no table: it reads tasks and emits events.

use std::time::Duration;

use serde_json::json;

use crate::actors::history::NewEvent;
use crate::actors::task::state::TaskStatus;
use crate::actors::Kiln;
use crate::db::queries;
use crate::error::AppResult;
use crate::providers::daytona::provider::{delete_sandbox, labelled_sandboxes, Labelled};

/// Finds, reports and (after the grace period) deletes orphaned sandboxes.
pub async fn sweep(kiln: Kiln) {
    let orgs = match kiln.db.read(queries::daytona_organizations).await {
        Ok(orgs) => orgs,
        Err(e) => return log::warn!("listing the organizations with Daytona failed: {e}"),
    };
    for org in orgs {
        if let Err(e) = sweep_org(kiln.clone(), org.clone()).await {
            log::warn!("organization {org}: looking for orphaned Daytona sandboxes failed: {e}");
        }
    }
}

async fn sweep_org(kiln: Kiln, org: String) -> AppResult<()> {
    let mut orphans: Vec<(Labelled, Option<String>)> = Vec::new();
    for sandbox in labelled_sandboxes(kiln.db.clone(), org.clone()).await? {
        let (o, t) = (org.clone(), sandbox.task.clone());
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
    if orphans.is_empty() {
        return Ok(());
    }
    let grace = kiln.config.tasks.orphan_grace_secs;
    for (sandbox, status) in &orphans {
        let why = match status {
            None => "its task no longer exists".to_string(),
            Some(s) => format!("its task is {s}"),
        };
        log::warn!("organization {org}: Daytona sandbox {} is orphaned ({why}); deleting it in {grace} s", sandbox.id);
        let data = json!({"sandbox": sandbox.id, "name": sandbox.name, "task": sandbox.task, "state": sandbox.state,
                          "reason": why, "delete_in_secs": grace});
        kiln.emit_one(&org, NewEvent::new("sandbox.orphaned", data)).await?;
    }
    actix_rt::time::sleep(Duration::from_secs(grace)).await;
    for (sandbox, _) in orphans {
        match delete_sandbox(kiln.db.clone(), org.clone(), sandbox.id.clone()).await {
            Ok(()) => {
                kiln.emit_one(&org, NewEvent::new("sandbox.orphan_deleted", json!({"sandbox": sandbox.id, "task": sandbox.task}))).await?;
            }
            Err(e) => log::warn!("organization {org}: deleting the orphaned sandbox {} failed: {e}", sandbox.id),
        }
    }
    Ok(())
}
