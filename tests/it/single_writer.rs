//! Each table has exactly one writing actor. This test reads every source file
//! under src/ and fails if a table is written anywhere but its owner's
//! `store.rs`, or if a store exposes its writes beyond its actor's module.

use std::path::{Path, PathBuf};

const OWNERS: &[(&str, &str)] = &[
    ("organizations", "src/actors/organization/store.rs"),
    ("provider_profiles", "src/actors/organization/store.rs"),
    ("api_tokens", "src/actors/organization/store.rs"),
    ("web_sign_in_codes", "src/actors/organization/store.rs"),
    ("web_sessions", "src/actors/organization/store.rs"),
    ("repos", "src/actors/repository/store.rs"),
    ("branches", "src/actors/repository/store.rs"),
    ("pull_requests", "src/actors/repository/store.rs"),
    ("task_conflicts", "src/actors/repository/store.rs"),
    ("tasks", "src/actors/task/store.rs"),
    ("task_runtime", "src/actors/task/store.rs"),
    ("task_sessions", "src/actors/task/store.rs"),
    ("task_reactions", "src/actors/task/store.rs"),
    ("task_issues", "src/actors/task/store.rs"),
    ("sandbox_instances", "src/actors/sandbox/store.rs"),
    ("events", "src/actors/history/store.rs"),
    ("notification_webhooks", "src/actors/notify/store.rs"),
    ("notification_deliveries", "src/actors/notify/store.rs"),
    ("notification_attempts", "src/actors/notify/store.rs"),
    ("inbox_entries", "src/actors/notify/store.rs"),
    ("notification_cursors", "src/actors/notify/store.rs"),
];

/// The tables a piece of Rust source writes, by Diesel DSL or raw SQL.
fn writes(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for call in ["insert_into(", "insert_or_ignore_into(", "replace_into(", "update(", "delete("] {
        let mut rest = source;
        while let Some(pos) = rest.find(call) {
            let before = &rest[..pos];
            rest = &rest[pos + call.len()..];
            // `update(` must be Diesel's, not e.g. `hasher.update(`.
            if (call == "update(" || call == "delete(") && !before.ends_with("diesel::") {
                continue;
            }
            let ident: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !ident.is_empty() {
                found.push(ident);
            }
        }
    }
    let upper = source.to_uppercase();
    for verb in ["INSERT INTO ", "INSERT OR REPLACE INTO ", "UPDATE ", "DELETE FROM ", "REPLACE INTO "] {
        let mut rest = upper.as_str();
        while let Some(pos) = rest.find(verb) {
            rest = &rest[pos + verb.len()..];
            let ident: String =
                rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>().to_lowercase();
            if OWNERS.iter().any(|(t, _)| *t == ident) {
                found.push(ident);
            }
        }
    }
    found
}

/// Every `.rs` file below `dir` (`suite.rs` walks the tree with it too).
pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_scanner_sees_writes() {
    let planted = "diesel::insert_into(tasks::table).values(x);\n diesel::update(\n    api_tokens::table.filter(a))\n\
                   diesel::delete(events::table); hasher.update(bytes); sql_query(\"DELETE FROM repos WHERE 1\")";
    assert_eq!(writes(planted), vec!["tasks", "api_tokens", "events", "repos"]);
}

#[test]
fn every_table_is_written_only_by_its_owner() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found the sources");
    let mut violations = Vec::new();
    let mut seen_owners = std::collections::BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().to_string_lossy().to_string();
        if rel == "src/db/schema.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for table in writes(&text) {
            match OWNERS.iter().find(|(t, _)| *t == table) {
                Some((_, owner)) if *owner == rel => {
                    seen_owners.insert(table);
                }
                Some((_, owner)) => violations.push(format!("{rel} writes `{table}`, which only {owner} may write")),
                None => violations.push(format!("{rel} writes `{table}`, which has no owner in this test")),
            }
        }
        if rel.ends_with("/store.rs") {
            for line in text.lines() {
                let l = line.trim_start();
                if l.starts_with("pub fn") || l.starts_with("pub(crate) fn") || l.starts_with("pub async fn") {
                    violations.push(format!("{rel}: `{l}` must be pub(super): only its actor may call it"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "single-writer violations:\n{}", violations.join("\n"));
    for table in ["organizations", "api_tokens", "provider_profiles", "repos", "tasks", "events"] {
        assert!(seen_owners.contains(table), "no write of `{table}` found: is the scanner still working?");
    }
}
