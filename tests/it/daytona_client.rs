//! Kiln's Daytona API client (src/providers/daytona/api.rs) against the fake
//! Daytona (tests/it/fake_daytona.rs): the lifecycle with its polling, labels and
//! paging, auth failures that leave nothing behind and never echo the key,
//! bounded retries on 429/5xx, failed and slow sandboxes, toolbox commands with
//! their timeout, process sessions, and the real sandbox-agent reached through a
//! preview URL whose token is refetched after a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use kiln::error::AppError;
use kiln::providers::daytona::api::{
    ApiKey, CreateSandboxRequest, DaytonaClient, DaytonaError, ExecMode, Execute, PreviewUrl, Retry,
};

use crate::common::{eventually, sandbox_agent_bin};
use crate::fake_daytona::{CreateFault, FakeDaytona, Scope, Timing};

const WAIT: Duration = Duration::from_secs(20);

fn client(fake: &FakeDaytona) -> DaytonaClient {
    DaytonaClient::new(&fake.api_url(), ApiKey::new(fake.key())).with_retry(quick_retry())
}

fn quick_retry() -> Retry {
    Retry { attempts: 4, first_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200), max_retry_after: Duration::from_secs(5) }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn app(e: DaytonaError) -> (&'static str, String) {
    let e = AppError::from(e);
    (e.code(), e.to_string())
}

fn fast() -> Timing {
    Timing { create: Duration::from_millis(50), start: Duration::from_millis(50), stop: Duration::from_millis(50), destroy: Duration::from_millis(50) }
}

#[actix_web::test]
async fn lifecycle_create_wait_stop_start_delete() {
    let fake = FakeDaytona::with_timing(Timing { create: Duration::from_millis(400), ..fast() });
    let c = client(&fake);
    let req = CreateSandboxRequest {
        name: Some("kiln-1a2b3c4d".into()),
        labels: labels(&[("kiln/organization", "acme"), ("kiln/task", "1a2b3c4d")]),
        env: BTreeMap::from([("ANTHROPIC_API_KEY".into(), "sk-test".into())]),
        cpu: Some(2),
        memory: Some(4),
        auto_stop_interval: Some(0),
        ..Default::default()
    };
    let created = c.create(&req).await.expect("create");
    assert_eq!((created.state.as_str(), created.name.as_deref()), ("creating", Some("kiln-1a2b3c4d")));
    let sent = fake.creates();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0],
        json!({"name": "kiln-1a2b3c4d", "labels": {"kiln/organization": "acme", "kiln/task": "1a2b3c4d"},
               "env": {"ANTHROPIC_API_KEY": "sk-test"}, "cpu": 2, "memory": 4, "autoStopInterval": 0})
    );

    let started = c.wait_until_started(&created.id, WAIT).await.expect("started");
    assert!(started.is_started() && started.toolbox_proxy_url.is_some(), "{started:?}");
    // Backoff from 100 ms: a 400 ms create is seen in a handful of polls, not a hot loop.
    let polls = fake.calls().iter().filter(|c| c.method == "GET" && c.path == format!("/api/sandbox/{}", created.id)).count();
    assert!((1..=8).contains(&polls), "{polls} polls");
    assert!(fake.calls().iter().all(|c| c.sdk_version.as_deref() == Some("0.167.0")));

    c.stop(&created.id).await.expect("stop");
    assert_eq!(c.wait_until_stopped(&created.id, WAIT).await.expect("stopped").state, "stopped");
    c.start(&created.id).await.expect("start");
    assert!(c.wait_until_started(&created.id, WAIT).await.expect("started again").is_started());
    assert_eq!(c.get("kiln-1a2b3c4d").await.expect("by name").id, created.id);

    c.delete_and_wait(&created.id, WAIT).await.expect("deleted");
    assert_eq!(fake.sandbox_state(&created.id), None);
    let (code, _) = app(c.get(&created.id).await.unwrap_err());
    assert_eq!(code, "daytona_sandbox_not_found");
    assert!(c.find(&created.id).await.unwrap().is_none());
    c.delete(&created.id).await.expect("deleting a gone sandbox is fine");

    // `destroyed` (rather than a 404) also ends the wait.
    fake.keep_destroyed(true);
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    c.delete_and_wait(&s.id, WAIT).await.expect("destroyed");
    assert_eq!(fake.sandbox_state(&s.id).as_deref(), Some("destroyed"));
}

