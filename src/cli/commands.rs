//! The client commands. Each one is a request or two and some output; `--json`
//! prints the server's answer as is.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use structopt::StructOpt;

use super::client::{Api, CliError, CliResult};
use crate::db::models::{ApiToken, DeliverReaction, OnCiFailure, OnIdle, Organization, RepoSettings};
use crate::http::dto;
use super::output::{self, field};
use super::Command;

pub struct Ctx {
    pub api: Api,
    pub org: String,
}

impl Ctx {
    pub fn org_path(&self, rest: &str) -> String {
        format!("/v1/organizations/{}{}", enc(&self.org), rest)
    }
}

/// Percent-encodes one path or query segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, StructOpt)]
pub enum OrganizationCmd {
    /// Make NAME the default organization (writes default_organization to the user config).
    Use { name: String },
    /// List organizations.
    List {
        #[structopt(long)]
        json: bool,
    },
    /// Create an organization (admin only).
    Create {
        name: String,
        #[structopt(long)]
        display_name: Option<String>,
    },
}

#[derive(Debug, StructOpt)]
pub enum RepoCmd {
    /// Register a repository by local path or URL; Kiln clones a bare mirror.
    Add {
        /// A path on the server's host, or a URL git can clone.
        source: String,
        /// The name in Kiln (default: the last segment of the source).
        #[structopt(long)]
        name: Option<String>,
    },
    /// List repositories.
    List {
        #[structopt(long)]
        json: bool,
    },
    /// Set the setup step: commands run before each agent, files copied in.
    Setup {
        repo: String,
        /// A shell command to run in the new worktree (repeatable, in order).
        #[structopt(long = "command")]
        commands: Vec<String>,
        /// A file to copy from the source checkout (repeatable).
        #[structopt(long = "copy")]
        copy: Vec<String>,
    },
    /// Change settings; flags not given keep their value.
    Settings {
        repo: String,
        /// `owner/name` on GitHub, when the source URL does not say it.
        #[structopt(long)]
        github: Option<String>,
        /// Keep a task after its PR is merged through Kiln (true/false).
        #[structopt(long)]
        keep_after_merge: Option<bool>,
        /// On idle, any of: commit, push, draft_pr (comma-separated; `none` clears).
        #[structopt(long)]
        on_idle: Option<String>,
        /// Hand CI failures to the agent at most N times per task (0: never);
        /// the `ci_failed` reaction.
        #[structopt(long)]
        ci_feedback: Option<u32>,
        /// Reactions to switch on, any of: ci_failed, changes_requested,
        /// bot_comments, merge_conflict, agent_stuck, approved_and_green
        /// (comma-separated; the others are switched off; `none` clears).
        #[structopt(long)]
        reactions: Option<String>,
        /// Logins to treat as bots besides `…[bot]` (comma-separated; `none` clears).
        #[structopt(long)]
        bot_logins: Option<String>,
        /// On a merge conflict, sync and push on Kiln's own when that is clean (true/false).
        #[structopt(long)]
        sync_on_conflict: Option<bool>,
        /// Merge an approved, green PR with this method (squash, merge, rebase), or `off`
        /// to only say it is ready.
        #[structopt(long)]
        merge_when_green: Option<String>,
        /// `agent_stuck` after this many seconds without output (running) or without a PR (idle).
        #[structopt(long)]
        stuck_after: Option<u64>,
        /// Archive a task whose PR is merged or closed outside Kiln (true/false).
        #[structopt(long)]
        archive_on_external_merge: Option<bool>,
        /// Make a task of each open GitHub issue with the intake label (true/false).
        #[structopt(long)]
        issues: Option<bool>,
        /// The label that asks for a task (default `kiln`).
        #[structopt(long)]
        issue_label: Option<String>,
        /// The agent profile of tasks made from issues (`default`: the server's default agent).
        #[structopt(long)]
        issue_agent: Option<String>,
        /// At most this many tasks made from issues active at once (1-100).
        #[structopt(long)]
        issue_max_active: Option<u32>,
        #[structopt(long)]
        json: bool,
    },
}

#[derive(Debug, StructOpt)]
pub enum ProviderCmd {
    /// Show a profile: its config and the names of its secrets.
    Show { name: String },
    /// Set a profile's config and secrets (worktree, daytona, github).
    Set {
        name: String,
        /// A config value as key=value (repeatable; other keys keep their value,
        /// `key=` removes one).
        #[structopt(long = "setting")]
        settings: Vec<String>,
        /// A secret to set, its value read from standard input (never an argument).
        #[structopt(long)]
        secret: Option<String>,
        /// A secret to remove (repeatable).
        #[structopt(long)]
        remove_secret: Vec<String>,
    },
}

