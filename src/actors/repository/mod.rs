//! RepositoryActor (`org/{org}/repo/{repo}`): the only writer of `repos`,
//! `branches`, `pull_requests` and `task_conflicts`.
//!
//! Messages: `RegisterRepo` (check who may register the source, clone a bare
//! mirror, then insert the row with any URL credential kept apart; idempotent for
//! the same source), `MoveSourceCredential` (at boot: a credential still in a
//! stored source moves to its own columns), `SetRepoSetup` and `DeleteRepo`
//! (refused while tasks are active). The pollers' results arrive here:
//! `BranchesObserved`, `PullRequestsObserved`, and `ConflictsObserved` (the
//! conflicts predicted between active tasks, applied by `conflicts::reconcile`).
//! Issues in: `PlanIssuePoll` and `IntakeIssues` (from the IssueIntakePoller and
//! the `issues` webhook) turn labelled issues into tasks, through the TaskActor,
//! which records each task with its issue. Handlers are atomic, so two
//! registrations of one name never race. Lifecycle: started on demand; stops
//! after `tasks.actor_idle_secs` without a command.

pub mod conflicts;
pub mod hosts;
pub mod issues;
mod source;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

pub use source::{derive_name, Registrant, Source, UrlCredential};

use super::history::{Append, NewEvent};
use super::registry::ActorMeta;
use super::Kiln;
use crate::db::models::{NewRepo, Repo};
use crate::db::{pool::blocking, queries, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git::{self, GitError};
use crate::util::{now_ms, random_hex};

/// Registers a repository by local path or remote URL. Answers the row and
/// whether it was created now (false: it was already registered).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(Repo, bool)>")]
pub struct RegisterRepo {
    pub source: Source,
    /// The user name and secret taken out of the source URL, if it had them.
    pub credential: Option<UrlCredential>,
    /// Who asks: which local paths it may register depends on it.
    pub by: Registrant,
}

/// Replaces the repository's setup step.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Repo>")]
pub struct SetRepoSetup {
    pub setup: crate::db::models::RepoSetup,
}

/// Replaces the repository's settings (GitHub slug, automation).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Repo>")]
pub struct SetRepoSettings {
    pub settings: crate::db::models::RepoSettings,
}

/// Records (inserts or updates) one pull request, e.g. one a task just opened.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<crate::db::models::PullRequest>")]
pub struct UpsertPullRequest {
    pub row: crate::db::models::PullRequest,
}

/// What the BranchSyncPoller should look at; `None` when the repository is gone.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Option<BranchPlan>>")]
pub struct PlanBranchPoll {}

#[derive(Debug, Clone)]
pub struct BranchPlan {
    pub mirror: PathBuf,
    pub default_branch: String,
    /// The folder holding this repository's task worktrees.
    pub worktrees: PathBuf,
    /// How to fetch origin: transports and credentials.
    pub origin: crate::integrations::git::Origin,
    /// Whether to predict conflicts (`repos.predict_conflicts`).
    pub predict_conflicts: bool,
    /// The tasks conflict prediction looks at (running, idle, stalled, interrupted).
    pub tasks: Vec<PlannedTask>,
}

/// An active task, for conflict prediction.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub id: String,
    pub branch: String,
    pub base_branch: String,
}

/// The BranchSyncPoller's conflict prediction for the active tasks: which
/// tasks it looked at, and the conflicts it found among them.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct ConflictsObserved {
    pub evaluated: Vec<String>,
    pub conflicts: Vec<crate::integrations::conflicts::Found>,
}

/// One branch as the BranchSyncPoller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchObservation {
    pub name: String,
    pub head: String,
    pub ahead: i32,
    pub behind: i32,
    pub dirty_files: Option<i32>,
}

/// The BranchSyncPoller's findings: every branch of the mirror.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct BranchesObserved {
    pub branches: Vec<BranchObservation>,
}

/// What the PrSyncPoller should poll; `None` when the repository is not (or no
/// longer) on GitHub with a token.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Option<PrPlan>>")]
pub struct PlanPrPoll {}

