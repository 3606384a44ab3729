//! Validation of names that reach the file system, git or a URL: organization and
//! repository names, task ids and branch names. Pure functions, unit-tested here.

use crate::error::AppError;

/// Organization and repository names: 1–63 characters of `a-z 0-9 - _ .`, starting
/// with a letter or digit, so they are safe as path segments and URL parts.
pub fn name(kind: &'static str, value: &str) -> Result<(), AppError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && !value.contains("..");
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            "invalid_name",
            format!(
                "`{value}` is not a valid {kind} name: use 1-63 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            ),
        ))
    }
}

/// Task ids are 8 lowercase hex characters.
pub fn task_id(value: &str) -> Result<(), AppError> {
    if value.len() == 8 && value.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(AppError::not_found("task_not_found", format!("no task `{}`", truncate(value, 40))))
    }
}

/// A branch name git accepts (`git check-ref-format --branch` rules).
pub fn is_valid_branch(name: &str) -> bool {
    if name.is_empty() || name.len() > 200 || name == "@" || name.starts_with('-') {
        return false;
    }
    if name.starts_with('/') || name.ends_with('/') || name.ends_with('.') || name.contains("//") {
        return false;
    }
    if name.contains("..") || name.contains("@{") {
        return false;
    }
    if name.chars().any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c) || c == '\u{7f}') {
        return false;
    }
    name.split('/').all(|part| !part.starts_with('.') && !part.ends_with(".lock"))
}

/// Checks a user-given branch name, answering 422 when git would refuse it.
pub fn branch(value: &str) -> Result<(), AppError> {
    if is_valid_branch(value) {
        Ok(())
    } else {
        Err(AppError::invalid("invalid_branch", format!("`{}` is not a valid git branch name", truncate(value, 80))))
    }
}

/// A branch-safe slug of a title: lowercase ASCII words joined by `-`, at most 40
/// characters, `task` when nothing is left.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A title from a description: its first non-empty line, cut at a word boundary
/// to at most 72 characters.
pub fn title_from_description(description: &str) -> String {
    let line = description.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("Untitled task");
    if line.chars().count() <= 72 {
        return line.to_string();
    }
    let cut: String = line.chars().take(72).collect();
    match cut.rfind(' ') {
        Some(pos) if pos > 20 => format!("{}…", cut[..pos].trim_end()),
        _ => format!("{cut}…"),
    }
}

/// A relative path with only normal parts: it cannot leave the folder it is
/// joined to.
pub fn is_relative_inside(p: &str) -> bool {
    let path = std::path::Path::new(p.trim());
    !p.trim().is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// At most `max` characters of `s`, for echoing user input in messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "acme-co", "a", "repo.js", "my_repo2"] {
            assert!(name("organization", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-x", ".x", "a/b", "a..b", "a b", "ä", &"x".repeat(64)] {
            assert!(name("organization", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branches_follow_git_rules() {
        for ok in ["main", "kiln/fix-login-1a2b3c4d", "feature/x.y", "a-b_c"] {
            assert!(is_valid_branch(ok), "{ok}");
        }
        for bad in [
            "", "-x", "/x", "x/", "x.", "a..b", "a//b", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b",
            "a\\b", "a@{b", "@", ".hidden", "x/.y", "x.lock", "x/y.lock/z", "a\u{1}b",
        ] {
            assert!(!is_valid_branch(bad), "{bad:?}");
        }
    }

    #[test]
    fn slugs_are_valid_branch_parts() {
        assert_eq!(slug("Fix the login bug!"), "fix-the-login-bug");
        assert_eq!(slug("  ???  "), "task");
        assert_eq!(slug("Ünïcode ☃ only"), "n-code-only");
        let long = slug(&"word ".repeat(30));
        assert!(long.len() <= 40 && !long.ends_with('-'));
        for title in ["..", "a..b", "x.lock", "@{", "-"] {
            assert!(is_valid_branch(&format!("kiln/{}-1a2b3c4d", slug(title))), "{title}");
        }
    }

    #[test]
    fn titles() {
        assert_eq!(title_from_description("\n  Fix login\nmore"), "Fix login");
        assert_eq!(title_from_description(""), "Untitled task");
        let t = title_from_description(&"lorem ipsum ".repeat(20));
        assert!(t.chars().count() <= 73 && t.ends_with('…'));
    }

    #[test]
    fn task_ids() {
        assert!(task_id("0a1b2c3d").is_ok());
        for bad in ["", "0A1B2C3D", "0a1b2c3", "../etc/x", "zzzzzzzz"] {
            assert!(task_id(bad).is_err(), "{bad}");
        }
    }
}