#[derive(Debug, StructOpt)]
pub struct CreateArgs {
    /// The repository the task works on.
    #[structopt(long, short = "r")]
    pub repo: String,
    #[structopt(long, short = "t")]
    pub title: Option<String>,
    /// The branch to start from (default: the repository's default branch).
    #[structopt(long)]
    pub base: Option<String>,
    #[structopt(long)]
    pub agent: Option<String>,
    #[structopt(long)]
    pub provider: Option<String>,
    #[structopt(long)]
    pub json: bool,
    /// What the agent should do.
    #[structopt(required = true)]
    pub description: Vec<String>,
}

#[derive(Debug, StructOpt)]
pub struct ListArgs {
    #[structopt(long, short = "r")]
    pub repo: Option<String>,
    #[structopt(long, short = "s")]
    pub status: Option<String>,
    /// How many tasks to show, newest first.
    #[structopt(long, default_value = "50")]
    pub limit: i64,
    #[structopt(long)]
    pub json: bool,
}

#[derive(Debug, StructOpt)]
pub struct ConflictsArgs {
    /// Only this repository (default: every repository of the organization).
    #[structopt(long, short = "r")]
    pub repo: Option<String>,
    #[structopt(long)]
    pub json: bool,
}

#[derive(Debug, StructOpt)]
pub struct EventsArgs {
    /// Show events after this id (default: the newest --limit events).
    #[structopt(long)]
    pub since: Option<i64>,
    #[structopt(long)]
    pub repo: Option<String>,
    #[structopt(long)]
    pub task: Option<String>,
    /// An event kind, or a prefix like `task.`.
    #[structopt(long)]
    pub kind: Option<String>,
    #[structopt(long, default_value = "50")]
    pub limit: i64,
    /// Keep streaming new events until interrupted.
    #[structopt(long, short = "f")]
    pub follow: bool,
    /// One JSON object per line.
    #[structopt(long)]
    pub json: bool,
}

