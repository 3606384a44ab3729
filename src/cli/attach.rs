//! `kiln attach`: the local terminal becomes the agent's. Raw mode while
//! attached, the window size forwarded (and again on every resize), `Ctrl-\`
//! detaches and leaves the agent running. The terminal is restored on every way
//! out, errors included.

use std::io::{Read, Write};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::client::{CliError, CliResult};
use super::commands::Ctx;

/// `Ctrl-\` (FS): the detach key.
const DETACH: u8 = 0x1c;
/// How long a detach waits for the server to confirm it has passed the input on.
const DETACH_ACK: std::time::Duration = std::time::Duration::from_secs(10);

/// Puts stdin in raw mode until dropped.
struct RawMode {
    original: libc::termios,
}

impl RawMode {
    /// Raw mode when stdin is a terminal; `None` when it is a pipe or file.
    fn enable() -> CliResult<Option<RawMode>> {
        // SAFETY: plain termios calls on fd 0 with a zeroed struct for output.
        unsafe {
            if libc::isatty(0) != 1 {
                return Ok(None);
            }
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut original) != 0 {
                return Err(CliError(format!("cannot read the terminal mode: {}", std::io::Error::last_os_error())));
            }
            let mut raw = original;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return Err(CliError(format!("cannot set raw mode: {}", std::io::Error::last_os_error())));
            }
            Ok(Some(RawMode { original }))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the mode saved in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.original);
        }
    }
}

/// The local window size, when stdout is a terminal.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
    }
}

fn resize_message() -> Option<awc::ws::Message> {
    let (cols, rows) = window_size()?;
    Some(awc::ws::Message::Text(json!({"type": "resize", "cols": cols, "rows": rows}).to_string().into()))
}

type WsSink = futures_util::stream::SplitSink<
    actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    awc::ws::Message,
>;

/// Shows one frame from the server. Answers `Some` when the stream has ended:
/// `Ok` for a close or its end, `Err` for a broken stream.
async fn show(
    frame: Option<Result<awc::ws::Frame, awc::error::WsProtocolError>>,
    sink: &mut WsSink,
    stdout: &mut std::io::Stdout,
    ending: &mut Option<String>,
) -> CliResult<Option<CliResult<()>>> {
    match frame {
        Some(Ok(awc::ws::Frame::Binary(bytes))) => {
            stdout.write_all(&bytes)?;
            stdout.flush()?;
        }
        Some(Ok(awc::ws::Frame::Text(text))) => {
            let control: Value = serde_json::from_slice(&text).unwrap_or_default();
            if control["type"] == "exited" {
                *ending = Some(match control["code"].as_i64() {
                    Some(code) => format!("the agent exited with code {code}"),
                    None => "the agent is not running".into(),
                });
            }
        }
        Some(Ok(awc::ws::Frame::Ping(p))) => sink.send(awc::ws::Message::Pong(p)).await?,
        Some(Ok(awc::ws::Frame::Close(reason))) => {
            // The token was revoked (4001) or its organization deleted (4004): an error.
            if let Some(gone) = super::commands::credential_gone(&reason) {
                return Ok(Some(Err(gone)));
            }
            if ending.is_none() {
                *ending = reason.and_then(|r| r.description);
            }
            return Ok(Some(Ok(())));
        }
        Some(Ok(_)) => {}
        Some(Err(e)) => return Ok(Some(Err(CliError(format!("the terminal stream broke: {e}"))))),
        None => return Ok(Some(Ok(()))),
    }
    Ok(None)
}

pub async fn attach(ctx: &Ctx, task: &str) -> CliResult<()> {
    let ws = ctx.api.websocket(&ctx.org_path(&format!("/tasks/{}/terminal?offset=0", super::commands::enc(task)))).await?;
    let (mut sink, mut stream) = ws.split();
    let raw = RawMode::enable()?;
    if raw.is_some() {
        eprint!("attached to {task}; Ctrl-\\ detaches\r\n");
    }
    if let Some(msg) = resize_message() {
        sink.send(msg).await?;
    }
    // stdin is read on its own thread: a blocking read never stalls the stream.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdout = std::io::stdout();
    let mut ending: Option<String> = None;
    let result: CliResult<()> = async {
        loop {
            tokio::select! {
                frame = stream.next() => {
                    if let Some(end) = show(frame, &mut sink, &mut stdout, &mut ending).await? {
                        return end;
                    }
                }
                input = rx.recv() => match input {
                    Some(bytes) => {
                        if let Some(pos) = bytes.iter().position(|b| *b == DETACH) {
                            if pos > 0 {
                                sink.send(awc::ws::Message::Binary(bytes[..pos].to_vec().into())).await?;
                            }
                            break;
                        }
                        sink.send(awc::ws::Message::Binary(bytes.into())).await?;
                    }
                    // stdin ended (a pipe or file): what it held has been sent; detach.
                    None => break,
                },
                _ = winch.recv() => {
                    if let Some(msg) = resize_message() {
                        sink.send(msg).await?;
                    }
                }
            }
        }
        // Detach: close, then wait for the server's close, which it sends once the
        // host has taken every byte sent before. Leaving earlier could lose them.
        sink.send(awc::ws::Message::Close(Some(awc::ws::CloseCode::Normal.into()))).await?;
        let deadline = tokio::time::Instant::now() + DETACH_ACK;
        loop {
            let frame = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| {
                CliError(format!(
                    "the server did not confirm the detach within {} s: input typed last may not have reached the agent",
                    DETACH_ACK.as_secs()
                ))
            })?;
            if let Some(end) = show(frame, &mut sink, &mut stdout, &mut ending).await? {
                end?;
                ending.get_or_insert(format!("detached from {task}; the agent keeps running"));
                return Ok(());
            }
        }
    }
    .await;
    drop(raw);
    if let Some(message) = ending {
        eprintln!("\n{message}");
    }
    result
}
