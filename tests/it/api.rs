//! The main API flows: organizations, repositories, tasks, actions, events.

use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn health_needs_no_token() {
    let (server, _dir) = Server::start(&[]);
    let anon = server.client().with_token(None);
    let r = anon.get("/v1/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert!(r.body["version"].is_string());
}

#[actix_web::test]
async fn first_start_seeds_default_org_and_a_private_admin_token() {
    use std::os::unix::fs::PermissionsExt;
    let (server, _dir) = Server::start(&[]);
    let mode = std::fs::metadata(server.data_dir().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = server.client().get("/v1/organizations").await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.body["items"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["default"]);
}

#[actix_web::test]
async fn organizations_crud() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let r = c.post("/v1/organizations", json!({"name": "acme", "display_name": "Acme Inc"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["display_name"], "Acme Inc");
    let r = c.post("/v1/organizations", json!({"name": "acme"})).await;
    assert_eq!((r.status, r.code()), (409, "organization_exists"));
    let r = c.patch("/v1/organizations/acme", json!({"display_name": "Acme"})).await;
    assert_eq!((r.status, r.body["display_name"].as_str()), (200, Some("Acme")));
    assert_eq!(c.get("/v1/organizations/acme").await.body["display_name"], "Acme");
    let r = c.delete("/v1/organizations/acme").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(c.get("/v1/organizations/acme").await.status, 404);
    let kinds: Vec<String> =
        c.events_since("acme", 0).await.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, vec!["organization.created", "organization.updated", "organization.deleted"]);
}

#[actix_web::test]
async fn organization_with_repos_cannot_be_deleted() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let r = c.delete("/v1/organizations/default").await;
    assert_eq!((r.status, r.code()), (409, "organization_not_empty"));
}

/// Deleting an organization deletes its agents' home (where agents keep their
/// logins and caches): a later organization of the same name, perhaps another
/// tenant, starts with an empty one instead of inheriting them.
#[actix_web::test]
async fn a_deleted_organizations_agent_home_does_not_pass_to_the_next_of_its_name() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.post("/v1/organizations", json!({"name": "acme"})).await;
    c.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let id = c.create_task_with("acme", json!({"repo": "app", "description": "log in", "agent": "sh"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait_status("acme", &id, "running").await;
    let home = server.data_dir().join("homes/acme");
    let r = c.post(&format!("/v1/organizations/acme/tasks/{id}/input"), json!({"text": "echo sk-ant-old > \"$HOME/.credentials\"\r"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    eventually(std::time::Duration::from_secs(20), "the agent writes into its home", || {
        let done = home.join(".credentials").is_file();
        async move { done.then_some(()) }
    })
    .await;
    c.post(&format!("/v1/organizations/acme/tasks/{id}/kill"), json!({})).await;
    assert_eq!(c.delete("/v1/organizations/acme/repos/app").await.status, 204);
    assert_eq!(c.delete("/v1/organizations/acme").await.status, 204);
    assert!(!home.exists(), "the home went with the organization");
    let homes: Vec<String> = std::fs::read_dir(server.data_dir().join("homes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!homes.iter().any(|h| h.contains("acme")), "nothing of it is left: {homes:?}");
    // A new `acme` starts afresh.
    c.post("/v1/organizations", json!({"name": "acme"})).await;
    assert!(!home.join(".credentials").exists());
}

#[actix_web::test]
async fn register_repository_by_path_is_idempotent_and_emits_progress() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "My-App");
    let r = c.post("/v1/organizations/default/repos", json!({"source": src.to_str().unwrap()})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "my-app");
    assert_eq!(r.body["default_branch"], "main");
    assert_eq!(r.body["source_kind"], "path");
    assert!(r.body.get("mirror_path").is_none(), "internal paths stay private");
    let mirror = server.data_dir().join("repos/default/my-app.git");
    assert!(mirror.join("HEAD").exists(), "bare mirror exists");
    // Again: the same row, 200, no second clone.
    let again = c.post("/v1/organizations/default/repos", json!({"source": src.to_str().unwrap()})).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], r.body["id"]);
    let list = c.get("/v1/organizations/default/repos").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let one = c.get("/v1/organizations/default/repos/my-app").await;
    assert_eq!(one.body["source"], src.canonicalize().unwrap().to_str().unwrap());
    let kinds: Vec<String> = c
        .events_since("default", 0)
        .await
        .iter()
        .filter(|e| e["repo"] == "my-app")
        .map(|e| e["kind"].as_str().unwrap().to_string())
        // The branch poller starts with the repository: its events may come in between.
        .filter(|k| k.starts_with("repo."))
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("repo.clone_started"));
    assert_eq!(kinds.last().map(String::as_str), Some("repo.registered"));
    assert_eq!(kinds.iter().filter(|k| *k == "repo.registered").count(), 1);
}

#[actix_web::test]
async fn register_by_file_url_reports_clone_progress() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "remote");
    // Enough objects for git to print progress.
    for i in 0..30 {
        std::fs::write(src.join(format!("f{i}.txt")), format!("{i}\n").repeat(200)).unwrap();
    }
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&src)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    git(&["add", "."]);
    git(&["commit", "-qm", "more"]);
    let url = format!("file://{}", src.display());
    let r = c.post("/v1/organizations/default/repos", json!({"source": url, "name": "remote"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    // A file:// URL is a local path like any other: stored canonical, cloned with git's transport.
    assert_eq!(r.body["source_kind"], "path");
    assert_eq!(r.body["source"], std::fs::canonicalize(&src).unwrap().to_str().unwrap());
    let progress: Vec<_> =
        c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "repo.clone_progress").collect();
    assert!(!progress.is_empty(), "a clone over a URL reports progress");
    assert!(progress.iter().all(|e| e["data"]["phase"].is_string() && e["data"]["percent"].as_u64().unwrap() <= 100));
}

#[actix_web::test]
async fn bad_repository_sources_leave_nothing_behind() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let cases = [
        (json!({"source": dir.path().join("missing").to_str().unwrap()}), 422, "repo_path_not_found"),
        (json!({"source": plain.to_str().unwrap()}), 422, "not_a_git_repository"),
        (json!({"source": "file:///nonexistent/repo.git", "name": "gone"}), 422, "repo_path_not_found"),
        (json!({"source": "http://127.0.0.1:1/x.git"}), 422, "repo_unreachable"),
        (json!({"source": "relative/path"}), 422, "invalid_source"),
        (json!({"source": "ext::sh -c touch% /tmp/pwned"}), 422, "unsupported_source"),
        (json!({"source": "-uhttps://x"}), 422, "invalid_source"),
        (json!({"source": "/tmp", "name": "../evil"}), 422, "invalid_name"),
    ];
    for (body, status, code) in cases {
        let r = c.post("/v1/organizations/default/repos", body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {r:?}");
        assert!(r.body["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(c.get("/v1/organizations/default/repos").await.body["items"], json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir().join("repos"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .collect();
    assert!(leftovers.is_empty(), "no half-made mirrors: {leftovers:?}");
}

#[actix_web::test]
async fn same_name_other_source_conflicts() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let a = git_repo(&dir.path().join("a"), "app");
    let b = git_repo(&dir.path().join("b"), "app");
    c.add_repo("default", &a).await;
    let r = c.post("/v1/organizations/default/repos", json!({"source": b.to_str().unwrap()})).await;
    assert_eq!((r.status, r.code()), (409, "repo_name_taken"));
    let r = c.post("/v1/organizations/default/repos", json!({"source": a.to_str().unwrap(), "name": "other"})).await;
    assert_eq!((r.status, r.code()), (409, "repo_already_registered"));
    let r = c.post("/v1/organizations/default/repos", json!({"source": b.to_str().unwrap(), "name": "app-b"})).await;
    assert_eq!(r.status, 201);
}

#[actix_web::test]
async fn tasks_are_created_queued_on_a_valid_branch() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c
        .create_task_with("default", json!({"repo": "app", "description": "Fix the login bug!\n\nUsers can't log in on Safari."}))
        .await;
    let id = t["id"].as_str().unwrap();
    assert_eq!(id.len(), 8);
    assert_eq!(t["status"], "queued", "a new task starts queued; provisioning follows");
    assert_eq!(t["title"], "Fix the login bug!");
    assert_eq!(t["branch"], format!("kiln/fix-the-login-bug-{id}"));
    assert_eq!(t["base_branch"], "main");
    assert_eq!(t["agent"], "fake", "the configured default agent");
    assert_eq!(t["provider"], "worktree");
    assert_eq!(t["repo"], "app");
    let check = std::process::Command::new("git")
        .args(["check-ref-format", "--branch", t["branch"].as_str().unwrap()])
        .status()
        .unwrap();
    assert!(check.success(), "git accepts the branch name");

    let r = c
        .post(
            "/v1/organizations/default/tasks",
            json!({"repo": "app", "description": "x", "title": "Émoji ☃ only ???", "base_branch": "dev", "agent": "shell"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["base_branch"], "dev");
    assert!(r.body["branch"].as_str().unwrap().starts_with("kiln/moji-only-"));

    let got = c.get(&format!("/v1/organizations/default/tasks/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["description"], "Fix the login bug!\n\nUsers can't log in on Safari.");
    assert!(got.body.get("runtime").is_some() && got.body.get("sandbox").is_some());

    let events = c.events_since("default", 0).await;
    let created: Vec<_> = events.iter().filter(|e| e["kind"] == "task.created").collect();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["task"], id);
    assert_eq!(created[0]["repo"], "app");
    assert_eq!(created[0]["data"]["description"], "Fix the login bug!\n\nUsers can't log in on Safari.");
}

#[actix_web::test]
async fn task_creation_refuses_bad_references() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let cases = [
        (json!({"repo": "nope", "description": "x"}), 404, "repo_not_found"),
        (json!({"repo": "app", "description": "   "}), 422, "invalid_description"),
        (json!({"repo": "app", "description": "x", "base_branch": "missing"}), 422, "unknown_base_branch"),
        (json!({"repo": "app", "description": "x", "base_branch": "a..b"}), 422, "invalid_branch"),
        (json!({"repo": "app", "description": "x", "agent": "hal9000"}), 422, "unknown_agent"),
        (json!({"repo": "app", "description": "x", "provider": "k8s"}), 422, "unknown_provider"),
    ];
    for (body, status, code) in cases {
        let r = c.post("/v1/organizations/default/tasks", body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {r:?}");
    }
    let list = c.get("/v1/organizations/default/tasks").await;
    assert_eq!(list.body["items"], json!([]));
}

#[actix_web::test]
async fn task_list_filters_and_pages() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "one")).await;
    c.add_repo("default", &git_repo(dir.path(), "two")).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let repo = if i % 2 == 0 { "one" } else { "two" };
        ids.push(c.create_task("default", repo, &format!("task {i}")).await["id"].as_str().unwrap().to_string());
    }
    let killed = &ids[0];
    let r = c.post(&format!("/v1/organizations/default/tasks/{killed}/kill"), json!({})).await;
    assert_eq!(r.status, 200);

    // Pages of 3, newest first, every task exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/organizations/default/tasks?limit=3&cursor={cur}"),
            None => "/v1/organizations/default/tasks?limit=3".to_string(),
        };
        let r = c.get(&path).await;
        assert_eq!(r.status, 200, "{r:?}");
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen.len(), 7);
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(sorted_seen, sorted_ids);

    let one = c.get("/v1/organizations/default/tasks?repo=one").await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 4);
    assert!(one.body["items"].as_array().unwrap().iter().all(|t| t["repo"] == "one"));
    let k = c.get("/v1/organizations/default/tasks?status=killed").await;
    assert_eq!(k.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(k.body["items"][0]["id"], killed.as_str());
    let q = c.get("/v1/organizations/default/tasks?status=running&repo=two").await;
    assert_eq!(q.body["items"].as_array().unwrap().len(), 3);
}