#[derive(Debug, Clone)]
pub struct PrPlan {
    pub github: crate::integrations::github::GitHub,
    pub repo_id: i32,
    /// Branches of tasks that are not finished: their PRs get CI and reviews read.
    pub task_branches: Vec<String>,
    /// Read those PRs' review comments too (a review reaction is on).
    pub review_comments: bool,
}

/// One pull request as the PrSyncPoller saw it.
#[derive(Debug, Clone)]
pub struct PrObservation {
    pub row: crate::db::models::PullRequest,
    pub failed_checks: Vec<crate::integrations::github::FailedCheck>,
    /// The reviews as GitHub answers them (open task PRs only).
    pub reviews: Option<serde_json::Value>,
    /// The review comments, when the plan asked for them.
    pub review_comments: Option<serde_json::Value>,
}

/// The PrSyncPoller's findings: every pull request of the repository.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct PullRequestsObserved {
    pub pulls: Vec<PrObservation>,
}

/// What the IssueIntakePoller should do; `None` when the repository is gone,
/// not on GitHub with a token, or has nothing for it (intake off and no PR left
/// to report on an issue).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Option<IssuePlan>>")]
pub struct PlanIssuePoll {}

#[derive(Debug, Clone)]
pub struct IssuePlan {
    pub github: crate::integrations::github::GitHub,
    /// The label to list open issues by; `None` when intake is off.
    pub label: Option<String>,
    /// Tasks made from issues whose PR is not reported on the issue yet.
    pub unreported: Vec<String>,
}

/// Open issues that carry the intake label, as the poller or an `issues`
/// webhook saw them: each one without a task gets one (oldest first, up to
/// `issues.max_active` active). Answers the issues whose intake failed, with
/// the `updated_at` they had, so the poller tries them again only once they change.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Vec<(i64, String)>>")]
pub struct IntakeIssues {
    pub issues: Vec<issues::IssueSeen>,
    /// `poll` or `webhook`, for the `issue.claimed` event.
    pub via: &'static str,
}

/// Moves a credential out of a source stored before they were kept apart
/// (`https://user:secret@host/…`): the row and the mirror's `remote.origin.url`
/// get the URL without it, the credential its own columns. Sent at boot.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct MoveSourceCredential {}

/// Deletes the repository, its mirror and its finished tasks.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct DeleteRepo {}

pub struct RepositoryActor {
    kiln: Kiln,
    org: String,
    repo: String,
    meta: Arc<ActorMeta>,
}

impl RepositoryActor {
    pub fn new(kiln: Kiln, org: String, repo: String, meta: Arc<ActorMeta>) -> Self {
        RepositoryActor { kiln, org, repo, meta }
    }
}

impl Actor for RepositoryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        super::stop_when_idle(ctx, self.meta.clone(), self.kiln.config.tasks.actor_idle_secs);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<RegisterRepo> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<(Repo, bool)>>;

    fn handle(&mut self, msg: RegisterRepo, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, register(kiln, org, name, msg))
    }
}

