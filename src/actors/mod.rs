//! The actors, and `Kiln`, the handle to everything they share.
//!
//! Every organization, repository, task and history is an actor with its own
//! mailbox, and each table has exactly one writing actor:
//!
//! | actor               | writes                                              |
//! |---------------------|-----------------------------------------------------|
//! | OrganizationActor   | organizations, provider_profiles, api_tokens        |
//! | RepositoryActor     | repos, branches, pull_requests                      |
//! | TaskActor           | tasks, task_runtime, task_sessions                  |
//! | SessionActor        | nothing: its journal goes through the HistoryActor  |
//! | SandboxActor        | sandbox_instances (arrives with sandboxes)          |
//! | HistoryActor        | events                                              |
//! | NotifierActor       | notification_webhooks, notification_deliveries,     |
//! |                     | notification_attempts, inbox_entries,               |
//! |                     | notification_cursors (one per server)               |
//!
//! A table's write functions live in its owner's `store.rs` and are private to that
//! actor's module; `tests/single_writer.rs` fails if any other file writes a table.

/// Runs an async block as an atomic handler (`AtomicResponse`): its state checks,
/// write and event complete before the actor takes its next message. Also marks
/// the actor active for `/admin/actors`.
macro_rules! atomic {
    ($self:ident, $body:expr) => {{
        $self.meta.touch();
        actix::AtomicResponse::new(Box::pin(actix::fut::wrap_future($body)))
    }};
}

pub mod connections;
pub mod history;
pub mod notify;
pub mod organization;
pub mod pollers;
pub mod registry;
pub mod repository;
pub mod sandbox;
pub mod session;
pub mod task;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::metrics::Metrics;
use crate::providers::{Providers, SandboxHandle};

use history::{Append, HistoryActor, NewEvent};
use organization::OrganizationActor;
use registry::{Handle, Registry};
use repository::RepositoryActor;
use task::TaskActor;

/// Stops a command actor once it has handled no message for `tasks.actor_idle_secs`;
/// the registry starts it again, from its rows, on the next message.
pub fn stop_when_idle<A>(ctx: &mut actix::Context<A>, meta: std::sync::Arc<registry::ActorMeta>, idle_secs: u64)
where
    A: actix::Actor<Context = actix::Context<A>>,
{
    use actix::{ActorContext, AsyncContext};
    let idle_ms = (idle_secs * 1000) as i64;
    let every = std::time::Duration::from_millis((idle_ms as u64 / 4).clamp(100, 30_000));
    ctx.run_interval(every, move |_, ctx| {
        // A long handler (a clone) still has its message in flight: never stop under it.
        if meta.in_flight() == 0 && crate::util::now_ms() - meta.last_activity() >= idle_ms {
            log::debug!("{} is quiet; stopping", meta.key);
            ctx.stop();
        }
    });
}

fn session_key(org: &str, repo: &str, task: &str, id: &str) -> String {
    format!("{}/session/{id}", registry::task_key(org, repo, task))
}

/// Everything the actors and handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Kiln {
    pub db: Db,
    pub config: Arc<Config>,
    pub data_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// WebSockets opened with an organization token, closed when it is revoked.
    pub connections: Arc<connections::Connections>,
    pub providers: Arc<Providers>,
    /// Becomes `true` when the server begins to shut down; long-lived sessions
    /// (terminal attaches) close themselves on it.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// One lock per repository mirror (see `git::MirrorLocks`), shared with the
    /// providers, which take it around `worktree add` and `remove`.
    pub git_locks: crate::integrations::git::MirrorLocks,
    /// Takes the data dir's location and URL passwords out of events and error
    /// messages (see `redact`).
    pub redactor: Arc<crate::redact::Redactor>,
}

impl Kiln {
    /// The HistoryActor of `org`, started on demand.
    pub fn history(&self, org: &str) -> Handle<HistoryActor> {
        let kiln = self.clone();
        let org_name = org.to_string();
        self.registry
            .get_or_start(registry::history_key(org), "history", move |meta| HistoryActor::new(kiln, org_name, meta))
    }

    /// The NotifierActor (one per server: the delivery queue), started on demand.
    pub fn notifier(&self) -> Handle<notify::NotifierActor> {
        let kiln = self.clone();
        self.registry.get_or_start("notifications".to_string(), "notifier", move |meta| notify::NotifierActor::new(kiln, meta))
    }

    /// The OrganizationActor of `org`, started on demand.
    pub fn organization(&self, org: &str) -> Handle<OrganizationActor> {
        let kiln = self.clone();
        let org_name = org.to_string();
        self.registry.get_or_start(registry::org_key(org), "organization", move |meta| {
            OrganizationActor::new(kiln, org_name, meta)
        })
    }

    /// The RepositoryActor of `org/repo`, started on demand.
    pub fn repository(&self, org: &str, repo: &str) -> Handle<RepositoryActor> {
        let kiln = self.clone();
        let (o, r) = (org.to_string(), repo.to_string());
        self.registry
            .get_or_start(registry::repo_key(org, repo), "repository", move |meta| RepositoryActor::new(kiln, o, r, meta))
    }

    /// The TaskActor of one task, started on demand (it stops itself when quiet).
    pub fn task(&self, org: &str, repo: &str, task: &str) -> Handle<TaskActor> {
        let kiln = self.clone();
        let (o, r, t) = (org.to_string(), repo.to_string(), task.to_string());
        self.registry
            .get_or_start(registry::task_key(org, repo, task), "task", move |meta| TaskActor::new(kiln, o, r, t, meta))
    }

