//! `kiln notify add|update|list|remove|test|log` (an organization's webhooks) and
//! `kiln inbox [read <id>…|--all]` (docs/notifications.md).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use structopt::StructOpt;

use super::client::{CliError, CliResult};
use super::commands::{enc, Ctx};
use super::output::{self, field};
use crate::actors::notify::view::{Delivery, Webhook};
use crate::http::dto;
use crate::http::notifications::{CreatedWebhook, InboxPage, MarkedRead, UpdatedWebhook};

#[derive(Debug, StructOpt)]
pub enum NotifyCmd {
    /// Add a webhook; its signing secret is printed once.
    Add {
        /// Where deliveries go (https:// or http://; public hosts only, unless the operator allows one).
        #[structopt(name = "WEBHOOK_URL")]
        target: String,
        #[structopt(long)]
        name: Option<String>,
        /// `json` (Kiln's) or `slack` (an incoming-webhook message).
        #[structopt(long, default_value = "json", possible_values = &["json", "slack"])]
        format: String,
        /// A kind to send (repeatable; default: all): needs_input, idle, ci_failed,
        /// changes_requested, ready_to_merge, merged, conflict_predicted, agent_stuck.
        #[structopt(long = "kind")]
        kinds: Vec<String>,
        #[structopt(long)]
        json: bool,
    },
    /// Change a webhook: its URL, name, format, kinds, on/off; or rotate its
    /// secret (the new one is printed once).
    Update {
        id: String,
        /// A new URL (checked as when adding).
        #[structopt(long = "webhook-url")]
        target: Option<String>,
        #[structopt(long)]
        name: Option<String>,
        #[structopt(long, possible_values = &["json", "slack"])]
        format: Option<String>,
        /// A kind to send (repeatable): replaces the list. See `add`.
        #[structopt(long = "kind", conflicts_with = "all-kinds")]
        kinds: Vec<String>,
        /// Send every kind (clears the list).
        #[structopt(long)]
        all_kinds: bool,
        /// Switch it off: nothing is delivered (events meanwhile are skipped) until --enable.
        #[structopt(long, conflicts_with = "enable")]
        disable: bool,
        #[structopt(long)]
        enable: bool,
        /// Replace the signing secret; the new one is printed once.
        #[structopt(long)]
        rotate_secret: bool,
        #[structopt(long)]
        json: bool,
    },
    /// List the organization's webhooks.
    List {
        #[structopt(long)]
        json: bool,
    },
    /// Remove a webhook and its delivery log.
    Remove { id: String },
    /// Send a test delivery and wait for its outcome.
    Test {
        id: String,
        #[structopt(long)]
        json: bool,
    },
    /// A webhook's delivery log, newest first.
    Log {
        id: String,
        #[structopt(long)]
        json: bool,
    },
}

#[derive(Debug, StructOpt)]
pub struct InboxArgs {
    /// Only unread entries.
    #[structopt(long)]
    pub unread: bool,
    #[structopt(long)]
    pub json: bool,
    #[structopt(subcommand)]
    pub cmd: Option<InboxCmd>,
}

#[derive(Debug, StructOpt)]
pub enum InboxCmd {
    /// Mark entries read (for the whole organization): ids, or --all.
    Read {
        ids: Vec<i64>,
        #[structopt(long)]
        all: bool,
    },
}

fn hooks(ctx: &Ctx, rest: &str) -> String {
    ctx.org_path(&format!("/notifications/webhooks{rest}"))
}

