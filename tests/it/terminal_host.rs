//! The terminal host as its users meet it: `kiln attach` on a pipe, a log that
//! cannot be written, and kill or archive of a shell task with background jobs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `kiln attach <task>` with `input` on its stdin (a pipe); answers
/// (exit code, stderr). Panics if it has not ended within 30 s.
fn attach_piped(server: &Server, task: &str, input: &[u8]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["--url", &server.url, "attach", task])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &server.dir)
        .env("XDG_CONFIG_HOME", server.dir.join("config"))
        .env("KILN_DATA_DIR", server.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln attach");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write stdin");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln attach did not end within {WAIT:?} (input {:?})", String::from_utf8_lossy(input));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the task's terminal has printed, read from its log on disk.
fn terminal_log(server: &Server, task: &str) -> String {
    let dir = server.data_dir().join("sandboxes").join(task);
    let mut text = String::new();
    for name in ["terminal.log.1", "terminal.log"] {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(dir.join(name)).unwrap_or_default()));
    }
    text
}

/// Creates a task running the default `shell` profile (an interactive bash) and
/// waits until its prompt answers.
async fn shell_task(server: &Server, dir: &Path) -> String {
    let c = server.client();
    c.add_repo("default", &git_repo(dir, "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "a shell", "agent": "shell"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    c.wait_status("default", &id, "running").await;
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.send(b"echo sh\"\"ell-is-up\r").await;
    term.expect("shell-is-up").await;
    id
}

#[actix_web::test]
async fn piped_attach_delivers_every_line_before_it_detaches() {
    let (server, dir) = Server::start(&[]);
    let id = shell_task(&server, dir.path()).await;
    // The line is typed with quotes that the output does not have, so the
    // terminal's echo of the typed line never counts as the command's output.
    for n in 0..20 {
        let input = format!("echo mark\"\"er-{n}-end\n\x1c");
        let (code, err) = attach_piped(&server, &id, input.as_bytes());
        assert_eq!(code, 0, "attach #{n} failed: {err}");
        assert!(err.contains("detached from"), "attach #{n} says it detached: {err}");
    }
    eventually(WAIT, "every marker in the terminal log", || async {
        let log = terminal_log(&server, &id);
        (0..20).all(|n| log.contains(&format!("marker-{n}-end"))).then_some(())
    })
    .await;

    // A pipe that ends without the detach key: what was read is delivered, then
    // attach detaches by itself once the server has acknowledged it.
    let (code, err) = attach_piped(&server, &id, b"echo e\"\"of-marker\n");
    assert_eq!(code, 0, "attach on a pipe without a detach key: {err}");
    assert!(err.contains("detached from"), "{err}");
    eventually(WAIT, "the line of a pipe without a detach key", || async {
        terminal_log(&server, &id).contains("eof-marker").then_some(())
    })
    .await;
    // The shell is still there.
    let task = server.client().get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["status"], "running", "{task}");
}

/// The pids of processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (cmdline == want && !zombie).then_some(pid)
        })
        .collect()
}

/// A shell task starts background jobs (plain, `nohup`, and, with a cgroup,
/// `setsid`); `action` (kill or archive) must stop every one of them, and
/// without waiting out the grace period: the shell ends on the hangup.
async fn stops_everything(action: &str, base: u32, cgroup: bool) {
    let cgroup_setting = if cgroup { "true" } else { "false" };
    let (server, dir) =
        Server::start(&[("KILN_TERMINAL__KILL_GRACE_SECS", "30"), ("KILN_TERMINAL__CGROUP", cgroup_setting)]);
    let c = server.client();
    let id = shell_task(&server, dir.path()).await;
    let uses_cgroup = server.data_dir().join("sandboxes").join(&id).join("agent.cgroup").exists();
    if cgroup {
        // Where cgroup v2 cannot be written (some CI), the session is used instead.
        eprintln!("cgroup in use: {uses_cgroup}");
    } else {
        assert!(!uses_cgroup, "cgroup = false makes none");
    }
    let (plain, nohup, setsid) = (base.to_string(), (base + 1).to_string(), (base + 2).to_string());
    let mut jobs: Vec<Vec<&str>> = vec![vec!["sleep", &plain], vec!["sleep", &nohup]];
    let mut typed = format!("sleep {plain} &\rnohup sleep {nohup} >/dev/null 2>&1 &\r");
    if uses_cgroup {
        // It leaves the session and its parent at once: only the cgroup knows it.
        jobs.push(vec!["sleep", &setsid]);
        typed.push_str(&format!("setsid sleep {setsid} &\r"));
    }
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.send(typed.as_bytes()).await;
    for job in &jobs {
        eventually(WAIT, &format!("{job:?} running"), || async { (!pids_running(job).is_empty()).then_some(()) }).await;
    }

    let asked = Instant::now();
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/{action}"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let took = asked.elapsed();
    for job in &jobs {
        eventually(WAIT, &format!("{job:?} gone after {action}"), || async { pids_running(job).is_empty().then_some(()) })
            .await;
    }
    let events = c.get(&format!("/v1/organizations/default/events?task={id}&kind=sandbox.destroyed")).await.body;
    let stop = events["items"][0]["data"]["agent_stop"].clone();
    // The shell ended on the hangup; nothing needed SIGKILL after the 30 s grace.
    assert_eq!(stop["how"], "hangup", "{stop}");
    assert_eq!(stop["containment"], if uses_cgroup { "cgroup" } else { "session" }, "{stop}");
    assert!(took < Duration::from_secs(20), "{action} took {took:?}: {stop}");
    if uses_cgroup {
        let path = std::fs::read_to_string(server.data_dir().join("sandboxes").join(&id).join("agent.cgroup")).unwrap();
        eventually(WAIT, "the cgroup removed", || async { (!Path::new(path.trim()).exists()).then_some(()) }).await;
    }
}

