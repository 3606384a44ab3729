//! The copy-in: untracked files (`.env`, local config) copied from a
//! repository's source checkout into a new worktree, as `.worktreeinclude` and the
//! repository's `setup.copy` list them.
//!
//! Both trees may hold symlinks the copy must not follow: a committed
//! `cfg -> /outside` is checked out as a link on both sides, and a checkout may
//! hold links of its own. So every path is walked one component at a time from a
//! directory fd, with `O_NOFOLLOW` on every open (`openat`, `mkdirat`,
//! `fstatat(AT_SYMLINK_NOFOLLOW)`): nothing is read from or written to outside
//! the two trees, even if a link is swapped in while the copy runs. What cannot
//! be copied safely is skipped and reported, never followed. Blocking: run it on
//! the blocking pool.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use serde::Serialize;

/// The file in a checkout that lists untracked files to copy into new sandboxes.
pub const INCLUDE_FILE: &str = ".worktreeinclude";

/// The most of `.worktreeinclude` that is read.
const INCLUDE_MAX_BYTES: u64 = 1024 * 1024;

/// Folders nested deeper than this (counted from the checkout) are not copied.
pub const MAX_DEPTH: usize = 64;

/// At most this many skips are listed (and logged) one by one; the rest are
/// counted. A copied `node_modules` may hold thousands of links.
pub const MAX_LISTED_SKIPS: usize = 100;

/// Something the copy-in left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The path relative to the checkout (as listed, or inside a listed folder).
    pub path: String,
    /// A stable snake_case code: `invalid_path`, `git_dir`, `symlink_in_source`,
    /// `symlink_in_worktree`, `in_the_way`, `not_a_file`, `too_deep`.
    pub reason: &'static str,
    pub message: String,
}

/// What a copy-in did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    /// Entries copied (a folder counts once, as listed).
    pub copied: Vec<String>,
    /// The first `MAX_LISTED_SKIPS` things left out.
    pub skipped: Vec<Skipped>,
    /// How many more were left out than `skipped` lists.
    pub more_skipped: usize,
}

impl CopyReport {
    fn skip(&mut self, path: &str, reason: &'static str, message: impl Into<String>) {
        if self.skipped.len() >= MAX_LISTED_SKIPS {
            self.more_skipped += 1;
            return;
        }
        let message = message.into();
        log::warn!("copy-in: skipped `{path}`: {message}");
        self.skipped.push(Skipped { path: path.to_string(), reason, message });
    }
}

/// An open directory; every lookup below it is relative to its fd.
struct Dir {
    fd: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Dir {
    /// Opens a tree's root. The root itself is Kiln's (the worktree) or the
    /// administrator's (the registered checkout), so it may be reached through links.
    fn open_root(path: &Path) -> io::Result<Dir> {
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(path)?;
        Ok(Dir { fd: file.into() })
    }

    fn raw_open(&self, name: &CStr, flags: i32, mode: libc::c_uint) -> io::Result<OwnedFd> {
        // SAFETY: a valid dir fd and a NUL-terminated name; the fd answered is ours.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW, mode) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }

    /// What `name` is, without following it.
    fn kind(&self, name: &CStr) -> io::Result<Kind> {
        // SAFETY: plain old data, filled in by fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid dir fd, a NUL-terminated name and a stat buffer.
        let rc = unsafe { libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound { Ok(Kind::Missing) } else { Err(e) };
        }
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        })
    }

