//! The `daytona` provider against the fake Daytona (tests/it/fake_daytona.rs),
//! with the real sandbox-agent binary inside the fake's sandboxes and a real
//! git server that demands credentials:
//! - provisioning: the labelled sandbox with the agent's env (never Kiln's
//!   tokens nor the API key), the task branch cloned through askpass, sandbox-agent
//!   in its own process session behind the preview URL, each step reported;
//!   429/5xx answered with backoff;
//! - kill: uncommitted and unpushed work brought into the mirror as
//!   `refs/kiln/snapshots/<task>` before the sandbox is deleted; a save that fails
//!   stops the sandbox instead;
//! - status: a vanished or failed sandbox with Daytona's reason; the preview token
//!   refetched after a restart;
//! - through the server: a wrong key or a local repository is a 4xx at create with
//!   nothing made; a create that ends in `error` fails the task with the reason.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use kiln::providers::daytona::api::{ApiKey, DaytonaClient, Retry};
use kiln::providers::daytona::provider::{self, destroy_sandbox, ensure_agent_server, provision_sandbox, sandbox_health};
use kiln::providers::daytona::settings::DaytonaSettings;
use kiln::providers::{CreateSandbox, DestroySandbox, LaunchSpec, Progress, RemoteOrigin, SandboxHandle};

use crate::common::{eventually, git, git_repo, sandbox_agent_bin, tempdir, Server};
use crate::fake_daytona::{CreateFault, FakeDaytona, Scope, Timing};
use crate::isolation::GitHttp;

pub(crate) const WAIT: Duration = Duration::from_secs(30);
pub(crate) const SECRET: &str = "s3cr3t-Pa55word";

pub(crate) fn fast() -> Timing {
    Timing { create: Duration::from_millis(50), start: Duration::from_millis(50), stop: Duration::from_millis(50), destroy: Duration::from_millis(50) }
}

pub(crate) fn bin() -> String {
    sandbox_agent_bin().expect("the sandbox-agent binary: set KILN_SANDBOX_AGENT_BIN or run .ci/run")
}

pub(crate) fn client(fake: &FakeDaytona) -> DaytonaClient {
    let retry = Retry { attempts: 4, first_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200), max_retry_after: Duration::from_secs(5) };
    DaytonaClient::new(&fake.api_url(), ApiKey::new(fake.key())).with_retry(retry)
}

/// A repository served over smart HTTP with a password, and a bare mirror of it.
pub(crate) struct Remote {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) http: GitHttp,
    pub(crate) mirror: PathBuf,
}

impl Remote {
    pub(crate) fn start() -> Remote {
        let dir = tempdir();
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let bare = served.join("app.git");
        git(dir.path(), &["clone", "-q", "--bare", git_repo(dir.path(), "seed").to_str().unwrap(), bare.to_str().unwrap()]);
        git(&bare, &["config", "http.receivepack", "true"]);
        let mirror = dir.path().join("mirror.git");
        git(dir.path(), &["clone", "-q", "--bare", bare.to_str().unwrap(), mirror.to_str().unwrap()]);
        let http = GitHttp::start(&served, "kiln-bot", SECRET);
        Remote { dir, http, mirror }
    }

    fn url(&self) -> String {
        format!("{}/app.git", self.http.url)
    }

    pub(crate) fn with_password(&self) -> String {
        format!("http://kiln-bot:{SECRET}@{}/app.git", self.http.url.trim_start_matches("http://"))
    }

    fn origin(&self) -> RemoteOrigin {
        RemoteOrigin { url: self.url(), user: Some("kiln-bot".into()), secret: Some(SECRET.into()) }
    }

    fn handle(&self, task: &str) -> SandboxHandle {
        SandboxHandle {
            id: task.into(),
            path: "~/app".into(),
            state_dir: self.dir.path().join("sandboxes").join(task),
            mirror: self.mirror.clone(),
            home: self.dir.path().join("homes/acme"),
        }
    }

