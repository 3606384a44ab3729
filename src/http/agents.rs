//! `GET /v1/organizations/{org}/agents`: the agent profiles and sandbox
//! providers this server offers, for a client choosing them for a new task (the
//! dashboard's form). Never the profiles' commands or environment: those are the
//! operator's.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::organization_or_404;
use crate::actors::organization::SANDBOX_PROVIDERS;
use crate::actors::Kiln;
use crate::config::PromptMode;
use crate::error::AppResult;

/// An agent profile as a client may see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentProfile {
    pub name: String,
    /// It is `tasks.default_agent`.
    pub default: bool,
    /// It speaks ACP (has `acp`), so `POST …/sessions` works.
    pub sessions: bool,
    /// How the description is handed over: `argument`, `input` or `none`.
    pub prompt: String,
}

/// A sandbox provider, and whether this server offers it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderOffer {
    pub name: String,
    /// It is `tasks.default_provider`.
    pub default: bool,
    /// This server offers it (`POST …/tasks` refuses the others with `provider_unavailable`).
    pub available: bool,
}

/// `GET …/agents`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Offered {
    pub agents: Vec<AgentProfile>,
    pub providers: Vec<ProviderOffer>,
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}/agents", tag = "tasks", operation_id = "agents", params(super::openapi::OrgPath),
    responses(
        (status = 200, description = "The agent profiles and sandbox providers", body = Offered),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = super::openapi::ApiError),
    ),
)]
pub async fn list(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let tasks = &kiln.config.tasks;
    let agents: Vec<AgentProfile> = kiln
        .config
        .agents
        .iter()
        .map(|(name, profile)| AgentProfile {
            name: name.clone(),
            default: *name == tasks.default_agent,
            sessions: profile.acp.is_some(),
            prompt: match profile.prompt {
                PromptMode::Argument => "argument",
                PromptMode::Input => "input",
                PromptMode::None => "none",
            }
            .to_string(),
        })
        .collect();
    let offered = kiln.providers.names();
    let providers: Vec<ProviderOffer> = SANDBOX_PROVIDERS
        .iter()
        .map(|name| ProviderOffer {
            name: name.to_string(),
            default: *name == tasks.default_provider,
            available: offered.iter().any(|o| o == name),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Offered { agents, providers }))
}