async fn register(kiln: Kiln, org: String, name: String, msg: RegisterRepo) -> AppResult<(Repo, bool)> {
    // Canonical first, so `/x/app/` and `/x/app` are one source.
    let source = msg.source.check(&kiln.config.repos, &kiln.data_dir, &org, msg.by).await?;
    let credential = msg.credential;
    let (o, n, s) = (org.clone(), name.clone(), source.as_str().to_string());
    let (org_row, by_name) =
        kiln.db.read(move |c| Ok((queries::organization(c, &o)?, queries::repo_by_name(c, &o, &n)?))).await?;
    if org_row.is_none() {
        return Err(AppError::not_found("organization_not_found", format!("organization `{org}` does not exist")));
    }
    if let Some(existing) = by_name {
        if existing.source == s {
            return Ok((existing, false));
        }
        return Err(AppError::conflict(
            "repo_name_taken",
            format!("repository `{name}` is already registered from {}: pass another name", existing.source),
        ));
    }
    // A source may be registered only once per organization, under one name.
    let (o, s) = (org.clone(), source.as_str().to_string());
    if let Some(other) = kiln.db.read(move |c| find_by_source(c, &o, &s)).await? {
        return Err(AppError::conflict(
            "repo_already_registered",
            format!("{} is already registered as `{}`", source.as_str(), other.name),
        ));
    }

    // An organization's URL must not lead git into the server or its network.
    let connect = match (&source, msg.by) {
        (Source::Url(url), Registrant::Organization) => {
            let (cfg, url) = (kiln.config.repos.clone(), url.clone());
            match blocking(move || Ok(hosts::check(&cfg, &url))).await? {
                Ok(pin) => pin.map(|p| p.connect()),
                Err(refusal @ hosts::Refusal::Private { .. }) => {
                    return Err(AppError::denied("source_host_refused", refusal.message()))
                }
                Err(refusal) => return Err(AppError::invalid("repo_unreachable", refusal.message())),
            }
        }
        _ => None,
    };
    let repo_event = |kind, data| NewEvent::new(kind, data).repo(&name);
    kiln.emit_one(&org, repo_event("repo.clone_started", json!({"source": source.as_str()}))).await?;
    let mirror = kiln.mirror_dir(&org, &name);
    let origin = git::Origin {
        connect,
        refused: None,
        local: match &source {
            Source::Path(p) => Some(p.clone()),
            Source::Url(_) => None,
        },
        credentials: credential.as_ref().map(|c| git::Credentials {
            user: c.user.clone(),
            ..crate::actors::task::git_ops::credentials(&kiln, &c.secret)
        }),
    };
    let cloned = clone_mirror(&kiln, &org, &name, &source, &origin, mirror.clone()).await;
    let default_branch = match cloned {
        Ok(branch) => branch,
        Err(err) => {
            kiln.emit_one(&org, repo_event("repo.clone_failed", json!({"error": err.to_string()}))).await?;
            return Err(err);
        }
    };

    let now = now_ms();
    let row = NewRepo {
        organization: org.clone(),
        name: name.clone(),
        source: source.as_str().to_string(),
        source_kind: source.kind().to_string(),
        mirror_path: mirror.to_string_lossy().to_string(),
        default_branch,
        created_at: now,
        updated_at: now,
        credential_user: credential.as_ref().and_then(|c| c.user.clone()),
        credential_secret: credential.map(|c| c.secret),
        registered_by: match msg.by {
            Registrant::Admin => "admin",
            Registrant::Organization => "organization",
        }
        .to_string(),
    };
    let repo = match kiln.db.write(move |c| store::insert_repo(c, &row)).await {
        Ok(repo) => repo,
        Err(err) => {
            remove_dir(mirror).await;
            return Err(err.into());
        }
    };
    kiln.emit_one(
        &org,
        repo_event("repo.registered", json!({"source": repo.source, "default_branch": repo.default_branch})),
    )
    .await?;
    Ok((repo, true))
}

fn find_by_source(c: &mut diesel::SqliteConnection, org: &str, source: &str) -> diesel::QueryResult<Option<Repo>> {
    Ok(queries::repos_list(c, org)?.into_iter().find(|r| r.source == source))
}

