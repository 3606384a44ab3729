//! The terminal's append-only log: every byte the agent printed, addressed by a
//! stream offset that only grows. It keeps two files, `terminal.log` and the
//! rotated `terminal.log.1`, so at most about twice `max_bytes` are on disk; older
//! output is dropped and `start()` moves forward. `terminal.idx` records where
//! each file starts. Only the terminal host writes; anyone may read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const CURRENT: &str = "terminal.log";
const PREVIOUS: &str = "terminal.log.1";
const INDEX: &str = "terminal.idx";

pub struct TerminalLog {
    dir: PathBuf,
    max_bytes: u64,
    current: Option<File>,
    /// Offset of the first byte of `terminal.log.1`, when it exists.
    prev_start: Option<u64>,
    /// Offset of the first byte of `terminal.log`.
    current_start: u64,
    end: u64,
}

impl TerminalLog {
    /// Opens the log in `dir` for appending, creating it if needed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<TerminalLog> {
        let mut log = TerminalLog::read_only(dir)?;
        log.max_bytes = max_bytes.max(1024);
        log.current = Some(OpenOptions::new().create(true).append(true).open(dir.join(CURRENT))?);
        Ok(log)
    }

    /// Opens the log for reading only (the server, when the host is gone).
    pub fn read_only(dir: &Path) -> io::Result<TerminalLog> {
        let (prev_start, current_start) = match std::fs::read_to_string(dir.join(INDEX)) {
            Ok(text) => parse_index(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(e),
        };
        let len = match std::fs::metadata(dir.join(CURRENT)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let prev_start = prev_start.filter(|_| dir.join(PREVIOUS).exists());
        Ok(TerminalLog { dir: dir.to_path_buf(), max_bytes: u64::MAX, current: None, prev_start, current_start, end: current_start + len })
    }

    /// The oldest offset still kept.
    pub fn start(&self) -> u64 {
        self.prev_start.unwrap_or(self.current_start)
    }

    /// The offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends `bytes`; answers the offset of the first one.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let offset = self.end;
        if self.end > self.current_start && self.end - self.current_start + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = self.current.as_mut().ok_or_else(|| io::Error::other("log opened read-only"))?;
        file.write_all(bytes)?;
        self.end += bytes.len() as u64;
        Ok(offset)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let (prev, next) = (self.current_start, self.end);
        write_index(&self.dir, Some(prev), next)?;
        std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
        self.current = Some(OpenOptions::new().create(true).append(true).open(self.dir.join(CURRENT))?);
        self.prev_start = Some(prev);
        self.current_start = next;
        Ok(())
    }

    /// Up to `max` bytes from `offset`. An offset that was rotated away is moved
    /// up to `start()`; the answer says which offset the bytes begin at.
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<(u64, Vec<u8>)> {
        let offset = offset.max(self.start()).min(self.end);
        let (file, file_start, file_end) = match self.prev_start {
            Some(p) if offset < self.current_start => (PREVIOUS, p, self.current_start),
            _ => (CURRENT, self.current_start, self.end),
        };
        let want = ((file_end - offset) as usize).min(max);
        if want == 0 {
            return Ok((offset, Vec::new()));
        }
        let mut f = File::open(self.dir.join(file))?;
        f.seek(SeekFrom::Start(offset - file_start))?;
        let mut buf = vec![0u8; want];
        let n = read_full(&mut f, &mut buf)?;
        buf.truncate(n);
        Ok((offset, buf))
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn parse_index(text: &str) -> (Option<u64>, u64) {
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    let prev = parts.next().flatten();
    let current = parts.next().flatten().unwrap_or(0);
    (prev.filter(|p| *p < current), current)
}

fn write_index(dir: &Path, prev: Option<u64>, current: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{INDEX}.tmp"));
    std::fs::write(&tmp, format!("{} {current}\n", prev.unwrap_or(current)))?;
    std::fs::rename(tmp, dir.join(INDEX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(log: &TerminalLog, from: u64) -> (u64, Vec<u8>) {
        let mut out = Vec::new();
        let mut at = from;
        let mut first = None;
        loop {
            let (off, bytes) = log.read_at(at, 7).unwrap();
            first.get_or_insert(off);
            if bytes.is_empty() {
                return (first.unwrap(), out);
            }
            at = off + bytes.len() as u64;
            out.extend(bytes);
        }
    }

    #[test]
    fn appends_and_reads_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TerminalLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.append(b"hello ").unwrap(), 0);
        assert_eq!(log.append(b"world").unwrap(), 6);
        assert_eq!(log.end(), 11);
        assert_eq!(read_all(&log, 0), (0, b"hello world".to_vec()));
        assert_eq!(read_all(&log, 6), (6, b"world".to_vec()));
        assert_eq!(read_all(&log, 99), (11, vec![]));
        // Reopened, it continues where it was.
        drop(log);
        let mut log = TerminalLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.append(b"!").unwrap(), 11);
        assert_eq!(read_all(&TerminalLog::read_only(dir.path()).unwrap(), 0).1, b"hello world!".to_vec());
    }

    #[test]
    fn rotation_bounds_the_files_and_keeps_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TerminalLog::open(dir.path(), 1024).unwrap();
        let mut all = Vec::new();
        for i in 0..100u32 {
            let line = format!("line {i:04} {}\n", "x".repeat(40));
            assert_eq!(log.append(line.as_bytes()).unwrap(), all.len() as u64);
            all.extend_from_slice(line.as_bytes());
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size(CURRENT) <= 1024 && size(PREVIOUS) <= 1024, "bounded");
        assert!(log.start() > 0, "old output was dropped");
        let (from, bytes) = read_all(&log, 0);
        assert_eq!(from, log.start());
        assert_eq!(bytes, all[from as usize..].to_vec());
        // A reader that opens later sees the same.
        let reader = TerminalLog::read_only(dir.path()).unwrap();
        assert_eq!((reader.start(), reader.end()), (log.start(), log.end()));
        assert_eq!(read_all(&reader, 0).1, all[from as usize..].to_vec());
    }
}
