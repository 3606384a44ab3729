//! Where a repository comes from: a path on this host or a remote URL. Parsing is
//! pure; `check` looks at the disk.
//!
//! Who may register what (docs/operations.md, "Repository sources"):
//! - a remote URL (`https`, `http`, `ssh`, `git`, scp-like `user@host:path`):
//!   anyone; a user name and password in an http(s) URL are taken out of it and
//!   kept as the repository's credential;
//! - a local source (an absolute path, or a `file://` URL: the same thing), only
//!   while `repos.allow_local_paths` is on, and then: the admin token anywhere
//!   outside the data dir; an organization's token only inside its
//!   `repos.local_roots`. Nothing that resolves into the data dir, for anyone.
//! - anything git would read as a local path or a command (`ext::`, `fd::`,
//!   `./x:y`, another scheme) is refused.
//!
//! An organization's token gets one answer (`403 local_path_refused`, no path in
//! it) for every local path it may not register, so it cannot probe the disk.

use std::path::{Path, PathBuf};

use crate::config::ReposConfig;
use crate::db::{pool::blocking, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path on the server's host (given as a path or a `file://` URL).
    Path(PathBuf),
    /// A remote URL: https, http, ssh, git, or `user@host:path`; never with a password.
    Url(String),
}

/// A user name and secret taken out of a source URL. Write-only: it is stored,
/// handed to git through askpass, and never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredential {
    pub user: Option<String>,
    pub secret: String,
}

impl std::fmt::Debug for UrlCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlCredential(hidden)")
    }
}

/// Who registers: the admin token, or a token of the organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registrant {
    Admin,
    Organization,
}

/// The remote schemes git may be given; `file://` is local and handled apart.
const REMOTE_SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://"];

/// The one answer an organization's token gets for a local path it may not register.
pub const LOCAL_REFUSED: &str = "this token may not register that local path: an organization's token may register only git repositories inside the folders the server's operator allows (repos.local_roots); ask the operator, or use a URL";

fn unsupported(raw: &str, why: &str) -> AppError {
    // The source may hold a password: echo it only without its userinfo.
    let shown = crate::redact::strip_url_userinfo(raw).to_string();
    AppError::invalid("unsupported_source", format!("unsupported repository source `{}`: {why}", crate::validate::truncate(&shown, 80)))
}