    /// The folder `name`, never through a link (that fails with `ENOTDIR`/`ELOOP`).
    fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        Ok(Dir { fd: self.raw_open(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)? })
    }

    /// The regular file `name` for reading, never through a link; a FIFO or a
    /// device is refused without blocking on it.
    fn open_file(&self, name: &CStr) -> io::Result<Option<(File, u32)>> {
        let file = File::from(self.raw_open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
        let meta = file.metadata()?;
        Ok(meta.is_file().then(|| (file, meta.permissions().mode())))
    }

    /// `name` created (or truncated) for writing, never through a link.
    fn create_file(&self, name: &CStr) -> io::Result<File> {
        let fd = self.raw_open(name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK, 0o600)?;
        Ok(File::from(fd))
    }

    /// Makes the folder `name` unless something is there already.
    fn mkdir(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid dir fd and a NUL-terminated name.
        let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), name.as_ptr(), 0o777) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !is_errno(&e, libc::EEXIST) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The names in this folder (not `.` and `..`), sorted.
    fn names(&self) -> io::Result<Vec<CString>> {
        // readdir needs a DIR* of its own, which takes over the fd it is given.
        // SAFETY: duplicating a valid fd.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours; on success the DIR* owns it and closedir closes it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // SAFETY: a valid DIR*; the dup shares its offset with `self.fd`.
        unsafe { libc::rewinddir(stream) };
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; readdir reports errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a valid DIR*; the entry stays valid until the next readdir.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) { Ok(()) } else { Err(e) };
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        };
        // SAFETY: closing the DIR* we opened, once.
        unsafe { libc::closedir(stream) };
        result?;
        names.sort();
        Ok(names)
    }
}

fn lossy(name: &CStr) -> String {
    String::from_utf8_lossy(name.to_bytes()).to_string()
}

fn join(rel: &str, name: &CStr) -> String {
    if rel.is_empty() {
        lossy(name)
    } else {
        format!("{rel}/{}", lossy(name))
    }
}

