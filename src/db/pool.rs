//! Connections: exactly one writer (every write transaction is `BEGIN IMMEDIATE`)
//! and a small pool of `query_only` readers. Every connection gets the pragmas
//! `foreign_keys=ON`, `synchronous=NORMAL` and a `busy_timeout`; WAL is switched
//! on once, when the writer opens the file. Diesel is blocking, so every call goes
//! through `read`/`write`, which run it on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Every migration in `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot open database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database pool failed: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("the blocking pool dropped the job: {0}")]
    Blocking(String),
    #[error("the writer connection lock is poisoned")]
    Poisoned,
}

impl DbError {
    /// "database is locked" even after `busy_timeout`: the caller may retry.
    pub fn is_busy(&self) -> bool {
        match self {
            DbError::Query(diesel::result::Error::DatabaseError(_, info)) => {
                let m = info.message();
                m.contains("database is locked") || m.contains("database is busy")
            }
            _ => false,
        }
    }

    /// A UNIQUE constraint failed.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Pragmas {
    busy_timeout_ms: u32,
    query_only: bool,
}

impl Pragmas {
    fn apply(&self, conn: &mut SqliteConnection) -> Result<(), diesel::result::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA query_only = {};",
            self.busy_timeout_ms,
            if self.query_only { "ON" } else { "OFF" }
        ))
    }
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        self.apply(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The database handle: cheap to clone, shared by every actor and handler.
#[derive(Clone)]
pub struct Db {
    writer: Arc<Mutex<SqliteConnection>>,
    readers: Pool<ConnectionManager<SqliteConnection>>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the SQLite file and switches on WAL. Blocking:
    /// call it at startup or on the blocking pool, then `migrate`.
    pub fn open(path: &Path, busy_timeout_ms: u32, read_pool_size: u32) -> Result<Db, DbError> {
        let url = path.to_string_lossy().to_string();
        let mut writer = SqliteConnection::establish(&url)?;
        Pragmas { busy_timeout_ms, query_only: false }.apply(&mut writer)?;
        writer.batch_execute("PRAGMA journal_mode = WAL;")?;
        let readers = Pool::builder()
            .max_size(read_pool_size)
            .min_idle(Some(1))
            .connection_customizer(Box::new(Pragmas { busy_timeout_ms, query_only: true }))
            .build(ConnectionManager::<SqliteConnection>::new(url))?;
        Ok(Db { writer: Arc::new(Mutex::new(writer)), readers, path: path.to_path_buf() })
    }

    /// Applies every pending migration; answers how many ran. Blocking.
    pub fn migrate(&self) -> Result<usize, DbError> {
        let mut conn = self.writer.lock().map_err(|_| DbError::Poisoned)?;
        run_migrations(&mut conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read-only connection from the pool, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<T, diesel::result::Error> + Send + 'static,
    {
        let readers = self.readers.clone();
        blocking(move || {
            let mut conn = readers.get()?;
            Ok(f(&mut conn)?)
        })
        .await
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer connection, on
    /// the blocking pool. Only actors' stores call this.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<T, diesel::result::Error> + Send + 'static,
    {
        let writer = self.writer.clone();
        blocking(move || {
            let mut conn = writer.lock().map_err(|_| DbError::Poisoned)?;
            Ok(conn.immediate_transaction(f)?)
        })
        .await
    }

    /// Checkpoints the WAL into the main file and truncates it. Answers whether it
    /// completed (false: a reader held the log), and the WAL frames before it.
    pub async fn checkpoint(&self) -> Result<(bool, i64), DbError> {
        let writer = self.writer.clone();
        blocking(move || {
            use diesel::sql_types::BigInt;
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = BigInt)]
                busy: i64,
                #[diesel(sql_type = BigInt)]
                log: i64,
                #[diesel(sql_type = BigInt)]
                checkpointed: i64,
            }
            let mut conn = writer.lock().map_err(|_| DbError::Poisoned)?;
            let frames: i64 = diesel::RunQueryDsl::get_result::<Row>(diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)"), &mut *conn)
                .map(|r| r.log)
                .unwrap_or(0);
            let row: Row = diesel::RunQueryDsl::get_result(
                diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)"),
                &mut *conn,
            )?;
            if row.busy != 0 {
                log::warn!("WAL checkpoint could not finish: a reader holds the log");
            }
            let _ = row.checkpointed;
            Ok((row.busy == 0, frames))
        })
        .await
    }

    /// Writes a consistent copy of the database to `target` with `VACUUM INTO`.
    pub async fn backup(&self, target: PathBuf) -> Result<(), DbError> {
        let source = self.path.to_string_lossy().to_string();
        blocking(move || {
            // A connection of its own: VACUUM INTO writes a file, which the pool's
            // query_only readers may not, and none of them is ever made writable.
            let mut conn = SqliteConnection::establish(&source)?;
            conn.batch_execute("PRAGMA busy_timeout = 5000;")?;
            let quoted = target.to_string_lossy().replace('\'', "''");
            conn.batch_execute(&format!("VACUUM INTO '{quoted}';"))?;
            Ok(())
        })
        .await
    }
}

/// Applies every pending migration on `conn`.
pub fn run_migrations(conn: &mut SqliteConnection) -> Result<usize, DbError> {
    conn.run_pending_migrations(MIGRATIONS)
        .map(|applied| applied.len())
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// Runs blocking work on the blocking pool and awaits it.
pub async fn blocking<T, F>(f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
{
    actix_web::rt::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Blocking(e.to_string()))?
}