    fn request(&self, task: &str, progress: Option<kiln::providers::ProgressTx>) -> CreateSandbox {
        CreateSandbox {
            org: "acme".into(),
            repo: "app".into(),
            task: task.into(),
            mirror: self.mirror.clone(),
            branch: format!("kiln/fix-{task}"),
            base_branch: "main".into(),
            source_checkout: None,
            copy: vec![],
            setup: vec![],
            launch: LaunchSpec {
                argv: vec!["true".into()],
                env: vec![
                    ("ANTHROPIC_API_KEY".into(), "sk-agent".into()),
                    ("KILN_TASK".into(), task.into()),
                    // Were one to slip through, the provider still leaves it out.
                    ("api_key".into(), "dtn-never-in-a-sandbox".into()),
                ],
                initial_input: None,
            },
            origin: Some(self.origin()),
            progress,
        }
    }
}

fn settings(fake: &FakeDaytona, port: u16) -> DaytonaSettings {
    DaytonaSettings::from_config(&json!({"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port})).unwrap()
}

pub(crate) fn port() -> u16 {
    kiln::integrations::sandbox_agent::free_port().unwrap()
}

/// A sandbox's id by its name (`None` once it is gone).
pub(crate) async fn sandbox_id(fake: &FakeDaytona, task: &str) -> Option<String> {
    let (c, name) = (client(fake), format!("kiln-{task}"));
    let found = kiln::providers::daytona::api::on_arbiter(move || async move { c.find(&name).await }).await.unwrap();
    found.filter(|s| s.state != "destroyed").map(|s| s.id)
}

#[actix_web::test]
async fn provisioning_makes_a_labelled_sandbox_on_the_task_branch_with_sandbox_agent_behind_its_preview_url() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let c = client(&fake);
    // Daytona is busy at first: the client backs off and carries on.
    fake.fail_next(Scope::Api, 2, 503, None);
    fake.fail_next(Scope::Toolbox, 1, 429, Some(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let handle = remote.handle("t1");
    let (record, endpoint) = provision_sandbox(&c, &settings(&fake, port()), &remote.request("t1", Some(tx)), &handle).await.expect("provisioned");

    let mut steps = Vec::new();
    while let Ok(p) = rx.try_recv() {
        steps.push(p.step);
    }
    assert_eq!(steps, ["creating", "starting", "cloning", "starting_agent"]);
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).filter(|s| *s >= 429).collect();
    assert_eq!(statuses, [503, 503, 429], "each fault answered once, then retried");

    // The sandbox: named and labelled for the task, with the agent's env only.
    let creates = fake.creates();
    let sent = creates.iter().find(|c| c["name"] == "kiln-t1").expect("a create");
    assert_eq!(sent["labels"], json!({"kiln/organization": "acme", "kiln/repo": "app", "kiln/task": "t1"}));
    assert_eq!(sent["env"], json!({"ANTHROPIC_API_KEY": "sk-agent", "KILN_TASK": "t1"}));
    assert_eq!((sent["autoStopInterval"].clone(), sent["autoDeleteInterval"].clone()), (json!(0), json!(-1)));

    // The task branch, cloned from origin with the repository's credential
    // through askpass: never in a command, a URL or the record.
    let home = fake.home(&record.id).expect("the sandbox's home");
    let checkout = home.join("app");
    assert_eq!(record.checkout, checkout.to_string_lossy());
    assert_eq!(git(&checkout, &["rev-parse", "--abbrev-ref", "HEAD"]), "kiln/fix-t1");
    assert_eq!(git(&checkout, &["remote", "get-url", "origin"]), remote.url());
    assert!(remote.http.requests().iter().any(|(_, t, ok)| *ok && t.contains("git-upload-pack")), "{:?}", remote.http.requests());
    for call in fake.calls() {
        let command = call.body.as_ref().map(|b| b["command"].to_string()).unwrap_or_default();
        assert!(!command.contains(SECRET) && !command.contains(&record.agent_token), "a secret in a command: {command}");
    }
    let saved = std::fs::read_to_string(handle.state_dir.join(provider::STATE_FILE)).unwrap();
    assert!(!saved.contains(SECRET));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(handle.state_dir.join(provider::STATE_FILE)).unwrap().permissions().mode() & 0o777, 0o600);

    // sandbox-agent answers through the preview URL, with its token and the preview token.
    assert!(endpoint.url.contains("/preview/"), "{}", endpoint.url);
    let http = awc::Client::builder().timeout(Duration::from_secs(5)).disable_redirects().finish();
    let mut req = http.get(format!("{}/v1/health", endpoint.url)).bearer_auth(&endpoint.token);
    for (k, v) in &endpoint.headers {
        req = req.insert_header((k.as_str(), v.as_str()));
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 200);
    let unauthorized = http.get(format!("{}/v1/health", endpoint.url)).bearer_auth(&endpoint.token).send().await.unwrap();
    assert!(unauthorized.status().is_redirection(), "no preview token: {}", unauthorized.status());

    let health = sandbox_health(&c, handle.clone()).await.unwrap();
    assert_eq!((health.exists, health.agent_server, health.remote_state.as_deref()), (true, Some(true), Some("started")));
    destroy_sandbox(&c, &Default::default(), DestroySandbox { handle, snapshot_ref: "refs/kiln/snapshots/t1".into(), grace: Duration::from_secs(1) })
        .await
        .unwrap();
}

#[actix_web::test]
async fn kill_brings_uncommitted_and_unpushed_work_into_the_mirror_before_deleting() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let c = client(&fake);
    let handle = remote.handle("t2");
    let (record, _) = provision_sandbox(&c, &settings(&fake, port()), &remote.request("t2", None), &handle).await.expect("provisioned");
    let checkout = fake.home(&record.id).unwrap().join("app");
    // The agent committed once (not pushed), then left work uncommitted.
    std::fs::write(checkout.join("committed.txt"), "a commit origin never saw\n").unwrap();
    git(&checkout, &["add", "."]);
    git(&checkout, &["commit", "-q", "-m", "agent's commit"]);
    std::fs::write(checkout.join("README.md"), "changed\n").unwrap();
    std::fs::write(checkout.join("untracked.txt"), "new\n").unwrap();

    let refname = "refs/kiln/snapshots/t2";
    let destroyed = destroy_sandbox(&c, &Default::default(), DestroySandbox { handle: handle.clone(), snapshot_ref: refname.into(), grace: Duration::from_secs(1) })
        .await
        .expect("destroyed");
    let (saved_ref, commit) = destroyed.snapshot.expect("work was saved");
    assert_eq!(saved_ref, refname);
    // Retrievable from the mirror, with the unpushed commit under it.
    assert_eq!(git(&remote.mirror, &["rev-parse", refname]), commit);
    assert_eq!(git(&remote.mirror, &["show", &format!("{refname}:README.md")]), "changed");
    assert_eq!(git(&remote.mirror, &["show", &format!("{refname}:untracked.txt")]), "new");
    assert_eq!(git(&remote.mirror, &["show", &format!("{refname}~1:committed.txt")]), "a commit origin never saw");
    assert_eq!(git(&remote.mirror, &["log", "-1", "--format=%s", &format!("{refname}~1")]), "agent's commit");
    // Deleted, and polled until gone.
    assert_eq!(sandbox_id(&fake, "t2").await, None);
    assert!(fake.calls().iter().any(|c| c.method == "DELETE" && c.path.ends_with(&record.id)));
    assert!(!handle.state_dir.join(provider::STATE_FILE).exists());

    // A sandbox with nothing origin lacks saves nothing, and is deleted.
    let handle = remote.handle("t3");
    provision_sandbox(&c, &settings(&fake, port()), &remote.request("t3", None), &handle).await.expect("provisioned");
    let destroyed = destroy_sandbox(&c, &Default::default(), DestroySandbox { handle, snapshot_ref: "refs/kiln/snapshots/t3".into(), grace: Duration::from_secs(1) })
        .await
        .unwrap();
    assert!(destroyed.snapshot.is_none());
    assert_eq!(sandbox_id(&fake, "t3").await, None);
}

#[actix_web::test]
async fn a_save_that_fails_stops_the_sandbox_instead_of_deleting_it() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let c = client(&fake);
    let handle = remote.handle("t4");
    let (record, _) = provision_sandbox(&c, &settings(&fake, port()), &remote.request("t4", None), &handle).await.expect("provisioned");
    let home = fake.home(&record.id).unwrap();
    std::fs::write(home.join("app/work.txt"), "precious\n").unwrap();
    // git cannot read the checkout any more: saving fails.
    std::fs::rename(home.join("app/.git"), home.join("app/.git-broken")).unwrap();
    let err = destroy_sandbox(&c, &Default::default(), DestroySandbox { handle: handle.clone(), snapshot_ref: "refs/kiln/snapshots/t4".into(), grace: Duration::from_secs(1) })
        .await
        .expect_err("nothing can be saved");
    assert_eq!(err.code(), "snapshot_failed", "{err}");
    assert!(err.to_string().contains("stopped, not deleted"), "{err}");
    assert_eq!(fake.sandbox_state(&record.id).as_deref(), Some("stopped"));
    assert!(home.join("app/work.txt").exists(), "the work is still there");
    assert!(!fake.calls().iter().any(|c| c.method == "DELETE" && c.path.starts_with("/api/sandbox")), "nothing deleted");

    // A sandbox in `error` cannot be read: it is kept, and the error says why.
    let handle = remote.handle("t6");
    let (record, _) = provision_sandbox(&c, &settings(&fake, port()), &remote.request("t6", None), &handle).await.expect("provisioned");
    fake.set_error(&record.id, "the runner is gone");
    let err = destroy_sandbox(&c, &Default::default(), DestroySandbox { handle, snapshot_ref: "refs/kiln/snapshots/t6".into(), grace: Duration::from_secs(1) })
        .await
        .expect_err("an errored sandbox cannot be read");
    assert_eq!(err.code(), "snapshot_failed");
    assert!(err.to_string().contains("the runner is gone") && err.to_string().contains("it is kept"), "{err}");
    assert_eq!(fake.sandbox_state(&record.id).as_deref(), Some("error"));
}

