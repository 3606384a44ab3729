//! OrganizationActor (`org/{org}`): the only writer of `organizations`,
//! `provider_profiles` and `api_tokens`.
//!
//! Messages: `CreateOrganization`, `UpdateOrganization`, `DeleteOrganization`,
//! `CreateToken`, `RevokeToken`, `PutProviderProfile`. Each checks the request
//! against the current rows, writes, emits its event and answers. Handlers are
//! atomic: the next message waits until the write and its event are done.
//! Revoking a token closes the WebSockets it opened, and deleting the
//! organization closes those of all its tokens (`actors::connections`), before
//! the answer.
//! Lifecycle: started on the first command for the organization; stops after
//! `tasks.actor_idle_secs` without one.

mod store;

use std::sync::Arc;

use actix::prelude::*;
use serde_json::json;

use super::history::NewEvent;
use super::registry::ActorMeta;
use super::Kiln;
use crate::db::models::{ApiToken, Organization};
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::util::{now_ms, random_hex, sha256_hex};

/// Profiles an organization can store: the sandbox providers, and `github`
/// (its API URL, token and webhook secret).
pub const PROVIDERS: &[&str] = &["worktree", "daytona", "github"];

/// Where a task's sandbox can be.
pub const SANDBOX_PROVIDERS: &[&str] = &["worktree", "daytona"];

/// Creates the organization; answers `Conflict` if it exists.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Organization>")]
pub struct CreateOrganization {
    pub display_name: Option<String>,
}

/// Changes the organization's display name.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Organization>")]
pub struct UpdateOrganization {
    pub display_name: String,
}

/// Deletes the organization; refused while it has repositories.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct DeleteOrganization {}

/// Creates an organization-scoped token; answers the row and the secret, which
/// is shown this once and stored only as a hash.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(ApiToken, String)>")]
pub struct CreateToken {
    pub name: String,
}

/// Revokes one token of the organization.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<ApiToken>")]
pub struct RevokeToken {
    pub id: String,
}

/// Stores a provider profile. Secrets are merged key by key and never read back.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<ProviderProfileView>")]
pub struct PutProviderProfile {
    pub provider: String,
    pub config: serde_json::Map<String, serde_json::Value>,
    pub secrets: serde_json::Map<String, serde_json::Value>,
}

/// A provider profile as the API shows it: secret names, never their values.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProviderProfileView {
    pub provider: String,
    pub config: serde_json::Value,
    pub secrets: Vec<String>,
    pub updated_at: i64,
}

impl ProviderProfileView {
    pub fn from_row(provider: &str, config: &str, secrets: &str, updated_at: i64) -> Self {
        let secrets: serde_json::Map<String, serde_json::Value> = serde_json::from_str(secrets).unwrap_or_default();
        ProviderProfileView {
            provider: provider.to_string(),
            config: serde_json::from_str(config).unwrap_or_else(|_| json!({})),
            secrets: secrets.keys().cloned().collect(),
            updated_at,
        }
    }
}

pub struct OrganizationActor {
    kiln: Kiln,
    org: String,
    meta: Arc<ActorMeta>,
}

impl OrganizationActor {
    pub fn new(kiln: Kiln, org: String, meta: Arc<ActorMeta>) -> Self {
        OrganizationActor { kiln, org, meta }
    }

    fn not_found(&self) -> AppError {
        AppError::not_found("organization_not_found", format!("organization `{}` does not exist", self.org))
    }
}

impl Actor for OrganizationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        super::stop_when_idle(ctx, self.meta.clone(), self.kiln.config.tasks.actor_idle_secs);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<CreateOrganization> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<Organization>>;

    fn handle(&mut self, msg: CreateOrganization, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            let now = now_ms();
            let row = Organization {
                name: org.clone(),
                display_name: msg.display_name.filter(|d| !d.trim().is_empty()).unwrap_or_else(|| org.clone()),
                created_at: now,
                updated_at: now,
            };
            let inserted = row.clone();
            match kiln.db.write(move |c| store::insert_organization(c, &inserted)).await {
                Ok(()) => {}
                Err(e) if e.is_unique_violation() => {
                    return Err(AppError::conflict("organization_exists", format!("organization `{org}` already exists")))
                }
                Err(e) => return Err(e.into()),
            }
            kiln.emit_one(&org, NewEvent::new("organization.created", json!({"display_name": row.display_name})))
                .await?;
            Ok(row)
        })
    }
}

