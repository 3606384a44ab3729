//! `kiln attach` against a scripted terminal WebSocket: a stream the server cuts
//! (1013, a slow reader let go by the terminal host) is resumed from the offset
//! reached, and a piped stdin that ends still shows the output it caused.
//!
//! The fake speaks the terminal protocol of docs/sandboxes.md ("Terminal
//! WebSocket") on an ephemeral port, so the cut happens exactly when the test
//! says, on any machine.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use serde_json::json;

use crate::common::BIN;

/// The whole terminal output the fake holds; a first connection is cut after `CUT` bytes.
const OUTPUT: &[u8] = b"first-second";
const CUT: usize = 6;

/// What the fake does on each connection.
#[derive(Clone, Copy)]
enum Script {
    /// First connection: output up to `CUT`, then 1013; later ones: the rest, `exited`, 1000.
    CutOnce,
    /// Answers input with `pong` 300 ms later (after the client may already have
    /// seen its stdin end), and a client's close with its own.
    DelayedEcho,
}

#[derive(Default)]
struct Seen {
    /// The `offset` query of each connection, in order.
    offsets: Vec<u64>,
}

struct FakeTerminal {
    script: Script,
    offset: u64,
    connection: usize,
}

impl Actor for FakeTerminal {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.text(json!({"type": "attached", "offset": self.offset}).to_string());
        if let Script::CutOnce = self.script {
            let from = (self.offset as usize).min(OUTPUT.len());
            if self.connection == 0 {
                ctx.binary(OUTPUT[from..CUT.max(from)].to_vec());
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Again,
                    description: Some(format!("terminal stream interrupted; reconnect with offset={CUT}")),
                }));
                ctx.stop();
            } else {
                ctx.binary(OUTPUT[from..].to_vec());
                ctx.text(json!({"type": "exited", "code": 0, "signal": null, "phase": "agent"}).to_string());
                ctx.close(Some(ws::CloseReason { code: ws::CloseCode::Normal, description: Some("the agent exited".into()) }));
                ctx.stop();
            }
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for FakeTerminal {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Binary(_)) => {
                ctx.run_later(Duration::from_millis(300), |_, ctx| ctx.binary(b"pong".to_vec()));
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            _ => {}
        }
    }
}

struct Fake {
    url: String,
    seen: Arc<Mutex<Seen>>,
    handle: actix_web::dev::ServerHandle,
}

/// Starts the fake on an ephemeral port.
fn start(script: Script) -> Fake {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().route(
            "/v1/organizations/default/tasks/t1/terminal",
            web::get().to(move |req: HttpRequest, body: web::Payload| {
                let state = state.clone();
                async move {
                    let offset = req
                        .query_string()
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("offset="))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let connection = {
                        let mut seen = state.lock().unwrap();
                        seen.offsets.push(offset);
                        seen.offsets.len() - 1
                    };
                    ws::start(FakeTerminal { script, offset, connection }, &req, body).map_err(actix_web::Error::from)
                        as Result<HttpResponse, actix_web::Error>
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Fake { url, seen, handle }
}

/// Runs `kiln attach t1` against the fake with `stdin` piped in (closed after it
/// is written, or held open while `hold_stdin`), on the blocking pool.
async fn attach(fake: &Fake, args: &[&str], stdin: &'static [u8], hold_stdin: bool) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--url", &fake.url, "--token", "kiln_fake", "attach"])
        .args(args)
        .arg("t1")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("KILN_DATA_DIR", dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let out = actix_web::rt::task::spawn_blocking(move || {
        std::io::Write::write_all(&mut input, stdin).unwrap();
        // Held open, the stdin cannot be what ends the attach.
        let held = hold_stdin.then_some(input);
        let out = child.wait_with_output().unwrap();
        drop(held);
        out
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("attach ends").unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The server cuts the attach with 1013 (the terminal host let a slow reader
/// go): `kiln attach` reconnects from the offset it reached, shows the rest
/// once (no gap, no repeat) and ends only when the agent does.
#[actix_web::test]
async fn attach_resumes_from_its_offset_when_the_server_cuts_it() {
    let fake = start(Script::CutOnce);
    let (code, stdout, stderr) = attach(&fake, &[], b"", true).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "first-second", "every byte once; stderr: {stderr}");
    assert_eq!(fake.seen.lock().unwrap().offsets, vec![0, CUT as u64], "reconnected from the offset reached");
    assert!(stderr.contains(&format!("resuming from offset {CUT}")), "{stderr}");
    assert!(stderr.contains("the agent exited with code 0"), "{stderr}");
    fake.handle.stop(false).await;
}

/// `printf 'cmd\n' | kiln attach`: the end of stdin detaches, but only once the
/// terminal has been quiet for `--linger`, so output that comes after the last
/// input (a command that takes a moment) is not lost.
#[actix_web::test]
async fn a_piped_attach_shows_the_output_that_follows_the_end_of_stdin() {
    let fake = start(Script::DelayedEcho);
    let (code, stdout, stderr) = attach(&fake, &["--linger", "5"], b"ping\n", false).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "pong", "the answer that came after stdin ended; stderr: {stderr}");
    assert!(stderr.contains("detached from t1"), "{stderr}");
    assert_eq!(fake.seen.lock().unwrap().offsets, vec![0], "one connection");
    fake.handle.stop(false).await;
}
