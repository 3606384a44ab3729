//! `kiln review <task>`: sends review comments to the task's agent as one
//! message (`POST …/tasks/{task}/review`), from `--comment path:line:text`
//! arguments or a JSON request read from a file or stdin (`--file -`).

use std::io::Read;

use structopt::StructOpt;

use super::client::{CliError, CliResult};
use super::commands::{enc, Ctx};
use super::output;
use crate::http::changes::{ReviewComment, ReviewRequest, ReviewSent};

#[derive(Debug, StructOpt)]
pub struct ReviewArgs {
    pub task: String,
    /// A comment as `path:line:text` (repeatable); the text may hold colons.
    /// `path:line:old:text` comments a deleted line (numbered in the base).
    #[structopt(long, short = "c")]
    pub comment: Vec<String>,
    /// An overall note after the comments.
    #[structopt(long, short = "m")]
    pub message: Option<String>,
    /// Read the whole request as JSON (`{"comments": [...], "message": ...}`)
    /// from this file, or from stdin with `-`.
    #[structopt(long, conflicts_with = "comment")]
    pub file: Option<String>,
    /// Print the server's answer as JSON.
    #[structopt(long)]
    pub json: bool,
}

/// `path:line:text` (or `path:line:old:text` / `path:line:new:text`) → a comment.
pub fn parse_comment(raw: &str) -> Result<ReviewComment, String> {
    let bad = || format!("`{raw}` is not a comment: write path:line:text (e.g. src/main.rs:12:handle the error)");
    let mut parts = raw.splitn(3, ':');
    let (Some(path), Some(line), Some(rest)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let line: u32 = line.trim().parse().map_err(|_| bad())?;
    let (side, text) = match rest.split_once(':') {
        Some((side @ ("old" | "new"), text)) => (Some(side.to_string()), text),
        _ => (None, rest),
    };
    if path.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(ReviewComment { path: path.to_string(), line, side, code: None, text: text.to_string() })
}

pub async fn run(ctx: &Ctx, args: ReviewArgs) -> CliResult<()> {
    let body = match &args.file {
        Some(file) => {
            let mut raw = String::new();
            if file == "-" {
                std::io::stdin().read_to_string(&mut raw).map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
            } else {
                raw = std::fs::read_to_string(file).map_err(|e| CliError(format!("cannot read {file}: {e}")))?;
            }
            let mut body: ReviewRequest =
                serde_json::from_str(&raw).map_err(|e| CliError(format!("{file} is not a review request ({e}): {{\"comments\": [{{\"path\", \"line\", \"text\"}}]}}")))?;
            if args.message.is_some() {
                body.message = args.message.clone();
            }
            body
        }
        None => {
            if args.comment.is_empty() {
                return Err(CliError("give at least one --comment path:line:text, or --file".into()));
            }
            let comments = args.comment.iter().map(|c| parse_comment(c)).collect::<Result<Vec<_>, _>>().map_err(CliError)?;
            ReviewRequest { comments, message: args.message.clone() }
        }
    };
    let sent: ReviewSent = ctx.api.post(&ctx.org_path(&format!("/tasks/{}/review", enc(&args.task))), &body).await?;
    if args.json {
        output::json(&serde_json::to_value(&sent).map_err(|e| CliError(e.to_string()))?);
        return Ok(());
    }
    let n = sent.comments;
    let how = match &sent.session {
        Some(s) => format!("as a prompt to session {s}"),
        None => "typed into the agent's terminal".to_string(),
    };
    println!("sent {n} comment{} {how} (event {})", if n == 1 { "" } else { "s" }, sent.event_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_parse_from_path_line_text() {
        let c = parse_comment("src/a.rs:12:use a: colon").unwrap();
        assert_eq!((c.path.as_str(), c.line, c.side, c.text.as_str()), ("src/a.rs", 12, None, "use a: colon"));
        let c = parse_comment("a.md:3:old:why was this removed?").unwrap();
        assert_eq!((c.side.as_deref(), c.text.as_str()), (Some("old"), "why was this removed?"));
        for bad in ["nocolon", "a:x:text", "a:1:", ":1:t", "a:1:  "] {
            assert!(parse_comment(bad).unwrap_err().contains("path:line:text"), "{bad}");
        }
    }
}
