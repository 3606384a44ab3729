//! Terminals: the agent runs in a PTY held by a detached `kiln terminal-host`
//! process (one per sandbox), which keeps an append-only log and serves attachers
//! over a unix socket. The server only connects to hosts; it never owns a PTY, so
//! agents keep running across server restarts. A host in remote mode drives a
//! PTY process in a remote sandbox through sandbox-agent instead (`remote`).

pub mod client;
pub mod host;
pub mod log;
pub mod procs;
pub mod protocol;
pub mod remote;
