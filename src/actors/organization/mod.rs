//! OrganizationActor (`org/{org}`): the only writer of `organizations`,
//! `provider_profiles`, `api_tokens`, and the dashboard's `web_sign_in_codes` and
//! `web_sessions` (which stand for its tokens).
//!
//! Messages: `CreateOrganization`, `UpdateOrganization`, `DeleteOrganization`,
//! `CreateToken`, `RevokeToken`, `PutProviderProfile`, `CreateSignInCode`,
//! `RedeemSignInCode`, `CreateWebSession`, `EndWebSession`. Each checks the request
//! against the current rows, writes, emits its event and answers. Handlers are
//! atomic: the next message waits until the write and its event are done.
//! Revoking a token deletes its dashboard sessions and closes the WebSockets it
//! (or they) opened, and deleting the
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
use crate::db::models::{ApiToken, Organization, SignInCode, WebSession};
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

/// Makes a one-time dashboard sign-in code for `token_id` (`None`: the admin),
/// valid for `ttl_ms`; answers the code, which is stored only as a hash.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(String, SignInCode)>")]
pub struct CreateSignInCode {
    pub token_id: Option<String>,
    pub ttl_ms: i64,
}

/// Spends a sign-in code of this organization and opens a web session for its
/// token, valid for `ttl_ms`; answers the session id (the cookie's value) and row.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(String, WebSession)>")]
pub struct RedeemSignInCode {
    pub code_hash: String,
    pub ttl_ms: i64,
}

/// Opens a web session for `token_id` (`None`: the admin) directly: the sign-in
/// page's pasted token, already checked by the caller.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(String, WebSession)>")]
pub struct CreateWebSession {
    pub token_id: Option<String>,
    pub ttl_ms: i64,
}

/// Ends a web session (sign out) and closes the WebSockets it opened.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct EndWebSession {
    pub id_hash: String,
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
            // Its agents' home (their logins, caches) is set aside first, so a
            // later organization of the same name never starts with it, and put
            // back if the organization turns out not to be deleted.
            let home = crate::confine::Confiner::agent_home(&kiln.data_dir, &org);
            let h = home.clone();
            let aside = crate::db::pool::blocking(move || {
                set_home_aside(&h).map_err(|e| crate::db::DbError::Blocking(format!("moving {}: {e}", h.display())))
            })
            .await?;
            let name = org.clone();
            let deleted = kiln.db.write(move |c| store::delete_organization(c, &name)).await;
            let keep = !matches!(deleted, Ok(true));
            if let Some(aside) = aside {
                crate::db::pool::blocking(move || {
                    match keep {
                        true => std::fs::rename(&aside, &home).map_err(|e| crate::db::DbError::Blocking(format!("restoring {}: {e}", home.display())))?,
                        false => remove_home(&aside),
                    }
                    Ok(())
                })
                .await?;
            }
            if !deleted? {
                return Err(missing);
            }
            // Its tokens went with it: so do the connections they opened.
            kiln.connections.close_organization(&org);
            kiln.emit_one(&org, NewEvent::new("organization.deleted", json!({}))).await?;
            Ok(())
        })
    }
}

/// Moves an organization's agent home out of the way (a rename, which nothing
/// an agent left inside can stop), under a hidden name no organization can
/// have; answers where, or `None` when it has none.
fn set_home_aside(home: &std::path::Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let name = home.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let aside = home.with_file_name(format!(".deleted-{name}-{}", random_hex(8)));
    match std::fs::rename(home, &aside) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(Some(aside)),
    }
}

