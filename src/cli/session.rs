//! `kiln session …`: ACP sessions with a task's agent. `prompt` streams the
//! reply from the organization's event stream as the journal records it.

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use structopt::StructOpt;

use super::client::{CliError, CliResult};
use super::commands::{connect_with_retry, credential_gone, enc, Ctx};
use super::output::{self, field};
use crate::http::dto;

#[derive(Debug, StructOpt)]
pub enum SessionCmd {
    /// Open a session with the task's agent over ACP.
    New {
        task: String,
        /// The sandbox-agent agent (claude, codex, …); default: the task profile's `acp`.
        #[structopt(long)]
        agent: Option<String>,
        #[structopt(long)]
        mode: Option<String>,
        #[structopt(long)]
        model: Option<String>,
        #[structopt(long)]
        json: bool,
    },
    /// List a task's sessions.
    List {
        task: String,
        #[structopt(long)]
        json: bool,
    },
    /// Send a prompt and stream the reply until the turn ends.
    Prompt {
        task: String,
        session: String,
        /// Print the journal entries as JSON lines instead of the reply text.
        #[structopt(long)]
        json: bool,
        /// Return once the prompt is accepted, without streaming the reply.
        #[structopt(long)]
        no_wait: bool,
        #[structopt(required = true)]
        text: Vec<String>,
    },
    /// Talk with a session: each line read is a prompt, the reply streams back,
    /// and permission requests are asked on the terminal. Ctrl-D ends.
    Chat { task: String, session: String },
    /// Cancel the turn in progress.
    Cancel {
        task: String,
        session: String,
        #[structopt(long)]
        json: bool,
    },
    /// Answer a pending permission request with an option, or decline it.
    Answer {
        task: String,
        session: String,
        request: String,
        /// The option to choose (as listed by `show`).
        #[structopt(long, required_unless = "cancel")]
        option: Option<String>,
        /// Decline without choosing.
        #[structopt(long)]
        cancel: bool,
        #[structopt(long)]
        json: bool,
    },
    /// Show a session: status, pending permissions and the transcript.
    Show {
        task: String,
        session: String,
        #[structopt(long)]
        json: bool,
    },
    /// Close a session (its ACP instance is stopped).
    Close {
        task: String,
        session: String,
        #[structopt(long)]
        json: bool,
    },
}

fn path(ctx: &Ctx, task: &str, rest: &str) -> String {
    ctx.org_path(&format!("/tasks/{}/sessions{rest}", enc(task)))
}

