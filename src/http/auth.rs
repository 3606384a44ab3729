//! Bearer-token auth. The admin token lives in `<data>/admin.token` (mode 0600)
//! and is compared by hash in constant time; organization tokens are stored
//! hashed in `api_tokens`. WebSocket routes also accept `?access_token=`, since
//! browsers cannot set headers on a WebSocket.
//!
//! The dashboard's pages authenticate with a session cookie instead
//! ([`SESSION_COOKIE`], a row of `web_sessions` standing for one token), only when
//! the request carries no bearer token. A cookie request that changes anything
//! (any method but GET and HEAD, and every WebSocket) must come from the
//! dashboard's own origin: its `Origin` names this server, or, without `Origin`,
//! `Sec-Fetch-Site` says `same-origin` ([`same_origin`]). Everything outside
//! `/v1`, `/admin` and `/metrics` is the dashboard's static assets and needs no
//! credential: they carry no data.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use actix::Recipient;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};

use crate::actors::connections::{CloseRevoked, Revoked, Ticket};
use crate::actors::Kiln;
use crate::db::queries;
use crate::error::AppError;
use crate::util::{constant_time_eq, random_hex, sha256_hex};

/// The name of the admin token file in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What the server knows to check callers against.
#[derive(Clone)]
pub struct AuthState {
    pub enabled: bool,
    pub admin_hash: String,
}

/// Reads the admin token, creating it (mode 0600) on first start.
pub fn ensure_admin_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!("{} is readable by others (mode {:o}); tightening to 0600", path.display(), mode);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let token = std::fs::read_to_string(&path)?.trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token = format!("kiln_admin_{}", random_hex(48));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    log::info!("created the admin token in {}", path.display());
    Ok(token)
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Organization(String),
}

impl Caller {
    /// Allows the admin, and a token of `org` itself. A token of another
    /// organization gets 403, before anything about `org` is looked up.
    pub fn require_org(&self, org: &str) -> Result<(), AppError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Organization(own) if own == org => Ok(()),
            Caller::Organization(own) => {
                Err(AppError::forbidden(format!("this token belongs to organization `{own}` and cannot reach `{org}`")))
            }
        }
    }

    pub fn require_admin(&self) -> Result<(), AppError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Organization(_) => Err(AppError::forbidden("this needs the admin token")),
        }
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    let is_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_ws {
        return web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("access_token").cloned());
    }
    None
}

/// The cookie naming a dashboard session (its random id; the row holds the hash).
pub const SESSION_COOKIE: &str = "kiln_session";

/// The hash of the id of the dashboard session a request authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHash(pub String);

/// The dashboard session a request authenticated with, if it used one.
pub fn session_hash(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<SessionHash>().map(|s| s.0.clone())
}

/// The value of the session cookie, if the request has one.
pub fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Refuses a cookie-authenticated change that does not come from the dashboard's
/// own origin (the CSRF defence, with the cookie's `SameSite=Strict`). A safe
/// read (GET or HEAD, not a WebSocket) passes; anything else needs an `Origin`
/// whose host and port are this request's `Host`, or, with no `Origin`,
/// `Sec-Fetch-Site: same-origin`. Browsers send at least one of them on every
/// such request; a cross-site page cannot forge either.
pub fn same_origin(req: &HttpRequest) -> Result<(), AppError> {
    let is_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let safe = matches!(*req.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD) && !is_ws;
    if safe {
        return Ok(());
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let refused = || {
        AppError::denied(
            "cross_origin_refused",
            "a dashboard session accepts changes only from the dashboard's own pages (the Origin of this request is another site, or missing)",
        )
    };
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" {
            return Err(refused());
        }
    }
    match header("origin") {
        Some(origin) => {
            let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            let host = req.connection_info().host().to_string();
            if authority.eq_ignore_ascii_case(&host) {
                Ok(())
            } else {
                Err(refused())
            }
        }
        None if header("sec-fetch-site").is_some() => Ok(()),
        None => Err(refused()),
    }
}

/// The id of the organization token a request authenticated with; absent for the
/// admin (and with auth turned off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId(pub String);

/// The token id the auth middleware recorded for this request, if any.
pub fn token_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<TokenId>().map(|t| t.0.clone())
}

/// Who a request authenticated as: the caller, the organization token's id, and
/// the dashboard session's hash when it came with the session cookie.
type Identity = (Caller, Option<TokenId>, Option<SessionHash>);

/// Works out who is calling: the admin, an organization's token (with its id),
/// a dashboard session (standing for one of those), or nobody.
async fn identify(req: &HttpRequest) -> Result<Identity, AppError> {
    let (Some(auth), Some(kiln)) = (req.app_data::<web::Data<AuthState>>(), req.app_data::<web::Data<Kiln>>()) else {
        return Err(AppError::bug("auth state is not configured"));
    };
    if !auth.enabled {
        return Ok((Caller::Admin, None, None));
    }
    let Some(token) = bearer(req) else {
        if let Some(cookie) = session_cookie(req) {
            return identify_session(kiln, req, &cookie).await;
        }
        return Err(AppError::Unauthorized { message: "missing bearer token: send `Authorization: Bearer <token>`".into() });
    };
    let (caller, id) = check_token(auth, kiln, &token).await?;
    Ok((caller, id, None))
}

