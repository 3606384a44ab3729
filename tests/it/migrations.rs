//! Every migration applies up, reverts down, and applies up again, on a real
//! SQLite file.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;

use kiln::db::pool::MIGRATIONS;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn tables(conn: &mut SqliteConnection) -> Vec<String> {
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations'",
    )
    .load::<Name>(conn)
    .unwrap()
    .into_iter()
    .map(|n| n.name)
    .collect();
    names.sort();
    names
}

#[test]
fn up_down_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA foreign_keys = ON;").unwrap();
    let expected = vec![
        "api_tokens", "branches", "events", "inbox_entries", "notification_attempts", "notification_cursors",
        "notification_deliveries", "notification_webhooks", "organizations", "provider_profiles", "pull_requests", "repos",
        "sandbox_instances", "task_conflicts", "task_issues", "task_reactions", "task_runtime", "task_sessions", "tasks", "web_sessions", "web_sign_in_codes",
    ];

    let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
    assert_eq!(applied.len(), crate::common::migration_count());
    assert_eq!(tables(&mut conn), expected);

    let reverted = conn.revert_all_migrations(MIGRATIONS).unwrap();
    assert_eq!(reverted.len(), crate::common::migration_count());
    assert!(tables(&mut conn).is_empty(), "down leaves nothing: {:?}", tables(&mut conn));

    conn.run_pending_migrations(MIGRATIONS).unwrap();
    assert_eq!(tables(&mut conn), expected);
    assert!(!conn.has_pending_migration(MIGRATIONS).unwrap());
}

#[test]
fn constraints_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = SqliteConnection::establish(dir.path().join("c.db").to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA foreign_keys = ON;").unwrap();
    conn.run_pending_migrations(MIGRATIONS).unwrap();
    conn.batch_execute(
        "INSERT INTO organizations VALUES ('acme', 'Acme', 0, 0);
         INSERT INTO repos (organization, name, source, source_kind, mirror_path, default_branch, created_at, updated_at)
              VALUES ('acme', 'app', '/x', 'path', '/m', 'main', 0, 0);",
    )
    .unwrap();
    let task = |status: &str, org: &str, repo: i32| {
        format!(
            "INSERT INTO tasks (id, organization, repo_id, title, description, base_branch, branch, agent, provider, status, created_at, updated_at)
             VALUES ('{status}1', '{org}', {repo}, 't', 'd', 'main', 'kiln/{status}', 'claude', 'worktree', '{status}', 0, 0)"
        )
    };
    conn.batch_execute(&task("queued", "acme", 1)).unwrap();
    assert!(conn.batch_execute(&task("dancing", "acme", 1)).is_err(), "status CHECK");
    assert!(conn.batch_execute(&task("idle", "nobody", 1)).is_err(), "organization FK");
    assert!(conn.batch_execute(&task("running", "acme", 99)).is_err(), "repo FK");
    assert!(conn
        .batch_execute("INSERT INTO repos (organization, name, source, source_kind, mirror_path, default_branch, created_at, updated_at) VALUES ('acme', 'x', '/y', 'ftp', '/m', 'main', 0, 0)")
        .is_err(), "source_kind CHECK");
    // Deleting the repository takes its tasks with it.
    conn.batch_execute("DELETE FROM repos WHERE id = 1").unwrap();
    let left: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM tasks)"))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(left, 0);
}