pub async fn run(ctx: &Ctx, cmd: SessionCmd) -> CliResult<()> {
    match cmd {
        SessionCmd::New { task, agent, mode, model, json } => {
            eprintln!("opening a session with the agent (it may be installed first)…");
            let res: Value = ctx.api.post(&path(ctx, &task, ""), &dto::CreateSession { agent, mode, model }).await?;
            if json {
                output::json(&res);
            } else {
                println!("session {} ({}) is {}", field(&res, "id"), field(&res, "agent"), field(&res, "status"));
            }
            Ok(())
        }
        SessionCmd::List { task, json } => {
            let res: Value = ctx.api.get(&path(ctx, &task, "")).await?;
            if json {
                output::json(&res);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = res["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    vec![
                        field(s, "id"),
                        field(s, "agent"),
                        field(s, "status"),
                        if s["awaiting_input"] == true { "yes".into() } else { "-".into() },
                        field(s, "stop_reason"),
                        s["created_at"].as_i64().map(output::time).unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(&["SESSION", "AGENT", "STATUS", "AWAITING", "LAST STOP", "CREATED"], &rows);
            Ok(())
        }
        SessionCmd::Prompt { task, session, json, no_wait, text } => {
            let body = dto::SessionPrompt { text: text.join(" ") };
            let res: Value = ctx.api.post(&path(ctx, &task, &format!("/{}/prompt", enc(&session))), &body).await?;
            if let Some(how) = res["restored"].as_str() {
                eprintln!("(the session was lost and has been restored with session/{how})");
            }
            if no_wait {
                if json {
                    output::json(&res);
                }
                return Ok(());
            }
            stream_turn(ctx, &task, &session, &res, if json { Mode::Json } else { Mode::Text }).await
        }
        SessionCmd::Chat { task, session } => chat(ctx, &task, &session).await,
        SessionCmd::Cancel { task, session, json } => {
            let res: dto::Cancelled = ctx.api.post(&path(ctx, &task, &format!("/{}/cancel", enc(&session))), &json!({})).await?;
            if json {
                output::json(&serde_json::to_value(&res)?);
            } else {
                println!("cancelled ({} permission request(s) declined)", res.permissions_cancelled);
            }
            Ok(())
        }
        SessionCmd::Answer { task, session, request, option, cancel, json } => {
            let body = if cancel {
                dto::PermissionAnswer { option_id: None, outcome: Some("cancelled".into()) }
            } else {
                dto::PermissionAnswer { option_id: option, outcome: None }
            };
            let url = path(ctx, &task, &format!("/{}/permissions/{}", enc(&session), enc(&request)));
            let res: dto::PermissionAnswered = ctx.api.post(&url, &body).await?;
            if json {
                output::json(&serde_json::to_value(&res)?);
            } else {
                println!("answered {}: {}", res.request, res.outcome);
            }
            Ok(())
        }
        SessionCmd::Show { task, session, json } => {
            let res: Value = ctx.api.get(&path(ctx, &task, &format!("/{}/transcript", enc(&session)))).await?;
            if json {
                output::json(&res);
            } else {
                print_transcript(&res);
            }
            Ok(())
        }
        SessionCmd::Close { task, session, json } => {
            let res: Value = ctx.api.delete_json(&path(ctx, &task, &format!("/{}", enc(&session)))).await?;
            if json {
                output::json(&res);
            } else {
                println!("session {} is {}", field(&res, "id"), field(&res, "status"));
            }
            Ok(())
        }
    }
}

fn print_transcript(res: &Value) {
    let s = &res["session"];
    let t = &res["transcript"];
    println!("session {} ({}), {}", field(s, "id"), field(s, "agent"), field(s, "status"));
    for item in t["items"].as_array().cloned().unwrap_or_default() {
        match item["type"].as_str().unwrap_or_default() {
            "user" => println!("\n> {}", field(&item, "text")),
            "agent" => println!("{}", field(&item, "text")),
            "thought" => println!("  (thinking) {}", field(&item, "text")),
            "tool_call" => println!("  [tool] {} ({})", field(&item, "title"), field(&item, "status")),
            "permission" => println!(
                "  [permission {}] {}",
                field(&item, "request"),
                if item["outcome"].is_null() { "waiting".to_string() } else { item["outcome"].to_string() }
            ),
            "turn_ended" => {
                println!("  [turn ended: {}]", item["stop_reason"].as_str().or(item["error"].as_str()).unwrap_or("?"))
            }
            _ => {}
        }
    }
    if let Some(plan) = t["plan"].as_array() {
        println!("\nplan:");
        for e in plan {
            println!("  [{}] {}", field(e, "status"), field(e, "content"));
        }
    }
    for p in t["pending_permissions"].as_array().cloned().unwrap_or_default() {
        let options: Vec<String> =
            p["options"].as_array().cloned().unwrap_or_default().iter().map(|o| field(o, "optionId")).collect();
        println!("\nwaiting for permission {}: options {}", field(&p, "request"), options.join(", "));
    }
}

/// How a turn is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The reply's text; permission requests say how to answer them.
    Text,
    /// The journal entries as JSON lines.
    Json,
    /// The reply's text; permission requests are asked on the terminal.
    Chat,
}

/// One line from standard input (`None` at its end), read off the runtime.
async fn read_line() -> CliResult<Option<String>> {
    let read = actix_web::rt::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n > 0).then_some(line))
    })
    .await
    .map_err(|e| CliError(format!("reading standard input: {e}")))?;
    read.map_err(|e| CliError(format!("reading standard input: {e}")))
}

async fn chat(ctx: &Ctx, task: &str, session: &str) -> CliResult<()> {
    eprintln!("session {session}: type a prompt and press Enter; Ctrl-D ends");
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = read_line().await? else {
            eprintln!();
            return Ok(());
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let url = path(ctx, task, &format!("/{}/prompt", enc(session)));
        let turn = async {
            let res: Value = ctx.api.post(&url, &dto::SessionPrompt { text: text.to_string() }).await?;
            if let Some(how) = res["restored"].as_str() {
                eprintln!("(the session was lost and has been restored with session/{how})");
            }
            stream_turn(ctx, task, session, &res, Mode::Chat).await
        };
        // A failed turn is said, and the conversation goes on.
        if let Err(CliError(message)) = turn.await {
            eprintln!("error: {message}");
        }
    }
}