/// Clones into a temporary folder beside the final one and renames it into place,
/// so a failed clone leaves nothing behind. Answers the default branch.
async fn clone_mirror(kiln: &Kiln, org: &str, name: &str, source: &Source, origin: &git::Origin, mirror: PathBuf) -> AppResult<String> {
    let parent = mirror.parent().map(PathBuf::from).ok_or_else(|| AppError::bug("mirror has no parent"))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", random_hex(8)));
    let history = kiln.history(org).addr;
    let (repo_name, url) = (name.to_string(), source.as_str().to_string());
    let timeout = Duration::from_secs(kiln.config.repos.clone_timeout_secs);
    let is_url = matches!(source, Source::Url(_));
    let tmp_for_clone = tmp.clone();
    let origin = origin.clone();
    let result = blocking(move || {
        std::fs::create_dir_all(&parent).map_err(|e| DbError::Blocking(e.to_string()))?;
        let outcome = git::clone_bare(&url, &tmp_for_clone, timeout, &origin, |p| {
            // Progress is advisory: fire and forget, the history keeps order.
            history.do_send(Append {
                events: vec![NewEvent::new("repo.clone_progress", json!({"phase": p.phase, "percent": p.percent}))
                    .repo(&repo_name)],
            });
        })
        .and_then(|()| git::default_branch(&tmp_for_clone));
        let outcome = outcome.and_then(|branch| {
            if mirror.exists() {
                // A mirror without a row is a leftover of a crash: ours to replace.
                std::fs::remove_dir_all(&mirror)?;
            }
            std::fs::rename(&tmp_for_clone, &mirror)?;
            Ok(branch)
        });
        if outcome.is_err() {
            let _ = std::fs::remove_dir_all(&tmp_for_clone);
        }
        Ok(outcome)
    })
    .await?;
    result.map_err(|err| clone_error(err, is_url))
}

fn clone_error(err: GitError, is_url: bool) -> AppError {
    match err {
        GitError::Failed { stderr, .. } if is_url => {
            AppError::invalid("repo_unreachable", format!("cannot clone the repository: {stderr}"))
        }
        GitError::Failed { stderr, .. } => AppError::invalid("clone_failed", format!("cannot clone the repository: {stderr}")),
        GitError::TimedOut { secs, .. } => AppError::invalid(
            "repo_unreachable",
            format!("cloning took longer than {secs} s and was stopped; raise repos.clone_timeout_secs for large repositories"),
        ),
        GitError::Missing(_) => AppError::git_missing(),
        other => AppError::internal(other),
    }
}


async fn remove_dir(dir: PathBuf) {
    let shown = dir.display().to_string();
    if let Err(e) = blocking(move || std::fs::remove_dir_all(&dir).map_err(|e| DbError::Blocking(e.to_string()))).await {
        log::warn!("could not remove {shown}: {e}");
    }
}

impl Handler<MoveSourceCredential> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: MoveSourceCredential, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let (o, n) = (org.clone(), name.clone());
            let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(()) };
            let clean = crate::redact::strip_url_userinfo(&repo.source).to_string();
            if repo.source_kind != "url" || clean == repo.source {
                return Ok(());
            }
            // A password git cannot use (ssh, git://) is dropped, not kept.
            let credential = match Source::parse(&repo.source) {
                Ok((Source::Url(_), credential)) => credential,
                _ => None,
            };
            let (id, url, mirror) = (repo.id, clean.clone(), PathBuf::from(&repo.mirror_path));
            let user = credential.as_ref().and_then(|c| c.user.clone());
            let secret = credential.map(|c| c.secret);
            kiln.db.write(move |c| store::move_credential(c, id, &url, user, secret, now_ms())).await?;
            let url = clean.clone();
            let fixed = blocking(move || Ok(git::run(&mirror, &["config", "remote.origin.url", &url]))).await?;
            if let Err(e) = fixed {
                log::warn!("repository {org}/{name}: could not rewrite the mirror's origin URL: {}", e.message());
            }
            log::info!("repository {org}/{name}: moved the credential out of its stored source");
            Ok(())
        })
    }
}

impl Handler<SetRepoSetup> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<Repo>>;

    fn handle(&mut self, msg: SetRepoSetup, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let text = serde_json::to_string(&msg.setup).map_err(AppError::internal)?;
            let (o, n) = (org.clone(), name.clone());
            let repo = kiln
                .db
                .write(move |c| store::set_setup(c, &o, &n, &text, now_ms()))
                .await?
                .ok_or_else(|| AppError::not_found("repo_not_found", format!("no repository `{name}` in `{org}`")))?;
            let data = json!({"commands": msg.setup.commands, "copy": msg.setup.copy});
            kiln.emit_one(&org, NewEvent::new("repo.setup_changed", data).repo(&name)).await?;
            Ok(repo)
        })
    }
}

