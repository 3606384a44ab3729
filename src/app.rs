//! Boot: config → data dir (locked) → database (migrated) → actors → HTTP server.
//! Shutdown (SIGTERM, Ctrl-C): stop accepting, finish in-flight requests, flush
//! every HistoryActor's pending batch, exit 0.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{middleware, web, App, HttpServer};

use crate::actors::history::{CloseSubscribers, Flush, HistoryActor};
use crate::actors::organization::CreateOrganization;
use crate::actors::registry::Registry;
use crate::actors::Kiln;
use crate::config::Config;
use crate::db::{queries, Db};
use crate::http::{self, auth};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare the data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("another `kiln serve` is already using {0}: stop it first, or give this one another data_dir")]
    Locked(PathBuf),
    #[error(
        "the data dir {path} is too long: a task's terminal socket would be {socket_len} bytes long under it, and a unix socket path may be at most {max} bytes here: use a data_dir of at most {longest} bytes ({len} now)",
        path = .path.display(), longest = .max - (.socket_len - .len)
    )]
    DataDirTooLong { path: PathBuf, len: usize, socket_len: usize, max: usize },
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("cannot listen on {bind}: {source}")]
    Bind { bind: String, source: std::io::Error },
    #[error("cannot create the default organization: {0}")]
    Seed(String),
    #[error("the server failed: {0}")]
    Server(std::io::Error),
}

/// Refuses a data dir under which a task's terminal socket path would be too
/// long for a unix socket: said at boot, not when the first task starts.
pub fn check_data_dir_length(dir: &Path) -> Result<(), BootError> {
    let socket_len = crate::terminal::client::socket_path_len(dir);
    let max = crate::terminal::client::MAX_SOCKET_PATH;
    if socket_len > max {
        return Err(BootError::DataDirTooLong { len: dir.as_os_str().len(), path: dir.to_path_buf(), socket_len, max });
    }
    Ok(())
}

/// Creates the data dir layout (mode 0700) and returns it.
pub fn prepare_data_dir(config: &Config) -> Result<PathBuf, BootError> {
    let dir = config.data_dir();
    for sub in ["", "repos", "worktrees", "sandboxes", "backups"] {
        let path = dir.join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| BootError::DataDir { path: path.clone(), source })?;
    }
    Ok(dir)
}

