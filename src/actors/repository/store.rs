//! Writes to `repos`, `branches` and `pull_requests`. Only the RepositoryActor
//! calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::db::models::{NewRepo, Repo};
use crate::db::schema::repos;

pub(super) fn insert_repo(conn: &mut SqliteConnection, row: &NewRepo) -> QueryResult<Repo> {
    diesel::insert_into(repos::table).values(row).returning(Repo::as_returning()).get_result(conn)
}

/// Replaces the setup step (JSON text) of a repository.
pub(super) fn set_setup(conn: &mut SqliteConnection, org: &str, name: &str, setup: &str, now: i64) -> QueryResult<Option<Repo>> {
    diesel::update(repos::table.filter(repos::organization.eq(org)).filter(repos::name.eq(name)))
        .set((repos::setup.eq(setup), repos::updated_at.eq(now)))
        .returning(Repo::as_returning())
        .get_result(conn)
        .optional()
}

/// Deletes the repository; its branches, pull requests and finished tasks go
/// with it (foreign keys cascade).
pub(super) fn delete_repo(conn: &mut SqliteConnection, id: i32) -> QueryResult<()> {
    diesel::delete(repos::table.find(id)).execute(conn).map(|_| ())
}