#[actix_web::test]
async fn status_reports_a_failed_or_vanished_sandbox_with_daytonas_reason_and_refetches_the_preview_token() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let c = client(&fake);
    let settings = settings(&fake, port());
    let handle = remote.handle("t5");
    let (record, first) = provision_sandbox(&c, &settings, &remote.request("t5", None), &handle).await.expect("provisioned");

    // A restart (Daytona's auto-stop, or an operator) kills sandbox-agent and
    // changes the preview token: ensure_agent starts both again with a new token.
    c.stop(&record.id).await.unwrap();
    c.wait_until_stopped(&record.id, WAIT).await.unwrap();
    let health = sandbox_health(&c, handle.clone()).await.unwrap();
    assert_eq!((health.exists, health.remote_state.as_deref(), health.agent_server), (true, Some("stopped"), None));
    let again = ensure_agent_server(&c, &settings, handle.clone()).await.expect("started again");
    assert!(again.restarted);
    assert_ne!(again.headers, first.headers, "a fresh preview token");
    let health = sandbox_health(&c, handle.clone()).await.unwrap();
    assert_eq!(health.agent_server, Some(true));
    let same = ensure_agent_server(&c, &settings, handle.clone()).await.unwrap();
    assert!(!same.restarted && !same.fresh, "found running");

    fake.set_error(&record.id, "the runner's disk failed");
    let health = sandbox_health(&c, handle.clone()).await.unwrap();
    assert!(!health.exists);
    assert!(health.reason.as_deref().unwrap().contains("the runner's disk failed"), "{health:?}");
    fake.vanish(&record.id);
    let health = sandbox_health(&c, handle).await.unwrap();
    assert!(!health.exists);
    assert!(health.reason.as_deref().unwrap().contains("is gone"), "{health:?}");
}

