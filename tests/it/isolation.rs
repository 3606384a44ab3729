//! One organization cannot reach another's data through the server's disk, and
//! learns nothing about it: local sources are refused to organization tokens
//! outside their `repos.local_roots` (one answer for every refusal), nothing in
//! the data dir can be registered by anyone, server paths never reach an
//! organization, and a password in a source URL is kept apart and used through
//! askpass (against a real git HTTP server that demands it).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A server with organizations `alpha` and `beta`; `beta` may register local
/// paths under `<tmp>/roots/{organization}`. Answers the server, the admin
/// client, a client with beta's token, a client with alpha's token, and the temp dir.
async fn two_tenants(extra: &[(&str, &str)]) -> (Server, Client, Client, Client, tempfile::TempDir) {
    let dir = tempdir();
    let roots = format!("[\"{}/roots/{{organization}}\"]", dir.path().display());
    let mut env = vec![("KILN_REPOS__LOCAL_ROOTS", roots.as_str())];
    env.extend_from_slice(extra);
    let server = Server::start_in(dir.path(), &env);
    let admin = server.client();
    let mut tokens = Vec::new();
    for org in ["alpha", "beta"] {
        assert_eq!(admin.post("/v1/organizations", json!({"name": org})).await.status, 201);
        let t = admin.post(&format!("/v1/organizations/{org}/tokens"), json!({"name": "t"})).await;
        tokens.push(t.body["token"].as_str().unwrap().to_string());
    }
    let (alpha, beta) = (admin.with_token(Some(&tokens[0])), admin.with_token(Some(&tokens[1])));
    (server, admin, beta, alpha, dir)
}

async fn register(c: &Client, org: &str, source: &str) -> Reply {
    c.post(&format!("/v1/organizations/{org}/repos"), json!({"source": source, "name": "stolen"})).await
}