#[actix_web::test]
async fn list_by_labels_follows_the_cursor() {
    let fake = FakeDaytona::with_timing(fast());
    let c = client(&fake).with_page_size(2);
    for i in 0..5 {
        let org = if i < 4 { "acme" } else { "other" };
        let req = CreateSandboxRequest { labels: labels(&[("kiln/organization", org), ("n", &i.to_string())]), ..Default::default() };
        c.create(&req).await.unwrap();
    }
    let found = c.list(&labels(&[("kiln/organization", "acme")])).await.expect("list");
    let ns: Vec<&str> = found.iter().map(|s| s.labels["n"].as_str()).collect();
    assert_eq!(ns, vec!["0", "1", "2", "3"]);
    let pages = fake.calls().iter().filter(|c| c.path.starts_with("/api/sandbox?")).count();
    assert_eq!(pages, 2, "4 sandboxes in pages of 2");
    assert_eq!(c.list(&labels(&[("kiln/organization", "none")])).await.unwrap().len(), 0);
}

#[actix_web::test]
async fn a_wrong_key_is_a_clear_4xx_that_never_names_the_key() {
    let fake = FakeDaytona::with_timing(fast());
    let wrong = "dtn_wrong_key_0123456789";
    let c = DaytonaClient::new(&fake.api_url(), ApiKey::new(wrong)).with_retry(quick_retry());
    let err = c.create(&CreateSandboxRequest { name: Some("x".into()), ..Default::default() }).await.unwrap_err();
    let debug = format!("{err:?} {c:?}");
    let (code, message) = app(err);
    assert_eq!(code, "daytona_unauthorized");
    assert!(message.contains("API key") && message.contains("--secret api_key"), "{message}");
    assert!(!message.contains(wrong) && !debug.contains(wrong), "{message} {debug}");
    let e = AppError::from(c.get("x").await.unwrap_err());
    assert_eq!(actix_web::ResponseError::status_code(&e).as_u16(), 422);
    // Not retried, and nothing was made.
    assert_eq!(fake.calls().len(), 2);
    assert!(fake.calls().iter().all(|c| c.status == 401 && !c.authorized));
    assert!(client(&fake).list(&BTreeMap::new()).await.unwrap().is_empty());
}

#[actix_web::test]
async fn rate_limits_and_server_errors_are_retried_with_a_bound() {
    let fake = FakeDaytona::with_timing(fast());
    let c = client(&fake);

    // 429 with retry-after: 1 s is waited, not the 50 ms backoff.
    fake.fail_next(Scope::Api, 1, 429, Some(1));
    let before = Instant::now();
    c.list(&BTreeMap::new()).await.expect("after the limit");
    assert!(before.elapsed() >= Duration::from_millis(950), "retry-after honoured: {:?}", before.elapsed());

    fake.fail_next(Scope::Api, 2, 503, None);
    c.list(&BTreeMap::new()).await.expect("after two 503s");

    // Past the bound: the last answer, after exactly `attempts` tries.
    let before = fake.calls().len();
    fake.fail_next(Scope::Api, 10, 502, None);
    let (code, message) = app(c.list(&BTreeMap::new()).await.unwrap_err());
    assert_eq!(code, "daytona_unavailable");
    assert!(message.contains("502") && message.contains("4 tries"), "{message}");
    assert_eq!(fake.calls().len() - before, 4);
    fake.clear_faults();

    // A retry-after beyond what is worth waiting is answered at once.
    let before = (fake.calls().len(), Instant::now());
    fake.fail_next(Scope::Api, 1, 429, Some(3600));
    let (code, message) = app(c.list(&BTreeMap::new()).await.unwrap_err());
    assert_eq!(code, "daytona_rate_limited");
    assert!(message.contains("3600"), "{message}");
    assert!(before.1.elapsed() < Duration::from_secs(10) && fake.calls().len() - before.0 == 1);

    // A create without a name is not sent again after a 5xx (it may have been made)...
    fake.fail_next(Scope::Api, 10, 500, None);
    let before = fake.calls().len();
    assert_eq!(app(c.create(&CreateSandboxRequest::default()).await.unwrap_err()).0, "daytona_unavailable");
    assert_eq!(fake.calls().len() - before, 1);
    // ...but a named one is, and a 429 always is.
    let fresh = FakeDaytona::with_timing(fast());
    fresh.fail_next(Scope::Api, 1, 500, None);
    fresh.fail_next(Scope::Api, 1, 429, None);
    let named = CreateSandboxRequest { name: Some("kiln-named".into()), ..Default::default() };
    let s = client(&fresh).create(&named).await.expect("created on the third try");
    assert_eq!((s.name.as_deref(), fresh.creates().len()), (Some("kiln-named"), 3));
}