/// A server whose `default` organization has a daytona profile on `fake`, and a
/// repository `app` registered by its URL (with a password).
pub(crate) async fn daytona_server(fake: &FakeDaytona, remote: &Remote, key: &str) -> (Server, tempfile::TempDir) {
    let (server, dir) = Server::start(&[("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#)]);
    let c = server.client();
    let profile = json!({
        "config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port()},
        "secrets": {"api_key": key, "ANTHROPIC_API_KEY": "sk-agent"},
    });
    let r = c.put("/v1/organizations/default/providers/daytona", profile).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.post("/v1/organizations/default/repos", json!({"source": remote.with_password(), "name": "app"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    (server, dir)
}

#[actix_web::test]
async fn a_daytona_task_runs_end_to_end_through_the_server_and_its_kill_keeps_the_work() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Fix the flaky test", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["provider"], "daytona");
    c.wait_status("default", &task, "running").await;

    let events = c.events_since("default", 0).await;
    let steps: Vec<&str> = events.iter().filter(|e| e["kind"] == "sandbox.progress").map(|e| e["data"]["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["creating", "starting", "cloning", "starting_agent", "setup", "ready"]);
    let sent = fake.creates().into_iter().find(|c| c["name"] == format!("kiln-{task}")).expect("a create");
    assert_eq!(sent["labels"], json!({"kiln/organization": "default", "kiln/repo": "app", "kiln/task": task}));
    // The agent's env: the profile's secrets less api_key, and KILN_TASK; no Kiln token.
    assert_eq!(sent["env"]["ANTHROPIC_API_KEY"], "sk-agent");
    assert_eq!(sent["env"]["KILN_TASK"], task.as_str());
    let env = sent["env"].to_string();
    assert!(!env.contains(&fake.key()) && !env.contains(&server.token) && !env.contains(SECRET), "{env}");

    // The status poller reads the sandbox on each poll, but probes sandbox-agent
    // through the preview URL it already has: no new one per poll.
    let id = sandbox_id(&fake, &task).await.expect("the sandbox");
    let count = |path: String| fake.calls().iter().filter(|c| c.method == "GET" && c.path.starts_with(&path)).count();
    let (gets, previews) = (count(format!("/api/sandbox/{id}")), count(format!("/api/sandbox/{id}/ports/")));
    eventually(WAIT, "five more polls", || async { (count(format!("/api/sandbox/{id}")) >= gets + 5).then_some(()) }).await;
    assert_eq!(count(format!("/api/sandbox/{id}/ports/")), previews, "the preview URL is not fetched on every poll");

    // The same terminal route: the agent runs in the sandbox, in the checkout.
    let mut term = crate::common::Term::open(&c, "default", &task, 0).await;
    term.expect("fake-agent ready: Fix the flaky test").await;
    term.send(b"write work.txt\r").await;
    term.expect("wrote work.txt").await;
    let checkout = fake.home(&id).unwrap().join("app");
    assert_eq!(std::fs::read_to_string(checkout.join("work.txt")).unwrap(), "agent was here\n");
    assert_eq!(git(&checkout, &["rev-parse", "--abbrev-ref", "HEAD"]), created["branch"].as_str().unwrap());

    // ACP sessions reach the sandbox's sandbox-agent through the preview URL
    // (its token on every request): the real `mock` agent answers `initialize`
    // and, echoing only, cannot open a session, and says so.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/sessions"), json!({"agent": "mock"})).await;
    assert_eq!((r.status, r.code()), (502, "agent_error"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("without a sessionId"), "through the preview URL: {r:?}");
    let events = c.events_since("default", 0).await;
    let initialized = events.iter().any(|e| e["kind"] == "session.response" && e["data"]["envelope"]["result"]["echoed"]["method"] == "initialize");
    assert!(initialized, "initialize answered by the sandbox's sandbox-agent");

    // `switch` needs the checkout on this machine, and says so.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/switch"), json!({})).await;
    assert_eq!((r.status, r.code()), (422, "not_supported_by_provider"), "{r:?}");

    // Push: committed in the sandbox, brought into the mirror, pushed from there
    // with the repository's credential (which the sandbox never held for it).
    let branch = created["branch"].as_str().unwrap().to_string();
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/push"), json!({"commit": "The agent's work"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let served = remote.dir.path().join("served/app.git");
    assert_eq!(git(&served, &["show", &format!("{branch}:work.txt")]), "agent was here");
    assert_eq!(git(&served, &["log", "-1", "--format=%s", &branch]), "The agent's work");
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "", "committed in the sandbox");
    let events = c.events_since("default", 0).await;
    let pushed = events.iter().find(|e| e["kind"] == "task.pushed").expect("task.pushed");
    assert_eq!(pushed["data"]["sha"].as_str().unwrap(), git(&checkout, &["rev-parse", "HEAD"]));
    assert!(events.iter().any(|e| e["kind"] == "task.committed"));

    // Sync: someone pushes to main; the task rebases onto it in the sandbox.
    let upstream = remote.dir.path().join("upstream");
    git(remote.dir.path(), &["clone", "-q", served.to_str().unwrap(), upstream.to_str().unwrap()]);
    std::fs::write(upstream.join("upstream.txt"), "from main\n").unwrap();
    git(&upstream, &["add", "."]);
    git(&upstream, &["commit", "-q", "-m", "upstream change"]);
    git(&upstream, &["push", "-q", "origin", "HEAD:main"]);
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/sync"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(std::fs::read_to_string(checkout.join("upstream.txt")).unwrap(), "from main\n");
    assert_eq!(git(&checkout, &["log", "-1", "--format=%s"]), "The agent's work", "rebased onto main");
    // A push after the rebase replaces only Kiln's own last push.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/push"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(git(&served, &["rev-parse", &branch]), git(&checkout, &["rev-parse", "HEAD"]));

    // More work, not committed, then kill: the agent stopped, the work brought
    // into the mirror, the sandbox deleted.
    term.send(b"write more.txt\r").await;
    term.expect("wrote more.txt").await;
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let refname = format!("refs/kiln/snapshots/{task}");
    assert_eq!(r.body["snapshot_ref"], refname.as_str(), "{r:?}");
    let mirror = server.data_dir().join("repos/default/app.git");
    assert_eq!(git(&mirror, &["show", &format!("{refname}:more.txt")]), "agent was here");
    assert_eq!(git(&mirror, &["show", &format!("{refname}:upstream.txt")]), "from main");
    assert_eq!(sandbox_id(&fake, &task).await, None);
    let events = c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["kind"] == "task.snapshot_saved"), "{events:?}");
    // The key is in no answer, event or log.
    assert!(!serde_json::to_string(&events).unwrap().contains(&fake.key()));
    assert!(!server.log().contains(&fake.key()) && !server.log().contains(SECRET));
}

#[actix_web::test]
async fn a_create_that_ends_in_error_fails_the_task_with_daytonas_reason() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    fake.next_create(CreateFault::Error("no capacity left in region us".into()));
    let created = c.create_task_with("default", json!({"repo": "app", "description": "x", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    let failed = c.wait_status("default", &task, "failed").await;
    assert!(failed["status_reason"].as_str().unwrap().contains("no capacity left in region us"), "{failed}");
    eventually(WAIT, "the failed sandbox deleted", || async { sandbox_id(&fake, &task).await.is_none().then_some(()) }).await;
}

#[actix_web::test]
async fn what_the_provider_cannot_take_is_a_4xx_at_create_with_nothing_made() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, dir) = daytona_server(&fake, &remote, "dtn_wrong_key_123").await;
    let c = server.client();
    let body = json!({"repo": "app", "description": "x", "provider": "daytona"});
    let r = c.post("/v1/organizations/default/tasks", body.clone()).await;
    assert_eq!((r.status, r.code()), (422, "daytona_unauthorized"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("api_key") && !r.text.contains("dtn_wrong_key_123"), "{r:?}");

    // A repository registered from a path cannot be cloned in a sandbox.
    c.put("/v1/organizations/default/providers/daytona", json!({"secrets": {"api_key": fake.key()}})).await;
    c.add_repo("default", &git_repo(dir.path(), "local")).await;
    let r = c.post("/v1/organizations/default/tasks", json!({"repo": "local", "description": "x", "provider": "daytona"})).await;
    assert_eq!((r.status, r.code()), (422, "remote_source_required"), "{r:?}");

    // Without a key at all.
    c.put("/v1/organizations/default/providers/daytona", json!({"secrets": {"api_key": null}})).await;
    let r = c.post("/v1/organizations/default/tasks", body).await;
    assert_eq!((r.status, r.code()), (422, "daytona_not_configured"), "{r:?}");

    let tasks = c.get("/v1/organizations/default/tasks").await;
    assert_eq!(tasks.body["items"].as_array().map(Vec::len), Some(0), "no task was inserted: {tasks:?}");
    assert!(fake.creates().is_empty(), "no sandbox was made");
}

#[actix_web::test]
async fn a_running_daytona_task_survives_a_restart_and_orphaned_sandboxes_are_reported_then_deleted() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (mut server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Keep going", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    // A sandbox of this organization whose task does not exist (a crash between
    // create and insert, a task deleted with its repository…).
    let dc = client(&fake);
    let labels = std::collections::BTreeMap::from([
        ("kiln/organization".to_string(), "default".to_string()),
        ("kiln/task".to_string(), "deadbeef".to_string()),
    ]);
    let req = kiln::providers::daytona::api::CreateSandboxRequest { name: Some("kiln-deadbeef".into()), labels, ..Default::default() };
    let orphan = kiln::providers::daytona::api::on_arbiter(move || async move { dc.create(&req).await }).await.unwrap().id;

    server.kill();
    server.set_env("KILN_TASKS__ORPHAN_GRACE_SECS", Some("1"));
    server.restart();
    let c = server.client();
    // The task reconnects: still running, its terminal and agent in the sandbox.
    let mut term = crate::common::Term::open(&c, "default", &task, 0).await;
    term.expect("fake-agent ready: Keep going").await;
    term.send(b"after the restart\r").await;
    term.expect("echo: after the restart").await;
    assert_eq!(c.get(&format!("/v1/organizations/default/tasks/{task}")).await.body["status"], "running");

    // The orphan is reported, then deleted after the grace period; the task's is not.
    let deleted = eventually(WAIT, "the orphan deleted", || async {
        let events = c.events_since("default", 0).await;
        events.iter().any(|e| e["kind"] == "sandbox.orphan_deleted").then_some(events)
    })
    .await;
    let reported: Vec<&serde_json::Value> = deleted.iter().filter(|e| e["kind"] == "sandbox.orphaned").collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!((reported[0]["data"]["sandbox"].as_str(), reported[0]["data"]["task"].as_str()), (Some(orphan.as_str()), Some("deadbeef")));
    assert!(reported[0]["data"]["reason"].as_str().unwrap().contains("no longer exists"));
    assert_eq!(sandbox_id(&fake, "deadbeef").await, None);
    assert!(sandbox_id(&fake, &task).await.is_some(), "the running task's sandbox is kept");
}

#[actix_web::test]
async fn a_sandbox_orphaned_while_kiln_runs_is_reported_then_deleted_without_a_restart() {
    let fake = FakeDaytona::with_timing(fast());
    let (server, _dir) = Server::start(&[
        ("KILN_REPOS__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
        ("KILN_TASKS__ORPHAN_SWEEP_SECS", "1"),
        ("KILN_TASKS__ORPHAN_GRACE_SECS", "2"),
    ]);
    let c = server.client();
    let profile = json!({"config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port()}, "secrets": {"api_key": fake.key()}});
    assert_eq!(c.put("/v1/organizations/default/providers/daytona", profile).await.status, 200);
    // Kiln has swept at least once with nothing to find.
    let listed = |fake: &FakeDaytona| fake.calls().iter().filter(|c| c.method == "GET" && c.path.starts_with("/api/sandbox?")).count();
    eventually(WAIT, "a sweep", || async { (listed(&fake) >= 2).then_some(()) }).await;

    // A sandbox of this organization whose task does not exist appears while Kiln runs.
    let dc = client(&fake);
    let labels = std::collections::BTreeMap::from([
        ("kiln/organization".to_string(), "default".to_string()),
        ("kiln/task".to_string(), "0rphan00".to_string()),
    ]);
    let req = kiln::providers::daytona::api::CreateSandboxRequest { name: Some("kiln-0rphan00".into()), labels, ..Default::default() };
    let orphan = kiln::providers::daytona::api::on_arbiter(move || async move { dc.create(&req).await }).await.unwrap().id;

    let events = eventually(WAIT, "the orphan reported, then deleted", || async {
        let events = c.events_since("default", 0).await;
        events.iter().any(|e| e["kind"] == "sandbox.orphan_deleted").then_some(events)
    })
    .await;
    let reported: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "sandbox.orphaned").collect();
    assert_eq!(reported.len(), 1, "reported once, however many sweeps saw it: {reported:?}");
    assert_eq!(reported[0]["data"]["sandbox"].as_str(), Some(orphan.as_str()));
    let deleted = events.iter().find(|e| e["kind"] == "sandbox.orphan_deleted").unwrap();
    assert_eq!(deleted["data"]["sandbox"].as_str(), Some(orphan.as_str()));
    let at = |e: &serde_json::Value| e["at"].as_i64().unwrap_or_default();
    assert!(at(deleted) - at(reported[0]) >= 2000, "deleted after the grace period: {reported:?} {deleted}");
    assert_eq!(sandbox_id(&fake, "0rphan00").await, None);
}

/// The processes sandbox-agent runs in a task's sandbox (through its preview
/// URL, with both tokens), as `(id, command, status)`.
async fn agent_processes(fake: &FakeDaytona, state_dir: &std::path::Path) -> Vec<(String, String, String)> {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(state_dir.join(provider::STATE_FILE)).unwrap()).unwrap();
    let (id, port, token) =
        (record["id"].as_str().unwrap().to_string(), record["agent_port"].as_u64().unwrap() as u16, record["agent_token"].as_str().unwrap().to_string());
    let c = client(fake);
    let preview = kiln::providers::daytona::api::on_arbiter(move || async move { c.preview_url(&id, port).await }).await.unwrap();
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).disable_redirects().finish();
    let mut res = http
        .get(format!("{}/v1/processes", preview.url))
        .bearer_auth(&token)
        .insert_header((kiln::providers::daytona::api::PreviewUrl::TOKEN_HEADER, preview.token.expose()))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    body["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap_or_default().to_string(), p["command"].as_str().unwrap_or_default().to_string(), p["status"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[actix_web::test]
async fn after_a_reboot_of_kilns_machine_resume_follows_the_agent_still_running_instead_of_starting_another() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (mut server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    let created = c.create_task_with("default", json!({"repo": "app", "description": "Outlive the reboot", "provider": "daytona"})).await;
    let task = created["id"].as_str().unwrap().to_string();
    c.wait_status("default", &task, "running").await;
    let state_dir = server.data_dir().join("sandboxes").join(&task);
    let agent = crate::common::fake_agent();
    let running = |procs: &[(String, String, String)]| procs.iter().filter(|(_, cmd, st)| *cmd == agent && st == "running").count();
    assert_eq!(running(&agent_processes(&fake, &state_dir).await), 1);

    // The machine reboots: Kiln and every terminal host on it are gone; the
    // sandbox, and the agent in it, are not.
    server.kill();
    crate::common::kill_hosts(&server.data_dir());
    server.restart();
    let c = server.client();
    c.wait_status("default", &task, "interrupted").await;
    assert_eq!(running(&agent_processes(&fake, &state_dir).await), 1, "the agent still runs in the sandbox");

    // Resume follows that agent: still one agent process, and typed input reaches it.
    let r = c.post(&format!("/v1/organizations/default/tasks/{task}/resume"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.wait_status("default", &task, "running").await;
    let procs = agent_processes(&fake, &state_dir).await;
    assert_eq!(running(&procs), 1, "one agent, not two: {procs:?}");
    let mut term = crate::common::Term::open(&c, "default", &task, 0).await;
    term.expect("[kiln: reattached to the agent still running in the sandbox").await;
    term.send(b"still there\r").await;
    term.expect("echo: still there").await;
    assert!(!term.text().contains("--resumed"), "the resume command did not run: {}", term.text());
}