impl Source {
    /// Classifies what a user typed, following git's own rules (`git help clone`,
    /// GIT URLS; connect.c `url_is_local_not_ssh`, transport.c's `<transport>::`
    /// helpers), and takes a credential out of an http(s) URL.
    pub fn parse(raw: &str) -> AppResult<(Source, Option<UrlCredential>)> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AppError::invalid("invalid_source", "give a repository path or URL"));
        }
        if raw.chars().any(|c| c.is_control()) || raw.starts_with('-') {
            return Err(AppError::invalid("invalid_source", "the repository source has characters git would misread"));
        }
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("file://") {
            return parse_file_url(raw).map(|p| (Source::Path(p), None));
        }
        if let Some(scheme) = REMOTE_SCHEMES.iter().find(|s| lower.starts_with(*s)) {
            return parse_remote_url(raw, scheme);
        }
        if raw.contains("://") {
            return Err(unsupported(raw, "use an https, http, ssh or git URL, or a local path"));
        }
        // `<transport>::<address>` runs git-remote-<transport> (ext:: runs a command).
        if raw.contains("::") {
            return Err(unsupported(raw, "git transports (`ext::`, `fd::`, `<transport>::`) are not allowed"));
        }
        if raw.starts_with('/') {
            return Ok((Source::Path(PathBuf::from(raw)), None));
        }
        // git reads a string with no colon, or a slash before its first colon, as a
        // local path: `./x:y`, `dir/repo:1`, `relative/path`.
        let colon = raw.find(':');
        let slash = raw.find('/');
        let local_to_git = colon.is_none() || slash.is_some_and(|s| Some(s) < colon);
        if !local_to_git {
            return parse_scp_like(raw).map(|s| (s, None));
        }
        Err(AppError::invalid(
            "invalid_source",
            format!("`{}` is neither an absolute path nor a URL", crate::validate::truncate(raw, 80)),
        ))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Source::Path(p) => p.to_str().unwrap_or_default(),
            Source::Url(u) => u,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Path(_) => "path",
            Source::Url(_) => "url",
        }
    }

    /// For a path: that this caller may register it (see the module doc), that it
    /// exists and is a git repository; answers the canonical path. A URL is checked
    /// by cloning it.
    pub async fn check(self, cfg: &ReposConfig, data_dir: &Path, org: &str, by: Registrant) -> AppResult<Source> {
        let path = match self {
            Source::Url(_) => return Ok(self),
            Source::Path(p) => p,
        };
        if !cfg.allow_local_paths {
            return Err(AppError::denied(
                "local_path_refused",
                "registering local paths (and file:// URLs) is turned off on this server (repos.allow_local_paths): use a URL",
            ));
        }
        let shown = path.display().to_string();
        let roots: Vec<PathBuf> = match by {
            Registrant::Admin => Vec::new(),
            Registrant::Organization => cfg.local_roots.iter().map(|r| PathBuf::from(r.replace("{organization}", org))).collect(),
        };
        let data_dir = data_dir.to_path_buf();
        let checked = blocking(move || Ok(check_local(&path, &data_dir, by, &roots))).await?;
        match (checked, by) {
            (Ok(canonical), _) => Ok(Source::Path(canonical)),
            (Err(Refusal::GitMissing), _) => Err(AppError::git_missing()),
            (Err(Refusal::Io(e)), _) => Err(AppError::internal(DbError::Blocking(e))),
            (Err(_), Registrant::Organization) => Err(AppError::denied("local_path_refused", LOCAL_REFUSED)),
            (Err(Refusal::DataDir), Registrant::Admin) => Err(AppError::denied(
                "local_path_refused",
                format!("{shown} is Kiln's data dir, inside it, or holds it: register the repository's own source instead"),
            )),
            (Err(Refusal::Missing), Registrant::Admin) => Err(AppError::invalid("repo_path_not_found", format!("no directory at {shown}"))),
            (Err(_), Registrant::Admin) => Err(AppError::invalid("not_a_git_repository", format!("{shown} is not a git repository"))),
        }
    }
}

/// Why a local path may not be registered.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    NotGit,
    DataDir,
    OutsideRoots,
    GitMissing,
    Io(String),
}

/// The disk side of `check`: resolves symlinks, then applies the data-dir and
/// roots rules before git looks at it (so git never runs on a refused path).
fn check_local(path: &Path, data_dir: &Path, by: Registrant, roots: &[PathBuf]) -> Result<PathBuf, Refusal> {
    let canonical = std::fs::canonicalize(path).map_err(|_| Refusal::Missing)?;
    let data = std::fs::canonicalize(data_dir).map_err(|e| Refusal::Io(format!("cannot resolve the data dir: {e}")))?;
    if canonical.starts_with(&data) || data.starts_with(&canonical) {
        return Err(Refusal::DataDir);
    }
    if by == Registrant::Organization {
        let inside = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|root| canonical.starts_with(root));
        if !inside {
            return Err(Refusal::OutsideRoots);
        }
    }
    if !canonical.is_dir() {
        return Err(Refusal::Missing);
    }
    match git::is_repository(&canonical) {
        Ok(true) => Ok(canonical),
        Ok(false) => Err(Refusal::NotGit),
        Err(git::GitError::Missing(_)) => Err(Refusal::GitMissing),
        Err(e) => Err(Refusal::Io(e.to_string())),
    }
}

/// `file:///abs/path` (or `file://localhost/abs/path`), percent-decoded as git does.
fn parse_file_url(raw: &str) -> AppResult<PathBuf> {
    let rest = &raw["file://".len()..];
    let rest = match rest.get(..9) {
        Some(host) if host.eq_ignore_ascii_case("localhost") => &rest[9..],
        _ => rest,
    };
    if !rest.starts_with('/') {
        return Err(unsupported(raw, "a file:// URL must name an absolute path on this host (file:///path)"));
    }
    let decoded = percent_decode(rest).ok_or_else(|| unsupported(raw, "bad percent-encoding"))?;
    if decoded.contains('\0') {
        return Err(AppError::invalid("invalid_source", "the repository source has characters git would misread"));
    }
    Ok(PathBuf::from(decoded.trim_end_matches('/').to_string()).components().collect())
}

