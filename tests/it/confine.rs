//! Agent confinement (Landlock), with real processes on the real kernel: what a
//! `shell` agent driven with an organization's token can and cannot reach; setup
//! commands; the sandbox-agent server of an ACP profile; what Kiln's own git does
//! with a config the agent planted; and the `required` / `auto` modes on a kernel
//! that cannot (simulated with `sandboxes.confine_min_abi` above this kernel's ABI).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Admin creates `alpha` and `beta` with a repository each (and beta a second
/// one); answers beta's client (an organization token, not the admin's).
async fn two_tenants(server: &Server, dir: &Path) -> Client {
    let admin = server.client();
    for org in ["alpha", "beta"] {
        assert_eq!(admin.post("/v1/organizations", json!({"name": org})).await.status, 201);
    }
    admin.add_repo("alpha", &git_repo(&dir.join("alpha"), "app")).await;
    admin.add_repo("beta", &git_repo(&dir.join("beta"), "app")).await;
    admin.add_repo("beta", &git_repo(&dir.join("beta"), "other")).await;
    let tok = admin.post("/v1/organizations/beta/tokens", json!({"name": "beta"})).await;
    assert_eq!(tok.status, 201, "{tok:?}");
    server.client().with_token(tok.body["token"].as_str())
}

/// Types `line` into the task's terminal and waits for `marker` in its output.
async fn run_in_terminal(c: &Client, org: &str, task: &str, line: &str, marker: &str) -> String {
    let mut term = Term::open(c, org, task, 0).await;
    term.send(format!("{line}\r").as_bytes()).await;
    let m = marker.to_string();
    term.until(Duration::from_secs(120), marker, move |t| t.text().contains(&m)).await;
    term.text()
}

fn probe_script(data: &Path, server_pid: u32, task: &str, alpha_task: &str, config: &Path) -> String {
    let d = data.display();
    format!(
        r#"probe() {{
  name=$1; shift
  out=$("$@" 2>&1 </dev/null); rc=$?
  if [ $rc -ne 0 ] && printf %s "$out" | grep -q -e "Permission denied" -e "Operation not permitted"; then echo "DENIED $name"
  else echo "LEAK $name rc=$rc: $(printf %s "$out" | head -c 300 | tr '\n' ' ')"; fi
}}
# A server fd can close between the listing and the probe: gone is not a leak.
probe_fd() {{
  name=$1; shift
  out=$("$@" 2>&1 </dev/null); rc=$?
  if [ $rc -ne 0 ] && printf %s "$out" | grep -q -e "Permission denied" -e "Operation not permitted"; then echo "DENIED $name"
  elif [ $rc -ne 0 ] && printf %s "$out" | grep -q "No such file or directory"; then echo "GONE $name"
  else echo "LEAK $name rc=$rc: $(printf %s "$out" | head -c 300 | tr '\n' ' ')"; fi
}}
fails() {{ name=$1; shift; if "$@" >/dev/null 2>&1 </dev/null; then echo "LEAK $name"; else echo "DENIED $name"; fi; }}
D={d}; P={server_pid}
probe admin_token cat $D/admin.token
probe relative_path cat ../../../../admin.token
probe kiln_db cat $D/kiln.db
fails kiln_db_sqlite sqlite3 $D/kiln.db "select token_hash from api_tokens"
probe server_environ cat /proc/$P/environ
# The numbers in /proc/<pid>/fd are listed; what they point at is not.
for n in $(ls /proc/$P/fd); do
  probe_fd server_fd_link_$n readlink -v /proc/$P/fd/$n
  probe_fd server_fd_open_$n timeout 5 cat /proc/$P/fd/$n