#[actix_web::test]
async fn failed_and_slow_sandboxes() {
    let fake = FakeDaytona::with_timing(fast());
    let c = client(&fake);
    fake.next_create(CreateFault::FailFast("no runner available".into()));
    let (code_, message) = app(c.create(&CreateSandboxRequest::default()).await.unwrap_err());
    assert_eq!(code_, "daytona_sandbox_failed");
    assert!(message.contains("no runner available"), "{message}");

    fake.next_create(CreateFault::Error("disk quota exceeded".into()));
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let (code_, message) = app(c.wait_until_started(&s.id, WAIT).await.unwrap_err());
    assert_eq!(code_, "daytona_sandbox_failed");
    assert!(message.contains("disk quota exceeded") && message.contains("error"), "{message}");
    fake.next_create(CreateFault::BuildFailed("Dockerfile step 3 failed".into()));
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    assert!(app(c.wait_until_started(&s.id, WAIT).await.unwrap_err()).1.contains("Dockerfile step 3 failed"));

    let (code_, _) = app(c.create(&CreateSandboxRequest { snapshot: Some("s".into()), cpu: Some(2), ..Default::default() }).await.unwrap_err());
    assert_eq!(code_, "daytona_rejected");

    // A sandbox that takes too long: the wait gives up at its bound, polling with backoff.
    fake.set_timing(Timing { create: Duration::from_secs(60), ..fast() });
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let before = (Instant::now(), fake.calls().len());
    let (code_, message) = app(c.wait_until_started(&s.id, Duration::from_millis(1500)).await.unwrap_err());
    assert_eq!(code_, "daytona_timeout");
    assert!(message.contains("creating"), "{message}");
    assert!(before.0.elapsed() < Duration::from_secs(10));
    let polls = fake.calls().len() - before.1;
    assert!((1..=8).contains(&polls), "backoff, not a hot loop: {polls} polls in 1.5 s");
}

#[actix_web::test]
async fn toolbox_commands_and_their_timeout() {
    let fake = FakeDaytona::with_timing(fast());
    let c = client(&fake).with_toolbox_grace(Duration::from_secs(1));
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let s = c.wait_until_started(&s.id, WAIT).await.unwrap();
    let tb = s.toolbox().unwrap();
    let home = c.user_home_dir(&tb).await.expect("home");
    assert_eq!(home, fake.home(&s.id).unwrap().display().to_string());
    assert_eq!(c.work_dir(&tb).await.unwrap(), home);
    std::fs::create_dir(format!("{home}/repo")).unwrap();

    let exec = |command: &str, secs: u64| Execute {
        command: command.into(),
        cwd: Some(format!("{home}/repo")),
        envs: BTreeMap::from([("GREETING".into(), "hi".into())]),
        timeout: Duration::from_secs(secs),
    };
    let out = c.execute(&tb, &exec("echo $GREETING; pwd; echo oops >&2; exit 2", 10)).await.expect("execute");
    assert_eq!((out.exit_code, out.result.as_str()), (2, format!("hi\n{home}/repo\noops\n").as_str()));
    let body = fake.calls().iter().rev().find(|c| c.path.ends_with("/process/execute")).unwrap().body.clone().unwrap();
    assert_eq!(body["timeout"], 10, "the timeout is always sent: {body}");

    let before = Instant::now();
    let (code_, message) = app(c.execute(&tb, &exec("sleep 30", 1)).await.unwrap_err());
    assert_eq!(code_, "daytona_command_timeout");
    assert!(message.contains("1 s"), "{message}");
    assert!(before.elapsed() < Duration::from_secs(10));

    // A toolbox that never answers: the HTTP wait ends at timeout + grace.
    fake.hang_toolbox(true);
    let before = Instant::now();
    assert_eq!(app(c.execute(&tb, &exec("true", 1)).await.unwrap_err()).0, "daytona_command_timeout");
    assert!(before.elapsed() < Duration::from_secs(10), "{:?}", before.elapsed());
    fake.hang_toolbox(false);

    // 429 is retried even for a command (it was not run); 5xx is not.
    fake.fail_next(Scope::Toolbox, 1, 429, None);
    assert_eq!(c.execute(&tb, &exec("echo once >> ran", 5)).await.unwrap().exit_code, 0);
    fake.fail_next(Scope::Toolbox, 1, 500, None);
    assert_eq!(app(c.execute(&tb, &exec("echo twice >> ran", 5)).await.unwrap_err()).0, "daytona_unavailable");
    assert_eq!(std::fs::read_to_string(format!("{home}/repo/ran")).unwrap(), "once\n");

    // Gone: the toolbox says 401, the client says the sandbox is gone (not a bad key).
    fake.vanish(&s.id);
    assert_eq!(app(c.execute(&tb, &exec("true", 5)).await.unwrap_err()).0, "daytona_sandbox_not_found");
}

