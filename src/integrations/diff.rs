//! A task's diff against its base, as structured data (`GET …/tasks/{task}/diff`):
//! everything the worktree has that the merge-base with the base branch lacks —
//! commits, staged and unstaged changes, and untracked files.
//!
//! How: the worktree's index is copied to a temporary index, the untracked files
//! (not ignored ones) are added to the copy as intent-to-add (`git add -N`, which
//! writes no object and leaves the user's index alone), and git diffs the working
//! tree against the merge-base through that copy: once `--raw --numstat -z` (every
//! file, its status, modes and counts, unambiguous paths), once as a patch, read as a stream and
//! cut off at the limits below. Symlinks are never followed: git shows a link as a
//! link (mode 120000, its target as its one line). git runs in the task's jail
//! like every git in a worktree (`git::git_in`), with a time limit.
//!
//! Every function here blocks: call it on the blocking pool.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use super::git::{self, GitError};

/// At most this many files are listed; the rest are counted in `omitted_files`.
pub const MAX_FILES: usize = 2_000;
/// At most this many changed (added or deleted) lines carry their text, over
/// all files; files past the budget are listed with their counts and
/// `too_large`.
pub const MAX_LINES: u64 = 50_000;
/// A file with more changed lines than this is `too_large` by itself.
pub const MAX_FILE_LINES: u64 = 20_000;
/// A file whose patch text is longer than this is `too_large` (minified code).
pub const MAX_FILE_BYTES: usize = 2 << 20;
/// git's patch output is read up to this many bytes, then git is stopped.
pub const MAX_BYTES: usize = 16 << 20;
/// The file list (`--raw --numstat`) is read up to this many bytes; a change
/// with a longer list (hundreds of thousands of files) is refused.
pub const MAX_SUMMARY_BYTES: usize = 64 << 20;
/// Both git runs together may take this long; then git is killed and the
/// request fails with `diff_timeout`.
pub const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The answer of `GET …/tasks/{task}/diff`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDiff {
    /// The task's base branch.
    pub base_branch: String,
    /// The merge-base of the worktree's `HEAD` and the base branch (origin's copy
    /// when fetched, else the local branch): what the diff is against.
    pub base_commit: String,
    /// The worktree's `HEAD`.
    pub head: String,
    /// Changed files in git's order (by path), at most `limits.max_files`.
    pub files: Vec<DiffFile>,
    /// Added lines over the listed files (binary files count none).
    pub additions: u64,
    /// Deleted lines over the listed files.
    pub deletions: u64,
    /// Something was left out: files past `max_files` (`omitted_files`), or
    /// lines past `max_lines` / `max_bytes` (those files are `too_large`).
    pub truncated: bool,
    /// Files not listed at all (past `max_files`).
    pub omitted_files: usize,
    pub limits: DiffLimits,
}

/// The limits a diff was cut at.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DiffLimits {
    pub max_files: usize,
    pub max_lines: u64,
    pub max_file_lines: u64,
    pub max_file_bytes: usize,
    pub max_bytes: usize,
}