pub async fn notify(ctx: &Ctx, cmd: NotifyCmd) -> CliResult<()> {
    match cmd {
        NotifyCmd::Add { target, name, format, kinds, json } => {
            let body = json!({"url": target, "name": name, "format": format, "kinds": (!kinds.is_empty()).then_some(kinds)});
            let created: CreatedWebhook = ctx.api.post(&hooks(ctx, ""), &body).await?;
            if json {
                output::json(&serde_json::to_value(&created)?);
            } else {
                println!("added webhook {} `{}` ({}) for `{}`", created.id, created.name, created.format, ctx.org);
                println!("{}", created.secret);
                eprintln!("(the signing secret is shown only now: store it with the receiver)");
            }
            Ok(())
        }
        NotifyCmd::Update { id, target, name, format, kinds, all_kinds, disable, enable, rotate_secret, json } => {
            let kinds = if all_kinds { Some(Vec::new()) } else { (!kinds.is_empty()).then_some(kinds) };
            let enabled = if disable { Some(false) } else { enable.then_some(true) };
            let body = json!({"url": target, "name": name, "format": format, "kinds": kinds, "enabled": enabled, "rotate_secret": rotate_secret});
            let updated: UpdatedWebhook = ctx.api.patch(&hooks(ctx, &format!("/{}", enc(&id))), &body).await?;
            if json {
                output::json(&serde_json::to_value(&updated)?);
                return Ok(());
            }
            let state = if updated.enabled { "on" } else { "off" };
            let kinds = if updated.kinds.is_empty() { "all".to_string() } else { updated.kinds.join(",") };
            println!("updated webhook {} `{}` ({}, {state}, kinds: {kinds}) {}", updated.id, updated.name, updated.format, updated.url);
            if let Some(secret) = &updated.secret {
                println!("{secret}");
                eprintln!("(the new signing secret is shown only now: give it to the receiver; the old one no longer signs)");
            }
            Ok(())
        }
        NotifyCmd::List { json } => {
            let res: dto::Items<Webhook> = ctx.api.get(&hooks(ctx, "")).await?;
            output::list(json, &res.items, &["ID", "NAME", "FORMAT", "STATE", "KINDS", "URL"], |w| {
                let kinds = if w.kinds.is_empty() { "all".to_string() } else { w.kinds.join(",") };
                let state = if w.enabled { "on" } else { "off" };
                vec![w.id.clone(), w.name.clone(), w.format.clone(), state.to_string(), kinds, w.url.clone()]
            })?;
            Ok(())
        }
        NotifyCmd::Remove { id } => {
            ctx.api.delete_json::<Value>(&hooks(ctx, &format!("/{}", enc(&id)))).await?;
            println!("removed webhook {id}");
            Ok(())
        }
        NotifyCmd::Test { id, json } => {
            let queued: Delivery = ctx.api.post(&hooks(ctx, &format!("/{}/test", enc(&id))), &json!({})).await?;
            let path = hooks(ctx, &format!("/{}/deliveries/{}", enc(&id), enc(&queued.id)));
            // The first attempt's outcome (later retries show in `kiln notify log`).
            let deadline = Instant::now() + Duration::from_secs(60);
            let done = loop {
                let d: Delivery = ctx.api.get(&path).await?;
                if d.attempts > 0 || d.status != "pending" || Instant::now() > deadline {
                    break d;
                }
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            };
            if json {
                output::json(&serde_json::to_value(&done)?);
                return Ok(());
            }
            let last = done.log.last();
            let answer = last.and_then(|a| a.status_code).map(|s| format!("HTTP {s}")).unwrap_or_else(|| "no answer".into());
            match done.status.as_str() {
                "delivered" => println!("delivered {} ({answer})", done.id),
                "failed" => return Err(CliError(format!("delivery {} failed: {}", done.id, done.last_error.unwrap_or_default()))),
                _ if done.attempts == 0 => println!("delivery {} is queued; see `kiln notify log {id}`", done.id),
                _ => println!(
                    "delivery {} not delivered yet ({answer}: {}); it will be retried, see `kiln notify log {id}`",
                    done.id,
                    done.last_error.unwrap_or_default()
                ),
            }
            Ok(())
        }
        NotifyCmd::Log { id, json } => {
            let res: dto::Items<Delivery> = ctx.api.get(&hooks(ctx, &format!("/{}/deliveries", enc(&id)))).await?;
            output::list(json, &res.items, &["DELIVERY", "KIND", "STATUS", "ANSWERS", "CREATED", "ERROR"], |d| {
                let codes: Vec<String> = d.log.iter().map(|a| a.status_code.map(|s| s.to_string()).unwrap_or_else(|| "-".into())).collect();
                vec![d.id.clone(), d.kind.clone(), d.status.clone(), codes.join(","), output::time(d.created_at), d.last_error.clone().unwrap_or_default()]
            })?;
            Ok(())
        }
    }
}

pub async fn inbox(ctx: &Ctx, args: InboxArgs) -> CliResult<()> {
    match args.cmd {
        Some(InboxCmd::Read { ids, all }) => {
            let body = match (ids.is_empty(), all) {
                (true, true) => json!({"all": true}),
                (false, false) => json!({"ids": ids}),
                _ => return Err(CliError("give entry ids, or --all".into())),
            };
            let res: MarkedRead = ctx.api.post(&ctx.org_path("/inbox/read"), &body).await?;
            println!("marked {} read; {} unread", res.marked.len(), res.unread);
            Ok(())
        }
        None => {
            let query = if args.unread { "?unread=true" } else { "" };
            let page: InboxPage = ctx.api.get(&ctx.org_path(&format!("/inbox{query}"))).await?;
            if args.json {
                output::json(&serde_json::to_value(&page)?);
                return Ok(());
            }
            let rows = page
                .items
                .iter()
                .map(|e| {
                    let v = serde_json::to_value(e).unwrap_or_default();
                    let mark = if e.read_at.is_none() { "*" } else { "" };
                    vec![mark.to_string(), e.id.to_string(), e.label.clone(), field(&v, "title"), field(&v, "repo"), field(&v, "task"), output::time(e.at)]
                })
                .collect::<Vec<_>>();
            output::table(&["", "ID", "WHAT", "TITLE", "REPO", "TASK", "AT"], &rows);
            println!("{} unread", page.unread);
            Ok(())
        }
    }
}