/// Takes an exclusive lock on `<data>/kiln.lock` for the life of the process, so
/// two servers never write one database.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, BootError> {
    let path = dir.join("kiln.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BootError::DataDir { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(BootError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

/// Says at boot, loudly when it matters, whether agents will be confined.
fn announce_confinement(confiner: &crate::confine::Confiner) {
    use crate::confine::Decision;
    match &confiner.decision {
        Decision::Confine { abi } => {
            log::info!("agents are confined with Landlock ABI {abi} (sandboxes.confine = {:?})", confiner.mode);
            if *abi < 6 {
                log::warn!("Landlock ABI {abi} cannot scope signals or abstract unix sockets (ABI 6, Linux 6.12): an agent can signal Kiln's processes");
            }
        }
        Decision::Unconfined { reason } => log::warn!("AGENTS ARE NOT CONFINED: {reason}; every agent can read the admin token, kiln.db and every organization's files"),
        Decision::Refuse { reason } => log::error!("{reason}: every task's provisioning will fail until this is fixed"),
    }
}

/// Opens and migrates the database in the data dir.
pub fn open_db(config: &Config, dir: &Path) -> Result<(Db, usize), BootError> {
    let db = Db::open(&dir.join("kiln.db"), config.database.busy_timeout_ms, config.database.read_pool_size)?;
    let applied = db.migrate()?;
    Ok((db, applied))
}

/// A started service: its shared state, its HTTP server and the addresses it
/// listens on. `serve` runs one until a signal; tests and benchmarks start one
/// in-process and stop it themselves.
pub struct Running {
    pub kiln: Kiln,
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
    actors: Arbiter,
    _lock: std::fs::File,
}

/// Boots everything and starts the HTTP server. Must run inside an actix System.
pub async fn start(config: Config) -> Result<Running, BootError> {
    check_data_dir_length(&config.data_dir())?;
    let dir = prepare_data_dir(&config)?;
    let lock = lock_data_dir(&dir)?;
    let (db, applied) = {
        let (config, dir) = (config.clone(), dir.clone());
        web::block(move || open_db(&config, &dir)).await.map_err(|e| BootError::Server(std::io::Error::other(e)))??
    };
    if applied > 0 {
        log::info!("applied {applied} migrations to {}", db.path().display());
    }
    let admin_token = auth::ensure_admin_token(&dir).map_err(|source| BootError::DataDir { path: dir.clone(), source })?;
    let auth_state = auth::AuthState {
        enabled: config.auth.enabled,
        admin_hash: crate::util::sha256_hex(admin_token.as_bytes()),
    };
    if !config.auth.enabled {
        log::warn!("auth is turned off (auth.enabled = false): anyone who can reach {} can drive Kiln", config.server.bind);
    }

    announce_confinement(crate::confine::Confiner::new(&config.sandboxes, &dir, &config.files).install().as_ref());

    let actors = Arbiter::new();
    let git_locks = crate::integrations::git::MirrorLocks::default();
    let providers = crate::providers::Providers::builtin(dir.clone(), config.terminal.clone(), git_locks.clone(), db.clone());
    let kiln = Kiln {
        db,
        config: Arc::new(config.clone()),
        data_dir: dir.clone(),
        connections: Default::default(),
        metrics: Arc::new(Metrics::default()),
        registry: Registry::new(actors.handle()),
        providers: Arc::new(providers),
        shutdown: Arc::new(tokio::sync::watch::channel(false).0),
        git_locks,
        redactor: Arc::new(crate::redact::Redactor::new(&dir)),
    };
    seed_default_organization(&kiln).await?;
    recover_tasks(&kiln).await?;
    // In the background, at boot and then periodically: listing sandboxes must
    // not hold the server's start.
    actix_rt::spawn(crate::actors::pollers::daytona_orphans::run(kiln.clone()));
    start_repo_pollers(&kiln).await?;
    // Catches up every organization's notifications and resumes pending deliveries.
    kiln.notifier();

    web::block(http::web_assets::prepare_assets).await.map_err(|e| BootError::Server(std::io::Error::other(e)))?;
    let max_body = config.server.max_body_bytes;
    let (kiln_data, auth_data) = (web::Data::new(kiln.clone()), web::Data::new(auth_state));
    let deliveries = web::Data::new(http::webhooks::Deliveries::default());
    let mut server = HttpServer::new(move || {
        let metrics = kiln_data.metrics.clone();
        App::new()
            .app_data(kiln_data.clone())
            .app_data(auth_data.clone())
            .app_data(deliveries.clone())
            // Innermost first: the query rule runs after auth, so 401 beats a bad query.
            .wrap(middleware::from_fn(http::extract::query_rule))
            .wrap(middleware::from_fn(auth::authenticate))
            .wrap(middleware::from_fn(http::redact_errors))
            .wrap(http::json_error_pages())
            .wrap_fn(move |req, srv| {
                use actix_web::dev::Service;
                let metrics = metrics.clone();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    metrics.record_request(res.status().as_u16());
                    Ok(res)
                }
            })
            // The path only: a query string may carry `access_token`.
            .wrap(
                middleware::Logger::new("%a \"%{request}xi\" %s %b %Dms")
                    .custom_request_replace("request", |req| format!("{} {}", req.method(), req.path()))
                    .exclude("/v1/health"),
            )
            .configure(|cfg| http::configure(cfg, max_body))
            // The dashboard: every path outside /v1, /admin and /metrics.
            .default_service(web::to(http::web_assets::serve))
    })
    .shutdown_timeout(10)
    // Events and keystrokes are small writes: send them now, not after Nagle's delay.
    .tcp_nodelay(true)
    // `serve` handles signals itself, so it can close streams before waiting.
    .disable_signals();
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server
        .bind(&config.server.bind)
        .map_err(|source| BootError::Bind { bind: config.server.bind.clone(), source })?;
    let addrs: Vec<SocketAddr> = server.addrs();
    for addr in &addrs {
        // Tests and scripts read this line to find an ephemeral port.
        println!("kiln listening on http://{addr} (data dir {})", dir.display());
    }
    Ok(Running { kiln, server: server.run(), addrs, actors, _lock: lock })
}