    /// The SessionActor of one ACP session of a task, started on demand (it
    /// loads its row and journal first).
    pub fn session(&self, org: &str, repo: &str, task: &str, id: &str) -> Handle<session::SessionActor> {
        let kiln = self.clone();
        let (o, r, t, i) = (org.to_string(), repo.to_string(), task.to_string(), id.to_string());
        self.registry.get_or_start(session_key(org, repo, task, id), "session", move |meta| {
            session::SessionActor::new(kiln, o, r, t, i, meta)
        })
    }

    /// The SessionActor of a session if it runs (without starting one).
    pub fn session_if_running(&self, org: &str, repo: &str, task: &str, id: &str) -> Option<Handle<session::SessionActor>> {
        self.registry.get(&session_key(org, repo, task, id))
    }

    /// The SandboxActor of a task's sandbox on `provider`, started on demand.
    pub fn sandbox(&self, org: &str, provider: &str, id: &str) -> AppResult<Handle<sandbox::SandboxActor>> {
        let p = self.providers.get(provider)?;
        let kiln = self.clone();
        let (o, i) = (org.to_string(), id.to_string());
        let key = format!("org/{org}/provider/{provider}/sandbox/{id}");
        Ok(self.registry.get_or_start(key, "sandbox", move |meta| sandbox::SandboxActor::new(kiln, o, i, p, meta)))
    }

    /// The TaskStatusPoller of a task, started on demand.
    pub fn status_poller(
        &self,
        org: &str,
        repo: &str,
        task: &str,
        provider: &str,
        handle: SandboxHandle,
    ) -> AppResult<Handle<pollers::task_status::TaskStatusPoller>> {
        let p = self.providers.get(provider)?;
        let kiln = self.clone();
        let (o, r, t) = (org.to_string(), repo.to_string(), task.to_string());
        let key = format!("{}/status-sync", registry::task_key(org, repo, task));
        let interval = std::time::Duration::from_millis(self.config.tasks.status_poll_ms);
        Ok(self.registry.get_or_start(key, "poller", move |meta| {
            pollers::task_status::TaskStatusPoller::new(kiln, o, r, t, handle, p, meta, interval)
        }))
    }

    /// Makes sure a repository's pollers run: branch sync always, PR sync when
    /// it is on GitHub with a token (the poller stops itself otherwise).
    pub fn repo_pollers(&self, org: &str, repo: &str) {
        use std::time::Duration;
        let (kiln, o, r) = (self.clone(), org.to_string(), repo.to_string());
        let every = Duration::from_millis(self.config.repos.branch_poll_ms);
        self.registry.get_or_start(format!("{}/branch-sync", registry::repo_key(org, repo)), "poller", move |meta| {
            pollers::branch_sync::BranchSyncPoller::new(kiln, o, r, meta, every)
        });
        // These two stop themselves when the repository has nothing for them
        // (not on GitHub, no token, intake off, no PR to report on an issue). One
        // still running is asked to poll again rather than left alone: it may be
        // finishing a cycle planned before the change that called this, and
        // would stop on that stale plan.
        let (kiln, o, r) = (self.clone(), org.to_string(), repo.to_string());
        let every = Duration::from_millis(self.config.github.pr_poll_ms);
        let key = format!("{}/pr-sync", registry::repo_key(org, repo));
        match self.registry.get::<pollers::pr_sync::PrSyncPoller>(&key).filter(|p| p.addr.connected()) {
            Some(p) => p.addr.do_send(pollers::PollNow {}),
            None => {
                self.registry.get_or_start(key, "poller", move |meta| pollers::pr_sync::PrSyncPoller::new(kiln, o, r, meta, every));
            }
        }
        let (kiln, o, r) = (self.clone(), org.to_string(), repo.to_string());
        let key = format!("{}/issue-intake", registry::repo_key(org, repo));
        match self.registry.get::<pollers::issue_intake::IssueIntakePoller>(&key).filter(|p| p.addr.connected()) {
            Some(p) => p.addr.do_send(pollers::PollNow {}),
            None => {
                self.registry.get_or_start(key, "poller", move |meta| pollers::issue_intake::IssueIntakePoller::new(kiln, o, r, meta, every));
            }
        }
    }

    /// Stops a repository's pollers (it was deleted).
    pub fn stop_repo_pollers(&self, org: &str, repo: &str) {
        let base = registry::repo_key(org, repo);
        if let Some(p) = self.registry.get::<pollers::branch_sync::BranchSyncPoller>(&format!("{base}/branch-sync")) {
            p.addr.do_send(pollers::StopPoller {});
        }
        if let Some(p) = self.registry.get::<pollers::pr_sync::PrSyncPoller>(&format!("{base}/pr-sync")) {
            p.addr.do_send(pollers::StopPoller {});
        }
        if let Some(p) = self.registry.get::<pollers::issue_intake::IssueIntakePoller>(&format!("{base}/issue-intake")) {
            p.addr.do_send(pollers::StopPoller {});
        }
    }

    /// Appends events to `org`'s history and waits until they are persisted.
    pub async fn emit(&self, org: &str, events: Vec<NewEvent>) -> AppResult<Vec<i64>> {
        self.history(org).send(Append { events }).await?
    }

    /// Appends one event and waits until it is persisted.
    pub async fn emit_one(&self, org: &str, event: NewEvent) -> AppResult<i64> {
        let ids = self.emit(org, vec![event]).await?;
        ids.first().copied().ok_or_else(|| AppError::bug("history answered no id"))
    }

    /// Waits for the git lock of a repository's mirror (see `git_locks`).
    pub async fn lock_git(&self, mirror: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.git_locks.lock(std::path::Path::new(mirror)).await
    }

    /// Where a repository's bare mirror lives.
    pub fn mirror_dir(&self, org: &str, repo: &str) -> PathBuf {
        self.data_dir.join("repos").join(org).join(format!("{repo}.git"))
    }
}
