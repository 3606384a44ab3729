//! Where a repository comes from: a path on this host or a remote URL. Parsing is
//! pure; `check` looks at the disk.

use std::path::PathBuf;

use crate::config::ReposConfig;
use crate::db::{pool::blocking, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An absolute path on the server's host.
    Path(PathBuf),
    /// A URL git can clone: https, http, ssh, git, file, or `user@host:path`.
    Url(String),
}

const SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];

impl Source {
    /// Classifies what a user typed.
    pub fn parse(raw: &str) -> AppResult<Source> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AppError::invalid("invalid_source", "give a repository path or URL"));
        }
        if raw.chars().any(|c| c.is_control()) || raw.starts_with('-') {
            return Err(AppError::invalid("invalid_source", "the repository source has characters git would misread"));
        }
        if SCHEMES.iter().any(|s| raw.to_ascii_lowercase().starts_with(s)) {
            return Ok(Source::Url(raw.trim_end_matches('/').to_string()));
        }
        if raw.contains("://") || raw.contains("::") {
            return Err(AppError::invalid(
                "unsupported_source",
                format!("unsupported repository URL `{}`: use https, ssh, git or file URLs", crate::validate::truncate(raw, 80)),
            ));
        }
        if raw.starts_with('/') {
            return Ok(Source::Path(PathBuf::from(raw)));
        }
        if is_scp_like(raw) {
            return Ok(Source::Url(raw.to_string()));
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

    /// For a path: that local paths are allowed, that it exists and is a git
    /// repository; answers the canonical path. A URL is checked by cloning it.
    pub async fn check(self, cfg: &ReposConfig) -> AppResult<Source> {
        let path = match self {
            Source::Url(_) => return Ok(self),
            Source::Path(p) => p,
        };
        if !cfg.allow_local_paths {
            return Err(AppError::forbidden(
                "registering local paths is turned off on this server (repos.allow_local_paths): use a URL",
            ));
        }
        let shown = path.display().to_string();
        let checked = blocking(move || {
            let Ok(canonical) = std::fs::canonicalize(&path) else { return Ok(Err("missing")) };
            if !canonical.is_dir() {
                return Ok(Err("missing"));
            }
            match git::is_repository(&canonical) {
                Ok(true) => Ok(Ok(canonical)),
                Ok(false) => Ok(Err("not_git")),
                Err(git::GitError::Missing(_)) => Ok(Err("git_missing")),
                Err(e) => Err(DbError::Blocking(e.to_string())),
            }
        })
        .await?;
        match checked {
            Ok(canonical) => Ok(Source::Path(canonical)),
            Err("missing") => Err(AppError::invalid("repo_path_not_found", format!("no directory at {shown}"))),
            Err("git_missing") => Err(AppError::git_missing()),
            Err(_) => Err(AppError::invalid("not_a_git_repository", format!("{shown} is not a git repository"))),
        }
    }
}

/// `user@host:path` or `host:path`, as scp and git write them.
fn is_scp_like(raw: &str) -> bool {
    match raw.split_once(':') {
        Some((host, path)) => {
            !host.is_empty() && !host.contains('/') && !path.is_empty() && !host.contains(char::is_whitespace)
        }
        None => false,
    }
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

    #[test]
    fn classifies_sources() {
        assert_eq!(Source::parse("/srv/app").unwrap(), Source::Path("/srv/app".into()));
        assert_eq!(Source::parse("https://github.com/a/b.git/").unwrap(), Source::Url("https://github.com/a/b.git".into()));
        assert_eq!(Source::parse("git@github.com:a/b.git").unwrap(), Source::Url("git@github.com:a/b.git".into()));
        for bad in ["", "relative/path", "ext::sh -c x", "ftp://x/y", "-oProxy=x", "a\nb"] {
            assert!(Source::parse(bad).is_err(), "{bad:?}");
        }
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
