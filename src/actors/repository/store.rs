//! Writes to `repos`, `branches` and `pull_requests`. Only the RepositoryActor
//! calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::db::models::{NewRepo, Repo};
use crate::db::schema::repos;

pub(super) fn insert_repo(conn: &mut SqliteConnection, row: &NewRepo) -> QueryResult<Repo> {
    diesel::insert_into(repos::table).values(row).returning(Repo::as_returning()).get_result(conn)
}

/// Deletes the repository; its branches, pull requests and finished tasks go
/// with it (foreign keys cascade).
pub(super) fn delete_repo(conn: &mut SqliteConnection, id: i32) -> QueryResult<()> {
    diesel::delete(repos::table.find(id)).execute(conn).map(|_| ())
}