done
probe server_root cat /proc/$P/root$D/admin.token
probe server_cwd ls /proc/$P/cwd/
ln -s $D/admin.token abs-link; probe symlink_absolute cat abs-link
ln -s ../../../../admin.token rel-link; probe symlink_relative cat rel-link
fails hardlink ln $D/admin.token hard-link
probe alpha_worktree cat $D/worktrees/alpha/app/{alpha_task}/README.md
probe alpha_mirror cat $D/repos/alpha/app.git/config
probe alpha_home ls $D/homes/alpha
probe other_repo_mirror cat $D/repos/beta/other.git/config
probe data_dir ls $D
probe host_key cat $D/sandboxes/{task}/host.key
probe terminal_log cat $D/sandboxes/{task}/terminal.log
probe server_config cat {config}
probe write_data_dir sh -c "echo x > $D/pwned"
probe write_tmp sh -c "echo x > /tmp/kiln-confine-pwned-{task}"
probe write_sibling sh -c "echo x > ../sibling-{task}"
probe write_mirror_config sh -c "echo x >> $D/repos/beta/app.git/config"
probe write_mirror_hook sh -c "echo x > $D/repos/beta/app.git/hooks/post-checkout"
probe write_alternates sh -c "echo $D/repos/alpha/app.git/objects > $D/repos/beta/app.git/objects/info/alternates"
probe replace_objects_info mv $D/repos/beta/app.git/objects/info $D/repos/beta/app.git/objects/info-old
probe make_objects_dir mkdir $D/repos/beta/app.git/objects/info2
probe dev_shm_write sh -c "echo x > /dev/shm/kiln-probe-{task}"
probe dev_shm_list ls /dev/shm
probe signal_server kill -0 $P
fails mknod_disk mknod disk b 8 0
echo PROBES-DONE
cat > hello.c <<'EOF'
#include <stdio.h>
int main(void) {{ puts("HELLO-FROM-CC"); return 0; }}
EOF
cc -o hello hello.c && ./hello
echo change > agent-change.txt && git add agent-change.txt && git -c user.name=Agent -c user.email=agent@kiln.invalid commit -qm "agent change" && echo COMMIT-OK
echo WORK-DONE
"#,
        config = config.display(),
        task = task,
        alpha_task = alpha_task,
    )
}