#[derive(Debug, StructOpt)]
pub enum TokenCmd {
    /// Create a token for the organization; its secret is printed once.
    Create {
        name: String,
        #[structopt(long)]
        json: bool,
    },
    /// List the organization's tokens.
    List {
        #[structopt(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

pub async fn run(ctx: Ctx, command: Command) -> CliResult<()> {
    match command {
        Command::Provider(cmd) => provider(&ctx, cmd).await,
        Command::Organization(cmd) => organization(&ctx, cmd).await,
        Command::Repo(cmd) => repo(&ctx, cmd).await,
        Command::Create(args) => create(&ctx, args).await,
        Command::List(args) => list(&ctx, args).await,
        Command::Conflicts(args) => conflicts(&ctx, args).await,
        Command::Show { task, json } => show(&ctx, &task, json).await,
        Command::Kill { task } => action(&ctx, &task, "kill", dto::TaskAction::default()).await.map(|_| ()),
        Command::Archive { task } => action(&ctx, &task, "archive", dto::TaskAction::default()).await.map(|_| ()),
        Command::Resume { task } => action(&ctx, &task, "resume", dto::TaskAction::default()).await.map(|_| ()),
        Command::Push { task, commit, force } => {
            let body = dto::TaskAction { commit, force: force.then_some(true), ..Default::default() };
            action(&ctx, &task, "push", body).await.map(|_| ())
        }
        Command::Sync { task, merge } => {
            let mode = Some(if merge { "merge" } else { "rebase" }.to_string());
            action(&ctx, &task, "sync", dto::TaskAction { mode, ..Default::default() }).await.map(|_| ())
        }
        Command::Pr { task, draft } => {
            action(&ctx, &task, "pr", dto::TaskAction { draft: Some(draft), ..Default::default() }).await?;
            let t: Value = ctx.api.get(&ctx.org_path(&format!("/tasks/{}", enc(&task)))).await?;
            if let Some(url) = t["pull_request"]["url"].as_str() {
                println!("pull request #{}: {url}", t["pull_request"]["number"]);
            }
            Ok(())
        }
        Command::Merge { task, method } => {
            action(&ctx, &task, "merge", dto::TaskAction { method: Some(method), ..Default::default() }).await.map(|_| ())
        }
        Command::Attach { task, linger } => super::attach::attach(&ctx, &task, linger).await,
        Command::Send { task, no_enter, text } => {
            let mut text = text.join(" ");
            if !no_enter {
                text.push('\r');
            }
            let body = dto::TaskAction { text: Some(text), ..Default::default() };
            let _: Value = ctx.api.post(&ctx.org_path(&format!("/tasks/{}/input", enc(&task))), &body).await?;
            Ok(())
        }
        Command::Switch { task, shell } => switch(&ctx, &task, shell).await,
        Command::Events(args) => events(&ctx, args).await,
        Command::Session(cmd) => super::session::run(&ctx, cmd).await,
        Command::Review(args) => super::review::run(&ctx, args).await,
        Command::Token(cmd) => token(&ctx, cmd).await,
        Command::Notify(cmd) => super::notify::notify(&ctx, cmd).await,
        Command::Inbox(args) => super::notify::inbox(&ctx, args).await,
        Command::Serve { .. } | Command::Migrate { .. } | Command::Openapi | Command::TerminalHost { .. } | Command::Dashboard { .. } => {
            Err(CliError("not a client command".into()))
        }
    }
}

async fn organization(ctx: &Ctx, cmd: OrganizationCmd) -> CliResult<()> {
    match cmd {
        OrganizationCmd::Use { name } => {
            crate::validate::name("organization", &name).map_err(|e| CliError(e.to_string()))?;
            let path = crate::config::set_user_key("default_organization", &name)?;
            println!("now using organization `{name}` (saved in {})", path.display());
            Ok(())
        }
        OrganizationCmd::List { json } => {
            let res: dto::Items<Organization> = ctx.api.get("/v1/organizations").await?;
            output::list(json, &res.items, &["NAME", "DISPLAY NAME", "CREATED"], |o| {
                let mark = if o.name == ctx.org { "*" } else { "" };
                vec![format!("{}{mark}", o.name), o.display_name.clone(), output::time(o.created_at)]
            })?;
            Ok(())
        }
        OrganizationCmd::Create { name, display_name } => {
            let res: Organization =
                ctx.api.post("/v1/organizations", &dto::CreateOrganization { name, display_name }).await?;
            println!("created organization `{}`", res.name);
            Ok(())
        }
    }
}

fn items(res: &Value) -> Vec<Value> {
    res["items"].as_array().cloned().unwrap_or_default()
}

fn created(v: &Value) -> String {
    v["created_at"].as_i64().map(output::time).unwrap_or_else(|| "-".into())
}

async fn repo(ctx: &Ctx, cmd: RepoCmd) -> CliResult<()> {
    match cmd {
        RepoCmd::Setup { repo, commands, copy } => {
            let (n_commands, n_copy) = (commands.len(), copy.len());
            let res: Value =
                ctx.api.put(&ctx.org_path(&format!("/repos/{}/setup", enc(&repo))), &dto::RepoSetup { commands, copy }).await?;
            println!("setup of `{}`: {n_commands} commands, {n_copy} files to copy", field(&res, "name"));
            Ok(())
        }
        RepoCmd::Settings {
            repo,
            github,
            keep_after_merge,
            on_idle,
            ci_feedback,
            reactions,
            bot_logins,
            sync_on_conflict,
            merge_when_green,
            stuck_after,
            archive_on_external_merge,
            issues,
            issue_label,
            issue_agent,
            issue_max_active,
            json,
        } => {
            let current: Value = ctx.api.get(&ctx.org_path(&format!("/repos/{}", enc(&repo)))).await?;
            let mut settings: RepoSettings = serde_json::from_value(current["settings"].clone())
                .map_err(|e| CliError(format!("the server sent settings this CLI cannot read: {e}")))?;
            if let Some(g) = github {
                settings.github = Some(g).filter(|g| !g.is_empty());
            }
            if let Some(k) = keep_after_merge {
                settings.keep_after_merge = k;
            }
            if let Some(list) = on_idle {
                let steps: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").collect();
                if let Some(bad) = steps.iter().find(|s| !["commit", "push", "draft_pr"].contains(s)) {
                    return Err(CliError(format!("--on-idle takes commit, push, draft_pr or none, not `{bad}`")));
                }
                settings.automation.on_idle = OnIdle {
                    commit: steps.contains(&"commit"),
                    push: steps.contains(&"push"),
                    draft_pr: steps.contains(&"draft_pr"),
                };
            }
            if let Some(list) = reactions {
                const ALL: [&str; 6] =
                    ["ci_failed", "changes_requested", "bot_comments", "merge_conflict", "agent_stuck", "approved_and_green"];
                let on: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").collect();
                if let Some(bad) = on.iter().find(|s| !ALL.contains(s)) {
                    return Err(CliError(format!("--reactions takes {} or none, not `{bad}`", ALL.join(", "))));
                }
                let r = &mut settings.reactions;
                r.ci_failed.enabled = on.contains(&"ci_failed");
                r.changes_requested.enabled = on.contains(&"changes_requested");
                r.bot_comments.enabled = on.contains(&"bot_comments");
                r.merge_conflict.enabled = on.contains(&"merge_conflict");
                r.agent_stuck.enabled = on.contains(&"agent_stuck");
                r.approved_and_green.enabled = on.contains(&"approved_and_green");
                if !r.ci_failed.enabled {
                    settings.automation.on_ci_failure.enabled = false;
                }
            }
            if let Some(n) = ci_feedback {
                // The older `automation.on_ci_failure` moves to the reaction.
                settings.reactions.ci_failed = DeliverReaction { enabled: n > 0, max_attempts: n };
                settings.automation.on_ci_failure = OnCiFailure::default();
            }
            if let Some(list) = bot_logins {
                settings.reactions.bot_logins =
                    list.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").map(str::to_string).collect();
            }
            if let Some(b) = sync_on_conflict {
                settings.reactions.merge_conflict.auto_sync = b;
            }
            if let Some(method) = merge_when_green {
                let green = &mut settings.reactions.approved_and_green;
                green.merge = method != "off";
                if green.merge {
                    green.method = method;
                }
            }
            if let Some(secs) = stuck_after {
                settings.reactions.agent_stuck.silent_secs = secs;
                settings.reactions.agent_stuck.idle_without_pr_secs = secs;
            }
            if let Some(a) = archive_on_external_merge {
                settings.automation.archive_on_external_merge = a;
            }
            if let Some(on) = issues {
                settings.issues.enabled = on;
            }
            if let Some(label) = issue_label {
                settings.issues.label = label;
            }
            if let Some(agent) = issue_agent {
                settings.issues.agent = Some(agent).filter(|a| a != "default" && !a.is_empty());
            }
            if let Some(n) = issue_max_active {
                settings.issues.max_active = n;
            }
            let res: Value = ctx.api.put(&ctx.org_path(&format!("/repos/{}/settings", enc(&repo))), &settings).await?;
            if json {
                output::json(&res["settings"]);
            } else {
                println!("settings of `{}`: {}", field(&res, "name"), res["settings"]);
            }
            Ok(())
        }
        RepoCmd::Add { source, name } => {
            // A relative path means one on this machine: send it absolute.
            let source = match std::fs::canonicalize(&source) {
                Ok(p) if !source.contains("://") => p.to_string_lossy().to_string(),
                _ => source,
            };
            let progress = actix_web::rt::spawn(show_clone_progress(ctx.api.websocket(&ctx.org_path("/stream")).await.ok()));
            let res: CliResult<(u16, Value)> = ctx.api.post_status(&ctx.org_path("/repos"), &dto::CreateRepo { source, name }).await;
            progress.abort();
            // Registering the same source again answers 200 with the repository as it is.
            let (status, res) = res?;
            let done = if status == 200 { "already registered" } else { "registered" };
            println!(
                "{done} `{}` from {} (default branch {})",
                field(&res, "name"),
                field(&res, "source"),
                field(&res, "default_branch")
            );
            Ok(())
        }
        RepoCmd::List { json } => {
            let res: Value = ctx.api.get(&ctx.org_path("/repos")).await?;
            if json {
                output::json(&res["items"]);
                return Ok(());
            }
            let rows = items(&res)
                .iter()
                .map(|r| vec![field(r, "name"), field(r, "default_branch"), field(r, "source"), created(r)])
                .collect::<Vec<_>>();
            output::table(&["NAME", "DEFAULT BRANCH", "SOURCE", "CREATED"], &rows);
            Ok(())
        }
    }
}

/// Prints clone progress events to stderr while a registration runs.
async fn show_clone_progress(ws: Option<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>>) {
    let Some(mut ws) = ws else { return };
    while let Some(Ok(frame)) = ws.next().await {
        if let awc::ws::Frame::Text(bytes) = frame {
            let Ok(event) = serde_json::from_slice::<Value>(&bytes) else { continue };
            match event["kind"].as_str() {
                Some("repo.clone_progress") => {
                    eprintln!("  {}: {}%", field(&event["data"], "phase"), event["data"]["percent"]);
                }
                Some("repo.clone_started") => eprintln!("cloning {} …", field(&event["data"], "source")),
                _ => {}
            }
        }
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> CliResult<()> {
    let body = dto::CreateTask {
        repo: args.repo,
        description: args.description.join(" "),
        title: args.title,
        base_branch: args.base,
        agent: args.agent,
        provider: args.provider,
    };
    let res: crate::http::tasks::TaskView = ctx.api.post(&ctx.org_path("/tasks"), &body).await?;
    if args.json {
        output::json(&serde_json::to_value(&res)?);
    } else {
        let t = &res.task;
        println!("created task {} `{}` on branch {} ({})", t.id, t.title, t.branch, t.status);
    }
    Ok(())
}

async fn list(ctx: &Ctx, args: ListArgs) -> CliResult<()> {
    let mut query = format!("?limit={}", args.limit.clamp(1, 500));
    if let Some(repo) = &args.repo {
        query.push_str(&format!("&repo={}", enc(repo)));
    }
    if let Some(status) = &args.status {
        query.push_str(&format!("&status={}", enc(status)));
    }
    let res: Value = ctx.api.get(&ctx.org_path(&format!("/tasks{query}"))).await?;
    if args.json {
        output::json(&res["items"]);
        return Ok(());
    }
    let rows = items(&res)
        .iter()
        .map(|t| {
            let pr = &t["pr"];
            let (number, ci, review) = if pr.is_null() {
                ("-".to_string(), "-".to_string(), "-".to_string())
            } else {
                (format!("#{}", pr["number"]), field(pr, "ci_state"), field(pr, "review_decision"))
            };
            vec![field(t, "id"), field(t, "status"), field(t, "repo"), field(t, "branch"), number, ci, review, field(t, "title")]
        })
        .collect::<Vec<_>>();
    output::table(&["ID", "STATUS", "REPO", "BRANCH", "PR", "CI", "REVIEW", "TITLE"], &rows);
    if !res["next_cursor"].is_null() {
        eprintln!("(more tasks: raise --limit or filter with --repo/--status)");
    }
    Ok(())
}

/// `kiln conflicts`: the predicted conflicts of one repository, or of all.
async fn conflicts(ctx: &Ctx, args: ConflictsArgs) -> CliResult<()> {
    let repos = match args.repo {
        Some(repo) => vec![repo],
        None => {
            let res: Value = ctx.api.get(&ctx.org_path("/repos")).await?;
            items(&res).iter().map(|r| field(r, "name")).collect()
        }
    };
    let mut all = Vec::new();
    for repo in repos {
        let res: Value = ctx.api.get(&ctx.org_path(&format!("/repos/{}/conflicts", enc(&repo)))).await?;
        for mut item in items(&res) {
            item["repo"] = Value::String(repo.clone());
            all.push(item);
        }
    }
    if args.json {
        output::json(&Value::Array(all));
        return Ok(());
    }
    if all.is_empty() {
        println!("no conflicts predicted");
        return Ok(());
    }
    let rows = all
        .iter()
        .map(|c| {
            let files: Vec<String> = c["files"].as_array().cloned().unwrap_or_default().iter().filter_map(|f| f.as_str().map(str::to_string)).collect();
            let other = if c["other"] == "base" { format!("base ({})", field(c, "other_branch")) } else { field(c, "other") };
            let since = c["since"].as_i64().map(output::time).unwrap_or_else(|| "-".into());
            vec![field(c, "repo"), field(c, "task"), other, since, files.join(", ")]
        })
        .collect::<Vec<_>>();
    output::table(&["REPO", "TASK", "CONFLICTS WITH", "SINCE", "FILES"], &rows);
    Ok(())
}

async fn show(ctx: &Ctx, task: &str, json: bool) -> CliResult<()> {
    let res: Value = ctx.api.get(&ctx.org_path(&format!("/tasks/{}", enc(task)))).await?;
    if json {
        output::json(&res);
        return Ok(());
    }
    for key in ["id", "title", "status", "status_reason", "repo", "branch", "base_branch", "agent", "provider"] {
        println!("{key:<14}{}", field(&res, key));
    }
    println!("{:<14}{}", "created", created(&res));
    let issue = &res["issue"];
    if !issue.is_null() {
        // `issue  #12 https://github.com/acme/app/issues/12 (PR reported: https://…)`.
        let reported = match issue["comment_state"].as_str() {
            Some("posted") => format!(" (PR reported: {})", field(issue, "comment_url")),
            Some("failed") => " (could not report the PR on it)".to_string(),
            _ => String::new(),
        };
        println!("{:<14}#{} {}{reported}", "issue", issue["number"], field(issue, "url"));
    }
    let pr = &res["pull_request"];
    if pr.is_null() {
        println!("{:<14}-", "pr");
    } else {
        let draft = if pr["draft"] == true && pr["state"] == "open" { " (draft)" } else { "" };
        println!("{:<14}#{} {}{draft} {}", "pr", pr["number"], field(pr, "state"), field(pr, "url"));
        println!("{:<14}{}", "ci", field(pr, "ci_state"));
        for check in pr["checks"].as_array().cloned().unwrap_or_default() {
            // `check  tests: success https://…`, `check  lint: in_progress`.
            let state = check["conclusion"].as_str().or(check["status"].as_str()).unwrap_or("-");
            let url = check["url"].as_str().map(|u| format!(" {u}")).unwrap_or_default();
            println!("{:<14}{}: {state}{url}", "check", field(&check, "name"));
        }
        println!("{:<14}{}", "review", field(pr, "review_decision"));
    }
    if let Some(sha) = res["runtime"]["pushed_sha"].as_str() {
        println!("{:<14}{sha} to {}", "pushed", field(&res["runtime"], "pushed_branch"));
    }
    println!("{:<14}{}", "confined", confinement(&res["runtime"]));
    if let Some(line) = sandbox_power(&res["sandbox"]) {
        println!("{:<14}{line}", "sandbox");
    }
    if res["awaiting_input"] == true {
        println!("{:<14}yes: a session waits for a permission answer (`kiln session show`)", "awaiting");
    }
    for s in res["sessions"].as_array().cloned().unwrap_or_default() {
        println!("{:<14}{} {} {}", "session", field(&s, "id"), field(&s, "agent"), field(&s, "status"));
    }
    // One line per firing: `reaction  ci_failed #2 delivered: tests@0123abcd…, lint@0123abcd…`.
    let mut firings: Vec<(String, i64, String, Vec<String>)> = Vec::new();
    for r in res["reactions"].as_array().cloned().unwrap_or_default() {
        let (cause, attempt, key) = (field(&r, "cause"), r["attempt"].as_i64().unwrap_or(0), field(&r, "cause_key"));
        match firings.iter_mut().find(|f| f.0 == cause && f.1 == attempt) {
            Some(f) => f.3.push(key),
            None => firings.push((cause, attempt, field(&r, "outcome"), vec![key])),
        }
    }
    for (cause, attempt, outcome, keys) in firings {
        println!("{:<14}{cause} #{attempt} {outcome}: {}", "reaction", keys.join(", "));
    }
    println!("\n{}", field(&res, "description"));
    Ok(())
}

/// A remote sandbox's power state for `kiln show`: `started`, `starting
/// (resuming)`, `stopping`, or `stopped since … (idle; the next input, attach,
/// prompt or git action starts it again)`; `None` for a sandbox without one
/// (a worktree).
fn sandbox_power(sandbox: &Value) -> Option<String> {
    let state = sandbox["run_state"].as_str()?;
    Some(match state {
        "stopped" => {
            let why = match sandbox["stopped_by"].as_str() {
                Some("daytona") => "stopped outside Kiln",
                _ => "idle",
            };
            let since = sandbox["auto_stopped_at"].as_i64().map(|ms| format!(" since {} UTC", output::time(ms))).unwrap_or_default();
            format!("stopped{since} ({why}; the next input, attach, prompt or git action starts it again)")
        }
        "starting" => "starting (resuming)".to_string(),
        other => other.to_string(),
    })
}

/// `yes (Landlock ABI 7)`, `NO: …` or `not known yet`, from a task's runtime.
fn confinement(runtime: &Value) -> String {
    match (runtime["confined"].as_bool(), runtime["confine_abi"].as_i64()) {
        (Some(true), Some(abi)) => format!("yes (Landlock ABI {abi})"),
        (Some(true), None) => "yes".into(),
        (Some(false), _) => "NO: the agent can read every organization's files (see the sandbox.unconfined event)".into(),
        (None, _) => "not known yet (the agent has not started since Kiln records it)".into(),
    }
}

async fn action(ctx: &Ctx, task: &str, action: &str, body: dto::TaskAction) -> CliResult<Value> {

    let res: Value = ctx.api.post(&ctx.org_path(&format!("/tasks/{}/{action}", enc(task))), &body).await?;
    println!("task {} is now {}", field(&res["task"], "id"), field(&res["task"], "status"));
    match res["snapshot_ref"].as_str() {
        Some(snapshot) => println!("uncommitted work saved to {snapshot}"),
        None if action == "kill" || action == "archive" => println!("no uncommitted work to save"),
        None => {}
    }
    if action == "kill" || action == "archive" {
        println!("branch {} is kept", field(&res["task"], "branch"));
    }
    Ok(res)
}

async fn switch(ctx: &Ctx, task: &str, shell: bool) -> CliResult<()> {
    let res: Value = ctx.api.post(&ctx.org_path(&format!("/tasks/{}/switch", enc(task))), &dto::TaskAction::default()).await?;
    if res["sandbox"].is_object() && res["sandbox"]["path"].is_null() {
        return Err(CliError(
            "the server shows where a task's worktree is only to the admin token (an organization's token does not learn server paths): run `kiln switch` with the admin token, or attach to the task's terminal with `kiln attach`".into(),
        ));
    }
    let path = res["sandbox"]["path"].as_str().ok_or_else(|| CliError("the task has no sandbox".into()))?.to_string();
    if !shell {
        println!("{path}");
        return Ok(());
    }
    if !std::path::Path::new(&path).is_dir() {
        return Err(CliError(format!("{path} is not on this machine: run `kiln switch --shell` where the server runs")));
    }
    let program = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
    eprintln!("opening {program} in {path}; exit the shell to come back");
    let status = std::process::Command::new(&program).current_dir(&path).status()?;
    if !status.success() {
        return Err(CliError(format!("{program} exited with {status}")));
    }
    Ok(())
}

fn print_event(e: &Value, json: bool) {
    if json {
        println!("{e}");
        return;
    }
    let scope = match (e["repo"].as_str(), e["task"].as_str()) {
        (Some(r), Some(t)) => format!("{r}/{t}"),
        (Some(r), None) => r.to_string(),
        (None, Some(t)) => t.to_string(),
        _ => "-".into(),
    };
    let at = e["at"].as_i64().map(output::time).unwrap_or_default();
    println!("{:>6}  {at}  {:<22}  {scope:<24}  {}", e["id"], field(e, "kind"), e["data"]);
}

async fn events(ctx: &Ctx, args: EventsArgs) -> CliResult<()> {
    let mut query = format!("?limit={}", args.limit.clamp(1, 1000));
    match args.since {
        Some(since) => query.push_str(&format!("&since={since}")),
        None => query.push_str(&format!("&tail={}", args.limit.clamp(1, 1000))),
    }
    for (key, value) in [("repo", &args.repo), ("task", &args.task), ("kind", &args.kind)] {
        if let Some(v) = value {
            query.push_str(&format!("&{key}={}", enc(v)));
        }
    }
    let res: dto::EventPage = ctx.api.get(&ctx.org_path(&format!("/events{query}"))).await?;
    for e in &res.items {
        print_event(&serde_json::to_value(e)?, args.json);
    }
    if !args.follow {
        return Ok(());
    }
    let mut since = res.next_since;
    let matches = |e: &Value| {
        args.repo.as_deref().is_none_or(|r| e["repo"] == r)
            && args.task.as_deref().is_none_or(|t| e["task"] == t)
            && args.kind.as_deref().is_none_or(|k| {
                let kind = e["kind"].as_str().unwrap_or("");
                let prefix = k.strip_suffix('*').unwrap_or(k);
                if prefix.ends_with('.') { kind.starts_with(prefix) } else { kind == k }
            })
    };
    // Reconnect with `since` whenever the server closes the stream (restart, or
    // this client fell behind): nothing is missed and nothing is shown twice.
    loop {
        // The server filters by task; repo and kind are matched here.
        let task_filter = args.task.as_deref().map(|t| format!("&task={}", enc(t))).unwrap_or_default();
        let mut ws = connect_with_retry(ctx, &format!("/stream?since={since}{task_filter}")).await?;
        while let Some(frame) = ws.next().await {
            match frame? {
                awc::ws::Frame::Text(bytes) => {
                    let Ok(event) = serde_json::from_slice::<Value>(&bytes) else { continue };
                    since = event["id"].as_i64().unwrap_or(since);
                    if matches(&event) {
                        print_event(&event, args.json);
                    }
                }
                awc::ws::Frame::Ping(p) => ws.send(awc::ws::Message::Pong(p)).await?,
                awc::ws::Frame::Close(reason) => {
                    if let Some(gone) = credential_gone(&reason) {
                        return Err(gone);
                    }
                    eprintln!("stream closed ({}); reconnecting from {since}", reason.and_then(|r| r.description).unwrap_or_default());
                    break;
                }
                _ => {}
            }
        }
        actix_web::rt::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A stream closed because the credential it was opened with is gone (4001: the
/// token was revoked; 4004: its organization was deleted). Reconnecting cannot
/// help, so the command ends with this error instead.
pub(super) fn credential_gone(reason: &Option<awc::ws::CloseReason>) -> Option<CliError> {
    let why = match reason.as_ref().map(|r| u16::from(r.code)) {
        Some(4001) => "the token was revoked",
        Some(4004) => "the token's organization was deleted",
        _ => return None,
    };
    Some(CliError(format!("the server closed the stream: {why} (use another token)")))
}

/// Connects a stream, waiting up to a minute for a restarting server.
pub(super) async fn connect_with_retry(
    ctx: &Ctx,
    path: &str,
) -> CliResult<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>> {
    let mut attempt = 0;
    loop {
        match ctx.api.websocket(&ctx.org_path(path)).await {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt < 60 && e.0.contains("cannot reach") => {
                if attempt == 0 {
                    eprintln!("waiting for the server to come back…");
                }
                attempt += 1;
                actix_web::rt::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn token(ctx: &Ctx, cmd: TokenCmd) -> CliResult<()> {
    match cmd {
        TokenCmd::Create { name, json } => {
            let res: dto::CreatedToken = ctx.api.post(&ctx.org_path("/tokens"), &dto::CreateToken { name }).await?;
            if json {
                output::json(&serde_json::to_value(&res)?);
            } else {
                println!("created token {} `{}` for `{}`", res.row.id, res.row.name, ctx.org);
                println!("{}", res.token);
                eprintln!("(this secret is shown only now: store it safely)");
            }
            Ok(())
        }
        TokenCmd::List { json } => {
            let res: dto::Items<ApiToken> = ctx.api.get(&ctx.org_path("/tokens")).await?;
            output::list(json, &res.items, &["ID", "NAME", "CREATED", "REVOKED"], |t| {
                let revoked = t.revoked_at.map(output::time).unwrap_or_else(|| "-".into());
                vec![t.id.clone(), t.name.clone(), output::time(t.created_at), revoked]
            })?;
            Ok(())
        }
        TokenCmd::Revoke { id } => {
            let _: ApiToken = ctx.api.delete_json(&ctx.org_path(&format!("/tokens/{}", enc(&id)))).await?;
            println!("revoked token {id}");
            Ok(())
        }
    }
}

async fn provider(ctx: &Ctx, cmd: ProviderCmd) -> CliResult<()> {
    match cmd {
        ProviderCmd::Show { name } => {
            let res: Value = ctx.api.get(&ctx.org_path(&format!("/providers/{}", enc(&name)))).await?;
            output::json(&res);
            Ok(())
        }
        ProviderCmd::Set { name, settings, secret, remove_secret } => {
            let current: Value = ctx.api.get(&ctx.org_path(&format!("/providers/{}", enc(&name)))).await?;
            let mut config = current["config"].as_object().cloned().unwrap_or_default();
            for pair in &settings {
                let (k, v) = pair.split_once('=').ok_or_else(|| CliError(format!("--setting takes key=value, not `{pair}`")))?;
                if v.is_empty() {
                    config.remove(k);
                } else {
                    config.insert(k.to_string(), json!(v));
                }
            }
            let mut secrets = serde_json::Map::new();
            if let Some(key) = secret {
                let mut value = String::new();
                std::io::stdin().read_line(&mut value)?;
                let value = value.trim_end_matches(['\r', '\n']).to_string();
                if value.is_empty() {
                    return Err(CliError(format!("no value for secret `{key}`: pipe it on standard input")));
                }
                secrets.insert(key, json!(value));
            }
            for key in remove_secret {
                secrets.insert(key, Value::Null);
            }
            let res: crate::actors::organization::ProviderProfileView =
                ctx.api.put(&ctx.org_path(&format!("/providers/{}", enc(&name))), &dto::PutProviderProfile { config, secrets }).await?;
            println!("profile `{}` saved; secrets: {}", res.provider, json!(res.secrets));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_says_how_a_remote_sandbox_is() {
        assert_eq!(sandbox_power(&json!({"state": "ready", "run_state": null})), None, "a worktree has no power state");
        assert_eq!(sandbox_power(&json!({"run_state": "started"})).as_deref(), Some("started"));
        let stopped = sandbox_power(&json!({"run_state": "stopped", "stopped_by": "kiln", "auto_stopped_at": 0})).unwrap();
        assert_eq!(stopped, "stopped since 1970-01-01 00:00:00 UTC (idle; the next input, attach, prompt or git action starts it again)");
        let outside = sandbox_power(&json!({"run_state": "stopped", "stopped_by": "daytona"})).unwrap();
        assert!(outside.starts_with("stopped (stopped outside Kiln;"), "{outside}");
    }
}
