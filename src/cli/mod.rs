//! The `kiln` command line (structopt): `serve` and `migrate` run the service;
//! every other command is a thin client of the HTTP API.

mod attach;
mod client;
mod commands;
mod dashboard;
mod notify;
mod output;
mod review;
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
    /// Conflicts predicted between active tasks, and against their base branch
    /// (uncommitted work included), before anyone merges.
    Conflicts(commands::ConflictsArgs),
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
    /// Attach this terminal to the task's agent (Ctrl-\ detaches). A stream the server
    /// cuts (a slow reader, a restart) is resumed from the offset reached.
    Attach {
        task: String,
        /// When stdin is a pipe or file and ends: keep showing output until the
        /// terminal has been quiet this many seconds, then detach
        #[structopt(long, default_value = "1")]
        linger: f64,
    },
    /// Type text into the task's agent, followed by Enter.
    Send {
        task: String,
        /// Do not press Enter after the text.
        #[structopt(long)]
        no_enter: bool,
        #[structopt(required = true)]
        text: Vec<String>,
    },
    /// Send review comments to the task's agent as one message: a prompt to its
    /// open ACP session, else typed into its terminal.
    Review(review::ReviewArgs),
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
    /// Outbound webhooks of the organization: add, list, remove, test, log.
    Notify(notify::NotifyCmd),
    /// The organization's inbox (what needs a person); `inbox read <id>…|--all`.
    Inbox(notify::InboxArgs),
    /// Provider and integration profiles (worktree, daytona, github): show, set.
    Provider(commands::ProviderCmd),
    /// Sign a browser in to the web dashboard: prints a one-time link (valid 60 s,
    /// for this CLI's token) and opens it where a browser exists.
    Dashboard {
        /// Only print the link; do not open a browser.
        #[structopt(long)]
        print: bool,
    },
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
        /// An inherited Landlock ruleset that setup commands and the agent enter.
        #[structopt(long)]
        confine_fd: Option<i32>,
        #[structopt(long, default_value = "0")]
        confine_abi: u32,
        /// Do not put the agent in a cgroup of its own.
        #[structopt(long)]
        no_cgroup: bool,
        /// Run the agent remotely, through sandbox-agent: the target is in the
        /// state dir's `remote.json` (0600), read and deleted at start.
        #[structopt(long)]
        remote: bool,
        /// The agent's argument vector.
        #[structopt(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// Runs the CLI and answers the process exit code.
pub fn main() -> i32 {
    let opts = Opts::from_args();
    if let Command::TerminalHost { state_dir, cwd, log_max_bytes, cols, rows, setup, argv, confine_fd, confine_abi, no_cgroup, remote } =
        opts.command
    {
        let remote = match remote.then(|| crate::terminal::remote::take_target(&state_dir)).transpose() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("terminal-host: {e}");
                return 1;
            }
        };
        let confine = match confine_fd.filter(|fd| *fd > 2) {
            // SAFETY: the server left this ruleset open for us and nothing else owns it.
            Some(fd) => match unsafe { crate::confine::Ruleset::from_inherited(fd, confine_abi, true) } {
                Ok(r) => Some(std::sync::Arc::new(r)),
                Err(e) => {
                    // Never run an agent unconfined that was meant to be confined.
                    eprintln!("terminal-host: the confinement ruleset is unusable: {e}");
                    return 1;
                }
            },
            None => None,
        };
        let host = crate::terminal::host::HostOptions {
            state_dir,
            cwd,
            log_max_bytes,
            cols,
            rows,
            setup,
            argv,
            confine,
            cgroup: !no_cgroup,
            remote,
        };
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
        Command::Dashboard { print } => {
            let org = config.resolve_organization(opts.organization.as_deref());
            let api = Api::new(config, opts.url.as_deref(), opts.token.as_deref());
            let explicit = opts.organization.is_some();
            actix_web::rt::System::new().block_on(async move { dashboard::dashboard(&api, &org, explicit, print).await })
        }
        command => {
            if !matches!(command, Command::Attach { .. }) {
                die_quietly_on_closed_stdout();
            }
            let org = config.resolve_organization(opts.organization.as_deref());
            let api = Api::new(config, opts.url.as_deref(), opts.token.as_deref());
            let ctx = commands::Ctx { api, org };
            actix_web::rt::System::new().block_on(commands::run(ctx, command))
        }
    }
}

/// `kiln list | head -1`: a reader that stops early closes the pipe, and the
/// next print would panic (Rust ignores SIGPIPE, so `println!` gets EPIPE).
/// Client commands take SIGPIPE's default instead and end quietly, as `ls`
/// does. Sockets are unaffected: std sends on them with `MSG_NOSIGNAL`. `attach`
/// keeps the error path, so it always restores the terminal mode first.
fn die_quietly_on_closed_stdout() {
    // SAFETY: resets one signal's disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