impl Default for DiffLimits {
    fn default() -> Self {
        DiffLimits { max_files: MAX_FILES, max_lines: MAX_LINES, max_file_lines: MAX_FILE_LINES, max_file_bytes: MAX_FILE_BYTES, max_bytes: MAX_BYTES }
    }
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DiffFile {
    /// The path now (for a deleted file, the path it had), relative to the worktree.
    pub path: String,
    /// The path before, for a rename (and a copy).
    pub old_path: Option<String>,
    pub status: FileStatus,
    /// Binary: counts are `null` and there are no hunks.
    pub binary: bool,
    /// A symbolic link (before or after): its one line is the link's target.
    pub symlink: bool,
    /// `old mode` → `new mode` when the mode changed (e.g. `100644` → `100755`).
    pub old_mode: Option<String>,
    pub new_mode: Option<String>,
    /// Added lines; `null` for a binary file.
    pub additions: Option<u64>,
    pub deletions: Option<u64>,
    /// Its lines are left out: the file alone is over `max_file_lines` or
    /// `max_file_bytes`, or the diff's budget (`max_lines`, `max_bytes`) was
    /// spent before it. Its counts are still right.
    pub too_large: bool,
    pub hunks: Vec<Hunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    Renamed,
    Copied,
    /// A file became a symlink or the other way round.
    TypeChanged,
}

/// One hunk: `@@ -old_start,old_lines +new_start,new_lines @@ section`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Hunk {
    pub old_start: u32,
    pub old_lines: u32,
    pub new_start: u32,
    pub new_lines: u32,
    /// The text after the second `@@` (git's guess at the enclosing function).
    pub section: String,
    pub lines: Vec<DiffLine>,
}

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DiffLine {
    pub kind: LineKind,
    /// Its number in the old file (`null` for an added line or a note).
    pub old_no: Option<u32>,
    /// Its number in the new file (`null` for a deleted line or a note).
    pub new_no: Option<u32>,
    /// The line without its `+`/`-`/` ` and without the newline; invalid UTF-8
    /// is replaced with U+FFFD.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Context,
    Add,
    Del,
    /// `\ No newline at end of file`, which belongs to the line before it.
    Note,
}

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the base branch `{0}` does not exist in the repository")]
    NoBase(String),
    #[error("the worktree and the base branch `{0}` have no commit in common")]
    NoMergeBase(String),
    #[error("git took longer than {} s to diff the worktree", TIME_LIMIT.as_secs())]
    TimedOut,
    #[error("the change touches too many files to list (over {} MiB of file names)", MAX_SUMMARY_BYTES >> 20)]
    TooBig,
}

/// The mirror's ref that keeps the state a remote task's diff last brought in
/// (its sandbox's `HEAD` plus uncommitted work as one commit), replaced on each
/// diff; conflict prediction reads it too.
pub fn remote_state_ref(task: &str) -> String {
    format!("refs/kiln/diff/{task}")
}

/// The diff of the worktree at `worktree` against the merge-base of its `HEAD`
/// and `base_ref` (a full ref name, see `git::base_ref`).
pub fn worktree_diff(worktree: &Path, base_branch: &str, base_ref: &str) -> Result<TaskDiff, DiffError> {
    let started = Instant::now();
    let head = git::rev_parse(worktree, "HEAD")?;
    let base_commit = merge_base(worktree, &head, base_branch, base_ref)?;
    let index = TempIndex::new(worktree)?;
    index.add_untracked(worktree)?;
    let command = |args: &[&str]| index.command(worktree, args);
    diff_between(&command, base_branch, base_commit, head, None, started)
}

/// The diff of a remote task's state, brought into the repository at `repo`
/// (the mirror) as the commit `state` (the sandbox's `HEAD`, `head`, plus its
/// uncommitted work), against the merge-base of `head` and `base_ref`: the same
/// answer, bounds and truncation as [`worktree_diff`], tree against tree.
pub fn commit_diff(repo: &Path, base_branch: &str, base_ref: &str, head: &str, state: &str) -> Result<TaskDiff, DiffError> {
    let started = Instant::now();
    let head = git::rev_parse(repo, head)?;
    let state = git::rev_parse(repo, state)?;
    let base_commit = merge_base(repo, &head, base_branch, base_ref)?;
    let command = |args: &[&str]| -> Result<std::process::Command, GitError> {
        let mut cmd = git::git_in(repo)?.0;
        cmd.arg("--no-optional-locks").args(args);
        Ok(cmd)
    };
    diff_between(&command, base_branch, base_commit, head, Some(&state), started)
}