/// Removes a home set aside; what cannot be removed stays there, and is logged.
fn remove_home(aside: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(aside) {
        log::warn!("the agent home of a deleted organization is left at {}: {e}", aside.display());
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
            let (row, sessions) = kiln
                .db
                .write(move |c| store::revoke_token(c, &o, &id, now_ms()))
                .await?
                .ok_or_else(|| AppError::not_found("token_not_found", format!("no token `{}` in `{org}`", msg.id)))?;
            // A session's connections are registered under its token too.
            kiln.connections.close_token(&row.id);
            if !sessions.is_empty() {
                log::info!("revoking token {} of {org} ended {} dashboard sessions", row.id, sessions.len());
            }
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

impl OrganizationActor {
    /// Checks that `token_id` (when set) is a live token of this organization,
    /// and that the organization exists.
    async fn check_signer(kiln: &Kiln, org: &str, token_id: Option<&str>) -> AppResult<()> {
        let (name, token) = (org.to_string(), token_id.map(str::to_string));
        let (exists, live) = kiln
            .db
            .read(move |c| {
                let exists = queries::organization(c, &name)?.is_some();
                let live = match &token {
                    Some(id) => queries::token_by_id(c, id)?
                        .is_some_and(|t| t.organization == name && t.revoked_at.is_none()),
                    None => true,
                };
                Ok((exists, live))
            })
            .await?;
        if !exists {
            return Err(AppError::not_found("organization_not_found", format!("organization `{org}` does not exist")));
        }
        if !live {
            return Err(AppError::Unauthorized { message: "the token is not valid or was revoked".into() });
        }
        Ok(())
    }

    /// Inserts a fresh web session for `token_id`; answers its id and row.
    async fn open_session(kiln: &Kiln, org: &str, token_id: Option<String>, ttl_ms: i64) -> AppResult<(String, WebSession)> {
        let id = random_hex(64);
        let now = now_ms();
        let row = WebSession {
            id_hash: sha256_hex(id.as_bytes()),
            organization: org.to_string(),
            token_id,
            created_at: now,
            expires_at: now + ttl_ms,
        };
        let inserted = row.clone();
        kiln.db.write(move |c| store::insert_web_session(c, &inserted)).await?;
        Ok((id, row))
    }
}

impl Handler<CreateSignInCode> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<(String, SignInCode)>>;

    fn handle(&mut self, msg: CreateSignInCode, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            Self::check_signer(&kiln, &org, msg.token_id.as_deref()).await?;
            let code = random_hex(48);
            let now = now_ms();
            let row = SignInCode {
                code_hash: sha256_hex(code.as_bytes()),
                organization: org,
                token_id: msg.token_id,
                created_at: now,
                expires_at: now + msg.ttl_ms,
            };
            let inserted = row.clone();
            kiln.db.write(move |c| store::insert_sign_in_code(c, &inserted)).await?;
            Ok((code, row))
        })
    }
}

impl Handler<RedeemSignInCode> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<(String, WebSession)>>;

    fn handle(&mut self, msg: RedeemSignInCode, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            let (o, hash) = (org.clone(), msg.code_hash.clone());
            let code = kiln
                .db
                .write(move |c| store::take_sign_in_code(c, &o, &hash, now_ms()))
                .await?
                .ok_or_else(crate::http::dashboard::code_invalid)?;
            Self::check_signer(&kiln, &org, code.token_id.as_deref()).await?;
            let (id, row) = Self::open_session(&kiln, &org, code.token_id, msg.ttl_ms).await?;
            kiln.emit_one(&org, NewEvent::new("dashboard.signed_in", json!({"token": row.token_id, "via": "code"})))
                .await?;
            Ok((id, row))
        })
    }
}

impl Handler<CreateWebSession> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<(String, WebSession)>>;

    fn handle(&mut self, msg: CreateWebSession, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            Self::check_signer(&kiln, &org, msg.token_id.as_deref()).await?;
            let (id, row) = Self::open_session(&kiln, &org, msg.token_id, msg.ttl_ms).await?;
            kiln.emit_one(&org, NewEvent::new("dashboard.signed_in", json!({"token": row.token_id, "via": "token"})))
                .await?;
            Ok((id, row))
        })
    }
}

impl Handler<EndWebSession> for OrganizationActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: EndWebSession, _: &mut Self::Context) -> Self::Result {
        let (kiln, org) = (self.kiln.clone(), self.org.clone());
        atomic!(self, async move {
            let (o, hash) = (org.clone(), msg.id_hash.clone());
            let existed = kiln.db.write(move |c| store::delete_web_session(c, &o, &hash)).await?;
            kiln.connections.close_session(&msg.id_hash);
            if existed {
                kiln.emit_one(&org, NewEvent::new("dashboard.signed_out", json!({}))).await?;
            }
            Ok(())
        })
    }
}