impl Handler<UpsertPullRequest> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<crate::db::models::PullRequest>>;

    fn handle(&mut self, msg: UpsertPullRequest, _: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        atomic!(self, async move {
            let row = msg.row;
            Ok(kiln.db.write(move |c| store::upsert_pull(c, &row)).await?)
        })
    }
}

impl Handler<SetRepoSettings> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<Repo>>;

    fn handle(&mut self, msg: SetRepoSettings, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let value = serde_json::to_value(&msg.settings).map_err(AppError::internal)?;
            let text = value.to_string();
            let (o, n) = (org.clone(), name.clone());
            let repo = kiln
                .db
                .write(move |c| store::set_settings(c, &o, &n, &text, now_ms()))
                .await?
                .ok_or_else(|| AppError::not_found("repo_not_found", format!("no repository `{name}` in `{org}`")))?;
            kiln.emit_one(&org, NewEvent::new("repo.settings_changed", value).repo(&name)).await?;
            Ok(repo)
        })
    }
}

impl Handler<PlanBranchPoll> for RepositoryActor {
    type Result = ResponseFuture<AppResult<Option<BranchPlan>>>;

    fn handle(&mut self, _: PlanBranchPoll, _: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        Box::pin(async move {
            let (o, n) = (org.clone(), name.clone());
            let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(None) };
            let origin = crate::actors::task::git_ops::origin(&kiln, &org, &repo).await?;
            let predict_conflicts = kiln.config.repos.predict_conflicts;
            let repo_id = repo.id;
            let tasks = if predict_conflicts {
                kiln.db.read(move |c| queries::conflict_candidates(c, repo_id)).await?
            } else {
                Vec::new()
            };
            Ok(Some(BranchPlan {
                mirror: PathBuf::from(&repo.mirror_path),
                default_branch: repo.default_branch.clone(),
                worktrees: kiln.data_dir.join("worktrees").join(&org).join(&name),
                origin,
                predict_conflicts,
                tasks: tasks.into_iter().map(|(id, branch, base_branch)| PlannedTask { id, branch, base_branch }).collect(),
            }))
        })
    }
}

impl Handler<BranchesObserved> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: BranchesObserved, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let (o, n) = (org.clone(), name.clone());
            let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(()) };
            let repo_id = repo.id;
            let observed = msg.branches;
            let changes = kiln.db.write(move |c| store::apply_branches(c, repo_id, &observed, now_ms())).await?;
            let events = changes
                .into_iter()
                .map(|(kind, data)| NewEvent::new(kind, data).repo(&name))
                .collect::<Vec<_>>();
            kiln.emit(&org, events).await?;
            Ok(())
        })
    }
}

impl Handler<ConflictsObserved> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: ConflictsObserved, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let (o, n) = (org.clone(), name.clone());
            let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(()) };
            let repo_id = repo.id;
            // Which tasks are active now, not when the poll was planned: a
            // task archived meanwhile gets no new conflict.
            let (stored, active) = kiln
                .db
                .read(move |c| Ok((queries::conflicts_list(c, repo_id)?, queries::conflict_candidates(c, repo_id)?)))
                .await?;
            let active: std::collections::HashSet<String> = active.into_iter().map(|(id, _, _)| id).collect();
            let evaluated: std::collections::HashSet<String> = msg.evaluated.into_iter().collect();
            let round = conflicts::Round { repo_id, evaluated: &evaluated, active: &active, found: &msg.conflicts, now: now_ms() };
            let changes = conflicts::reconcile(&stored, round);
            if changes.upserts.is_empty() && changes.removed.is_empty() {
                return Ok(());
            }
            let (upserts, removed) = (changes.upserts, changes.removed);
            kiln.db.write(move |c| store::apply_conflicts(c, &upserts, &removed)).await?;
            let events = changes.events.into_iter().map(|(task, kind, data)| NewEvent::new(kind, data).repo(&name).task(&task)).collect();
            kiln.emit(&org, events).await?;
            Ok(())
        })
    }
}