/// The merge-base of `head` and the base branch (`base_ref`) in `dir`.
fn merge_base(dir: &Path, head: &str, base_branch: &str, base_ref: &str) -> Result<String, DiffError> {
    let base = git::rev_parse(dir, base_ref).map_err(|_| DiffError::NoBase(base_branch.to_string()))?;
    match git::run(dir, &["merge-base", head, &base]) {
        Ok(sha) if !sha.is_empty() => Ok(sha),
        Ok(_) | Err(GitError::Failed { .. }) => Err(DiffError::NoMergeBase(base_branch.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Both diff runs against `base_commit`, through `command` (git in the
/// worktree with its scratch index, or in the mirror): the working tree, or
/// the commit `to` when given.
fn diff_between(
    command: &dyn Fn(&[&str]) -> Result<std::process::Command, GitError>,
    base_branch: &str,
    base_commit: String,
    head: String,
    to: Option<&str>,
    started: Instant,
) -> Result<TaskDiff, DiffError> {
    let summary = capture(command, &diff_args(&base_commit, to, &["--raw", "--numstat", "-z"]), started, MAX_SUMMARY_BYTES)?;
    let mut files = parse_summary(&summary);
    let omitted_files = files.len().saturating_sub(MAX_FILES);
    files.truncate(MAX_FILES);
    let mut truncated = omitted_files > 0;
    // Which files carry their lines: in order, while the budget lasts.
    let mut budget = MAX_LINES;
    let mut wanted = Vec::with_capacity(files.len());
    for f in &mut files {
        let lines = f.additions.unwrap_or(0) + f.deletions.unwrap_or(0);
        if f.binary {
            wanted.push(false);
        } else if lines > MAX_FILE_LINES {
            f.too_large = true;
            wanted.push(false);
        } else if lines > budget {
            f.too_large = true;
            truncated = true;
            budget = 0;
            wanted.push(false);
        } else {
            budget -= lines;
            wanted.push(true);
        }
    }
    let last_wanted = wanted.iter().rposition(|w| *w);
    let mut reader = PatchReader::new(&mut files, &wanted);
    if let Some(last) = last_wanted {
        let args = diff_args(&base_commit, to, &["-p", "-U3", "--src-prefix=a/", "--dst-prefix=b/"]);
        let complete = stream(command, &args, started, |line| reader.feed(line, last))?;
        if !complete {
            truncated = true;
        }
    }
    reader.finish();
    let additions = files.iter().filter_map(|f| f.additions).sum();
    let deletions = files.iter().filter_map(|f| f.deletions).sum();
    Ok(TaskDiff {
        base_branch: base_branch.to_string(),
        base_commit,
        head,
        files,
        additions,
        deletions,
        truncated,
        omitted_files,
        limits: DiffLimits::default(),
    })
}

/// The arguments of both diff runs: the working tree (or the commit `to`)
/// against `base`, with renames, and nothing a config could swap in (external
/// diff, textconv, colour, a relative root).
fn diff_args(base: &str, to: Option<&str>, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["diff", "-M", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative", "--submodule=short"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(base.to_string());
    args.extend(to.map(String::from));
    args.push("--".into());
    args
}

/// A copy of the worktree's index in a temporary file, removed on drop.
struct TempIndex {
    path: PathBuf,
}

impl TempIndex {
    fn new(worktree: &Path) -> Result<TempIndex, DiffError> {
        let tmp = git::git_in(worktree)?.1.unwrap_or_else(std::env::temp_dir);
        let path = tmp.join(format!("kiln-diff-{}.index", crate::util::random_hex(12)));
        let index = TempIndex { path };
        let real = git::run(worktree, &["rev-parse", "--path-format=absolute", "--git-path", "index"])?;
        // The copy keeps the index's stat cache, so unchanged files are not
        // read again. Never through a symlink: the agent owns its worktree's
        // git dir, and a link there must not make the server read another file.
        match git::copy_regular(Path::new(&real), &index.path) {
            Ok(true) => {}
            // No index yet (or not a plain file): start from HEAD's tree.
            Ok(false) => index.git(worktree, &["read-tree", "HEAD"])?,
            Err(e) => return Err(GitError::Io(e).into()),
        }
        Ok(index)
    }

    /// Adds the untracked files (not ignored ones) as intent-to-add.
    fn add_untracked(&self, worktree: &Path) -> Result<(), DiffError> {
        self.git(worktree, &["add", "--intent-to-add", "--all", "--", "."])
    }

    fn command(&self, worktree: &Path, args: &[&str]) -> Result<std::process::Command, GitError> {
        let mut cmd = git::git_in(worktree)?.0;
        cmd.arg("--no-optional-locks").args(args).env("GIT_INDEX_FILE", &self.path);
        Ok(cmd)
    }

    fn git(&self, worktree: &Path, args: &[&str]) -> Result<(), DiffError> {
        let out = self.command(worktree, args)?.output().map_err(git::spawn_error)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(git::failure(args.first().copied().unwrap_or(""), out.status, &out.stderr, &out.stdout).into())
        }
    }
}

/// Runs git and answers its whole stdout; `TooBig` past `max` bytes.
fn capture(
    command: &dyn Fn(&[&str]) -> Result<std::process::Command, GitError>,
    args: &[String],
    started: Instant,
    max: usize,
) -> Result<Vec<u8>, DiffError> {
    let mut out = Vec::new();
    let complete = stream(command, args, started, |line| {
        out.extend_from_slice(line);
        out.len() <= max
    })?;
    if !complete {
        return Err(DiffError::TooBig);
    }
    Ok(out)
}

/// Runs git, handing `each` its stdout a line at a time (with the newline;
/// NUL-separated output comes as one piece) until `each` answers `false`,
/// which stops git. Answers whether git's whole output was read.
fn stream(
    command: &dyn Fn(&[&str]) -> Result<std::process::Command, GitError>,
    args: &[String],
    started: Instant,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Result<bool, DiffError> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&refs)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(git::spawn_error)?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().ok_or_else(|| GitError::Io(std::io::Error::other("no stdout")))?;
    let mut stderr = child.stderr.take().ok_or_else(|| GitError::Io(std::io::Error::other("no stderr")))?;
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf);
        buf
    });
    // The watchdog kills git at the deadline. The child is reaped only
    // after the watchdog is told to stand down, so its pid cannot have been
    // reused when it fires.
    let remaining = TIME_LIMIT.saturating_sub(started.elapsed());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(remaining) {
            // SAFETY: `pid` is our unreaped child (see above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(256);
    let mut complete = true;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                if !each(&line) {
                    complete = false;
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = done_tx.send(());
                let _ = watchdog.join();
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitError::Io(e).into());
            }
        }
    }
    if !complete {
        let _ = child.kill();
    }
    drop(reader);
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child.wait().map_err(GitError::Io)?;
    let err = err_reader.join().unwrap_or_default();
    if timed_out {
        return Err(DiffError::TimedOut);
    }
    if complete && !status.success() {
        return Err(git::failure(refs.first().copied().unwrap_or(""), status, &err, &[]).into());
    }
    Ok(complete)
}

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parses `git diff --raw --numstat -z`: first one raw record per file
/// (`:oldmode newmode oldsha newsha STATUS\0path\0`, a second path for a
/// rename or copy), then one numstat record per file in the same order
/// (`added\tdeleted\tpath\0`, or `added\tdeleted\t\0old\0new\0`; `-\t-`
/// for a binary file). Paths are NUL-separated, so never quoted or ambiguous.
pub fn parse_summary(raw: &[u8]) -> Vec<DiffFile> {
    let mut parts = raw.split(|b| *b == 0).peekable();
    let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut files = Vec::new();
    // The raw records: status, modes, paths.
    while let Some(head) = parts.next_if(|p| p.first() == Some(&b':')) {
        let head = text(head);
        let fields: Vec<&str> = head[1..].split(' ').collect();
        let (old_mode, new_mode) = (fields.first().copied().unwrap_or(""), fields.get(1).copied().unwrap_or(""));
        let letter = fields.get(4).and_then(|s| s.chars().next()).unwrap_or('M');
        let first = parts.next().map(text).unwrap_or_default();
        let (path, old_path) = if matches!(letter, 'R' | 'C') {
            (parts.next().map(text).unwrap_or_default(), Some(first))
        } else {
            (first, None)
        };
        let status = match letter {
            'A' => FileStatus::Added,
            'D' => FileStatus::Deleted,
            'R' => FileStatus::Renamed,
            'C' => FileStatus::Copied,
            'T' => FileStatus::TypeChanged,
            _ => FileStatus::Modified,
        };
        let real = |m: &str| m != "000000";
        let mode_changed = real(old_mode) && real(new_mode) && old_mode != new_mode;
        files.push(DiffFile {
            path,
            old_path,
            status,
            binary: false,
            symlink: old_mode == "120000" || new_mode == "120000",
            old_mode: mode_changed.then(|| old_mode.to_string()),
            new_mode: mode_changed.then(|| new_mode.to_string()),
            additions: Some(0),
            deletions: Some(0),
            too_large: false,
            hunks: Vec::new(),
        });
    }
    // The numstat records, in the same order.
    let mut i = 0;
    while let Some(head) = parts.next() {
        if head.is_empty() {
            continue;
        }
        let head = text(head);
        let mut fields = head.splitn(3, '\t');
        let (Some(add), Some(del), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if path.is_empty() {
            // A rename: the old and new paths follow.
            parts.next();
            parts.next();
        }
        let Some(file) = files.get_mut(i) else { break };
        i += 1;
        if add == "-" && del == "-" {
            file.binary = true;
            file.additions = None;
            file.deletions = None;
        } else {
            file.additions = Some(add.trim().parse().unwrap_or(0));
            file.deletions = Some(del.trim().parse().unwrap_or(0));
        }
    }
    files
}

/// Reads `git diff -p` output a line at a time into the files `parse_summary`
/// listed (the same diff, so the same files in the same order): the i-th
/// `diff --git` section belongs to the i-th file. Paths are never parsed out of
/// the patch.
pub struct PatchReader<'a> {
    files: &'a mut [DiffFile],
    wanted: &'a [bool],
    /// The section being read (`None` before the first).
    current: Option<usize>,
    in_hunk: bool,
    old_no: u32,
    new_no: u32,
    file_bytes: usize,
    total_bytes: usize,
}

