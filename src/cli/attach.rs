//! `kiln attach`: the local terminal becomes the agent's. Raw mode while
//! attached, the window size forwarded (and again on every resize), `Ctrl-\`
//! detaches and leaves the agent running. The terminal is restored on every way
//! out, errors included.
//!
//! The stream is resumed, not ended, when the server cuts it: 1013 (this client
//! fell behind and the terminal host let it go), 1012 (the server is
//! restarting) or a connection that drops without a close. The client counts the
//! offset of every byte it showed and reconnects with `?offset=<next>`, so
//! nothing is lost or shown twice, and input typed meanwhile is sent once it is
//! back. When stdin is a pipe or a file, its end detaches, but only once the
//! terminal has been quiet for `--linger` seconds, so the output of what was
//! piped in is shown.

use std::io::{Read, Write};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::client::{CliError, CliResult};
use super::commands::Ctx;

/// `Ctrl-\` (FS): the detach key.
const DETACH: u8 = 0x1c;
/// How long a detach waits for the server to confirm it has passed the input on.
const DETACH_ACK: std::time::Duration = std::time::Duration::from_secs(10);
/// Close codes after which the stream is resumed from its offset: the server is
/// restarting (1012), or this client fell behind (1013).
const RESUME_CODES: [u16; 2] = [1012, 1013];

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

/// How one connection ended.
enum Ended {
    /// The server closed for good (the agent ended, or a detach was confirmed),
    /// or the stream failed in a way a reconnect cannot mend.
    Done(CliResult<()>),
    /// The server cut the stream but the terminal goes on: reconnect from the offset.
    Resume(String),
}

/// Where the next byte of output sits in the terminal's log.
struct Cursor {
    next: u64,
}

/// Shows one frame from the server and moves the cursor. Answers `Some` when the
/// stream has ended.
async fn show(
    frame: Option<Result<awc::ws::Frame, awc::error::WsProtocolError>>,
    sink: &mut WsSink,
    stdout: &mut std::io::Stdout,
    ending: &mut Option<String>,
    cursor: &mut Cursor,
) -> CliResult<Option<Ended>> {
    match frame {
        Some(Ok(awc::ws::Frame::Binary(bytes))) => {
            stdout.write_all(&bytes)?;
            stdout.flush()?;
            cursor.next += bytes.len() as u64;
        }
        Some(Ok(awc::ws::Frame::Text(text))) => {
            let control: Value = serde_json::from_slice(&text).unwrap_or_default();
            match control["type"].as_str() {
                // Where output starts (`attached`), or skips to (`offset`).
                Some("attached") | Some("offset") => {
                    if let Some(offset) = control["offset"].as_u64() {
                        cursor.next = offset;
                    }
                }
                Some("exited") => {
                    *ending = Some(match control["code"].as_i64() {
                        Some(code) => format!("the agent exited with code {code}"),
                        None => "the agent is not running".into(),
                    });
                }
                _ => {}
            }
        }
        Some(Ok(awc::ws::Frame::Ping(p))) => sink.send(awc::ws::Message::Pong(p)).await?,
        Some(Ok(awc::ws::Frame::Close(reason))) => {
            // The token was revoked (4001) or its organization deleted (4004): an error.
            if let Some(gone) = super::commands::credential_gone(&reason) {
                return Ok(Some(Ended::Done(Err(gone))));
            }
            let code = reason.as_ref().map(|r| u16::from(r.code));
            let description = reason.and_then(|r| r.description);
            if ending.is_none() && code.is_some_and(|c| RESUME_CODES.contains(&c)) {
                return Ok(Some(Ended::Resume(description.unwrap_or_else(|| "closed by the server".into()))));
            }
            if ending.is_none() {
                *ending = description;
            }
            return Ok(Some(Ended::Done(Ok(()))));
        }
        Some(Ok(_)) => {}
        // Dropped without a close (a killed server, a broken network): the terminal
        // lives on, so come back, unless the agent is known to have ended.
        Some(Err(e)) if ending.is_none() => return Ok(Some(Ended::Resume(format!("the terminal stream broke: {e}")))),
        None if ending.is_none() => return Ok(Some(Ended::Resume("the connection dropped".into()))),
        Some(Err(_)) | None => return Ok(Some(Ended::Done(Ok(())))),
    }
    Ok(None)
}