/// The repository's row and its GitHub client, for a poller's plan; `None` when
/// the repository is gone or has no GitHub repository or token.
async fn repo_with_github(kiln: &Kiln, org: &str, name: &str) -> AppResult<Option<(crate::db::models::Repo, crate::integrations::github::GitHub)>> {
    let (o, n) = (org.to_string(), name.to_string());
    let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(None) };
    let Ok(Some((github, _))) = crate::actors::task::git_ops::github_client(kiln, org, &repo).await else { return Ok(None) };
    Ok(Some((repo, github)))
}

impl Handler<PlanPrPoll> for RepositoryActor {
    type Result = ResponseFuture<AppResult<Option<PrPlan>>>;

    fn handle(&mut self, _: PlanPrPoll, _: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        Box::pin(async move {
            let Some((repo, github)) = repo_with_github(&kiln, &org, &name).await? else { return Ok(None) };
            let repo_id = repo.id;
            let task_branches = kiln.db.read(move |c| queries::active_task_branches(c, repo_id)).await?.into_iter().map(|(_, b, _)| b).collect();
            let reactions = repo.settings().reactions;
            let review_comments = reactions.changes_requested.enabled || reactions.bot_comments.enabled;
            Ok(Some(PrPlan { github, repo_id, task_branches, review_comments }))
        })
    }
}

impl Handler<PlanIssuePoll> for RepositoryActor {
    type Result = ResponseFuture<AppResult<Option<IssuePlan>>>;

    fn handle(&mut self, _: PlanIssuePoll, _: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        Box::pin(async move {
            let Some((repo, github)) = repo_with_github(&kiln, &org, &name).await? else { return Ok(None) };
            let settings = repo.settings().issues;
            let repo_id = repo.id;
            let unreported = kiln.db.read(move |c| queries::unreported_issue_tasks(c, repo_id)).await?;
            if !settings.enabled && unreported.is_empty() {
                return Ok(None);
            }
            Ok(Some(IssuePlan { github, label: settings.enabled.then_some(settings.label), unreported }))
        })
    }
}

impl Handler<IntakeIssues> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<Vec<(i64, String)>>>;

    fn handle(&mut self, msg: IntakeIssues, _: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, intake(kiln, org, name, msg))
    }
}

/// Makes a task of each issue that has none, oldest first, while fewer than
/// `issues.max_active` tasks made from issues are active. The TaskActor inserts
/// each task with its issue in one transaction, unique per issue, so a race
/// with another intake (or a restart) never makes a second task.
async fn intake(kiln: Kiln, org: String, name: String, msg: IntakeIssues) -> AppResult<Vec<(i64, String)>> {
    let (o, n) = (org.clone(), name.clone());
    let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(Vec::new()) };
    let settings = repo.settings().issues;
    if !settings.enabled {
        return Ok(Vec::new());
    }
    let repo_id = repo.id;
    let (taken, mut active) =
        kiln.db.read(move |c| Ok((queries::taken_issue_numbers(c, repo_id)?, queries::active_issue_tasks(c, repo_id)?))).await?;
    let taken: std::collections::HashSet<i64> = taken.into_iter().collect();
    let mut wanted: Vec<issues::IssueSeen> = msg.issues.into_iter().filter(|i| !taken.contains(&i.number)).collect();
    wanted.sort_by_key(|i| i.number);
    wanted.dedup_by_key(|i| i.number);
    let agent = settings.agent.clone().unwrap_or_else(|| kiln.config.tasks.default_agent.clone());
    let mut failed = Vec::new();
    for issue in wanted {
        // The rest wait: the poller offers them again when a task finishes.
        if active >= i64::from(settings.max_active) {
            break;
        }
        let created = if kiln.config.agents.contains_key(&agent) {
            create_issue_task(&kiln, &org, &repo, &issue, &agent).await
        } else {
            Err(AppError::invalid("unknown_agent", format!("issues.agent `{agent}` is not an agent profile of this server")))
        };
        let about = |kind: &'static str, data: serde_json::Value| NewEvent::new(kind, data).repo(&name);
        match created {
            Ok(task) => {
                active += 1;
                let data = json!({"number": issue.number, "url": issue.url, "title": task.title, "via": msg.via});
                kiln.emit_one(&org, about("issue.claimed", data).task(&task.id)).await?;
            }
            Err(AppError::Conflict { code: "issue_taken", .. }) => {}
            Err(e) => {
                // Internal failures say only their code; the log has the rest.
                log::warn!("repository {org}/{name}: no task for issue #{}: {e}", issue.number);
                let message = if matches!(e, AppError::Internal(_)) { "internal error".to_string() } else { e.to_string() };
                let data = json!({"number": issue.number, "url": issue.url, "code": e.code(), "error": message});
                kiln.emit_one(&org, about("issue.intake_failed", data)).await?;
                failed.push((issue.number, issue.updated_at.clone()));
            }
        }
    }
    Ok(failed)
}