/// Every way the tester found (and a few more) for beta to read alpha's files is
/// refused with the same 403 and the same words, none of them a path.
#[actix_web::test]
async fn an_organization_token_cannot_register_another_organizations_files() {
    let (server, admin, beta, _alpha, dir) = two_tenants(&[]).await;
    let data = server.data_dir();
    let canonical_data = std::fs::canonicalize(&data).unwrap();
    // The admin may register a local path outside the data dir: alpha's app.
    let src = git_repo(&dir.path().join("srv"), "app");
    std::fs::write(src.join("secret.env"), "ALPHA_SECRET=1\n").unwrap();
    let r = admin.post("/v1/organizations/alpha/repos", json!({"source": src.to_str().unwrap()})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let task = admin.create_task("alpha", "app", "alpha's work").await["id"].as_str().unwrap().to_string();
    let mirror = data.join("repos/alpha/app.git");
    let worktree = data.join(format!("worktrees/alpha/app/{task}"));
    assert!(mirror.is_dir() && worktree.is_dir());

    let beta_root = dir.path().join("roots/beta");
    std::fs::create_dir_all(&beta_root).unwrap();
    std::os::unix::fs::symlink(&mirror, beta_root.join("link-to-mirror")).unwrap();
    std::os::unix::fs::symlink(&data, beta_root.join("link-to-data")).unwrap();
    std::fs::create_dir_all(beta_root.join("not-a-repo")).unwrap();
    let attempts = [
        mirror.to_str().unwrap().to_string(),
        format!("file://{}", mirror.display()),
        format!("file://localhost{}", mirror.display()),
        format!("{}/", mirror.display()),
        worktree.to_str().unwrap().to_string(),
        format!("file://{}", worktree.display()),
        data.to_str().unwrap().to_string(),
        beta_root.join("link-to-mirror").to_str().unwrap().to_string(),
        beta_root.join("link-to-data/repos/alpha/app.git").to_str().unwrap().to_string(),
        format!("{}/../../srv/app", beta_root.display()),
        src.to_str().unwrap().to_string(),
        dir.path().to_str().unwrap().to_string(),
        beta_root.join("no-such-dir").to_str().unwrap().to_string(),
        beta_root.join("not-a-repo").to_str().unwrap().to_string(),
        "/nonexistent/anywhere".to_string(),
        "/etc".to_string(),
    ];
    let mut answers = Vec::new();
    for source in &attempts {
        let r = register(&beta, "beta", source).await;
        assert_eq!((r.status, r.code()), (403, "local_path_refused"), "{source}: {r:?}");
        for needle in [dir.path().to_str().unwrap(), canonical_data.to_str().unwrap(), "/etc", "/nonexistent"] {
            assert!(!r.text.contains(needle), "{source}: the answer names a path: {r:?}");
        }
        answers.push(r.text);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one answer for every refusal: {answers:#?}");
    assert_eq!(beta.get("/v1/organizations/beta/repos").await.body["items"], json!([]));
    assert!(!beta.events_since("beta", 0).await.iter().any(|e| e["kind"] == "repo.clone_started"), "nothing was cloned");

    // The admin cannot register the data dir or anything in it (nor an ancestor) either.
    for source in [mirror.to_str().unwrap().to_string(), format!("file://{}", worktree.display()), dir.path().to_str().unwrap().to_string()] {
        let r = register(&admin, "beta", &source).await;
        assert_eq!((r.status, r.code()), (403, "local_path_refused"), "admin {source}: {r:?}");
    }
    // The admin still tells a missing path from a directory that is no repository.
    let r = register(&admin, "beta", beta_root.join("no-such-dir").to_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (422, "repo_path_not_found"), "{r:?}");
    let r = register(&admin, "beta", beta_root.join("not-a-repo").to_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (422, "not_a_git_repository"), "{r:?}");

    // Inside its own root, beta registers its repository (by path or file://).
    let own = git_repo(&beta_root, "mine");
    let r = beta.post("/v1/organizations/beta/repos", json!({"source": own.to_str().unwrap()})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = beta.post("/v1/organizations/beta/repos", json!({"source": format!("file://{}", own.display()), "name": "mine"})).await;
    assert_eq!(r.status, 200, "a file:// URL is the same local source: {r:?}");
    // But not alpha's root, which `{organization}` keeps apart.
    let alpha_root = dir.path().join("roots/alpha");
    let theirs = git_repo(&alpha_root, "theirs");
    let r = register(&beta, "beta", theirs.to_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (403, "local_path_refused"), "{r:?}");
}

/// With `repos.allow_local_paths = false` every local transport is refused, for
/// the admin too: paths, file:// URLs, and what git reads as a path or a command.
/// An organization created under the name of a deleted one does not read the
/// deleted one's history (kept for the admin's audits): not on the list, not in
/// the stream's replay. It used to get all of it: task descriptions, sources,
/// session transcripts.
#[actix_web::test]
async fn a_new_organization_does_not_read_the_history_of_a_deleted_one_of_its_name() {
    let (server, _dir) = Server::start(&[]);
    let admin = server.client();
    let token = |org: &'static str| {
        let admin = admin.clone();
        async move {
            let r = admin.post(&format!("/v1/organizations/{org}/tokens"), json!({"name": "t"})).await;
            admin.with_token(Some(r.body["token"].as_str().unwrap()))
        }
    };
    admin.post("/v1/organizations", json!({"name": "acme"})).await;
    let old = token("acme").await;
    old.patch("/v1/organizations/acme", json!({"display_name": "Project Nightingale"})).await;
    assert_eq!(admin.delete("/v1/organizations/acme").await.status, 204);
    admin.post("/v1/organizations", json!({"name": "acme"})).await;
    let new = token("acme").await;
    let seen = |r: &Reply| r.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let r = new.get("/v1/organizations/acme/events?since=0").await;
    assert_eq!(seen(&r), vec!["organization.created", "token.created"], "{r:?}");
    assert!(!r.text.contains("Nightingale"), "{r:?}");
    let r = new.get("/v1/organizations/acme/events?tail=100").await;
    assert!(!r.text.contains("Nightingale") && !r.text.contains("organization.deleted"), "{r:?}");
    let mut ws = new.ws("/v1/organizations/acme/stream?since=0").await;
    let replay = ws.events(2, Duration::from_secs(10)).await;
    assert_eq!(replay[0]["kind"], "organization.created");
    assert_eq!(replay[1]["kind"], "token.created");
    new.patch("/v1/organizations/acme", json!({"display_name": "Acme"})).await;
    let live = ws.events(1, Duration::from_secs(10)).await;
    assert_eq!(live[0]["data"]["display_name"], "Acme", "nothing older came between: {live:?}");
    // The admin still reads everything under the name.
    let all = admin.get("/v1/organizations/acme/events?since=0").await;
    assert!(all.text.contains("Nightingale") && all.text.contains("organization.deleted"), "{all:?}");
}

#[actix_web::test]
async fn no_local_transport_gets_through_when_local_paths_are_off() {
    let (server, admin, beta, _alpha, dir) = two_tenants(&[("KILN_REPOS__ALLOW_LOCAL_PATHS", "false")]).await;
    let src = git_repo(dir.path(), "app");
    let pwned = dir.path().join("pwned");
    let refused_local = [src.to_str().unwrap().to_string(), format!("file://{}", src.display()), format!("FILE://{}", src.display())];
    for c in [&admin, &beta] {
        for source in &refused_local {
            let r = register(c, "beta", source).await;
            assert_eq!((r.status, r.code()), (403, "local_path_refused"), "{source}: {r:?}");
        }
        let commands = [
            format!("ext::sh -c touch% {}", pwned.display()),
            format!("ext::sh -c touch {}", pwned.display()),
            "fd::0".to_string(),
            "fd::3,4".to_string(),
            format!("testgit::{}", src.display()),
            format!("file::{}", src.display()),
        ];
        for source in &commands {
            let r = register(c, "beta", source).await;
            assert_eq!((r.status, r.code()), (422, "unsupported_source"), "{source}: {r:?}");
        }
        // Strings git would take for local paths though they have a colon.
        let dot = dir.path().join("x:y");
        std::fs::create_dir_all(&dot).unwrap();
        for source in ["./x:y", "../app:y", "app/x:y", "relative/path", "[::1]:x"] {
            let r = register(c, "beta", source).await;
            assert!(r.status == 422 && matches!(r.code(), "invalid_source" | "unsupported_source"), "{source}: {r:?}");
        }
    }
    assert!(!pwned.exists(), "ext:: ran a command");
    assert_eq!(admin.get("/v1/organizations/beta/repos").await.body["items"], json!([]));
    let tried: Vec<_> = admin.events_since("beta", 0).await.into_iter().filter(|e| e["kind"].as_str().unwrap().starts_with("repo.")).collect();
    assert!(tried.is_empty(), "nothing was even tried: {tried:?}");
    drop(server);
}

/// An organization's token sees no server path: not in a task, not in git's
/// error messages, not in events. `kiln switch` says why it cannot answer.
#[actix_web::test]
async fn an_organization_sees_no_server_paths() {
    let (server, admin, _beta, alpha, dir) = two_tenants(&[]).await;
    let src = git_repo(&dir.path().join("srv"), "app");
    admin.add_repo("alpha", &src).await;
    let task = alpha.create_task("alpha", "app", "alpha's work").await["id"].as_str().unwrap().to_string();
    let data = std::fs::canonicalize(server.data_dir()).unwrap();
    let data = data.to_str().unwrap();
    let worktree = server.data_dir().join(format!("worktrees/alpha/app/{task}"));
    let no_path = |what: &str, text: &str| {
        assert!(!text.contains(data) && !text.contains(server.data_dir().to_str().unwrap()), "{what} names the data dir: {text}");
    };

    let mine = alpha.get(&format!("/v1/organizations/alpha/tasks/{task}")).await;
    assert_eq!(mine.status, 200);
    assert!(mine.body["sandbox"].is_object() && mine.body["sandbox"]["path"].is_null(), "{mine:?}");
    no_path("the task", &mine.text);
    let theirs = admin.get(&format!("/v1/organizations/alpha/tasks/{task}")).await;
    assert!(theirs.body["sandbox"]["path"].as_str().unwrap().ends_with(&format!("worktrees/alpha/app/{task}")), "the admin sees it");
    let switched = alpha.post(&format!("/v1/organizations/alpha/tasks/{task}/switch"), json!({})).await;
    assert_eq!(switched.status, 200, "{switched:?}");
    assert!(switched.body["sandbox"].is_object() && switched.body["sandbox"]["path"].is_null(), "{switched:?}");
    no_path("switch", &switched.text);

    // `kiln switch` with the organization's token: a clear refusal, no path.
    let token = alpha.token.clone().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--url", &server.url, "--organization", "alpha", "switch", &task])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &server.dir)
        .env("XDG_CONFIG_HOME", server.dir.join("config"))
        .env("KILN_TOKEN", &token)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "switch succeeded: {stdout}");
    assert!(stderr.contains("only to the admin token"), "{stderr}");
    no_path("kiln switch", &format!("{stdout}{stderr}"));
    let (code, stdout, _) = cli(&server, &["--organization", "alpha", "switch", &task]);
    assert_eq!(code, 0, "the admin's switch still prints the path");
    assert!(stdout.trim().ends_with(&format!("worktrees/alpha/app/{task}")), "{stdout}");

    // A failing git command names the worktree's git dir: the organization reads `<data_dir>`.
    std::fs::write(worktree.join("work.txt"), "work\n").unwrap();
    let git_dir = PathBuf::from(git(&worktree, &["rev-parse", "--absolute-git-dir"]));
    std::fs::write(git_dir.join("index.lock"), "").unwrap();
    let failed = alpha.post(&format!("/v1/organizations/alpha/tasks/{task}/push"), json!({"commit": "work"})).await;
    assert!(failed.status >= 400, "{failed:?}");
    assert!(failed.body["message"].as_str().unwrap().contains("<data_dir>/repos/alpha/app.git/worktrees/"), "git's words, redacted: {failed:?}");
    no_path("a git error", &failed.text);
    std::fs::remove_file(git_dir.join("index.lock")).unwrap();

    // Events, through the API and the stream, name no server path either.
    let events = alpha.events_since("alpha", 0).await;
    let created = events.iter().find(|e| e["kind"] == "sandbox.created").expect("sandbox.created");
    assert_eq!(created["data"]["path"], format!("<data_dir>/worktrees/alpha/app/{task}"));
    no_path("the events", &serde_json::to_string(&events).unwrap());
    let mut ws = alpha.ws("/v1/organizations/alpha/stream?since=0").await;
    let streamed = ws.events(events.len(), WAIT).await;
    no_path("the stream", &serde_json::to_string(&streamed).unwrap());
}

pub use crate::git_http::GitHttp;

/// `https://user:secret@host/…`: the secret is taken out of the URL, stored
/// apart, never shown to anyone, and git still authenticates with it (clone, the
/// poller's fetch, a task's push).
#[actix_web::test]
async fn a_password_in_a_source_url_is_kept_apart_and_used_through_askpass() {
    // The git server runs on this host: the operator lets organizations reach it.
    let (server, admin, _beta, alpha, dir) = two_tenants(&[
        ("KILN_REPOS__BRANCH_POLL_MS", "200"),
        ("KILN_REPOS__FETCH_SECS", "0"),
        ("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
    ])
    .await;
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("app.git");
    git(dir.path(), &["clone", "-q", "--bare", git_repo(dir.path(), "seed").to_str().unwrap(), bare.to_str().unwrap()]);
    git(&bare, &["config", "http.receivepack", "true"]);
    let secret = "s3cr3t-Pa55@word";
    let http = GitHttp::start(&served, "kiln-bot", secret);
    let clean = format!("{}/app.git", http.url);
    let with_password = format!("http://kiln-bot:{}@{}/app.git", secret.replace('@', "%40"), http.url.trim_start_matches("http://"));

    // The server demands credentials: without them the clone fails.
    let r = alpha.post("/v1/organizations/alpha/repos", json!({"source": clean, "name": "anon"})).await;
    assert_eq!((r.status, r.code()), (422, "repo_unreachable"), "{r:?}");
    let r = alpha.post("/v1/organizations/alpha/repos", json!({"source": with_password.replace("Pa55", "Wrong"), "name": "wrong"})).await;
    assert_eq!((r.status, r.code()), (422, "repo_unreachable"), "{r:?}");
    assert!(!r.text.contains("s3cr3t"), "{r:?}");

    let r = alpha.post("/v1/organizations/alpha/repos", json!({"source": with_password})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["source"], clean, "stored and shown without the credential");
    assert_eq!(r.body["name"], "app");
    let authenticated = http.requests().iter().any(|(_, target, ok)| *ok && target.contains("git-upload-pack"));
    assert!(authenticated, "git authenticated: {:?}", http.requests());
    // Registering again with the same URL is the same repository.
    let again = alpha.post("/v1/organizations/alpha/repos", json!({"source": with_password})).await;
    assert_eq!(again.status, 200, "{again:?}");

    // The poller's fetch authenticates too: a new upstream commit shows up.
    let work = dir.path().join("upstream");
    git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]);
    std::fs::write(work.join("new.txt"), "new\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "upstream"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let b = alpha.get("/v1/organizations/alpha/repos/app/branches").await.body;
        if b["items"].as_array().unwrap().iter().any(|x| x["name"] == "main" && x["head_sha"] == head.as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the poller never fetched {head}: {b}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A task's push authenticates with it.
    let task = alpha.create_task("alpha", "app", "push over http").await["id"].as_str().unwrap().to_string();
    let worktree = server.data_dir().join(format!("worktrees/alpha/app/{task}"));
    std::fs::write(worktree.join("pushed.txt"), "pushed\n").unwrap();
    let pushed = alpha.post(&format!("/v1/organizations/alpha/tasks/{task}/push"), json!({"commit": "push it"})).await;
    assert_eq!(pushed.status, 200, "{pushed:?}");
    let branch = pushed.body["task"]["branch"].as_str().unwrap();
    assert_eq!(git(&bare, &["show", &format!("{branch}:pushed.txt")]), "pushed");

    // The secret is nowhere anyone reads: the API, the events, the stream, the
    // mirror's config, and no URL in the database carries it.
    let listed = admin.get("/v1/organizations/alpha/repos").await;
    let one = alpha.get("/v1/organizations/alpha/repos/app").await;
    let events = alpha.events_since("alpha", 0).await;
    let started = events.iter().find(|e| e["kind"] == "repo.clone_started" && e["repo"] == "app").expect("clone_started");
    assert_eq!(started["data"]["source"], clean);
    let mut ws = alpha.ws("/v1/organizations/alpha/stream?since=0").await;
    let streamed = ws.events(events.len(), WAIT).await;
    let mirror_config = std::fs::read_to_string(server.data_dir().join("repos/alpha/app.git/config")).unwrap();
    assert!(mirror_config.contains(&clean), "{mirror_config}");
    for (what, text) in [
        ("the list", listed.text),
        ("the repo", one.text),
        ("the events", serde_json::to_string(&events).unwrap()),
        ("the stream", serde_json::to_string(&streamed).unwrap()),
        ("the mirror's config", mirror_config),
        ("the server log", server.log()),
    ] {
        assert!(!text.contains("s3cr3t"), "{what} shows the secret: {text}");
    }
    let db = [std::fs::read(server.data_dir().join("kiln.db")).unwrap(), std::fs::read(server.data_dir().join("kiln.db-wal")).unwrap_or_default()].concat();
    let url_with_secret = format!("kiln-bot:{}", secret.replace('@', "%40"));
    assert!(!db.windows(url_with_secret.len()).any(|w| w == url_with_secret.as_bytes()), "a URL with the secret is stored");
}

/// The askpass answer names the repository's own user when it has one.
#[test]
fn askpass_answers_the_repositorys_own_user() {
    let out = std::process::Command::new(BIN)
        .arg("Username for 'https://git.example': ")
        .env("KILN_GIT_ASKPASS", "1")
        .env("KILN_GIT_TOKEN", "pw")
        .env("KILN_GIT_USER", "deploy")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deploy");
}

/// A repository registered before credentials were kept apart still has one in
/// its stored source (and its mirror's origin URL): at boot it is moved out, and
/// git keeps authenticating with it.
#[actix_web::test]
async fn a_credential_stored_in_an_old_source_is_moved_out_at_boot() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;

    let dir = tempdir();
    let mut server = Server::start_in(dir.path(), &[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "0")]);
    let c = server.client();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("app.git");
    git(dir.path(), &["clone", "-q", "--bare", git_repo(dir.path(), "seed").to_str().unwrap(), bare.to_str().unwrap()]);
    let http = GitHttp::start(&served, "old", "0ld-s3cret");
    let clean = format!("{}/app.git", http.url);
    let r = c.post("/v1/organizations/default/repos", json!({"source": clean.replace("http://", "http://old:0ld-s3cret@")})).await;
    assert_eq!(r.status, 201, "{r:?}");
    server.stop();

    // Make it look like a row from before: the credential in the URL, none apart.
    let old = clean.replace("http://", "http://old:0ld-s3cret@");
    let db = server.data_dir().join("kiln.db");
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    conn.batch_execute(&format!(
        "UPDATE repos SET source = '{old}', credential_user = NULL, credential_secret = NULL WHERE name = 'app';"
    ))
    .unwrap();
    drop(conn);
    let mirror = server.data_dir().join("repos/default/app.git");
    git(&mirror, &["config", "remote.origin.url", &old]);

    server.restart();
    let c = server.client();
    let shown = c.get("/v1/organizations/default/repos/app").await;
    assert_eq!(shown.body["source"], clean, "{shown:?}");
    assert!(!std::fs::read_to_string(mirror.join("config")).unwrap().contains("0ld-s3cret"), "the mirror's origin URL is clean");

    // git still authenticates, now through askpass: the poller fetches a new commit.
    let work = dir.path().join("upstream");
    git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), work.to_str().unwrap()]);
    std::fs::write(work.join("new.txt"), "new\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "upstream"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let b = c.get("/v1/organizations/default/repos/app/branches").await.body;
        if b["items"].as_array().unwrap().iter().any(|x| x["name"] == "main" && x["head_sha"] == head.as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the poller never fetched {head}: {b}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(log.contains("moved the credential out of its stored source"), "{log}");
    assert!(!log.contains("0ld-s3cret"), "{log}");
}

/// A registered local source swapped for a symlink afterwards (toward someone
/// else's files) is not copied from: the task fails and says why, and nothing of
/// the link's target reaches a worktree.
#[actix_web::test]
async fn a_source_swapped_for_a_symlink_is_not_copied_from() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    std::fs::write(src.join("local.env"), "MINE=1\n").unwrap();
    c.add_repo("default", &src).await;
    let r = c.put("/v1/organizations/default/repos/app/setup", serde_json::json!({"commands": [], "copy": ["local.env"]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The source folder becomes a link to another folder with its own secret.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("local.env"), "THEIRS=secret\n").unwrap();
    std::fs::rename(&src, dir.path().join("app-moved")).unwrap();
    std::os::unix::fs::symlink(&other, &src).unwrap();
    let id = c.create_task_with("default", serde_json::json!({"repo": "app", "description": "swap"})).await["id"].as_str().unwrap().to_string();
    let task = c.wait_status("default", &id, "failed").await;
    assert!(task["status_reason"].as_str().unwrap().contains("leads elsewhere through a symlink"), "{task}");
    let worktree = server.data_dir().join(format!("worktrees/default/app/{id}"));
    assert!(!worktree.join("local.env").exists());
}

/// Every command that talks to a local origin checks first that its path still
/// leads to the folder registered: once it is a symlink toward another folder
/// (another organization's files), sync, push and the poller's fetch are refused
/// with `source_moved` and say so in events, and nothing of the other folder
/// reaches the mirror. Put back, the folder works again.
#[actix_web::test]
async fn a_local_source_swapped_for_a_symlink_is_not_fetched_from_or_pushed_to() {
    let (server, dir) = Server::start(&[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "0")]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    c.add_repo("default", &src).await;
    let id = c.create_task("default", "app", "swap").await["id"].as_str().unwrap().to_string();
    // Someone else's repository, with a commit of its own on main.
    let other = git_repo(&dir.path().join("theirs"), "app");
    std::fs::write(other.join("secret.txt"), "theirs\n").unwrap();
    git(&other, &["add", "."]);
    git(&other, &["commit", "-q", "-m", "their secret"]);
    let theirs = git(&other, &["rev-parse", "HEAD"]);
    let moved = dir.path().join("app-moved");
    std::fs::rename(&src, &moved).unwrap();
    std::os::unix::fs::symlink(&other, &src).unwrap();

    let act = |action: &'static str| {
        let c = c.clone();
        let id = id.clone();
        async move { c.post(&format!("/v1/organizations/default/tasks/{id}/{action}"), json!({})).await }
    };
    let r = act("sync").await;
    assert_eq!((r.status, r.code()), (409, "source_moved"), "{r:?}");
    assert!(r.text.contains("leads elsewhere through a symlink"), "{r:?}");
    let r = act("push").await;
    assert_eq!((r.status, r.code()), (409, "source_moved"), "{r:?}");
    let event = eventually(WAIT, "repo.fetch_refused", || {
        let c = c.clone();
        async move { c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "repo.fetch_refused") }
    })
    .await;
    assert_eq!(event["data"]["code"], "source_moved", "{event}");
    let events = c.events_since("default", 0).await;
    for kind in ["task.sync_failed", "task.push_failed"] {
        let e = events.iter().find(|e| e["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
        assert_eq!(e["data"]["code"], "source_moved", "{e}");
    }
    assert_eq!(events.iter().filter(|e| e["kind"] == "repo.fetch_refused").count(), 1, "said once, not at every poll");
    let mirror = server.data_dir().join("repos/default/app.git");
    let fetched = std::process::Command::new("git").args(["cat-file", "-e", &theirs]).current_dir(&mirror).status().unwrap();
    assert!(!fetched.success(), "their commit reached the mirror");

    // The folder put back is fetched from again.
    std::fs::remove_file(&src).unwrap();
    std::fs::rename(&moved, &src).unwrap();
    let r = act("sync").await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// An organization's source URL may not lead git into the server or its
/// network (loopback, link-local, private addresses), at registration and at
/// every fetch; the operator lets a host through with `repos.allowed_hosts`, and
/// the admin token is not held to it.
#[actix_web::test]
async fn an_organization_s_source_url_may_not_reach_the_server_s_own_addresses() {
    let allowed = ("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#);
    let (mut server, admin, _beta, alpha, dir) =
        two_tenants(&[("KILN_REPOS__BRANCH_POLL_MS", "200"), ("KILN_REPOS__FETCH_SECS", "0"), allowed]).await;
    for source in [
        "ssh://git@127.0.0.2/x.git",
        "git@localhost:x.git",
        "https://[::1]/x.git",
        "http://169.254.169.254/latest/meta-data",
        "git://10.0.0.1/x",
        "https://[::ffff:127.0.0.1]:8443/x",
        "http://0.0.0.0:1/x",
    ] {
        let r = alpha.post("/v1/organizations/alpha/repos", json!({"source": source, "name": "ssrf"})).await;
        assert_eq!((r.status, r.code()), (403, "source_host_refused"), "{source}: {r:?}");
    }
    // A git server on this host that the operator allows (127.0.0.1).
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("app.git");
    git(dir.path(), &["clone", "-q", "--bare", git_repo(dir.path(), "seed").to_str().unwrap(), bare.to_str().unwrap()]);
    let http = GitHttp::start(&served, "u", "p");
    let url = format!("http://u:p@{}/app.git", http.url.trim_start_matches("http://"));
    let r = alpha.post("/v1/organizations/alpha/repos", json!({"source": url})).await;
    assert_eq!(r.status, 201, "{r:?}");
    // The admin token may register any host.
    let r = admin.post("/v1/organizations/alpha/repos", json!({"source": url.replace("127.0.0.1", "localhost"), "name": "admins"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = alpha.create_task("alpha", "app", "fetch").await["id"].as_str().unwrap().to_string();

    // The operator takes the host off the list: the next fetch is refused.
    server.stop();
    server.set_env(allowed.0, None);
    server.restart();
    let (admin, alpha) = (server.client(), server.client().with_token(alpha.token.as_deref()));
    let r = alpha.post(&format!("/v1/organizations/alpha/tasks/{id}/sync"), json!({})).await;
    assert_eq!((r.status, r.code()), (403, "source_host_refused"), "{r:?}");
    let event = eventually(WAIT, "repo.fetch_refused", || {
        let c = admin.clone();
        async move { c.events_since("alpha", 0).await.into_iter().find(|e| e["kind"] == "repo.fetch_refused") }
    })
    .await;
    assert_eq!((event["repo"].as_str(), event["data"]["code"].as_str()), (Some("app"), Some("source_host_refused")), "{event}");
    let events = admin.events_since("alpha", 0).await;
    let failed = events.iter().find(|e| e["kind"] == "task.sync_failed").expect("task.sync_failed");
    assert_eq!(failed["data"]["code"], "source_host_refused");
    // What the admin registered is still fetched.
    assert!(!events.iter().any(|e| e["kind"] == "repo.fetch_refused" && e["repo"] == "admins"), "{events:?}");
}

/// An organization's token may not point GitHub's or Daytona's `api_url` at the
/// server's own networks either (Kiln would send requests there, with the
/// organization's key); the admin may (a GitHub Enterprise on the private
/// network), and the operator can allow a host.
#[actix_web::test]
async fn an_organization_s_provider_api_url_may_not_reach_the_server_s_own_addresses() {
    let allowed = ("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.9"]"#);
    let (_server, admin, _beta, alpha, _dir) = two_tenants(&[allowed]).await;
    for (provider, url) in [
        ("github", "http://127.0.0.1:7420"),
        ("github", "http://169.254.169.254/latest/meta-data"),
        ("github", "https://[::1]/api/v3"),
        ("daytona", "http://10.0.0.1/api"),
        ("daytona", "http://localhost:3000/api"),
    ] {
        let r = alpha.put(&format!("/v1/organizations/alpha/providers/{provider}"), json!({"config": {"api_url": url}})).await;
        assert_eq!((r.status, r.code()), (403, "provider_host_refused"), "{provider} {url}: {r:?}");
        let shown = alpha.get(&format!("/v1/organizations/alpha/providers/{provider}")).await;
        assert_ne!(shown.body["config"]["api_url"], url, "nothing stored: {shown:?}");
    }
    // A host the operator allows, and anything the admin sets.
    let r = alpha.put("/v1/organizations/alpha/providers/github", json!({"config": {"api_url": "http://127.0.0.9:1"}})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin.put("/v1/organizations/alpha/providers/github", json!({"config": {"api_url": "http://127.0.0.1:1"}})).await;
    assert_eq!(r.status, 200, "{r:?}");
}
