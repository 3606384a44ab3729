//! `/v1/organizations`: organizations, their tokens and provider profiles.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::dto;
use super::openapi::{ApiError, OrgPath};
use super::extract::Json;
use super::organization_or_404;
use crate::actors::organization::{
    CreateOrganization, CreateToken, DeleteOrganization, ProviderProfileView, PutProviderProfile, RevokeToken,
    UpdateOrganization, PROVIDERS,
};
use crate::actors::Kiln;
use crate::db::models::{ApiToken, Organization};
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::validate;

/// Lists the organizations the caller can see: all for the admin, its own for an
/// organization token.
#[utoipa::path(
    get, path = "/v1/organizations", tag = "organizations",
    responses((status = 200, description = "All organizations for the admin; its own for an organization token", body = dto::Items<Organization>)),
)]
pub async fn list(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    let mut orgs = kiln.db.read(queries::organizations_list).await?;
    if let Caller::Organization(own) = &caller {
        orgs.retain(|o| &o.name == own);
    }
    Ok(HttpResponse::Ok().json(dto::Items { items: orgs }))
}

/// Creates an organization (admin only).
#[utoipa::path(
    post, path = "/v1/organizations", tag = "organizations",
    request_body = dto::CreateOrganization,
    responses(
        (status = 201, description = "Created", body = Organization),
        (status = 409, description = "Conflict:\n- `organization_exists`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_name`\n- `invalid_display_name`", body = ApiError),
    ),
)]
pub async fn create(
    kiln: web::Data<Kiln>,
    caller: Caller,
    body: Json<dto::CreateOrganization>,
) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let body = body.into_inner();
    validate::name("organization", &body.name)?;
    if body.display_name.as_ref().is_some_and(|d| d.chars().count() > 200) {
        return Err(AppError::invalid("invalid_display_name", "display_name must be 1-200 characters"));
    }
    let row = kiln.organization(&body.name).send(CreateOrganization { display_name: body.display_name }).await??;
    Ok(HttpResponse::Created().json(row))
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}", tag = "organizations", params(OrgPath),
    responses((status = 200, description = "The organization", body = Organization), (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError)),
)]
pub async fn get(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    Ok(HttpResponse::Ok().json(organization_or_404(&kiln, &org).await?))
}