#[actix_web::test]
async fn sessions_and_sandbox_agent_behind_a_preview_url() {
    let bin = sandbox_agent_bin().expect("the sandbox-agent binary: set KILN_SANDBOX_AGENT_BIN or run .ci/run");
    let fake = FakeDaytona::with_timing(fast());
    let c = client(&fake);
    let s = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let tb = c.wait_until_started(&s.id, WAIT).await.unwrap().toolbox().unwrap();

    c.create_session(&tb, "work").await.expect("session");
    let run = c.session_exec(&tb, "work", "read answer; echo \"got $answer\"", ExecMode::Async).await.expect("exec");
    assert_eq!(run.exit_code, None);
    assert!(c.session_command(&tb, "work", &run.cmd_id).await.unwrap().exit_code.is_none(), "still running");
    c.session_command_input(&tb, "work", &run.cmd_id, "yes\n").await.expect("input");
    let done = eventually(WAIT, "the command ends", || async {
        c.session_command(&tb, "work", &run.cmd_id).await.unwrap().exit_code
    })
    .await;
    assert_eq!(done, 0);
    let logs = c.session_command_logs(&tb, "work", &run.cmd_id).await.expect("logs");
    assert_eq!((logs.output.as_str(), logs.stdout.as_deref()), ("got yes\n", Some("got yes\n")), "JSON logs");
    let sync = c.session_exec(&tb, "work", "echo out; echo err >&2; exit 5", ExecMode::Sync(Duration::from_secs(10))).await.unwrap();
    assert_eq!((sync.exit_code, sync.stdout.as_deref(), sync.stderr.as_deref()), (Some(5), Some("out\n"), Some("err\n")));
    c.delete_session(&tb, "work").await.expect("delete session");
    c.delete_session(&tb, "work").await.expect("deleting it again is fine");

    // sandbox-agent in a session of its own, reached through the preview URL.
    let port = kiln::integrations::sandbox_agent::free_port().unwrap();
    c.create_session(&tb, "agent").await.unwrap();
    let cmd = format!("exec '{bin}' server --no-token --no-telemetry --host 127.0.0.1 --port {port}");
    c.session_exec(&tb, "agent", &cmd, ExecMode::Async).await.unwrap();
    let preview = c.preview_url(&s.id, port).await.expect("preview url");
    assert!(!format!("{preview:?}").contains(preview.token.expose()), "the token is hidden in Debug");
    let health = |p: PreviewUrl| async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(5)).disable_redirects().finish();
        let mut res = client.get(format!("{}/v1/health", p.url)).insert_header((PreviewUrl::TOKEN_HEADER, p.token.expose())).send().await.ok()?;
        let body = res.body().await.ok()?;
        Some((res.status().as_u16(), String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = eventually(WAIT, "sandbox-agent healthy", || {
        let p = preview.clone();
        async move { health(p).await.filter(|(s, _)| *s == 200) }
    })
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // After a restart the old token is refused (a redirect), and a refetched one works.
    c.stop(&s.id).await.unwrap();
    c.wait_until_stopped(&s.id, WAIT).await.unwrap();
    c.start(&s.id).await.unwrap();
    c.wait_until_started(&s.id, WAIT).await.unwrap();
    c.create_session(&tb, "agent").await.unwrap();
    c.session_exec(&tb, "agent", &cmd, ExecMode::Async).await.unwrap();
    let (status, _) = health(preview.clone()).await.expect("an answer");
    assert!(kiln::providers::daytona::api::is_preview_auth_failure(status), "old token: {status}");
    let fresh = c.preview_url(&s.id, port).await.unwrap();
    assert_ne!(fresh.token, preview.token);
    eventually(WAIT, "healthy with the new token", || {
        let p = fresh.clone();
        async move { health(p).await.filter(|(s, _)| *s == 200) }
    })
    .await;
}