/// An I/O error that names the path it happened on.
fn at(path: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

/// The entry's components, or why it is refused.
fn components(entry: &str) -> Result<Vec<CString>, (&'static str, String)> {
    let bad = || ("invalid_path", "only relative paths inside the checkout are copied".to_string());
    if !crate::validate::is_relative_inside(entry) {
        return Err(bad());
    }
    let mut out = Vec::new();
    for c in Path::new(entry.trim()).components() {
        let Component::Normal(name) = c else { return Err(bad()) };
        if name == ".git" {
            return Err(("git_dir", "git's own files are never copied".to_string()));
        }
        out.push(cstr(name).map_err(|_| bad())?);
    }
    if out.is_empty() {
        return Err(bad());
    }
    if out.len() > MAX_DEPTH {
        return Err(("too_deep", format!("more than {MAX_DEPTH} folders deep")));
    }
    Ok(out)
}

/// Reads `.worktreeinclude` from the checkout's root, never through a link.
fn read_include_file(source: &Dir, report: &mut CopyReport) -> io::Result<String> {
    let name = cstr(OsStr::new(INCLUDE_FILE))?;
    match source.kind(&name)? {
        Kind::Missing => return Ok(String::new()),
        Kind::File => {}
        Kind::Symlink => {
            report.skip(INCLUDE_FILE, "symlink_in_source", "it is a symlink in the source checkout: links are not followed");
            return Ok(String::new());
        }
        Kind::Dir | Kind::Other => {
            report.skip(INCLUDE_FILE, "not_a_file", "it is not a regular file");
            return Ok(String::new());
        }
    }
    let Some((file, _)) = source.open_file(&name).map_err(|e| at(INCLUDE_FILE, e))? else {
        report.skip(INCLUDE_FILE, "not_a_file", "it is not a regular file");
        return Ok(String::new());
    };
    let mut bytes = Vec::new();
    file.take(INCLUDE_MAX_BYTES).read_to_end(&mut bytes).map_err(|e| at(INCLUDE_FILE, e))?;
    Ok(String::from_utf8_lossy(&bytes).to_string())
}

/// Copies the listed untracked files (`.worktreeinclude`'s lines, then `extra`)
/// from the source checkout into the worktree. Missing files are left out
/// quietly; anything that would go through a symlink, or is not a regular file or
/// folder, is skipped and reported. Other I/O errors fail the copy.
pub fn copy_includes(source: &Path, dest: &Path, extra: &[String]) -> io::Result<CopyReport> {
    let mut report = CopyReport::default();
    let src_root = Dir::open_root(source).map_err(|e| io::Error::new(e.kind(), format!("the source checkout: {e}")))?;
    let dst_root = Dir::open_root(dest).map_err(|e| io::Error::new(e.kind(), format!("the worktree: {e}")))?;
    let listed = read_include_file(&src_root, &mut report)?;
    let entries = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .chain(extra.iter().map(|e| e.trim().to_string()));
    for entry in entries {
        let parts = match components(&entry) {
            Ok(parts) => parts,
            Err((reason, message)) => {
                report.skip(&entry, reason, message);
                continue;
            }
        };
        if let Some(copied) = copy_entry(&src_root, &dst_root, &parts, &mut report)? {
            report.copied.push(copied);
        }
    }
    if report.more_skipped > 0 {
        log::warn!("copy-in: skipped {} more", report.more_skipped);
    }
    Ok(report)
}

/// Copies one listed entry; answers its path when something was copied.
fn copy_entry(src_root: &Dir, dst_root: &Dir, parts: &[CString], report: &mut CopyReport) -> io::Result<Option<String>> {
    let Some((last, parents)) = parts.split_last() else { return Ok(None) };
    let entry = parts.iter().map(|p| lossy(p)).collect::<Vec<_>>().join("/");
    let mut rel = String::new();
    // The source side: each folder on the way opened from the one before.
    let mut src_holder;
    let mut src = src_root;
    for name in parents {
        rel = join(&rel, name);
        match src.kind(name).map_err(|e| at(&rel, e))? {
            Kind::Dir => {}
            Kind::Symlink => {
                report.skip(&entry, "symlink_in_source", format!("`{rel}` is a symlink in the source checkout: links are not followed"));
                return Ok(None);
            }
            // Nothing to copy there: missing entries are left out quietly.
            Kind::Missing | Kind::File | Kind::Other => return Ok(None),
        }
        match open_source_dir(src, name, &rel, &entry, report)? {
            Some(d) => src_holder = d,
            None => return Ok(None),
        }
        src = &src_holder;
    }
    let path = join(&rel, last);
    let kind = src.kind(last).map_err(|e| at(&path, e))?;
    match kind {
        Kind::Missing => return Ok(None),
        Kind::Symlink => {
            report.skip(&path, "symlink_in_source", "a symlink in the source checkout: links are not followed");
            return Ok(None);
        }
        Kind::Other => {
            report.skip(&path, "not_a_file", "not a regular file or folder");
            return Ok(None);
        }
        Kind::Dir | Kind::File => {}
    }
    // The destination side: folders made as needed, never entered through a link.
    let mut dst_holder;
    let mut dst = dst_root;
    let mut rel = String::new();
    for name in parents {
        rel = join(&rel, name);
        match enter_dir(dst, name, &rel, &entry, report)? {
            Some(d) => dst_holder = d,
            None => return Ok(None),
        }
        dst = &dst_holder;
    }
    let copied = match kind {
        Kind::File => copy_file(src, dst, last, &path, report)?,
        _ => {
            let Some(from) = open_source_dir(src, last, &path, &path, report)? else { return Ok(None) };
            copy_dir(&from, dst, last, &path, parts.len(), report)?
        }
    };
    Ok(copied.then_some(entry))
}

/// Opens the source folder `name` (at `rel`), which was a folder a moment ago;
/// `None` when it has been swapped for a link since, which is reported.
fn open_source_dir(parent: &Dir, name: &CStr, rel: &str, entry: &str, report: &mut CopyReport) -> io::Result<Option<Dir>> {
    match parent.open_dir(name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if is_errno(&e, libc::ENOTDIR) || is_errno(&e, libc::ELOOP) => {
            report.skip(entry, "symlink_in_source", format!("`{rel}` changed into a symlink in the source checkout: links are not followed"));
            Ok(None)
        }
        Err(e) => Err(at(rel, e)),
    }
}

/// Makes (if needed) and opens the folder `name` (at `rel`) in the worktree;
/// `None` when it is a symlink or a file, which is reported against `entry`.
fn enter_dir(parent: &Dir, name: &CStr, rel: &str, entry: &str, report: &mut CopyReport) -> io::Result<Option<Dir>> {
    parent.mkdir(name).map_err(|e| at(rel, e))?;
    match parent.open_dir(name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if is_errno(&e, libc::ENOTDIR) || is_errno(&e, libc::ELOOP) => {
            if parent.kind(name).map_err(|e| at(rel, e))? == Kind::Symlink {
                report.skip(entry, "symlink_in_worktree", format!("`{rel}` is a symlink in the worktree: nothing is written through links"));
            } else {
                report.skip(entry, "in_the_way", format!("`{rel}` in the worktree is a file, not a folder"));
            }
            Ok(None)
        }
        Err(e) => Err(at(rel, e)),
    }
}

/// Copies the regular file `name` from `src` to `dst`, keeping its permissions.
fn copy_file(src: &Dir, dst: &Dir, name: &CStr, rel: &str, report: &mut CopyReport) -> io::Result<bool> {
    let (mut from, mode) = match src.open_file(name) {
        Ok(Some(opened)) => opened,
        Ok(None) => {
            report.skip(rel, "not_a_file", "not a regular file or folder");
            return Ok(false);
        }
        Err(e) if is_errno(&e, libc::ELOOP) => {
            report.skip(rel, "symlink_in_source", "a symlink in the source checkout: links are not followed");
            return Ok(false);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(at(rel, e)),
    };
    match dst.kind(name).map_err(|e| at(rel, e))? {
        Kind::Missing | Kind::File => {}
        Kind::Symlink => {
            report.skip(rel, "symlink_in_worktree", "a symlink in the worktree: nothing is written through links");
            return Ok(false);
        }
        Kind::Dir | Kind::Other => {
            report.skip(rel, "in_the_way", "the worktree has something other than a file there");
            return Ok(false);
        }
    }
    let mut to = match dst.create_file(name) {
        Ok(f) => f,
        Err(e) if is_errno(&e, libc::ELOOP) => {
            report.skip(rel, "symlink_in_worktree", "a symlink in the worktree: nothing is written through links");
            return Ok(false);
        }
        Err(e) => return Err(at(rel, e)),
    };
    if !to.metadata().map_err(|e| at(rel, e))?.is_file() {
        report.skip(rel, "in_the_way", "the worktree has something other than a file there");
        return Ok(false);
    }
    io::copy(&mut from, &mut to).map_err(|e| at(rel, e))?;
    to.set_permissions(std::fs::Permissions::from_mode(mode & 0o777)).map_err(|e| at(rel, e))?;
    Ok(true)
}

/// Copies the folder `from` to `name` in `dst`, recursively. Symlinks inside it
/// are skipped (and reported), whatever they point at.
fn copy_dir(from: &Dir, dst: &Dir, name: &CStr, rel: &str, depth: usize, report: &mut CopyReport) -> io::Result<bool> {
    let Some(to) = enter_dir(dst, name, rel, rel, report)? else { return Ok(false) };
    for child in from.names().map_err(|e| at(rel, e))? {
        let path = join(rel, &child);
        match from.kind(&child).map_err(|e| at(&path, e))? {
            Kind::Missing => {}
            Kind::File => {
                copy_file(from, &to, &child, &path, report)?;
            }
            Kind::Symlink => report.skip(&path, "symlink_in_source", "a symlink in a copied folder: links are not copied"),
            Kind::Other => report.skip(&path, "not_a_file", "not a regular file or folder"),
            Kind::Dir if depth >= MAX_DEPTH => report.skip(&path, "too_deep", format!("more than {MAX_DEPTH} folders deep")),
            Kind::Dir => {
                if let Some(sub) = open_source_dir(from, &child, &path, &path, report)? {
                    copy_dir(&sub, &to, &child, &path, depth + 1, report)?;
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Trees {
        _tmp: tempfile::TempDir,
        src: std::path::PathBuf,
        dst: std::path::PathBuf,
        outside: std::path::PathBuf,
    }

    fn trees() -> Trees {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("outside"));
        for d in [&src, &dst, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(outside.join("secret.txt"), "outside secret\n").unwrap();
        Trees { _tmp: tmp, src, dst, outside }
    }

    fn reasons(report: &CopyReport) -> Vec<(String, &'static str)> {
        report.skipped.iter().map(|s| (s.path.clone(), s.reason)).collect()
    }

    #[test]
    fn include_paths_stay_inside() {
        assert!(components(".env").is_ok());
        assert_eq!(components("config/local.json").unwrap().len(), 2);
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "./x/../..", "a\0b"] {
            assert_eq!(components(bad).unwrap_err().0, "invalid_path", "{bad:?}");
        }
        assert_eq!(components(".git/config").unwrap_err().0, "git_dir");
        assert_eq!(components("sub/.git").unwrap_err().0, "git_dir");
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert_eq!(components(&deep).unwrap_err().0, "too_deep");
    }

    #[test]
    fn files_and_folders_are_copied_with_their_modes() {
        let t = trees();
        std::fs::write(t.src.join(".env"), "A=1\n").unwrap();
        std::fs::create_dir_all(t.src.join("conf/nested")).unwrap();
        std::fs::write(t.src.join("conf/nested/x.json"), "{}").unwrap();
        std::fs::write(t.src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(t.src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(t.src.join(INCLUDE_FILE), "# c\n.env\n\nconf\nmissing.txt\n").unwrap();
        std::fs::write(t.dst.join(".env"), "old\n").unwrap();
        let report = copy_includes(&t.src, &t.dst, &["run.sh".into()]).unwrap();
        assert_eq!(report.copied, vec![".env", "conf", "run.sh"]);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(std::fs::read_to_string(t.dst.join(".env")).unwrap(), "A=1\n", "an existing file is replaced");
        assert_eq!(std::fs::read_to_string(t.dst.join("conf/nested/x.json")).unwrap(), "{}");
        assert_eq!(std::fs::metadata(t.dst.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o750);
    }

    #[test]
    fn a_symlinked_folder_in_the_worktree_is_never_written_through() {
        let t = trees();
        std::fs::create_dir(t.src.join("cfg")).unwrap();
        std::fs::write(t.src.join("cfg/local.env"), "inside\n").unwrap();
        std::fs::write(t.src.join("top.env"), "top\n").unwrap();
        symlink(&t.outside, t.dst.join("cfg")).unwrap();
        symlink(t.outside.join("top.env"), t.dst.join("top.env")).unwrap();
        let report = copy_includes(&t.src, &t.dst, &["cfg/local.env".into(), "cfg".into(), "top.env".into()]).unwrap();
        assert!(!t.outside.join("local.env").exists(), "written outside the worktree");
        assert!(!t.outside.join("top.env").exists(), "written through a final symlink");
        assert!(report.copied.is_empty(), "{:?}", report.copied);
        assert_eq!(
            reasons(&report),
            vec![
                ("cfg/local.env".to_string(), "symlink_in_worktree"),
                ("cfg".to_string(), "symlink_in_worktree"),
                ("top.env".to_string(), "symlink_in_worktree")
            ]
        );
    }

    #[test]
    fn a_symlinked_folder_in_the_source_is_never_read_through() {
        let t = trees();
        symlink(&t.outside, t.src.join("linkdir")).unwrap();
        symlink(t.outside.join("secret.txt"), t.src.join("direct.txt")).unwrap();
        std::fs::create_dir(t.src.join("conf")).unwrap();
        std::fs::write(t.src.join("conf/ok.txt"), "ok\n").unwrap();
        symlink(&t.outside, t.src.join("conf/escape")).unwrap();
        symlink("ok.txt", t.src.join("conf/inner-link")).unwrap();
        std::fs::write(t.src.join(INCLUDE_FILE), "linkdir/secret.txt\nlinkdir\ndirect.txt\nconf\n").unwrap();
        let report = copy_includes(&t.src, &t.dst, &[]).unwrap();
        assert!(!t.dst.join("linkdir").exists());
        assert!(!t.dst.join("direct.txt").exists());
        assert!(std::fs::symlink_metadata(t.dst.join("conf/escape")).is_err(), "links inside folders are not copied");
        assert!(std::fs::symlink_metadata(t.dst.join("conf/inner-link")).is_err(), "not even ones that stay inside");
        assert_eq!(std::fs::read_to_string(t.dst.join("conf/ok.txt")).unwrap(), "ok\n");
        assert_eq!(report.copied, vec!["conf"]);
        assert_eq!(
            reasons(&report),
            vec![
                ("linkdir/secret.txt".to_string(), "symlink_in_source"),
                ("linkdir".to_string(), "symlink_in_source"),
                ("direct.txt".to_string(), "symlink_in_source"),
                ("conf/escape".to_string(), "symlink_in_source"),
                ("conf/inner-link".to_string(), "symlink_in_source"),
            ]
        );
    }

    #[test]
    fn a_folder_full_of_links_is_reported_in_short() {
        let t = trees();
        std::fs::create_dir(t.src.join("bin")).unwrap();
        for i in 0..MAX_LISTED_SKIPS + 20 {
            symlink("../somewhere", t.src.join(format!("bin/l{i:03}"))).unwrap();
        }
        std::fs::write(t.src.join("bin/real"), "x").unwrap();
        let report = copy_includes(&t.src, &t.dst, &["bin".into()]).unwrap();
        assert_eq!((report.skipped.len(), report.more_skipped), (MAX_LISTED_SKIPS, 20));
        assert_eq!(report.skipped[0].path, "bin/l000");
        assert_eq!(std::fs::read_dir(t.dst.join("bin")).unwrap().count(), 1, "only the file");
    }

    #[test]
    fn a_symlinked_include_file_is_not_read() {
        let t = trees();
        std::fs::write(t.outside.join("list"), "secret.txt\n").unwrap();
        symlink(t.outside.join("list"), t.src.join(INCLUDE_FILE)).unwrap();
        let report = copy_includes(&t.src, &t.dst, &[]).unwrap();
        assert_eq!(reasons(&report), vec![(INCLUDE_FILE.to_string(), "symlink_in_source")]);
        assert!(report.skipped.iter().all(|s| !s.message.contains("secret")), "the outside file's text is not echoed");
    }

    #[test]
    fn fifos_and_files_in_the_way_are_skipped_not_fatal() {
        let t = trees();
        let fifo = CString::new(t.src.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(t.src.join("d")).unwrap();
        std::fs::write(t.src.join("d/f"), "x").unwrap();
        std::fs::write(t.dst.join("d"), "a tracked file").unwrap();
        std::fs::write(t.src.join(".git"), "gitdir: elsewhere").unwrap();
        let report = copy_includes(&t.src, &t.dst, &["pipe".into(), "d/f".into(), ".git".into(), "../x".into()]).unwrap();
        assert_eq!(
            reasons(&report),
            vec![
                ("pipe".to_string(), "not_a_file"),
                ("d/f".to_string(), "in_the_way"),
                (".git".to_string(), "git_dir"),
                ("../x".to_string(), "invalid_path"),
            ]
        );
        assert_eq!(std::fs::read_to_string(t.dst.join("d")).unwrap(), "a tracked file");
    }
}