#[actix_web::test]
async fn actions_follow_the_lifecycle() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "a").await["id"].as_str().unwrap().to_string();
    let base = format!("/v1/organizations/default/tasks/{id}");
    // A running task: resume makes no sense; push and sync work; a PR needs GitHub.
    let r = c.post(&format!("{base}/resume"), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("running"), "{r:?}");
    for action in ["push", "sync"] {
        let r = c.post(&format!("{base}/{action}"), json!({})).await;
        assert_eq!(r.status, 200, "{action}: {r:?}");
    }
    let r = c.post(&format!("{base}/pr"), json!({})).await;
    assert_eq!((r.status, r.code()), (422, "not_github"), "{r:?}");
    let r = c.post(&format!("{base}/merge"), json!({"method": "octopus"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_method"), "{r:?}");
    let r = c.post(&format!("{base}/input"), json!({})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_input"));
    let r = c.post(&format!("{base}/input"), json!({"txt": "x"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"));
    for action in ["attach", "switch"] {
        let r = c.post(&format!("{base}/{action}"), json!({})).await;
        assert_eq!(r.status, 200, "{action}: {r:?}");
        assert!(r.body["sandbox"]["path"].as_str().unwrap().ends_with(&format!("worktrees/default/app/{id}")));
    }
    let r = c.post(&format!("{base}/explode"), json!({})).await;
    assert_eq!((r.status, r.code()), (404, "unknown_action"));
    let r = c.post(&format!("{base}/archive"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["task"]["status"], "archived");
    let r = c.post(&format!("{base}/kill"), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"));
    assert!(r.body["message"].as_str().unwrap().contains("archived"));
    for action in ["push", "input", "attach", "resume"] {
        let r = c.post(&format!("{base}/{action}"), json!({"text": "x"})).await;
        assert_eq!((r.status, r.code()), (409, "invalid_transition"), "{action} on archived: {r:?}");
    }
    let changes: Vec<_> =
        c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "task.status_changed").collect();
    let path: Vec<(&str, &str)> =
        changes.iter().map(|e| (e["data"]["from"].as_str().unwrap(), e["data"]["to"].as_str().unwrap())).collect();
    assert_eq!(path, vec![("queued", "provisioning"), ("provisioning", "running"), ("running", "archived")]);
    assert_eq!(changes[2]["data"]["action"], "archive", "refused actions emit nothing");
}

#[actix_web::test]
async fn a_queued_task_can_be_killed_before_it_provisions() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    // A missing agent fails provisioning at once; kill of a failed task is refused,
    // archive tidies it away.
    let t = c.create_task_with("default", json!({"repo": "app", "description": "x", "agent": "ghost"})).await;
    let id = t["id"].as_str().unwrap();
    let failed = c.wait_status("default", id, "failed").await;
    assert!(failed["status_reason"].as_str().unwrap().contains("agent `kiln-no-such-agent` not found on PATH"), "{failed}");
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "invalid_transition"));
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/archive"), json!({})).await;
    assert_eq!(r.body["task"]["status"], "archived", "{r:?}");
}

#[actix_web::test]
async fn repository_delete_is_refused_while_tasks_are_active() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "a").await["id"].as_str().unwrap().to_string();
    let r = c.delete("/v1/organizations/default/repos/app").await;
    assert_eq!((r.status, r.code()), (409, "repo_has_active_tasks"));
    c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await;
    let r = c.delete("/v1/organizations/default/repos/app").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(!server.data_dir().join("repos/default/app.git").exists(), "mirror removed");
    assert_eq!(c.get("/v1/organizations/default/repos/app").await.status, 404);
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{id}")).await.status, 404);
}

/// A repository removed and registered again under the same name works at once:
/// tasks provision and the branch poller fetches (Kiln's git on a mirror runs in
/// a jail made for that mirror; the old one must not be reused for the new).
#[actix_web::test]
async fn a_repository_registered_again_at_once_works() {
    let (server, dir) = Server::start(&[("KILN_REPOS__FETCH_SECS", "1"), ("KILN_REPOS__BRANCH_POLL_MS", "200")]);
    let c = server.client();
    let source = git_repo(dir.path(), "app");
    c.add_repo("default", &source).await;
    let first = c.create_task("default", "app", "a").await["id"].as_str().unwrap().to_string();
    c.wait_status("default", &first, "running").await;
    assert_eq!(c.post(&format!("/v1/organizations/default/tasks/{first}/kill"), json!({})).await.status, 200);
    assert_eq!(c.delete("/v1/organizations/default/repos/app").await.status, 204);
    c.add_repo("default", &source).await;
    let second = c.create_task("default", "app", "b").await["id"].as_str().unwrap().to_string();
    c.wait_status("default", &second, "running").await;
    // The poller's fetch of the new mirror sees a commit pushed to its origin.
    git(&source, &["commit", "-q", "--allow-empty", "-m", "later"]);
    let head = git(&source, &["rev-parse", "HEAD"]);
    eventually(std::time::Duration::from_secs(60), "the new mirror fetched by the branch poller", || async {
        let branches = c.get("/v1/organizations/default/repos/app/branches").await;
        branches.body["items"].as_array()?.iter().any(|b| b["name"] == "main" && b["head_sha"] == head.trim()).then_some(())
    })
    .await;
    assert!(!server.log().contains("not a git repository"), "{}", server.log());
}

#[actix_web::test]
async fn events_filter_by_repo_task_kind_and_limit() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "one")).await;
    c.add_repo("default", &git_repo(dir.path(), "two")).await;
    let t1 = c.create_task("default", "one", "a").await["id"].as_str().unwrap().to_string();
    let _t2 = c.create_task("default", "two", "b").await;
    c.post(&format!("/v1/organizations/default/tasks/{t1}/kill"), json!({})).await;

    let by_task = c.get(&format!("/v1/organizations/default/events?task={t1}")).await;
    let items = by_task.body["items"].as_array().unwrap();
    assert!(items.iter().all(|e| e["task"] == t1.as_str()));
    let kinds: Vec<&str> = items.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"task.created"));
    assert!(kinds.contains(&"sandbox.created") && kinds.contains(&"sandbox.destroyed"), "{kinds:?}");
    let by_repo = c.get("/v1/organizations/default/events?repo=two").await;
    assert!(by_repo.body["items"].as_array().unwrap().iter().all(|e| e["repo"] == "two"));
    let prefix = c.get("/v1/organizations/default/events?kind=task.").await;
    let prefixed = prefix.body["items"].as_array().unwrap();
    assert!(prefixed.len() >= 6 && prefixed.iter().all(|e| e["kind"].as_str().unwrap().starts_with("task.")));
    let star = c.get("/v1/organizations/default/events?kind=task.*").await;
    assert_eq!(star.body["items"], prefix.body["items"]);
    let exact = c.get("/v1/organizations/default/events?kind=task.created").await;
    assert_eq!(exact.body["items"].as_array().unwrap().len(), 2);
    let under = c.get("/v1/organizations/default/events?kind=task_created").await;
    assert_eq!(under.body["items"], json!([]), "`_` is not a wildcard");

    let all = c.events_since("default", 0).await;
    let first_two = c.get("/v1/organizations/default/events?limit=2").await;
    assert_eq!(first_two.body["items"].as_array().unwrap().len(), 2);
    let next = first_two.body["next_since"].as_i64().unwrap();
    let rest = c.get(&format!("/v1/organizations/default/events?since={next}&limit=1000")).await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), all.len() - 2);
    let tail = c.get("/v1/organizations/default/events?tail=2").await;
    let tail_ids: Vec<i64> = tail.body["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let last_ids: Vec<i64> = all[all.len() - 2..].iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(tail_ids, last_ids);
    // Ids only grow.
    assert!(all.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
}

#[actix_web::test]
async fn provider_secrets_are_write_only() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let r = c
        .put(
            "/v1/organizations/default/providers/daytona",
            json!({"config": {"api_url": "http://127.0.0.1:9"}, "secrets": {"api_key": "sekrit-123"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["secrets"], json!(["api_key"]));
    assert!(!r.text.contains("sekrit-123"));
    let r = c.get("/v1/organizations/default/providers/daytona").await;
    assert_eq!(r.body["config"]["api_url"], "http://127.0.0.1:9");
    assert!(!r.text.contains("sekrit-123"));
    // A second write without secrets keeps the first; null removes one.
    c.put("/v1/organizations/default/providers/daytona", json!({"config": {}, "secrets": {"other": "x"}})).await;
    let r = c.get("/v1/organizations/default/providers/daytona").await;
    assert_eq!(r.body["secrets"], json!(["api_key", "other"]));
    c.put("/v1/organizations/default/providers/daytona", json!({"secrets": {"other": null}})).await;
    assert_eq!(c.get("/v1/organizations/default/providers/daytona").await.body["secrets"], json!(["api_key"]));
    let events = c.get("/v1/organizations/default/events?kind=provider.updated").await;
    assert!(!events.text.contains("sekrit-123"), "secrets never reach events");
    assert!(!server.log().contains("sekrit-123"), "secrets never reach logs");
    let r = c.put("/v1/organizations/default/providers/nope", json!({})).await;
    assert_eq!((r.status, r.code()), (404, "provider_not_found"));
    let r = c.put("/v1/organizations/default/providers/worktree", json!({"secrets": {"k": 1}})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_secret"));
}

#[actix_web::test]
async fn a_server_without_git_says_so() {
    let (server, dir) = Server::start(&[]);
    let src = git_repo(dir.path(), "app");
    // Restart with a PATH that has no git.
    let mut server = server;
    server.kill();
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let no_git = Server::start_in(dir.path(), &[("PATH", empty.to_str().unwrap())]);
    let r = no_git.client().post("/v1/organizations/default/repos", json!({"source": src.to_str().unwrap()})).await;
    assert_eq!((r.status, r.code()), (503, "git_missing"), "{r:?}");
    let r = no_git.client().post("/v1/organizations/default/repos", json!({"source": "https://example.invalid/x.git"})).await;
    assert_eq!((r.status, r.code()), (503, "git_missing"), "{r:?}");
}

#[actix_web::test]
async fn secret_names_must_be_environment_variable_names() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    for bad in ["", "1ABC", "A-B", "A B", "ÄPI"] {
        let r = c.put("/v1/organizations/default/providers/worktree", json!({"secrets": {bad: "x"}})).await;
        assert_eq!((r.status, r.code()), (422, "invalid_secret"), "{bad:?}: {r:?}");
    }
    let r = c.put("/v1/organizations/default/providers/worktree", json!({"secrets": {"OPENAI_API_KEY": "x"}})).await;
    assert_eq!(r.status, 200);
}