/// Checks a bearer token (or one pasted into the sign-in page): the admin's, or
/// a live organization token.
pub async fn check_token(auth: &AuthState, kiln: &Kiln, token: &str) -> Result<(Caller, Option<TokenId>), AppError> {
    let hash = sha256_hex(token.as_bytes());
    if constant_time_eq(hash.as_bytes(), auth.admin_hash.as_bytes()) {
        return Ok((Caller::Admin, None));
    }
    match kiln.db.read(move |c| queries::token_by_hash(c, &hash)).await? {
        Some(row) => Ok((Caller::Organization(row.organization), Some(TokenId(row.id)))),
        None => Err(AppError::Unauthorized { message: "the bearer token is not valid or was revoked".into() }),
    }
}

/// A request with the session cookie: a live session acts as its token (the
/// admin when it has none), and a change must pass [`same_origin`].
async fn identify_session(kiln: &Kiln, req: &HttpRequest, cookie: &str) -> Result<Identity, AppError> {
    let hash = sha256_hex(cookie.as_bytes());
    let lookup = hash.clone();
    let session = kiln
        .db
        .read(move |c| queries::web_session_by_hash(c, &lookup, crate::util::now_ms()))
        .await?
        .ok_or_else(|| AppError::Unauthorized {
            message: "your dashboard session has ended (signed out, expired, or its token was revoked): sign in again".into(),
        })?;
    same_origin(req)?;
    let caller = match &session.token_id {
        Some(_) => Caller::Organization(session.organization.clone()),
        None => Caller::Admin,
    };
    Ok((caller, session.token_id.map(TokenId), Some(SessionHash(hash))))
}

/// Middleware: authenticates every request but the health check *before* any
/// extractor runs, so a bad token is always a 401, whatever the body holds.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // Health and the API's document are open; webhooks carry their own HMAC
    // signature instead of a token; signing in to the dashboard is how a browser
    // gets a credential; the dashboard's assets hold no data.
    let open = matches!(req.path(), "/v1/health" | "/v1/openapi.json" | "/v1/webhooks/github")
        || (req.path() == super::dashboard::SESSIONS_PATH && req.method() == actix_web::http::Method::POST)
        || !super::web_assets::is_api_path(req.path());
    if open {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    match identify(req.request()).await {
        Ok((caller, token, session)) => {
            req.extensions_mut().insert(caller);
            if let Some(token) = token {
                req.extensions_mut().insert(token);
            }
            if let Some(session) = session {
                req.extensions_mut().insert(session);
            }
            next.call(req).await.map(ServiceResponse::map_into_left_body)
        }
        Err(err) => Ok(req.into_response(err.error_response()).map_into_right_body()),
    }
}

impl FromRequest for Caller {
    type Error = AppError;
    type Future = std::future::Ready<Result<Caller, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            req.extensions().get::<Caller>().cloned().ok_or_else(|| AppError::bug("the auth middleware did not run")),
        )
    }
}

/// Registers a WebSocket just started for `req` with the token (and dashboard
/// session) it authenticated with, so revoking the token or signing out closes
/// it (`actors::connections`). The admin's bearer connections are not registered.
///
/// The token was checked when the request arrived; it may have been revoked
/// since, before the registration, when the revocation could not see it. So it is
/// read again *after* registering: a revocation is then seen by one side or the
/// other, and the connection closes at once.
pub async fn register_connection(
    kiln: &Kiln,
    req: &HttpRequest,
    org: &str,
    ticket: &Ticket,
    closer: Recipient<CloseRevoked>,
) -> Result<(), AppError> {
    let session = session_hash(req);
    let Some(token) = token_id(req) else {
        if let Some(session) = session {
            kiln.connections.register(ticket, org, None, Some(&session), closer);
            // Signed out meanwhile: close at once (the admin's session has no token to re-read).
            let lookup = session.clone();
            let live = kiln.db.read(move |c| queries::web_session_by_hash(c, &lookup, crate::util::now_ms())).await;
            if !matches!(live, Ok(Some(_))) {
                kiln.connections.close(ticket, Revoked::SessionEnded);
            }
        }
        return Ok(());
    };
    kiln.connections.register(ticket, org, Some(&token), session.as_deref(), closer);
    let id = token.clone();
    let row = match kiln.db.read(move |c| queries::token_by_id(c, &id)).await {
        Ok(row) => row,
        Err(e) => {
            kiln.connections.close(ticket, Revoked::Token);
            return Err(e.into());
        }
    };
    match row {
        Some(row) if row.revoked_at.is_none() => {}
        Some(_) => kiln.connections.close(ticket, Revoked::Token),
        None => kiln.connections.close(ticket, Revoked::Organization),
    }
    Ok(())
}