/// Renames the organization's display name.
#[utoipa::path(
    patch, path = "/v1/organizations/{org}", tag = "organizations", params(OrgPath),
    request_body = dto::UpdateOrganization,
    responses(
        (status = 200, description = "Updated", body = Organization), (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_display_name`", body = ApiError),
    ),
)]
pub async fn update(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<dto::UpdateOrganization>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    // The limits the document states: at most 200 characters as sent, and some
    // beyond ASCII white space (which is trimmed off).
    let sent = body.into_inner().display_name;
    let display_name = sent.trim_matches(|c: char| c.is_ascii_whitespace()).to_string();
    if display_name.is_empty() || sent.chars().count() > 200 {
        return Err(AppError::invalid("invalid_display_name", "display_name must be 1-200 characters"));
    }
    let row = kiln.organization(&org).send(UpdateOrganization { display_name }).await??;
    Ok(HttpResponse::Ok().json(row))
}

/// Deletes the organization and everything in it (admin only); its tokens' open
/// connections close with 4004.
#[utoipa::path(
    delete, path = "/v1/organizations/{org}", tag = "organizations", params(OrgPath),
    responses(
        (status = 204, description = "Deleted"), (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 409, description = "Conflict:\n- `organization_not_empty`: it still has repositories (delete them first)", body = ApiError),
    ),
)]
pub async fn delete(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_admin()?;
    organization_or_404(&kiln, &org).await?;
    kiln.organization(&org).send(DeleteOrganization {}).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Reads a provider profile: its config and the names of its secrets.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/providers/{provider}", tag = "organizations",
    params(OrgPath, ("provider" = String, Path, description = "`worktree`, `daytona` or `github`")),
    responses(
        (status = 200, description = "The profile (empty when never set)", body = ProviderProfileView),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `provider_not_found`", body = ApiError),
    ),
)]
pub async fn get_provider(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (org, provider) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    known_provider(&provider)?;
    let (o, p) = (org.clone(), provider.clone());
    let row = kiln.db.read(move |c| queries::provider_profile(c, &o, &p)).await?;
    let view = match row {
        Some((config, secrets, at)) => ProviderProfileView::from_row(&provider, &config, &secrets, at),
        None => ProviderProfileView { provider, config: json!({}), secrets: vec![], updated_at: 0 },
    };
    Ok(HttpResponse::Ok().json(view))
}

/// Stores a provider profile: `config` replaces the old one; `secrets` are merged
/// name by name (`null` removes one) and never read back.
#[utoipa::path(
    put, path = "/v1/organizations/{org}/providers/{provider}", tag = "organizations",
    params(OrgPath, ("provider" = String, Path, description = "`worktree`, `daytona` or `github`")),
    request_body = dto::PutProviderProfile,
    responses(
        (status = 200, description = "The stored profile", body = ProviderProfileView),
        (status = 403, description = "Forbidden:\n- `provider_host_refused`: an organization's token set an `api_url` on a loopback, link-local or private address", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `provider_not_found`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_secret`: a value that is not a string or null, or a name that is not an environment variable name\n- `invalid_provider_config`: settings the provider does not take (`worktree` takes none; `daytona`'s are checked, see docs/providers.md)", body = ApiError),
    ),
)]
pub async fn put_provider(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<dto::PutProviderProfile>,
) -> AppResult<HttpResponse> {
    let (org, provider) = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    known_provider(&provider)?;
    let body = body.into_inner();
    if let Some((key, _)) = body.secrets.iter().find(|(_, v)| !(v.is_string() || v.is_null())) {
        return Err(AppError::invalid("invalid_secret", format!("secret `{key}` must be a string (or null to remove it)")));
    }
    // Secrets reach agents as environment variables, so their names must be valid ones.
    let env_name = |k: &str| {
        !k.is_empty()
            && k.len() <= 128
            && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if let Some(key) = body.secrets.keys().find(|k| !env_name(k)) {
        return Err(AppError::invalid(
            "invalid_secret",
            format!("secret name `{}` is not an environment variable name (letters, digits, _)", validate::truncate(key, 40)),
        ));
    }
    let config = crate::providers::validate_profile(&kiln.providers, &provider, body.config)?;
    if matches!(caller, Caller::Organization(_)) {
        api_url_host_policy(&kiln, &provider, &config).await?;
    }
    for (key, value) in &body.secrets {
        crate::providers::validate_secret(&provider, key, value)?;
    }
    let is_github = provider == "github";
    let view = kiln
        .organization(&org)
        .send(PutProviderProfile { provider, config, secrets: body.secrets })
        .await??;
    if is_github {
        // A new token or API URL: (re)start the pull-request pollers.
        let o = org.clone();
        for repo in kiln.db.read(move |c| queries::repos_list(c, &o)).await? {
            kiln.repo_pollers(&org, &repo.name);
        }
    }
    Ok(HttpResponse::Ok().json(view))
}

/// An organization's token may not point a provider's `api_url` (GitHub's or
/// Daytona's) at this server's own networks: Kiln would send requests there
/// (and, for GitHub, hand what a job-log download answers to the agent). The
/// same policy as for its repositories' source URLs (`repos.deny_private_hosts`,
/// `repos.allowed_hosts`); the admin may set any URL (a GitHub Enterprise or a
/// Daytona on the private network).
async fn api_url_host_policy(kiln: &Kiln, provider: &str, config: &serde_json::Map<String, serde_json::Value>) -> AppResult<()> {
    let Some(url) = config.get("api_url").and_then(|u| u.as_str()).map(str::to_string) else { return Ok(()) };
    let cfg = kiln.config.repos.clone();
    let checked = crate::db::pool::blocking(move || Ok(crate::actors::repository::hosts::check(&cfg, &url))).await?;
    match checked {
        Err(crate::actors::repository::hosts::Refusal::Private { host, addr }) => Err(AppError::denied(
            "provider_host_refused",
            format!(
                "the {provider} api_url's host `{host}` is {addr}, a loopback, link-local or private address: an organization's token may only point it at public hosts (the admin may set it, or allow the host with repos.allowed_hosts)"
            ),
        )),
        _ => Ok(()),
    }
}

fn known_provider(provider: &str) -> AppResult<()> {
    if PROVIDERS.contains(&provider) {
        Ok(())
    } else {
        Err(AppError::not_found(
            "provider_not_found",
            format!("no provider `{}`: use one of {}", validate::truncate(provider, 40), PROVIDERS.join(", ")),
        ))
    }
}

/// The organization's tokens, revoked ones included (admin only). Never the secrets.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tokens", tag = "organizations", params(OrgPath),
    responses((status = 200, description = "The tokens", body = dto::Items<ApiToken>), (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError)),
)]
pub async fn list_tokens(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_admin()?;
    organization_or_404(&kiln, &org).await?;
    let tokens = kiln.db.read(move |c| queries::tokens_list(c, &org)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: tokens }))
}

/// Creates a token; the secret is in this answer and nowhere else.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tokens", tag = "organizations", params(OrgPath),
    request_body = dto::CreateToken,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = dto::CreatedToken), (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_token_name`", body = ApiError),
    ),
)]
pub async fn create_token(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<dto::CreateToken>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_admin()?;
    organization_or_404(&kiln, &org).await?;
    let sent = body.into_inner().name;
    let name = sent.trim_matches(|c: char| c.is_ascii_whitespace()).to_string();
    if name.is_empty() || sent.chars().count() > 100 {
        return Err(AppError::invalid("invalid_token_name", "a token name must be 1-100 characters"));
    }
    let (row, secret) = kiln.organization(&org).send(CreateToken { name }).await??;
    Ok(HttpResponse::Created().json(dto::CreatedToken { row, token: secret }))
}

/// Revokes a token (admin only): it stops working at once, and its open
/// WebSockets close with 4001. Revoking a revoked token answers it as it is.
#[utoipa::path(
    delete, path = "/v1/organizations/{org}/tokens/{token}", tag = "organizations",
    params(OrgPath, ("token" = String, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The revoked token", body = ApiToken),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `token_not_found`", body = ApiError),
    ),
)]
pub async fn revoke_token(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_admin()?;
    organization_or_404(&kiln, &org).await?;
    let row = kiln.organization(&org).send(RevokeToken { id }).await??;
    Ok(HttpResponse::Ok().json(row))
}
