//! The terminal host's wire protocol, over a unix stream socket. Every frame is
//! `[kind: u8][len: u32 big-endian][payload]`.
//!
//! Client to host: `ATTACH` (u64 offset: send output from there, then live),
//! `INPUT` (bytes for the PTY), `RESIZE` (u16 cols, u16 rows), `STATUS` (answered
//! with a `STATUS` frame), `SIGNAL` (i32: send it to the agent's process group)
//! and `RETARGET` (a remote host only: JSON, new base URL and headers).
//! Host to client: `ATTACHED` (u64: the offset output starts from, answering
//! `ATTACH`; an offset past the end is moved back to the end), `OUTPUT` (u64
//! offset of the first byte, then the bytes), `STATUS` (JSON `HostStatus`) and
//! `EXITED` (JSON `ExitInfo`).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const ATTACH: u8 = 1;
pub const INPUT: u8 = 2;
pub const RESIZE: u8 = 3;
pub const STATUS: u8 = 4;
pub const SIGNAL: u8 = 5;
/// The first frame of every connection to a host that has a key: the key.
pub const HELLO: u8 = 6;
/// JSON `{"base_url", "headers"}`: where a remote host now reaches sandbox-agent.
/// A local host closes the connection.
pub const RETARGET: u8 = 7;
pub const OUTPUT: u8 = 101;
pub const STATUS_REPLY: u8 = 102;
pub const EXITED: u8 = 103;
pub const ATTACHED: u8 = 104;

/// Reads the first frame (with a short timeout) and answers whether it is a
/// `HELLO` with `key`, compared in constant time.
pub fn read_hello(stream: &mut std::os::unix::net::UnixStream, key: &[u8]) -> bool {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let frame = read_frame(stream);
    let _ = stream.set_read_timeout(None);
    match frame {
        Ok(Some(f)) if f.kind == HELLO && f.payload.len() == key.len() => {
            f.payload.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        }
        _ => false,
    }
}

/// Largest frame accepted, so a broken peer cannot make us allocate without bound.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, payload: Vec<u8>) -> Frame {
        Frame { kind, payload }
    }

    pub fn attach(offset: u64) -> Frame {
        Frame::new(ATTACH, offset.to_be_bytes().to_vec())
    }

    pub fn resize(cols: u16, rows: u16) -> Frame {
        let mut p = cols.to_be_bytes().to_vec();
        p.extend_from_slice(&rows.to_be_bytes());
        Frame::new(RESIZE, p)
    }

    pub fn signal(sig: i32) -> Frame {
        Frame::new(SIGNAL, sig.to_be_bytes().to_vec())
    }

    pub fn output(offset: u64, bytes: &[u8]) -> Frame {
        let mut p = Vec::with_capacity(8 + bytes.len());
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(bytes);
        Frame::new(OUTPUT, p)
    }

    /// The header and payload, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.payload.len());
        out.push(self.kind);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// A leading u64 (ATTACH, OUTPUT).
    pub fn u64_prefix(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.payload.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }

    /// `(cols, rows)` of a RESIZE.
    pub fn size(&self) -> Option<(u16, u16)> {
        let p = &self.payload;
        (p.len() == 4).then(|| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
    }

    pub fn signal_number(&self) -> Option<i32> {
        let bytes: [u8; 4] = self.payload.get(..4)?.try_into().ok()?;
        Some(i32::from_be_bytes(bytes))
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0u8; payload_len(&header)?];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { kind: header[0], payload }))
}

/// The payload length a header announces, refused above `MAX_FRAME`.
fn payload_len(header: &[u8; 5]) -> io::Result<usize> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    Ok(len)
}

pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode())
}

/// Reads one frame from an async stream; `Ok(None)` on a clean end.
pub async fn read_frame_async(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0u8; payload_len(&header)?];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind: header[0], payload }))
}

/// How the agent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, when it exited on its own.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Which step ended: `setup` (a setup command failed) or `agent`.
    pub phase: String,
    pub at: i64,
    /// Why the run ended when no exit status says it: a remote host whose process
    /// is gone, or whose sandbox-agent could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A remote host's view of its process (see `remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStatus {
    /// sandbox-agent's id of the process driven now (`proc_3`), once created.
    pub process_id: Option<String>,
    /// Whether the host is connected to it now.
    pub connected: bool,
    /// Why it is not, while it is not.
    pub error: Option<String>,
    /// Since when it is in this state (unix ms).
    pub since: i64,
}

/// What the host reports about its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host_pid: u32,
    pub agent_pid: Option<u32>,
    pub running: bool,
    /// `setup` while setup commands run, then `agent`.
    pub phase: String,
    pub exit: Option<ExitInfo>,
    pub started_at: i64,
    pub last_output_at: Option<i64>,
    /// The offset just past the last byte of output.
    pub end_offset: u64,
    /// The oldest offset still kept (older output was rotated away).
    pub start_offset: u64,
    /// Why the log cannot be written, while it cannot (`log write failing: No
    /// space left on device (os error 28)`); output still reaches attachers.
    #[serde(default)]
    pub log_error: Option<String>,
    /// When the log started failing.
    #[serde(default)]
    pub log_error_since: Option<i64>,
    /// Bytes of output missing from the log (holes), since the host started.
    #[serde(default)]
    pub log_dropped_bytes: u64,
    /// Set on a remote host (the agent runs in a sandbox, through sandbox-agent);
    /// `agent_pid` is then always `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStatus>,
    /// Clients attached now (terminal WebSockets, `kiln attach`).
    #[serde(default)]
    pub attached: u32,
    /// When the last attached client went away (unix ms), if one did.
    #[serde(default)]
    pub last_detached_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::attach(42),
            Frame::new(INPUT, b"ls\n".to_vec()),
            Frame::resize(120, 40),
            Frame::signal(15),
            Frame::output(7, b"hello"),
            Frame::new(STATUS, vec![]),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = &buf[..];
        let mut back = Vec::new();
        while let Some(f) = read_frame(&mut r).unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);
        assert_eq!(back[0].u64_prefix(), Some(42));
        assert_eq!(back[2].size(), Some((120, 40)));
        assert_eq!(back[3].signal_number(), Some(15));
        assert_eq!(&back[4].payload[8..], b"hello");
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut big = vec![INPUT];
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_frame(&mut &big[..]).is_err());
        let truncated = [INPUT, 0, 0, 0, 5, b'a'];
        assert!(read_frame(&mut &truncated[..]).is_err());
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
    }
}