#[actix_web::test]
async fn kill_stops_the_shell_and_its_background_jobs_at_once() {
    stops_everything("kill", 77710, true).await;
}

#[actix_web::test]
async fn archive_stops_the_shell_and_its_background_jobs_at_once() {
    stops_everything("archive", 77720, true).await;
}

#[actix_web::test]
async fn without_a_cgroup_kill_stops_the_agents_session() {
    stops_everything("kill", 77730, false).await;
}

/// Sets the soft file size limit of process `pid` (the hard one stays).
fn set_file_size_limit(pid: i32, soft: libc::rlim_t) {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit(2) reading the current limits into `old`.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) }, 0);
    let new = libc::rlimit { rlim_cur: soft.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: prlimit(2) setting limits from a valid struct.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) }, 0, "prlimit");
}

/// The log's writes are made to fail for real (a file size limit of 0 on the
/// host: every write to a file fails, as on a full disk), then to work again.
#[actix_web::test]
async fn a_log_that_cannot_be_written_keeps_the_terminal_working_and_is_reported() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let id = shell_task(&server, dir.path()).await;
    let task_path = format!("/v1/organizations/default/tasks/{id}");
    let state_dir = server.data_dir().join("sandboxes").join(&id);
    let host: i32 = std::fs::read_to_string(state_dir.join("host.pid")).unwrap().trim().parse().unwrap();
    let mut term = Term::open(&c, "default", &id, 0).await;
    term.expect("shell-is-up").await;

    set_file_size_limit(host, 0);
    term.send(b"echo dur\"\"ing-full\r").await;
    term.expect("during-full").await;
    let runtime = eventually(WAIT, "the failure in the task's runtime", || async {
        let runtime = c.get(&task_path).await.body["runtime"].clone();
        runtime["log_error"].is_string().then_some(runtime)
    })
    .await;
    assert!(runtime["log_error"].as_str().unwrap().starts_with("log write failing: "), "{runtime}");
    let failed = c.get(&format!("/v1/organizations/default/events?task={id}&kind=terminal.log_write_failed")).await.body;
    assert_eq!(failed["items"].as_array().unwrap().len(), 1, "{failed}");
    assert!(failed["items"][0]["data"]["dropped_bytes"].as_u64().unwrap() > 0, "{failed}");
    // Typing still works, and the task is still running.
    term.send(b"echo sti\"\"ll-here\r").await;
    term.expect("still-here").await;
    assert!(!terminal_log(&server, &id).contains("during-full"), "nothing could be written");
    assert_eq!(c.get(&task_path).await.body["status"], "running");

    // Room again: the log recovers by itself, without new output.
    set_file_size_limit(host, libc::RLIM_INFINITY);
    eventually(WAIT, "the recovery in the task's runtime", || async {
        c.get(&task_path).await.body["runtime"]["log_error"].is_null().then_some(())
    })
    .await;
    let recovered = c.get(&format!("/v1/organizations/default/events?task={id}&kind=terminal.*")).await.body;
    let kinds: Vec<&str> = recovered["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["terminal.log_write_failed", "terminal.log_write_recovered"]);
    term.send(b"echo af\"\"ter-full\r").await;
    term.expect("after-full").await;
    eventually(WAIT, "new output in the log on disk", || async {
        terminal_log(&server, &id).contains("after-full").then_some(())
    })
    .await;

    // A new attacher gets what was kept, with the hole skipped and said so.
    let mut again = Term::open(&c, "default", &id, 0).await;
    again.until(WAIT, "the output after the hole", |t| t.text().contains("after-full")).await;
    assert!(again.text().contains("shell-is-up") && !again.text().contains("during-full"), "{}", again.text());
    assert!(again.controls.iter().any(|v| v["type"] == "offset"), "the hole is announced: {:?}", again.controls);
    // Where "after-full" ends, in stream offsets, is the same for both: compared at
    // that text, since either may have read more of the prompt after it by now.
    let end_of = |t: &Term| -> u64 {
        let needle = b"after-full";
        let at = t.output.windows(needle.len()).rposition(|w| w == needle).expect("after-full") + needle.len();
        t.offset - (t.output.len() - at) as u64
    };
    assert_eq!(end_of(&again), end_of(&term), "offsets agree across the hole");
}
