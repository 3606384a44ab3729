//! Signing in to the web dashboard (docs/dashboard.md, docs/api.md "Dashboard").
//!
//! - `POST /v1/dashboard/codes` (any credential): a one-time sign-in code, valid
//!   [`CODE_TTL_MS`], for the caller's own token; `kiln dashboard` prints the link.
//! - `GET /sign-in?code=…` (the link): spends the code, sets the session cookie and
//!   sends the browser to the board with no code left in its address bar.
//! - `POST /v1/dashboard/sessions` (no credential; the browser's own origin only):
//!   the same from the page, with a code or a pasted token in the body.
//! - `GET /v1/dashboard/session`: who this is; `DELETE` signs out.
//!
//! Codes and sessions are rows the OrganizationActor writes; only hashes are
//! stored. The cookie is `HttpOnly; SameSite=Strict` (and `Secure` over https).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::auth::{self, AuthState, Caller, SESSION_COOKIE};
use super::extract::{Json, OptionalJson};
use super::organization_or_404;
use crate::actors::organization::{CreateSignInCode, CreateWebSession, EndWebSession, RedeemSignInCode};
use crate::actors::Kiln;
use crate::db::models::WebSession;
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::util::sha256_hex;

/// How long a sign-in code can be spent: the bound, 60 seconds.
pub const CODE_TTL_MS: i64 = 60_000;

/// The route a browser signs in on (unauthenticated; see `auth::authenticate`).
pub const SESSIONS_PATH: &str = "/v1/dashboard/sessions";

/// A code that was never made, was spent already, or expired.
pub fn code_invalid() -> AppError {
    AppError::denied(
        "sign_in_code_invalid",
        "this sign-in link is not valid: it was used already or is older than 60 seconds. Run `kiln dashboard` for a new one",
    )
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = CreateSignInCode)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    /// The board to open, for the admin (an organization token opens its own).
    pub organization: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = DashboardSignIn)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// A sign-in code from `POST /v1/dashboard/codes`.
    pub code: Option<String>,
    /// Or a token, pasted into the sign-in page.
    pub token: Option<String>,
    /// With the admin token: the organization whose board to open.
    pub organization: Option<String>,
}

/// A one-time sign-in code.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignInCode {
    /// Single-use, valid for 60 seconds; only its SHA-256 is stored.
    pub code: String,
    pub organization: String,
    pub expires_at: i64,
    /// Append to the server's URL for the link (`/sign-in?code=…`).
    pub path: String,
}

/// Who a dashboard session (or the bearer token) is.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashboardSession {
    pub admin: bool,
    /// `null` for the admin with a bearer token.
    pub organization: Option<String>,
    /// The id of the token it stands for; `null` for the admin.
    pub token: Option<String>,
    /// `null` with a bearer token.
    pub expires_at: Option<i64>,
    /// A session cookie, not a bearer token.
    pub cookie: bool,
}

/// `POST /v1/dashboard/codes`: a one-time code that signs a browser in as the
/// caller's own credential.
#[utoipa::path(
    post, path = "/v1/dashboard/codes", tag = "dashboard",
    request_body(content = CreateCode, description = "Optional: an empty body means no fields"),
    responses(
        (status = 201, description = "Created (`Cache-Control: no-store`)", body = SignInCode),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = super::openapi::ApiError),
    ),
)]
pub async fn create_code(
    req: HttpRequest,
    kiln: web::Data<Kiln>,
    caller: Caller,
    body: OptionalJson<CreateCode>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let org = match (&caller, body.organization) {
        (Caller::Organization(own), None) => own.clone(),
        (Caller::Organization(_), Some(org)) => {
            caller.require_org(&org)?;
            org
        }
        (Caller::Admin, org) => org.unwrap_or_else(|| kiln.config.default_organization.clone()),
    };
    organization_or_404(&kiln, &org).await?;
    let token_id = auth::token_id(&req);
    let (code, row) = kiln.organization(&org).send(CreateSignInCode { token_id, ttl_ms: CODE_TTL_MS }).await??;
    let path = format!("/sign-in?code={code}");
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(SignInCode { code, organization: row.organization, expires_at: row.expires_at, path }))
}