impl Running {
    /// Waits for the HTTP server to stop (a signal, or `server.handle().stop`),
    /// then flushes every HistoryActor so no acknowledged event is lost.
    pub async fn finish(self) -> Result<(), BootError> {
        let result = self.server.await.map_err(BootError::Server);
        log::info!("shutting down: flushing event history");
        for history in self.kiln.registry.all::<HistoryActor>() {
            match history.send(Flush {}).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("flushing {} failed: {e}", history.meta.key),
                Err(e) => log::error!("flushing {} failed: {e}", history.meta.key),
            }
        }
        self.actors.stop();
        log::info!("stopped");
        result
    }
}

/// Runs the service until SIGTERM or Ctrl-C. Must run inside an actix System.
///
/// On the signal: stream clients are closed first (code 1012, with the `since`
/// to resume from), so the graceful stop does not wait on them; in-flight requests
/// finish; then the history is flushed.
pub async fn serve(config: Config) -> Result<(), BootError> {
    let running = start(config).await?;
    let handle = running.server.handle();
    let kiln = running.kiln.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        log::info!("shutting down: closing event streams and terminals, finishing requests");
        kiln.shutdown.send_replace(true);
        for history in kiln.registry.all::<HistoryActor>() {
            let _ = history.send(CloseSubscribers {}).await;
        }
        handle.stop(true).await;
    });
    running.finish().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            log::error!("cannot listen for signals; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// Before any traffic: every task that had a live agent is reconciled with its
/// sandbox. A live terminal host is re-attached (its poller starts again);
/// otherwise the task becomes `interrupted` (or `stalled` if the checkout is gone).
async fn recover_tasks(kiln: &Kiln) -> Result<(), BootError> {
    use crate::actors::task::Recover;
    let tasks = kiln.db.read(queries::tasks_to_recover).await?;
    if tasks.is_empty() {
        return Ok(());
    }
    log::info!("reconciling {} active tasks with their sandboxes", tasks.len());
    let checks = tasks.iter().map(|(org, repo, id)| {
        let handle = kiln.task(org, repo, id);
        async move { (id.clone(), handle.send(Recover {}).await) }
    });
    for (id, result) in futures_util::future::join_all(checks).await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("recovering task {id} failed: {e}"),
            Err(e) => log::error!("recovering task {id} failed: {e}"),
        }
    }
    Ok(())
}

/// Starts the branch and pull-request pollers of every repository, after moving
/// any credential still stored in a source URL out of it.
async fn start_repo_pollers(kiln: &Kiln) -> Result<(), BootError> {
    let repos = kiln.db.read(queries::all_repos).await?;
    for (org, name) in repos {
        let moved = kiln.repository(&org, &name).send(crate::actors::repository::MoveSourceCredential {}).await;
        if let Ok(Err(e)) | Err(e) = moved.map_err(crate::error::AppError::from) {
            log::warn!("repository {org}/{name}: could not move the credential out of its source: {e}");
        }
        kiln.repo_pollers(&org, &name);
    }
    Ok(())
}

/// On a fresh database, creates the `default` organization so a newcomer can
/// register a repository straight away.
async fn seed_default_organization(kiln: &Kiln) -> Result<(), BootError> {
    let existing = kiln.db.read(queries::organizations_list).await?;
    if !existing.is_empty() {
        return Ok(());
    }
    kiln.organization("default")
        .send(CreateOrganization { display_name: Some("Default".into()) })
        .await
        .map_err(|e| BootError::Seed(e.to_string()))?
        .map_err(|e| BootError::Seed(e.to_string()))?;
    Ok(())
}