/// `scheme://[userinfo@]host[:port]/path`: the userinfo of an http(s) URL becomes
/// the credential; an ssh URL may carry a user name but no password.
fn parse_remote_url(raw: &str, scheme: &str) -> AppResult<(Source, Option<UrlCredential>)> {
    let rest = &raw[scheme.len()..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(unsupported(raw, "the URL has no host"));
    }
    let web = scheme.starts_with("http");
    let credential = match userinfo {
        None => None,
        Some(info) if web => {
            let (user, secret) = match info.split_once(':') {
                Some((u, p)) => (u, p),
                None => (info, ""),
            };
            let decode = |s: &str| percent_decode(s).ok_or_else(|| unsupported(raw, "bad percent-encoding in the user name or password"));
            let (user, secret) = (decode(user)?, decode(secret)?);
            Some(UrlCredential { user: (!user.is_empty()).then_some(user), secret })
        }
        Some(info) if scheme == "ssh://" && !info.contains(':') && !info.is_empty() => {
            // A login name, not a secret: it stays in the URL.
            let url = format!("{scheme}{authority}{tail}");
            return Ok((Source::Url(url.trim_end_matches('/').to_string()), None));
        }
        Some(_) => {
            return Err(unsupported(raw, "passwords in ssh and git URLs are not supported: use an ssh key, or an https URL"));
        }
    };
    let url = format!("{}{host}{tail}", &raw[..scheme.len()]);
    Ok((Source::Url(url.trim_end_matches('/').to_string()), credential))
}