/// `POST /v1/dashboard/sessions`: the page signs in with a code or a token.
/// Only from the dashboard's own origin (`Origin` naming this server).
#[utoipa::path(
    post, path = "/v1/dashboard/sessions", tag = "dashboard",
    request_body = CreateSession,
    responses(
        (status = 201, description = "Signed in, with `Set-Cookie: kiln_session=…`", body = DashboardSession),
        (status = 401, description = "Not signed in:\n- `unauthorized`: a token that is not valid or was revoked", body = super::openapi::ApiError),
        (status = 403, description = "Refused:\n- `cross_origin_refused`\n- `sign_in_code_invalid`\n- `forbidden`", body = super::openapi::ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = super::openapi::ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_sign_in`: neither or both of `code` and `token`", body = super::openapi::ApiError),
    ),
)]
pub async fn create_session(
    req: HttpRequest,
    kiln: web::Data<Kiln>,
    auth_state: web::Data<AuthState>,
    body: Json<CreateSession>,
) -> AppResult<HttpResponse> {
    // Login CSRF: another site must not sign this browser in as someone else.
    auth::same_origin(&req)?;
    let body = body.into_inner();
    let (id, session) = match (body.code, body.token) {
        (Some(code), None) => redeem(&kiln, &code).await?,
        (None, Some(token)) => {
            let (caller, token_id) = auth::check_token(&auth_state, &kiln, token.trim()).await?;
            let org = match &caller {
                Caller::Organization(own) => {
                    if let Some(asked) = &body.organization {
                        caller.require_org(asked)?;
                    }
                    own.clone()
                }
                Caller::Admin => body.organization.unwrap_or_else(|| kiln.config.default_organization.clone()),
            };
            organization_or_404(&kiln, &org).await?;
            let token_id = token_id.map(|t| t.0);
            kiln.organization(&org).send(CreateWebSession { token_id, ttl_ms: session_ttl_ms(&kiln) }).await??
        }
        _ => {
            return Err(AppError::invalid("invalid_sign_in", "send either `code` (from a sign-in link) or `token`, not both"))
        }
    };
    Ok(HttpResponse::Created()
        .insert_header((header::SET_COOKIE, set_cookie(&req, &id, session_ttl_ms(&kiln) / 1000)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(view(&session)))
}

/// `GET /v1/dashboard/session`: who the caller is, and until when.
#[utoipa::path(
    get, path = "/v1/dashboard/session", tag = "dashboard",
    responses((status = 200, description = "Who the caller is (`Cache-Control: no-store`)", body = DashboardSession)),
)]
pub async fn get_session(req: HttpRequest, kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    let session = match auth::session_hash(&req) {
        Some(hash) => kiln.db.read(move |c| queries::web_session_by_hash(c, &hash, crate::util::now_ms())).await?,
        None => None,
    };
    let body = match (&session, &caller) {
        (Some(s), _) => view(s),
        (None, Caller::Admin) => DashboardSession { admin: true, organization: None, token: None, expires_at: None, cookie: false },
        (None, Caller::Organization(org)) => DashboardSession {
            admin: false,
            organization: Some(org.clone()),
            token: auth::token_id(&req),
            expires_at: None,
            cookie: false,
        },
    };
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body))
}

/// `DELETE /v1/dashboard/session`: signs out. The row is deleted, the
/// session's WebSockets are closed (4003) and the cookie is cleared.
#[utoipa::path(
    delete, path = "/v1/dashboard/session", tag = "dashboard",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared"),
        (status = 403, description = "Refused:\n- `cross_origin_refused`", body = super::openapi::ApiError),
        (status = 422, description = "Invalid content:\n- `no_dashboard_session`: the request used a bearer token", body = super::openapi::ApiError),
    ),
)]
pub async fn delete_session(req: HttpRequest, kiln: web::Data<Kiln>) -> AppResult<HttpResponse> {
    let Some(hash) = auth::session_hash(&req) else {
        return Err(AppError::invalid("no_dashboard_session", "this request did not use a dashboard session: there is nothing to sign out of"));
    };
    let lookup = hash.clone();
    if let Some(session) = kiln.db.read(move |c| queries::web_session_by_hash(c, &lookup, crate::util::now_ms())).await? {
        kiln.organization(&session.organization).send(EndWebSession { id_hash: hash }).await??;
    }
    Ok(HttpResponse::NoContent().insert_header((header::SET_COOKIE, clear_cookie(&req))).finish())
}

/// `GET /sign-in?code=…`, the link `kiln dashboard` prints. Opened from outside a
/// page (the address bar, `xdg-open`: `Sec-Fetch-Site: none`) it signs in at
/// once and redirects to the board, so the code leaves the address bar and the
/// history. Followed from another site it signs nobody in: the page then asks
/// the person to confirm (a login-CSRF defence), through `POST …/sessions`.
pub async fn sign_in_link(req: &HttpRequest, kiln: &Kiln, code: &str) -> Option<HttpResponse> {
    // Only a navigation the browser says the person made (typed, pasted, from a
    // bookmark or this site) spends the code at once; anything else, a browser
    // that sends no Sec-Fetch-Site included, gets the confirm page.
    let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if !matches!(site, Some("none") | Some("same-origin")) {
        return None;
    }
    let answer = match redeem(kiln, code).await {
        Ok((id, _)) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/"))
            .insert_header((header::SET_COOKIE, set_cookie(req, &id, session_ttl_ms(kiln) / 1000)))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("referrer-policy", "no-referrer"))
            .finish(),
        Err(e) => {
            log::info!("a dashboard sign-in link was refused: {e}");
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, format!("/sign-in?error={}", e.code())))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header(("referrer-policy", "no-referrer"))
                .finish()
        }
    };
    Some(answer)
}

/// Spends a code with the organization that made it; answers the new session.
async fn redeem(kiln: &Kiln, code: &str) -> AppResult<(String, WebSession)> {
    let hash = sha256_hex(code.trim().as_bytes());
    let lookup = hash.clone();
    let row = kiln.db.read(move |c| queries::sign_in_code_by_hash(c, &lookup)).await?.ok_or_else(code_invalid)?;
    kiln.organization(&row.organization)
        .send(RedeemSignInCode { code_hash: hash, ttl_ms: session_ttl_ms(kiln) })
        .await?
}

fn session_ttl_ms(kiln: &Kiln) -> i64 {
    i64::try_from(kiln.config.dashboard.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
}

fn view(session: &WebSession) -> DashboardSession {
    DashboardSession {
        admin: session.token_id.is_none(),
        organization: Some(session.organization.clone()),
        token: session.token_id.clone(),
        expires_at: Some(session.expires_at),
        cookie: true,
    }
}

fn secure(req: &HttpRequest) -> &'static str {
    if req.connection_info().scheme() == "https" {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(req: &HttpRequest, id: &str, max_age_secs: i64) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}", secure(req))
}

fn clear_cookie(req: &HttpRequest) -> String {
    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}", secure(req))
}
