//! The `kiln` command line (structopt): `serve` and `migrate` run the service;
//! every other command is a thin client of the HTTP API.

mod attach;
mod client;
mod commands;
mod output;
mod session;

use std::path::PathBuf;

use structopt::StructOpt;

use crate::config::Config;
use client::{Api, CliError};

#[derive(Debug, StructOpt)]
#[structopt(name = "kiln", about = "Run many coding agents side by side, each on its own branch.")]
pub struct Opts {
    /// A config file, applied over the user config file.
    #[structopt(long, global = true, parse(from_os_str))]
    pub config: Option<PathBuf>,
    /// The organization to act on (default: `default_organization`, then `default`).
    #[structopt(long, short = "o", global = true)]
    pub organization: Option<String>,
    /// The Kiln server URL (default: client.url, then http://<server.bind>).
    #[structopt(long, global = true)]
    pub url: Option<String>,
    /// The bearer token (default: client.token, then <data_dir>/admin.token).
    #[structopt(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[structopt(subcommand)]
    pub command: Command,
}

#[derive(Debug, StructOpt)]
pub enum Command {
    /// Run the service.
    Serve {
        /// Listen here instead of server.bind (e.g. 0.0.0.0:7420).
        #[structopt(long)]
        bind: Option<String>,
        /// Keep data here instead of data_dir.
        #[structopt(long, parse(from_os_str))]
        data_dir: Option<PathBuf>,
    },
    /// Print the API's OpenAPI 3.1 document (what `GET /v1/openapi.json` serves
    /// and `docs/openapi.json` holds) and exit.
    Openapi,
    /// Apply database migrations and exit.
    Migrate {
        #[structopt(long, parse(from_os_str))]
        data_dir: Option<PathBuf>,
    },
    /// Organizations: use, list, create.
    Organization(commands::OrganizationCmd),
    /// Repositories: add, list, setup, settings.
    Repo(commands::RepoCmd),
    /// Create a task from a description.
    Create(commands::CreateArgs),
    /// List tasks.
    List(commands::ListArgs),
    /// Show one task.
    Show {
        task: String,
        #[structopt(long)]
        json: bool,
    },
    /// Kill a task: stop its agent, save uncommitted work, remove its sandbox; the branch stays.
    Kill { task: String },
    /// Archive a task: like kill, for finished work.
    Archive { task: String },
    /// Push the task branch to origin (with --commit, commit uncommitted work first).
    /// After a sync rebased it, Kiln replaces its own last push; --force replaces
    /// the branch even when someone else pushed to it.
    Push {
        task: String,
        #[structopt(long)]
        commit: Option<String>,
        /// Replace the remote branch even when someone else pushed to it.
        #[structopt(long)]
        force: bool,
    },
    /// Rebase the task branch onto its base (--merge: merge the base in instead).
    Sync {
        task: String,
        #[structopt(long)]
        merge: bool,
    },
    /// Open the task's pull request on GitHub (or adopt the one that exists).
    Pr {
        task: String,
        #[structopt(long)]
        draft: bool,
    },
    /// Merge the task: on GitHub with the expected head, or locally for other remotes.
    Merge {
        task: String,
        #[structopt(long, default_value = "squash", possible_values = &["squash", "merge", "rebase"])]
        method: String,
    },
    /// Relaunch an interrupted or stalled task's agent with its resume command.
    Resume { task: String },
    /// Attach this terminal to the task's agent (Ctrl-\ detaches).
    Attach { task: String },
    /// Type text into the task's agent, followed by Enter.
    Send {
        task: String,
        /// Do not press Enter after the text.
        #[structopt(long)]
        no_enter: bool,
        #[structopt(required = true)]
        text: Vec<String>,
    },
    /// Print the task's sandbox path; --shell opens a shell there.
    Switch {
        task: String,
        #[structopt(long)]
        shell: bool,
    },
    /// Show the event history; --follow streams new events.
    Events(commands::EventsArgs),
    /// ACP sessions with a task's agent: new, list, prompt, cancel, answer, show, close.
    Session(session::SessionCmd),
    /// API tokens of an organization: create, list, revoke (admin only).
    Token(commands::TokenCmd),
    /// Provider and integration profiles (worktree, daytona, github): show, set.
    Provider(commands::ProviderCmd),
    /// Internal: the detached process that holds one sandbox's terminal.
    #[structopt(name = "terminal-host", setting = structopt::clap::AppSettings::Hidden)]
    TerminalHost {
        #[structopt(long, parse(from_os_str))]
        state_dir: PathBuf,
        #[structopt(long, parse(from_os_str))]
        cwd: PathBuf,
        #[structopt(long, default_value = "8388608")]
        log_max_bytes: u64,
        #[structopt(long, default_value = "120")]
        cols: u16,
        #[structopt(long, default_value = "40")]
        rows: u16,
        /// A shell command to run before the agent (repeatable).
        #[structopt(long)]
        setup: Vec<String>,
        /// The agent's argument vector.
        #[structopt(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// Runs the CLI and answers the process exit code.
pub fn main() -> i32 {
    let opts = Opts::from_args();
    if let Command::TerminalHost { state_dir, cwd, log_max_bytes, cols, rows, setup, argv } = opts.command {
        let host = crate::terminal::host::HostOptions { state_dir, cwd, log_max_bytes, cols, rows, setup, argv };
        return crate::terminal::host::run(host);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(match opts.command {
        Command::Serve { .. } | Command::Migrate { .. } => "info",
        _ => "warn",
    }))
    .init();
    let mut config = match Config::load(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match run(opts, &mut config) {
        Ok(()) => 0,
        Err(CliError(message)) => {
            eprintln!("error: {message}");
            1
        }
    }
}

fn run(opts: Opts, config: &mut Config) -> Result<(), CliError> {
    match opts.command {
        Command::Serve { bind, data_dir } => {
            if let Some(bind) = bind {
                config.server.bind = bind;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir.to_string_lossy().to_string();
            }
            let config = config.clone();
            actix_web::rt::System::new().block_on(crate::app::serve(config)).map_err(CliError::from)
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi::json());
            Ok(())
        }
        Command::Migrate { data_dir } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir.to_string_lossy().to_string();
            }
            let dir = crate::app::prepare_data_dir(config)?;
            let _lock = crate::app::lock_data_dir(&dir)?;
            let (_, applied) = crate::app::open_db(config, &dir)?;
            println!("applied {applied} migrations to {}", dir.join("kiln.db").display());
            Ok(())
        }
        command => {
            let org = config.resolve_organization(opts.organization.as_deref());
            let api = Api::new(config, opts.url.as_deref(), opts.token.as_deref());
            let ctx = commands::Ctx { api, org };
            actix_web::rt::System::new().block_on(commands::run(ctx, command))
        }
    }
}