/// `[user@]host:path`, as scp and git write it. The host must look like one: a
/// name git would take for a path, or an option, is refused.
fn parse_scp_like(raw: &str) -> AppResult<Source> {
    let (login, path) = raw.split_once(':').unwrap_or((raw, ""));
    let (user, host) = match login.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, login),
    };
    let name_ok = |s: &str, extra: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    let host_ok = name_ok(host, ".-") && host.starts_with(|c: char| c.is_ascii_alphanumeric());
    let user_ok = user.is_none_or(|u| name_ok(u, "._~-") && !u.starts_with('-'));
    // `user:password@host:path` would be read as host `user`: never store it.
    let hides_password = path.split('/').next().is_some_and(|first| first.contains('@'));
    if !host_ok || !user_ok || path.is_empty() || hides_password {
        // Not echoed: it may hold a password git would not recognise as one.
        return Err(AppError::invalid(
            "unsupported_source",
            "unsupported repository source: use `user@host:path` with a plain host name, an ssh:// or https URL, or an absolute path",
        ));
    }
    Ok(Source::Url(raw.to_string()))
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A repository name from its source: the last path segment without `.git`,
/// lowercased, with anything else turned into `-`.
pub fn derive_name(source: &Source) -> String {
    let raw = match source {
        Source::Path(p) => p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        Source::Url(u) => u.rsplit(['/', ':']).next().unwrap_or_default().to_string(),
    };
    let raw = raw.strip_suffix(".git").unwrap_or(&raw);
    let mut name: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    name = name.trim_start_matches(['-', '_', '.']).replace("..", "-");
    name.truncate(63);
    if name.is_empty() {
        "repo".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Source {
        let (source, credential) = Source::parse(raw).unwrap();
        assert!(credential.is_none(), "{raw}");
        source
    }

    #[test]
    fn classifies_sources() {
        assert_eq!(parsed("/srv/app"), Source::Path("/srv/app".into()));
        assert_eq!(parsed("https://github.com/a/b.git/"), Source::Url("https://github.com/a/b.git".into()));
        assert_eq!(parsed("git@github.com:a/b.git"), Source::Url("git@github.com:a/b.git".into()));
        assert_eq!(parsed("host.example:repo"), Source::Url("host.example:repo".into()));
        assert_eq!(parsed("ssh://git@h.example:22/x.git"), Source::Url("ssh://git@h.example:22/x.git".into()));
        assert_eq!(parsed("git://h/x"), Source::Url("git://h/x".into()));
        for bad in ["", "relative/path", "ext::sh -c x", "ftp://x/y", "-oProxy=x", "a\nb"] {
            assert!(Source::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_urls_are_local_paths() {
        for (raw, path) in [
            ("file:///srv/app", "/srv/app"),
            ("FILE:///srv/app.git/", "/srv/app.git"),
            ("file://localhost/srv/a%20b", "/srv/a b"),
            ("file:///srv//x/./y", "/srv/x/y"),
        ] {
            assert_eq!(parsed(raw), Source::Path(path.into()), "{raw}");
        }
        for bad in ["file://otherhost/srv/app", "file://relative", "file:///x%zz"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_git_reads_as_local_or_a_command_is_refused() {
        for bad in [
            "ext::sh -c touch% /tmp/pwned",
            "fd::3",
            "fd::0,1/x",
            "testgit::/srv/x",
            "foo+bar::x",
            "./x:y",
            "../up:y",
            "dir/repo:1",
            "x/y",
            "[::1]:repo",
            "-host:path",
            "a b:c",
            ":path",
            "host:",
            "user:secret@host:path",
            "svn://h/x",
            "ssh://-oProxyCommand=x/y",
            "ssh://user:pw@h/x",
            "git://user:pw@h/x",
            "https:///x",
        ] {
            let err = Source::parse(bad).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(matches!(err.code(), "unsupported_source" | "invalid_source"), "{bad}: {}", err.code());
            assert!(!err.to_string().contains("secret") && !err.to_string().contains(":pw@"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_password_in_a_url_becomes_the_credential() {
        let (source, cred) = Source::parse("https://x-access-token:gh%40p_1@git.example/a/b.git").unwrap();
        assert_eq!(source, Source::Url("https://git.example/a/b.git".into()));
        assert_eq!(cred, Some(UrlCredential { user: Some("x-access-token".into()), secret: "gh@p_1".into() }));
        let (source, cred) = Source::parse("http://tok@h:8080/x").unwrap();
        assert_eq!(source, Source::Url("http://h:8080/x".into()));
        assert_eq!(cred, Some(UrlCredential { user: Some("tok".into()), secret: String::new() }));
        assert_eq!(format!("{cred:?}"), "Some(UrlCredential(hidden))");
    }

    #[test]
    fn local_checks_follow_symlinks_and_keep_out_of_the_data_dir() {
        let tmp = std::env::temp_dir().join(format!("kiln-source-{}", crate::util::random_hex(8)));
        let (data, root, other) = (tmp.join("data"), tmp.join("roots/beta"), tmp.join("other"));
        for d in [data.join("repos/alpha/app.git"), root.clone(), other.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(data.join("repos/alpha/app.git"), root.join("link")).unwrap();
        let roots = vec![root.clone()];
        let org = Registrant::Organization;
        assert_eq!(check_local(&root.join("link"), &data, org, &roots), Err(Refusal::DataDir));
        assert_eq!(check_local(&data.join("repos/alpha/app.git"), &data, Registrant::Admin, &[]), Err(Refusal::DataDir));
        assert_eq!(check_local(&tmp, &data, Registrant::Admin, &[]), Err(Refusal::DataDir), "an ancestor of the data dir");
        assert_eq!(check_local(&other, &data, org, &roots), Err(Refusal::OutsideRoots));
        assert_eq!(check_local(&root.join("nope"), &data, org, &roots), Err(Refusal::Missing));
        assert_eq!(check_local(&other, &data, org, &[]), Err(Refusal::OutsideRoots), "no roots: admin only");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn derives_names() {
        assert_eq!(derive_name(&Source::Path("/srv/My App".into())), "my-app");
        assert_eq!(derive_name(&Source::Url("https://github.com/a/Kiln.git".into())), "kiln");
        assert_eq!(derive_name(&Source::Url("git@github.com:a/b".into())), "b");
        assert_eq!(derive_name(&Source::Path("/".into())), "repo");
        assert_eq!(derive_name(&Source::Path("/x/...git".into())), "repo");
    }
}
