//! `GET /v1/organizations/{org}/agents`: the agent profiles and sandbox
//! providers this server offers, for a client choosing them for a new task (the
//! dashboard's form). Never the profiles' commands or environment: those are the
//! operator's.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::organization_or_404;
use crate::actors::organization::SANDBOX_PROVIDERS;
use crate::actors::Kiln;
use crate::config::PromptMode;
use crate::error::AppResult;

pub async fn list(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let tasks = &kiln.config.tasks;
    let agents: Vec<serde_json::Value> = kiln
        .config
        .agents
        .iter()
        .map(|(name, profile)| {
            json!({
                "name": name,
                "default": *name == tasks.default_agent,
                "sessions": profile.acp.is_some(),
                "prompt": match profile.prompt {
                    PromptMode::Argument => "argument",
                    PromptMode::Input => "input",
                    PromptMode::None => "none",
                },
            })
        })
        .collect();
    let offered = kiln.providers.names();
    let providers: Vec<serde_json::Value> = SANDBOX_PROVIDERS
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "default": *name == tasks.default_provider,
                "available": offered.iter().any(|o| o == name),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "agents": agents, "providers": providers })))
}