/// Creates the task for one issue (a new random id on the rare collision).
async fn create_issue_task(kiln: &Kiln, org: &str, repo: &Repo, issue: &issues::IssueSeen, agent: &str) -> AppResult<crate::db::models::Task> {
    let msg = crate::actors::task::CreateTask {
        repo: repo.clone(),
        title: Some(issues::task_title(issue)),
        description: issues::prompt(issue),
        base_branch: None,
        agent: agent.to_string(),
        provider: kiln.config.tasks.default_provider.clone(),
        issue: Some(crate::actors::task::IssueRef { number: issue.number, url: issue.url.clone(), title: issues::task_title(issue) }),
    };
    let mut attempts = 0;
    loop {
        // A new task's actor is idle: waiting for it here cannot deadlock.
        match kiln.task(org, &repo.name, &random_hex(8)).send(msg.clone()).await? {
            Err(AppError::Conflict { code: "task_id_taken", .. }) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

impl Handler<PullRequestsObserved> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: PullRequestsObserved, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, apply_pulls(kiln, org, name, msg.pulls))
    }
}

/// Stores what the PR poller saw, with events for task PRs that changed, and the
/// automation that follows: archive on an outside merge, then the reactions.
async fn apply_pulls(kiln: Kiln, org: String, name: String, pulls: Vec<PrObservation>) -> AppResult<()> {
    let (o, n) = (org.clone(), name.clone());
    let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(()) };
    let repo_id = repo.id;
    let tasks: std::collections::HashMap<String, (String, String)> = kiln
        .db
        .read(move |c| queries::active_task_branches(c, repo_id))
        .await?
        .into_iter()
        .map(|(id, branch, status)| (branch, (id, status)))
        .collect();
    let rows: Vec<_> = pulls.iter().map(|p| p.row.clone()).collect();
    let before = kiln.db.write(move |c| store::upsert_pulls(c, &rows)).await?;
    let settings = repo.settings();
    let mut events = Vec::new();
    let mut follow_ups = Vec::new();
    for (obs, old) in pulls.iter().zip(before) {
        let row = &obs.row;
        let Some((task_id, _)) = tasks.get(&row.head_ref) else { continue };
        let event = |kind: &'static str, data: serde_json::Value| NewEvent::new(kind, data).repo(&name).task(task_id);
        let base = json!({"number": row.number, "url": row.url});
        match &old {
            None => events.push(event("pr.opened", base.clone())),
            Some(old) if old.state != row.state && row.state == "merged" => {
                events.push(event("pr.merged", base.clone()));
                if settings.automation.archive_on_external_merge {
                    follow_ups.push(task_id.clone());
                }
            }
            Some(old) if old.state != row.state && row.state == "closed" => {
                events.push(event("pr.closed", base.clone()));
                if settings.automation.archive_on_external_merge {
                    follow_ups.push(task_id.clone());
                }
            }
            _ => {}
        }
        let old_ci = old.as_ref().and_then(|o| o.ci_state.clone());
        let new_head = old.as_ref().is_some_and(|o| o.head_sha != row.head_sha);
        // A failure on a new head is a new failure, even if the last head failed too.
        if row.ci_state.is_some() && (row.ci_state != old_ci || new_head) {
            events.push(event("pr.ci_changed", json!({"number": row.number, "from": old_ci, "to": row.ci_state, "failed": obs.failed_checks})));
        }
        // The list itself, so a page shows each check as it moves without asking again.
        let old_checks = old.as_ref().filter(|_| !new_head).and_then(|o| o.checks.clone());
        if let Some(checks) = row.checks.as_ref().filter(|c| Some(*c) != old_checks.as_ref()) {
            let list: serde_json::Value = serde_json::from_str(checks).unwrap_or_else(|_| json!([]));
            events.push(event("pr.checks_changed", json!({"number": row.number, "head_sha": row.head_sha, "checks": list})));
        }
        let old_review = old.as_ref().and_then(|o| o.review_decision.clone());
        if row.review_decision.is_some() && row.review_decision != old_review {
            events.push(event("pr.review_changed", json!({"number": row.number, "from": old_review, "to": row.review_decision})));
        }
    }
    kiln.emit(&org, events).await?;
    // The reactions (docs/git.md): open PRs of tasks with a live agent.
    let reacting: Vec<crate::actors::task::reactions::PrFacts> = if crate::actors::task::reactions::any_pr_reaction(&settings) {
        pulls
            .iter()
            .filter(|p| p.row.state == "open")
            .filter_map(|p| {
                let (task_id, status) = tasks.get(&p.row.head_ref)?;
                matches!(status.as_str(), "running" | "idle").then(|| crate::actors::task::reactions::PrFacts {
                    task: task_id.clone(),
                    branch: p.row.head_ref.clone(),
                    base: p.row.base_ref.clone(),
                    pr: p.row.clone(),
                    failed: p.failed_checks.clone(),
                    reviews: p.reviews.clone(),
                    comments: p.review_comments.clone(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    // Tasks hear about it after the rows and events are written; never for PRs
    // that belong to no task. Sent from a task of their own, so this actor never
    // waits on a TaskActor that may itself be waiting on this actor (pr, merge).
    actix::spawn(async move {
        notify_tasks(kiln.clone(), org.clone(), name, follow_ups).await;
        if !reacting.is_empty() {
            crate::actors::task::reactions::after_pr_poll(kiln, org, repo, reacting).await;
        }
    });
    Ok(())
}

async fn notify_tasks(kiln: Kiln, org: String, name: String, follow_ups: Vec<String>) {
    for task_id in follow_ups {
        let archive = crate::actors::task::ApplyAction {
            input: crate::actors::task::state::TaskInput::Archive,
            text: None,
            git: Default::default(),
        };
        let result = kiln.task(&org, &name, &task_id).send(archive).await.map(|r| r.map(|_| ()));
        if let Ok(Err(e)) | Err(e) = result.map_err(AppError::from) {
            log::warn!("follow-up for task {task_id} failed: {e}");
        }
    }
}

impl Handler<DeleteRepo> for RepositoryActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: DeleteRepo, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, name) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        atomic!(self, async move {
            let (o, n) = (org.clone(), name.clone());
            let repo = kiln
                .db
                .read(move |c| queries::repo_by_name(c, &o, &n))
                .await?
                .ok_or_else(|| AppError::not_found("repo_not_found", format!("no repository `{name}` in `{org}`")))?;
            let repo_id = repo.id;
            let active = kiln.db.read(move |c| queries::active_tasks_count(c, repo_id)).await?;
            if active > 0 {
                return Err(AppError::conflict(
                    "repo_has_active_tasks",
                    format!("repository `{name}` has {active} active tasks: archive or kill them first"),
                ));
            }
            kiln.db.write(move |c| store::delete_repo(c, repo_id)).await?;
            remove_dir(PathBuf::from(&repo.mirror_path)).await;
            kiln.emit_one(&org, NewEvent::new("repo.deleted", json!({"source": repo.source})).repo(&name)).await?;
            Ok(())
        })
    }
}