impl<'a> PatchReader<'a> {
    pub fn new(files: &'a mut [DiffFile], wanted: &'a [bool]) -> Self {
        PatchReader { files, wanted, current: None, in_hunk: false, old_no: 0, new_no: 0, file_bytes: 0, total_bytes: 0 }
    }

    /// Takes one line (with or without its newline). Answers whether more is
    /// wanted: `false` once the sections past `last` begin, or `MAX_BYTES` is
    /// spent (the file being read, and every later one, is then `too_large`).
    pub fn feed(&mut self, raw: &[u8], last: usize) -> bool {
        self.total_bytes += raw.len();
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        if raw.starts_with(b"diff --git ") {
            let next = self.current.map_or(0, |i| i + 1);
            if next >= self.files.len() || next > last {
                return false;
            }
            self.current = Some(next);
            self.in_hunk = false;
            self.file_bytes = 0;
            return true;
        }
        let Some(i) = self.current else { return true };
        if self.total_bytes > MAX_BYTES {
            for f in self.files[i..].iter_mut().filter(|f| !f.binary) {
                f.too_large = true;
                f.hunks.clear();
            }
            return false;
        }
        let file = &mut self.files[i];
        if !self.in_hunk {
            self.header(i, raw);
            return true;
        }
        if !self.wanted[i] || file.too_large {
            return true;
        }
        self.file_bytes += raw.len();
        if self.file_bytes > MAX_FILE_BYTES {
            file.too_large = true;
            file.hunks.clear();
            return true;
        }
        let Some(hunk) = file.hunks.last_mut() else { return true };
        let (kind, text) = match raw.first() {
            Some(b'+') => (LineKind::Add, &raw[1..]),
            Some(b'-') => (LineKind::Del, &raw[1..]),
            Some(b'\\') => (LineKind::Note, raw),
            Some(b' ') => (LineKind::Context, &raw[1..]),
            // `diff.suppressBlankEmpty` writes an empty context line as nothing.
            None => (LineKind::Context, raw),
            Some(b'@') => {
                self.hunk_header(i, raw);
                return true;
            }
            Some(_) => (LineKind::Note, raw),
        };
        let (old_no, new_no) = match kind {
            LineKind::Context => (Some(self.old_no), Some(self.new_no)),
            LineKind::Add => (None, Some(self.new_no)),
            LineKind::Del => (Some(self.old_no), None),
            LineKind::Note => (None, None),
        };
        match kind {
            LineKind::Context => {
                self.old_no += 1;
                self.new_no += 1;
            }
            LineKind::Add => self.new_no += 1,
            LineKind::Del => self.old_no += 1,
            LineKind::Note => {}
        }
        hunk.lines.push(DiffLine { kind, old_no, new_no, text: String::from_utf8_lossy(text).into_owned() });
        true
    }

