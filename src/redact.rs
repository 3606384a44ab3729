//! What leaves the server for an organization never names where the server keeps
//! its data, nor a password someone put in a URL. Events (at append) and API error
//! messages (in one middleware) pass through a [`Redactor`]; nothing else has to
//! remember to.
//!
//! Why: git's own messages name the mirror or worktree they ran in, and one
//! organization must not learn the server's layout (or, from it, where another
//! organization's files are).

use std::borrow::Cow;
use std::path::Path;

/// The text that replaces the data dir's location.
pub const DATA_DIR: &str = "<data_dir>";

/// Replaces the data dir's location with `<data_dir>` and drops the userinfo of
/// URLs. Built once at boot.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// The data dir as configured and as canonicalized, longest first.
    prefixes: Vec<String>,
}

impl Redactor {
    /// Reads the data dir's canonical form: call it at boot, not on an arbiter.
    pub fn new(data_dir: &Path) -> Redactor {
        let mut prefixes = vec![data_dir.to_string_lossy().trim_end_matches('/').to_string()];
        if let Ok(canonical) = std::fs::canonicalize(data_dir) {
            prefixes.push(canonical.to_string_lossy().trim_end_matches('/').to_string());
        }
        prefixes.retain(|p| !p.is_empty());
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        prefixes.dedup();
        Redactor { prefixes }
    }

    /// `text` with the data dir as `<data_dir>` and URLs without their userinfo.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = strip_url_userinfo(text);
        for prefix in &self.prefixes {
            if out.contains(prefix.as_str()) {
                out = Cow::Owned(replace_path_prefix(&out, prefix));
            }
        }
        out
    }

    /// Redacts every string in a JSON value, in place.
    pub fn json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(clean) = self.text(s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.json(v)),
            _ => {}
        }
    }
}

/// Replaces `prefix` where it is a whole path (followed by `/`, the end, or a
/// character that cannot continue a path segment), so `/data` does not eat `/database`.
fn replace_path_prefix(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(prefix) {
        let after = &rest[pos + prefix.len()..];
        let whole = after.chars().next().is_none_or(|c| !(c.is_alphanumeric() || "-_.~+".contains(c)));
        out.push_str(&rest[..pos]);
        out.push_str(if whole { DATA_DIR } else { prefix });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Every `scheme://user:secret@host` in `text` becomes `scheme://host`, and so
/// does `http(s)://token@host` (a token alone is a secret there); a bare ssh user
/// name (`ssh://git@host`) is kept.
pub fn strip_url_userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        let before = &head[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(*c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = before[start..].to_ascii_lowercase();
        let web = scheme == "https" || scheme == "http";
        out.push_str(head);
        // The authority ends at the path, query, fragment, or where the URL ends in prose.
        let end = tail.find(|c: char| "/?#".contains(c) || c.is_whitespace() || "'\"<>`".contains(c)).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@').filter(|&at| web || authority[..at].contains(':')) {
            Some(at) => {
                out.push_str(&authority[at + 1..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Prefixes of GitHub's tokens (classic, OAuth, user-to-server, server-to-server,
/// refresh, fine-grained).
const GITHUB_TOKEN_PREFIXES: &[&str] = &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];

/// `text` with every GitHub token in it (one of [`GITHUB_TOKEN_PREFIXES`] and 20
/// or more letters, digits or `_`) replaced by `***`, as Actions masks secrets:
/// for text read from CI (a job's log) before anyone else sees it.
pub fn github_tokens(text: &str) -> Cow<'_, str> {
    if !GITHUB_TOKEN_PREFIXES.iter().any(|p| text.contains(p)) {
        return Cow::Borrowed(text);
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = GITHUB_TOKEN_PREFIXES.iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min() {
        let starts_word = rest[..at].chars().next_back().is_none_or(|c| !word(c));
        let len = rest[at + prefix.len()..].find(|c: char| !word(c)).unwrap_or(rest.len() - at - prefix.len());
        out.push_str(&rest[..at]);
        if starts_word && len >= 20 {
            out.push_str("***");
        } else {
            out.push_str(&rest[at..at + prefix.len() + len]);
        }
        rest = &rest[at + prefix.len() + len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_becomes_a_placeholder() {
        let r = Redactor { prefixes: vec!["/srv/kiln".into()] };
        assert_eq!(
            r.text("fatal: '/srv/kiln/repos/alpha/app.git' does not appear to be a git repository"),
            "fatal: '<data_dir>/repos/alpha/app.git' does not appear to be a git repository"
        );
        assert_eq!(r.text("/srv/kiln"), "<data_dir>");
        assert_eq!(r.text("/srv/kilnother/x and /srv/kiln-2"), "/srv/kilnother/x and /srv/kiln-2");
        assert!(matches!(r.text("nothing here"), Cow::Borrowed(_)));
        let mut v = serde_json::json!({"a": ["/srv/kiln/worktrees/x", 3], "b": {"c": "https://u:p@h/x"}});
        r.json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["<data_dir>/worktrees/x", 3], "b": {"c": "https://h/x"}}));
    }

    #[test]
    fn github_tokens_are_masked() {
        let t = "x ghp_abcdefghijklmnopqrstuvwxyz0123456789, github_pat_11ABCDEFG0123456789_abcdefghij end";
        assert_eq!(github_tokens(t), "x ***, *** end");
        assert_eq!(github_tokens("ghp_short and myghp_abcdefghijklmnopqrstuvwxyz"), "ghp_short and myghp_abcdefghijklmnopqrstuvwxyz");
        assert!(matches!(github_tokens("nothing"), Cow::Borrowed(_)));
    }

    #[test]
    fn url_userinfo_is_dropped() {
        assert_eq!(strip_url_userinfo("clone https://x-access-token:ghp_1@github.com/a/b.git failed"), "clone https://github.com/a/b.git failed");
        assert_eq!(strip_url_userinfo("'http://tok@h:8080'"), "'http://h:8080'");
        assert!(matches!(strip_url_userinfo("ssh://git@h/x and a@b.c"), Cow::Borrowed(_)));
        assert_eq!(strip_url_userinfo("ssh://git:pw@h/x"), "ssh://h/x");
        assert!(matches!(strip_url_userinfo("https://h/x@y"), Cow::Borrowed(_)));
    }
}