pub async fn attach(ctx: &Ctx, task: &str, linger: f64) -> CliResult<()> {
    let linger = std::time::Duration::try_from_secs_f64(linger)
        .map_err(|_| CliError(format!("--linger must be a number of seconds, 0 or more (got {linger})")))?;
    let path = |offset: u64| format!("/tasks/{}/terminal?offset={offset}", super::commands::enc(task));
    let ws = ctx.api.websocket(&ctx.org_path(&path(0))).await?;
    let raw = RawMode::enable()?;
    if raw.is_some() {
        eprint!("attached to {task}; Ctrl-\\ detaches\r\n");
    }
    // stdin is read on its own thread: a blocking read never stalls the stream, and
    // what is typed while the stream is being resumed waits in the channel.
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
    let mut cursor = Cursor { next: 0 };
    let mut stdin_open = true;
    let mut ws = Some(ws);
    let result: CliResult<()> = async {
        loop {
            let conn = match ws.take() {
                Some(conn) => conn,
                None => super::commands::connect_with_retry(ctx, &path(cursor.next)).await?,
            };
            let (mut sink, mut stream) = conn.split();
            if let Some(msg) = resize_message() {
                sink.send(msg).await?;
            }
            let session = connection(&mut sink, &mut stream, &mut rx, &mut winch, &mut stdout, &mut ending, &mut cursor, &mut stdin_open, linger);
            match session.await? {
                Some(Ended::Done(end)) => return end,
                Some(Ended::Resume(why)) => {
                    eprint!("\r\n{why}; resuming from offset {}\r\n", cursor.next);
                    continue;
                }
                None => {}
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
                match show(frame, &mut sink, &mut stdout, &mut ending, &mut cursor).await? {
                    Some(Ended::Done(end)) => {
                        end?;
                        ending.get_or_insert(format!("detached from {task}; the agent keeps running"));
                        return Ok(());
                    }
                    // Cut while detaching: what was sent before may not have reached
                    // the agent, so say so instead of claiming a clean detach.
                    Some(Ended::Resume(why)) => {
                        return Err(CliError(format!("{why} while detaching: input typed last may not have reached the agent")))
                    }
                    None => {}
                }
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

/// Runs one connection until it ends (`Some`) or the user detaches (`None`:
/// Ctrl-\, or stdin ended and the terminal has been quiet for `linger`).
#[allow(clippy::too_many_arguments)]
async fn connection(
    sink: &mut WsSink,
    stream: &mut futures_util::stream::SplitStream<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    winch: &mut tokio::signal::unix::Signal,
    stdout: &mut std::io::Stdout,
    ending: &mut Option<String>,
    cursor: &mut Cursor,
    stdin_open: &mut bool,
    linger: std::time::Duration,
) -> CliResult<Option<Ended>> {
    // Once stdin has ended, every frame (and the start) pushes the detach back.
    let mut quiet_until = tokio::time::Instant::now() + linger;
    loop {
        tokio::select! {
            frame = stream.next() => {
                quiet_until = tokio::time::Instant::now() + linger;
                if let Some(end) = show(frame, sink, stdout, ending, cursor).await? {
                    return Ok(Some(end));
                }
            }
            input = rx.recv(), if *stdin_open => match input {
                Some(bytes) => {
                    if let Some(pos) = bytes.iter().position(|b| *b == DETACH) {
                        if pos > 0 {
                            sink.send(awc::ws::Message::Binary(bytes[..pos].to_vec().into())).await?;
                        }
                        return Ok(None);
                    }
                    sink.send(awc::ws::Message::Binary(bytes.into())).await?;
                }
                // stdin ended (a pipe or file): what it held has been sent; detach
                // once the output it caused has had `linger` to arrive.
                None => {
                    *stdin_open = false;
                    quiet_until = tokio::time::Instant::now() + linger;
                }
            },
            _ = tokio::time::sleep_until(quiet_until), if !*stdin_open => return Ok(None),
            _ = winch.recv() => {
                if let Some(msg) = resize_message() {
                    sink.send(msg).await?;
                }
            }
        }
    }
}
