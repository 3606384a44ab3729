//! The terminal's append-only log: every byte the agent printed, addressed by a
//! stream offset that only grows. It keeps two files, `terminal.log` and the
//! rotated `terminal.log.1`, so at most about twice `max_bytes` are on disk; older
//! output is dropped and `start()` moves forward. `terminal.idx` records where
//! each file starts. Only the terminal host writes; anyone may read.
//!
//! A write that fails (a full disk) does not stop the stream: the offset counts
//! the bytes all the same, so they leave a hole in the log, and the next write
//! first starts a fresh `terminal.log` at the offset reached (rotating the old
//! one if it holds anything). Readers skip the hole: what they get next says
//! its offset.

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
    /// A write failed: bytes up to `end` are missing from `terminal.log`, so it
    /// cannot take more until a fresh one starts at `end`.
    hole: bool,
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
        Ok(TerminalLog {
            dir: dir.to_path_buf(),
            max_bytes: u64::MAX,
            current: None,
            prev_start,
            current_start,
            end: current_start + len,
            hole: false,
        })
    }

    /// The oldest offset still kept.
    pub fn start(&self) -> u64 {
        self.prev_start.unwrap_or(self.current_start)
    }

    /// The offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends `bytes`; answers the offset of the first one, and whether they
    /// were written. Either way the offset moves past them: bytes that could not
    /// be written are a hole in the log.
    pub fn append(&mut self, bytes: &[u8]) -> (u64, io::Result<()>) {
        let offset = self.end;
        self.end += bytes.len() as u64;
        (offset, self.write_at(offset, bytes))
    }

    /// Whether a failed write left a hole that no write has closed since.
    pub fn has_hole(&self) -> bool {
        self.hole
    }

    /// After a failed write: starts a fresh file at the end now, so writing can
    /// go on without new output to write (the disk has room again).
    pub fn resume(&mut self) -> io::Result<()> {
        if self.hole {
            self.start_file_at(self.end)?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if self.hole {
            self.start_file_at(offset)?;
        } else if offset > self.current_start && offset - self.current_start + bytes.len() as u64 > self.max_bytes {
            self.start_file_at(offset)?;
        }
        let file = self.current.as_mut().ok_or_else(|| io::Error::other("log opened read-only"))?;
        let written = file.write_all(bytes);
        if written.is_err() {
            // Part of it may be in the file, at its right place; the rest is lost.
            self.hole = true;
        }
        written
    }

    /// Starts a new `terminal.log` whose first byte is at offset `at`. The old one
    /// becomes `terminal.log.1` (replacing the one before) unless it is empty.
    /// The index is written first: if that fails nothing has changed.
    fn start_file_at(&mut self, at: u64) -> io::Result<()> {
        let current_len = file_len(&self.dir.join(CURRENT))?;
        if current_len > 0 {
            write_index(&self.dir, Some(self.current_start), at)?;
            if let Err(e) = std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS)) {
                // Put the index back as the files still are.
                let _ = write_index(&self.dir, self.prev_start, self.current_start);
                return Err(e);
            }
            self.prev_start = Some(self.current_start);
        } else {
            write_index(&self.dir, self.prev_start, at)?;
        }
        self.current = Some(OpenOptions::new().create(true).append(true).open(self.dir.join(CURRENT))?);
        self.current_start = at;
        self.hole = false;
        Ok(())
    }

    /// Up to `max` bytes from `offset`. An offset that was rotated away is moved
    /// up to `start()`, and one in a hole (output that could not be written) up
    /// to the next byte kept; the answer says which offset the bytes begin at.
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<(u64, Vec<u8>)> {
        let mut offset = offset.max(self.start()).min(self.end);
        if let Some(p) = self.prev_start.filter(|_| offset < self.current_start) {
            let prev_end = (p + file_len(&self.dir.join(PREVIOUS))?).min(self.current_start);
            if offset < prev_end {
                return read_file(&self.dir.join(PREVIOUS), offset - p, offset, (prev_end - offset) as usize, max);
            }
            offset = self.current_start;
        }
        let current_end = (self.current_start + file_len(&self.dir.join(CURRENT))?).min(self.end);
        if offset >= current_end {
            return Ok((offset, Vec::new()));
        }
        read_file(&self.dir.join(CURRENT), offset - self.current_start, offset, (current_end - offset) as usize, max)
    }
}