/// Asks on the terminal which option answers a permission request, and sends it.
async fn ask_permission(ctx: &Ctx, task: &str, session: &str, envelope: &Value) -> CliResult<()> {
    let options = envelope["params"]["options"].as_array().cloned().unwrap_or_default();
    let request = envelope["id"].as_str().map(str::to_string).unwrap_or_else(|| envelope["id"].to_string());
    eprintln!("\n[permission] the agent asks for {}:", field(&envelope["params"]["toolCall"], "toolCallId"));
    for (i, o) in options.iter().enumerate() {
        eprintln!("  {}. {} ({})", i + 1, field(o, "name"), field(o, "optionId"));
    }
    eprint!("choose 1-{} (Enter declines): ", options.len());
    let _ = std::io::stderr().flush();
    let line = read_line().await?.unwrap_or_default();
    let choice = line.trim();
    let option = choice
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| options.get(i))
        .map(|o| field(o, "optionId"))
        .or_else(|| options.iter().map(|o| field(o, "optionId")).find(|id| id == choice));
    let body = match &option {
        Some(id) => dto::PermissionAnswer { option_id: Some(id.clone()), outcome: None },
        None => dto::PermissionAnswer { option_id: None, outcome: Some("cancelled".into()) },
    };
    let url = path(ctx, task, &format!("/{}/permissions/{}", enc(session), enc(&request)));
    let _: Value = ctx.api.post(&url, &body).await?;
    eprintln!("[{}]", option.as_deref().unwrap_or("declined"));
    Ok(())
}

/// Follows the stream from the prompt's event until the turn's response.
async fn stream_turn(ctx: &Ctx, task: &str, session: &str, accepted: &Value, mode: Mode) -> CliResult<()> {
    let json = mode == Mode::Json;
    let request_id = accepted["request_id"].clone();
    let mut since = accepted["event_id"].as_i64().unwrap_or(0);
    let stdout = std::io::stdout();
    loop {
        let mut ws = connect_with_retry(ctx, &format!("/stream?since={since}&session={}", enc(session))).await?;
        while let Some(frame) = ws.next().await {
            let bytes = match frame? {
                awc::ws::Frame::Text(bytes) => bytes,
                awc::ws::Frame::Ping(p) => {
                    ws.send(awc::ws::Message::Pong(p)).await?;
                    continue;
                }
                awc::ws::Frame::Close(reason) => match credential_gone(&reason) {
                    Some(gone) => return Err(gone),
                    None => break,
                },
                _ => continue,
            };
            let Ok(event) = serde_json::from_slice::<Value>(&bytes) else { continue };
            since = event["id"].as_i64().unwrap_or(since);
            if event["session"] != session || event["task"] != task {
                continue;
            }
            if json {
                println!("{event}");
            }
            let envelope = &event["data"]["envelope"];
            match event["kind"].as_str().unwrap_or_default() {
                "session.update" if !json && event["data"]["replay"] != true => {
                    let update = &envelope["params"]["update"];
                    match update["sessionUpdate"].as_str().unwrap_or_default() {
                        "agent_message_chunk" => {
                            let mut out = stdout.lock();
                            let _ = write!(out, "{}", update["content"]["text"].as_str().unwrap_or_default());
                            let _ = out.flush();
                        }
                        "tool_call" => eprintln!("\n[tool] {} ({})", field(update, "title"), field(update, "status")),
                        "tool_call_update" if update["status"].is_string() => {
                            eprintln!("[tool {}] {}", field(update, "toolCallId"), field(update, "status"))
                        }
                        _ => {}
                    }
                }
                "session.request" if envelope["method"] == "session/request_permission" && mode == Mode::Chat => {
                    ask_permission(ctx, task, session, envelope).await?;
                }
                "session.request" if envelope["method"] == "session/request_permission" => {
                    let options: Vec<String> = envelope["params"]["options"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|o| field(o, "optionId"))
                        .collect();
                    eprintln!(
                        "\n[permission {}] the agent waits: `kiln session answer {task} {session} {} --option <{}>`",
                        envelope["id"],
                        envelope["id"].as_str().map(str::to_string).unwrap_or_else(|| envelope["id"].to_string()),
                        options.join("|")
                    );
                }
                "session.response" if envelope["id"] == request_id => {
                    if !json {
                        println!();
                    }
                    if let Some(err) = envelope.get("error") {
                        return Err(CliError(format!("the turn failed: {}", err["message"].as_str().unwrap_or("error"))));
                    }
                    if !json {
                        eprintln!("[{}]", envelope["result"]["stopReason"].as_str().unwrap_or("done"));
                    }
                    return Ok(());
                }
                "session.notification" if matches!(envelope["method"].as_str(), Some("_adapter/agent_exited" | "_kiln/session_lost")) => {
                    return Err(CliError(
                        "the agent went away during the turn; the next prompt restores the session".into(),
                    ));
                }
                _ => {}
            }
        }
        actix_web::rt::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