impl Handler<UpdateOrganization> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<Organization>>;

    fn handle(&mut self, msg: UpdateOrganization, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, missing) = (self.kiln.clone(), self.org.clone(), self.not_found());
        atomic!(self, async move {
            let name = org.clone();
            let display = msg.display_name.clone();
            let updated = kiln.db.write(move |c| store::update_display_name(c, &name, &display, now_ms())).await?;
            let row = updated.ok_or(missing)?;
            kiln.emit_one(&org, NewEvent::new("organization.updated", json!({"display_name": row.display_name})))
                .await?;
            Ok(row)
        })
    }
}

impl Handler<DeleteOrganization> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: DeleteOrganization, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, missing) = (self.kiln.clone(), self.org.clone(), self.not_found());
        atomic!(self, async move {
            let name = org.clone();
            let repos = kiln.db.read(move |c| queries::repos_count(c, &name)).await?;
            if repos > 0 {
                return Err(AppError::conflict(
                    "organization_not_empty",
                    format!("organization `{org}` still has {repos} repositories: delete them first"),
                ));
            }
            let name = org.clone();
            if !kiln.db.write(move |c| store::delete_organization(c, &name)).await? {
                return Err(missing);
            }
            // Its tokens went with it: so do the connections they opened.
            kiln.connections.close_organization(&org);
            kiln.emit_one(&org, NewEvent::new("organization.deleted", json!({}))).await?;
            Ok(())
        })
    }
}

impl Handler<CreateToken> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<(ApiToken, String)>>;

    fn handle(&mut self, msg: CreateToken, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, missing) = (self.kiln.clone(), self.org.clone(), self.not_found());
        atomic!(self, async move {
            let name = org.clone();
            if kiln.db.read(move |c| queries::organization(c, &name)).await?.is_none() {
                return Err(missing);
            }
            let secret = format!("kiln_{}", random_hex(40));
            let row = ApiToken {
                id: format!("tok_{}", random_hex(12)),
                organization: org.clone(),
                name: msg.name,
                token_hash: sha256_hex(secret.as_bytes()),
                created_at: now_ms(),
                revoked_at: None,
            };
            let inserted = row.clone();
            kiln.db.write(move |c| store::insert_token(c, &inserted)).await?;
            kiln.emit_one(&org, NewEvent::new("token.created", json!({"id": row.id, "name": row.name}))).await?;
            Ok((row, secret))
        })
    }
}

impl Handler<RevokeToken> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<ApiToken>>;

    fn handle(&mut self, msg: RevokeToken, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            let (o, id) = (org.clone(), msg.id.clone());
            let row = kiln
                .db
                .write(move |c| store::revoke_token(c, &o, &id, now_ms()))
                .await?
                .ok_or_else(|| AppError::not_found("token_not_found", format!("no token `{}` in `{org}`", msg.id)))?;
            kiln.connections.close_token(&row.id);
            kiln.emit_one(&org, NewEvent::new("token.revoked", json!({"id": row.id, "name": row.name}))).await?;
            Ok(row)
        })
    }
}

impl Handler<PutProviderProfile> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<ProviderProfileView>>;

    fn handle(&mut self, msg: PutProviderProfile, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, missing) = (self.kiln.clone(), self.org.clone(), self.not_found());
        atomic!(self, async move {
            if !PROVIDERS.contains(&msg.provider.as_str()) {
                return Err(AppError::not_found(
                    "provider_not_found",
                    format!("no provider `{}`: use one of {}", msg.provider, PROVIDERS.join(", ")),
                ));
            }
            let name = org.clone();
            if kiln.db.read(move |c| queries::organization(c, &name)).await?.is_none() {
                return Err(missing);
            }
            let (o, provider) = (org.clone(), msg.provider.clone());
            let (config, secrets) = (msg.config, msg.secrets);
            let view = kiln
                .db
                .write(move |c| store::upsert_provider_profile(c, &o, &provider, config, secrets, now_ms()))
                .await?;
            // Only the secret names go into the event, never their values.
            kiln.emit_one(
                &org,
                NewEvent::new("provider.updated", json!({"provider": view.provider, "secrets": view.secrets})),
            )
            .await?;
            Ok(view)
        })
    }
}