fn file_len(path: &Path) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Up to `min(available, max)` bytes of `path` from `at`, answered as starting
/// at stream offset `offset`.
fn read_file(path: &Path, at: u64, offset: u64, available: usize, max: usize) -> io::Result<(u64, Vec<u8>)> {
    let want = available.min(max);
    if want == 0 {
        return Ok((offset, Vec::new()));
    }
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; want];
    let n = read_full(&mut f, &mut buf)?;
    buf.truncate(n);
    Ok((offset, buf))
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

    fn put(log: &mut TerminalLog, bytes: &[u8]) -> u64 {
        let (offset, written) = log.append(bytes);
        written.unwrap();
        offset
    }

    /// Makes the log's file one that answers every write with ENOSPC, as a full
    /// disk does.
    fn fill_disk(log: &mut TerminalLog) {
        log.current = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
    }

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
        assert_eq!(put(&mut log, b"hello "), 0);
        assert_eq!(put(&mut log, b"world"), 6);
        assert_eq!(log.end(), 11);
        assert_eq!(read_all(&log, 0), (0, b"hello world".to_vec()));
        assert_eq!(read_all(&log, 6), (6, b"world".to_vec()));
        assert_eq!(read_all(&log, 99), (11, vec![]));
        // Reopened, it continues where it was.
        drop(log);
        let mut log = TerminalLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(put(&mut log, b"!"), 11);
        assert_eq!(read_all(&TerminalLog::read_only(dir.path()).unwrap(), 0).1, b"hello world!".to_vec());
    }

    #[test]
    fn rotation_bounds_the_files_and_keeps_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TerminalLog::open(dir.path(), 1024).unwrap();
        let mut all = Vec::new();
        for i in 0..100u32 {
            let line = format!("line {i:04} {}\n", "x".repeat(40));
            assert_eq!(put(&mut log, line.as_bytes()), all.len() as u64);
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

    #[test]
    fn a_failed_write_leaves_a_hole_the_offsets_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TerminalLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(put(&mut log, b"hello "), 0);
        fill_disk(&mut log);
        let (offset, written) = log.append(b"lost");
        assert_eq!(offset, 6);
        assert_eq!(written.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert!(log.has_hole());
        assert_eq!(log.end(), 10, "the offset counts the bytes that were not written");
        // Room again: the next write starts a fresh file at the offset reached.
        assert_eq!(put(&mut log, b"world"), 10);
        assert!(!log.has_hole());
        assert_eq!(log.end(), 15);
        assert_eq!(log.read_at(0, 100).unwrap(), (0, b"hello ".to_vec()));
        assert_eq!(log.read_at(6, 100).unwrap(), (10, b"world".to_vec()), "a read in the hole skips it");
        assert_eq!(read_all(&log, 0), (0, b"hello world".to_vec()));
        // A reader that opens later sees the same offsets.
        let reader = TerminalLog::read_only(dir.path()).unwrap();
        assert_eq!((reader.start(), reader.end()), (0, 15));
        assert_eq!(reader.read_at(7, 100).unwrap(), (10, b"world".to_vec()));
    }

    #[test]
    fn resume_closes_a_hole_without_new_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TerminalLog::open(dir.path(), 1 << 20).unwrap();
        fill_disk(&mut log);
        // Failing from the first byte: the file stays empty.
        assert!(log.append(b"lost").1.is_err());
        assert_eq!(log.end(), 4);
        log.resume().unwrap();
        assert!(!log.has_hole());
        assert_eq!(log.start(), 4, "nothing before the hole was kept");
        assert_eq!(put(&mut log, b"three"), 4);
        assert_eq!(read_all(&log, 0), (4, b"three".to_vec()));
        let reader = TerminalLog::read_only(dir.path()).unwrap();
        assert_eq!(read_all(&reader, 0), (4, b"three".to_vec()));
    }
}