    /// A line between `diff --git` and the first `@@`: the file's facts came
    /// from the summary, so only the first hunk matters here.
    fn header(&mut self, i: usize, raw: &[u8]) {
        if raw.starts_with(b"@@") {
            self.in_hunk = true;
            self.hunk_header(i, raw);
        }
    }

    fn hunk_header(&mut self, i: usize, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let Some(h) = parse_hunk_header(&text) else { return };
        self.old_no = h.old_start;
        self.new_no = h.new_start;
        let file = &mut self.files[i];
        if self.wanted[i] && !file.too_large {
            file.hunks.push(h);
        }
    }

    /// After the last line: a file whose section was never reached (git was
    /// stopped) has no lines, and says so unless it is binary.
    pub fn finish(self) {
        let reached = self.current.map_or(0, |i| i + 1);
        for (f, wanted) in self.files.iter_mut().zip(self.wanted).skip(reached) {
            if *wanted && !f.binary {
                f.too_large = true;
            }
        }
    }
}

/// `@@ -1,3 +1,4 @@ fn main` → the hunk, without lines. A count of 1 may be
/// left out (`@@ -1 +1 @@`).
pub fn parse_hunk_header(text: &str) -> Option<Hunk> {
    let rest = text.strip_prefix("@@ -")?;
    let (ranges, section) = rest.split_once(" @@").unwrap_or((rest, ""));
    let (old, new) = ranges.split_once(" +")?;
    let range = |r: &str| -> Option<(u32, u32)> {
        match r.split_once(',') {
            Some((s, n)) => Some((s.parse().ok()?, n.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (old_start, old_lines) = range(old)?;
    let (new_start, new_lines) = range(new)?;
    Some(Hunk { old_start, old_lines, new_start, new_lines, section: section.trim_start().to_string(), lines: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_statuses_modes_counts_and_paths() {
        let raw = b":100644 100644 7898192 422c2b7 R050\0a.txt\0b.txt\0:000000 100644 0000000 88768ef A\0bin.dat\0\
:100644 000000 2fa992c 0000000 D\0del.txt\0:000000 120000 0000000 3594e94 A\0link\0:100644 100755 b77b4eb 0000000 M\0sub/sp ace.txt\0\
1\t0\t\0a.txt\0b.txt\0-\t-\tbin.dat\x000\t1\tdel.txt\x001\t0\tlink\x003\t2\tsub/sp ace.txt\0";
        let files = parse_summary(raw);
        assert_eq!(files.len(), 5);
        assert_eq!((files[0].path.as_str(), files[0].old_path.as_deref(), files[0].status), ("b.txt", Some("a.txt"), FileStatus::Renamed));
        assert_eq!(files[0].additions, Some(1));
        assert!(files[1].binary && files[1].additions.is_none() && files[1].status == FileStatus::Added);
        assert_eq!((files[2].status, files[2].additions, files[2].deletions), (FileStatus::Deleted, Some(0), Some(1)));
        assert!(files[3].symlink && files[3].old_mode.is_none());
        assert_eq!(files[4].path, "sub/sp ace.txt");
        assert_eq!((files[4].old_mode.as_deref(), files[4].new_mode.as_deref()), (Some("100644"), Some("100755")));
        assert_eq!((files[4].additions, files[4].deletions), (Some(3), Some(2)));
    }

    #[test]
    fn hunk_headers_with_and_without_counts() {
        let h = parse_hunk_header("@@ -1,2 +1,3 @@ fn main() {").unwrap();
        assert_eq!((h.old_start, h.old_lines, h.new_start, h.new_lines, h.section.as_str()), (1, 2, 1, 3, "fn main() {"));
        let h = parse_hunk_header("@@ -0,0 +1 @@").unwrap();
        assert_eq!((h.old_start, h.old_lines, h.new_start, h.new_lines), (0, 0, 1, 1));
        assert!(parse_hunk_header("@@ nonsense").is_none());
    }

    fn read(summary: &[u8], patch: &str, wanted: Option<Vec<bool>>) -> Vec<DiffFile> {
        let mut files = parse_summary(summary);
        let wanted = wanted.unwrap_or_else(|| vec![true; files.len()]);
        let last = wanted.iter().rposition(|w| *w).unwrap_or(0);
        let mut r = PatchReader::new(&mut files, &wanted);
        for line in patch.split_inclusive('\n') {
            if !r.feed(line.as_bytes(), last) {
                break;
            }
        }
        r.finish();
        files
    }

    const SUMMARY: &[u8] = b":000000 120000 0 1 A\0link\0:100644 100644 1 2 M\0m.txt\0:100644 000000 1 0 D\0bin\0\
1\t0\tlink\x003\t2\tm.txt\0-\t-\tbin\0";

    const PATCH: &str = "diff --git a/link b/link\nnew file mode 120000\nindex 0000000..3594e94\n--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n\
diff --git a/m.txt b/m.txt\nindex b77b4eb..206b378 100644\n--- a/m.txt\n+++ b/m.txt\n@@ -1,3 +1,3 @@\n x\n--- y\n+++ z\n\n@@ -10 +10,2 @@ sec\n-a\n+b\n+c\n\
diff --git a/bin b/bin\ndeleted file mode 100644\nindex 1..0\nBinary files a/bin and /dev/null differ\n";

    #[test]
    fn a_patch_fills_statuses_hunks_and_line_numbers_without_parsing_paths() {
        let files = read(SUMMARY, PATCH, None);
        let link = &files[0];
        assert!(link.symlink);
        assert_eq!(link.status, FileStatus::Added);
        assert_eq!(link.hunks[0].lines[0], DiffLine { kind: LineKind::Add, old_no: None, new_no: Some(1), text: "/etc/passwd".into() });
        assert_eq!(link.hunks[0].lines[1].kind, LineKind::Note);
        let m = &files[1];
        assert_eq!(m.status, FileStatus::Modified);
        assert_eq!(m.hunks.len(), 2);
        // Lines that look like headers inside a hunk are lines.
        let kinds: Vec<(LineKind, &str, Option<u32>, Option<u32>)> =
            m.hunks[0].lines.iter().map(|l| (l.kind, l.text.as_str(), l.old_no, l.new_no)).collect();
        assert_eq!(
            kinds,
            vec![
                (LineKind::Context, "x", Some(1), Some(1)),
                (LineKind::Del, "-- y", Some(2), None),
                (LineKind::Add, "++ z", None, Some(2)),
                (LineKind::Context, "", Some(3), Some(3)),
            ]
        );
        assert_eq!(m.hunks[1].section, "sec");
        assert_eq!(m.hunks[1].lines[2].new_no, Some(11));
        assert!(files[2].binary && files[2].hunks.is_empty() && files[2].status == FileStatus::Deleted);
    }

    #[test]
    fn files_not_wanted_keep_their_counts_and_no_lines() {
        let files = read(SUMMARY, PATCH, Some(vec![true, false, false]));
        assert_eq!(files[0].hunks.len(), 1);
        // Reading stopped after the last wanted file; m.txt keeps its counts.
        assert!(files[1].hunks.is_empty());
        assert_eq!(files[1].additions, Some(3));
    }
}