#[actix_web::test]
async fn an_organization_token_and_a_shell_agent_cannot_reach_the_admin_token_or_another_tenant() {
    let (server, dir) = Server::start(&[]);
    let beta = two_tenants(&server, dir.path()).await;
    let admin = server.client();
    let alpha_task = admin.create_task("alpha", "app", "alpha's work").await["id"].as_str().unwrap().to_string();
    let t = beta.create_task_with("beta", json!({"repo": "app", "description": "probe", "agent": "sh"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    let task = beta.wait_status("beta", &id, "running").await;
    let kernel = kiln::confine::kernel_abi();
    assert!(kernel >= 2, "this test needs Landlock (kernel ABI {kernel})");
    assert_eq!(task["runtime"]["confined"], true, "{task}");
    assert_eq!(task["runtime"]["confine_abi"], json!(kernel.min(kiln::confine::KNOWN_ABI)), "{task}");

    let data = server.data_dir();
    let worktree = data.join(format!("worktrees/beta/app/{id}"));
    let script = probe_script(&data, server.pid(), &id, &alpha_task, &dir.path().join("kiln-test.toml"));
    std::fs::write(worktree.join("probe.sh"), &script).unwrap();
    let out = run_in_terminal(&beta, "beta", &id, "bash probe.sh", "WORK-DONE").await;

    let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert!(!out.contains(admin_token.trim()), "the admin token reached the agent:\n{out}");
    let leaks: Vec<&str> = out.lines().filter(|l| l.contains("LEAK ")).collect();
    assert!(leaks.is_empty(), "the agent reached what it must not:\n{}", leaks.join("\n"));
    // Every probe of the script ran and was refused (the server's fds are probed
    // in a loop, two probes each, however many it has open just then).
    // A terminal's lines end in CR, and the first may carry the shell's escapes.
    let denied: Vec<&str> = out.lines().filter_map(|l| l.trim_end().split_once("DENIED ").map(|(_, name)| name)).collect();
    let expected: Vec<&str> = script
        .lines()
        .flat_map(|l| l.split(';'))
        .filter_map(|part| part.trim_start().strip_prefix("probe ").or_else(|| part.trim_start().strip_prefix("fails ")))
        .filter(|rest| !rest.contains("$n"))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(expected.len() >= 25, "the script's probes: {expected:?}");
    for name in &expected {
        assert!(denied.contains(name), "the probe `{name}` did not run, or was not refused:\n{out}");
    }
    assert!(denied.iter().any(|d| d.starts_with("server_fd_open_")), "the server's fds were probed:\n{out}");
    assert!(!data.join("pwned").exists() && !Path::new(&format!("/tmp/kiln-confine-pwned-{id}")).exists());
    // What it may do: build with a real toolchain, commit in its worktree.
    assert!(out.lines().any(|l| l.trim() == "HELLO-FROM-CC"), "cc in the worktree:\n{out}");
    assert!(out.lines().any(|l| l.trim() == "COMMIT-OK"), "git commit in the worktree:\n{out}");
    // And Kiln pushes that commit.
    let r = beta.post(&format!("/v1/organizations/beta/tasks/{id}/push"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let origin = dir.path().join("beta/app");
    let branch = task["branch"].as_str().unwrap();
    assert_eq!(git(&origin, &["log", "-1", "--format=%s", branch]), "agent change");

    // `kiln show` says so.
    let (code, stdout, stderr) = cli(&server, &["--organization", "beta", "show", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("yes (Landlock ABI {})", kernel.min(kiln::confine::KNOWN_ABI))), "{stdout}");
}

#[actix_web::test]
async fn kiln_s_own_git_runs_what_an_agent_planted_only_inside_the_task_s_jail() {
    let (server, dir) = Server::start(&[]);
    let beta = two_tenants(&server, dir.path()).await;
    let t = beta.create_task_with("beta", json!({"repo": "app", "description": "plant", "agent": "sh"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    beta.wait_status("beta", &id, "running").await;
    let data = server.data_dir();
    let w = data.join(format!("worktrees/beta/app/{id}"));
    let mirror = data.join("repos/beta/app.git");
    // The agent cannot touch the mirror's config or hooks, so it points its
    // worktree at a git dir of its own, whose config runs programs.
    let plant = format!(
        r#"fails() {{ if "$@" >/dev/null 2>&1; then echo "PLANTED $1"; fi; }}
fails sh -c "echo '[core]\n\tfsmonitor = touch {w}/fsmonitor-ran' >> {m}/config"
fails sh -c "printf '#!/bin/sh\ntouch {w}/hook-ran\n' > {m}/hooks/pre-push && chmod +x {m}/hooks/pre-push"
git init -q evil && mv evil/.git evilgit && rm -rf evil
git config -f evilgit/config filter.evil.clean "sh -c 'id > {w}/filter-ran; cat {d}/admin.token > {w}/stolen 2>&1; cat'"
git config -f evilgit/config core.fsmonitor "touch {w}/fsmonitor-ran"
echo '* filter=evil' > .gitattributes
printf 'gitdir: {w}/evilgit\n' > .git
echo x > newfile
echo PLANT-DONE
"#,
        w = w.display(),
        m = mirror.display(),
        d = data.display()
    );
    std::fs::write(w.join("plant.sh"), plant).unwrap();
    let out = run_in_terminal(&beta, "beta", &id, "bash plant.sh", "PLANT-DONE").await;
    assert!(!out.lines().any(|l| l.starts_with("PLANTED")), "{out}");
    // Kiln commits (and pushes): its git runs the planted filter...
    let _ = beta.post(&format!("/v1/organizations/beta/tasks/{id}/push"), json!({"commit": "kiln's commit"})).await;
    assert!(w.join("filter-ran").exists(), "Kiln's git in the worktree ran the filter (so it was confined, not skipped)");
    // ...but only with the agent's own reach.
    let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let stolen = std::fs::read_to_string(w.join("stolen")).unwrap_or_default();
    assert!(!stolen.contains(admin_token.trim()), "{stolen}");
    assert!(stolen.contains("Permission denied"), "{stolen}");
    assert!(!w.join("fsmonitor-ran").exists() && !w.join("hook-ran").exists());
    // The mirror's config is still Kiln's.
    assert!(!std::fs::read_to_string(mirror.join("config")).unwrap().contains("fsmonitor"));
}

#[actix_web::test]
async fn setup_commands_are_confined() {
    let (server, dir) = Server::start(&[]);
    let beta = two_tenants(&server, dir.path()).await;
    let token = server.data_dir().join("admin.token");
    let r = beta
        .put(
            "/v1/organizations/beta/repos/app/setup",
            json!({"commands": ["echo built > setup-ran", format!("cat {}", token.display())]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = beta.create_task_with("beta", json!({"repo": "app", "description": "setup"})).await;
    let id = t["id"].as_str().unwrap();
    let task = beta.wait_status("beta", id, "failed").await;
    let reason = task["status_reason"].as_str().unwrap();
    assert!(reason.contains("Permission denied"), "{reason}");
    let admin_token = std::fs::read_to_string(&token).unwrap();
    assert!(!reason.contains(admin_token.trim()));
    let mut term = Term::open(&beta, "beta", id, 0).await;
    term.expect("Permission denied").await;
    assert!(!term.text().contains(admin_token.trim()));
}

/// Reads `sandbox-agent.json` of a task: (port, token, pid).
fn agent_record(state_dir: &Path) -> (u16, String, u32) {
    let v: Value = serde_json::from_slice(&std::fs::read(state_dir.join("sandbox-agent.json")).unwrap()).unwrap();
    (v["port"].as_u64().unwrap() as u16, v["token"].as_str().unwrap().to_string(), v["pid"].as_u64().unwrap() as u32)
}

#[actix_web::test]
async fn an_acp_profile_s_sandbox_agent_server_and_what_it_runs_are_confined() {
    if sandbox_agent_bin().is_none() {
        eprintln!("skipped: sandbox-agent is not installed (KILN_SANDBOX_AGENT_BIN)");
        return;
    }
    let (server, dir) = Server::start(&[]);
    let beta = two_tenants(&server, dir.path()).await;
    let t = beta.create_task_with("beta", json!({"repo": "app", "description": "acp", "agent": "acp"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    beta.wait_status("beta", &id, "running").await;
    let data = server.data_dir();
    let state_dir = data.join(format!("sandboxes/{id}"));
    let (port, token, pid) = agent_record(&state_dir);
    // Its HOME is the organization's agent home.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let home = format!("HOME={}", data.join("homes/beta").display());
    assert!(environ.split(|b| *b == 0).any(|e| e == home.as_bytes()), "sandbox-agent runs with {home}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("CapBnd:\t") && l.ends_with("0000000000000000")), "{status}");
    // Ask it to run programs (its process API): they run in the task's jail.
    let http = awc::Client::default();
    let run = |cmd: &str, args: Vec<String>| {
        let req = http
            .post(format!("http://127.0.0.1:{port}/v1/processes/run"))
            .bearer_auth(&token)
            .send_json(&json!({"command": cmd, "args": args, "cwd": data.join(format!("worktrees/beta/app/{id}"))}));
        async move {
            let mut res = req.await.expect("sandbox-agent answers");
            let body: Value = res.json().await.expect("json");
            body
        }
    };
    let secret = run("cat", vec![data.join("admin.token").display().to_string()]).await;
    assert_ne!(secret["exitCode"], 0, "{secret}");
    assert!(secret["stderr"].as_str().unwrap_or_default().contains("Permission denied"), "{secret}");
    let alpha = run("ls", vec![data.join("repos/alpha").display().to_string()]).await;
    assert!(alpha["stderr"].as_str().unwrap_or_default().contains("Permission denied"), "{alpha}");
    let own = run("cat", vec!["README.md".into()]).await;
    assert_eq!(own["exitCode"], 0, "{own}");
    assert_eq!(own["stdout"], "hello\n");
    let server_pid = server.pid().to_string();
    let kill = run("kill", vec!["-0".into(), server_pid]).await;
    assert_ne!(kill["exitCode"], 0, "{kill}");
}

#[actix_web::test]
async fn required_refuses_to_start_an_agent_the_kernel_cannot_confine() {
    let (server, dir) = Server::start(&[("KILN_SANDBOXES__CONFINE", "required"), ("KILN_SANDBOXES__CONFINE_MIN_ABI", "99")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "never"})).await;
    let id = t["id"].as_str().unwrap();
    let task = c.wait_status("default", id, "failed").await;
    let reason = task["status_reason"].as_str().unwrap();
    assert!(reason.contains("\"required\"") && reason.contains("99"), "{reason}");
    assert!(!server.data_dir().join(format!("sandboxes/{id}/host.pid")).exists(), "no host was started");
    assert!(server.log().contains("every task's provisioning will fail"), "said at boot");
}

#[actix_web::test]
async fn auto_on_a_kernel_that_cannot_runs_unconfined_and_says_so() {
    let (server, dir) = Server::start(&[("KILN_SANDBOXES__CONFINE_MIN_ABI", "99")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let id = c.create_task("default", "app", "unconfined").await["id"].as_str().unwrap().to_string();
    let task = c.get(&format!("/v1/organizations/default/tasks/{id}")).await.body;
    assert_eq!(task["runtime"]["confined"], false, "{task}");
    assert!(task["runtime"]["confine_abi"].is_null());
    let event = eventually(WAIT, "sandbox.unconfined", || {
        let c = c.clone();
        async move { c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "sandbox.unconfined") }
    })
    .await;
    assert_eq!(event["data"]["mode"], "auto");
    assert!(event["data"]["reason"].as_str().unwrap().contains("99"), "{event}");
    assert!(server.log().contains("AGENTS ARE NOT CONFINED"));
    let (_, stdout, _) = cli(&server, &["show", &id]);
    assert!(stdout.contains("NO:"), "{stdout}");
}
