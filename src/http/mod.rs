//! The HTTP surface: `/v1` for clients, `/admin` for operators, `/metrics`, and
//! the web dashboard for every other path (`web`). One file per resource. Every
//! error leaves as `{"error", "message"}`.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod changes;
pub mod dashboard;
pub mod dto;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod notifications;
pub mod organizations;
pub mod repos;
pub mod sessions;
pub mod stream;
pub mod tasks;
pub mod terminal;
pub mod web_assets;
pub mod webhooks;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::error::PathError;
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::actors::Kiln;
use crate::db::models::Organization;
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::validate;

/// Registers every route, with the limits the body extractors read (see
/// `extract`: bodies, query strings and their errors are checked there).
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(extract::BodyLimit(max_body))
        .app_data(web::PathConfig::default().error_handler(|err, _| path_error(err).into()))
        .service(web::resource("/v1/health").route(web::get().to(admin::health)))
        .service(web::resource("/v1/openapi.json").route(web::get().to(openapi::serve)))
        .service(
            web::resource("/v1/webhooks/github")
                // GitHub sends payloads up to 25 MB; pull request events are far smaller.
                .app_data(extract::BodyLimit(5 * 1024 * 1024))
                .route(web::post().to(webhooks::github)),
        )
        .service(web::resource("/metrics").route(web::get().to(admin::metrics)))
        .service(web::resource("/v1/dashboard/codes").route(web::post().to(dashboard::create_code)))
        .service(web::resource(dashboard::SESSIONS_PATH).route(web::post().to(dashboard::create_session)))
        .service(
            web::resource("/v1/dashboard/session")
                .route(web::get().to(dashboard::get_session))
                .route(web::delete().to(dashboard::delete_session)),
        )
        .service(
            web::scope("/v1/organizations")
                .service(
                    web::resource("")
                        .route(web::get().to(organizations::list))
                        .route(web::post().to(organizations::create)),
                )
                .service(
                    web::resource("/{org}")
                        .route(web::get().to(organizations::get))
                        .route(web::patch().to(organizations::update))
                        .route(web::delete().to(organizations::delete)),
                )
                .service(
                    web::resource("/{org}/providers/{provider}")
                        .route(web::get().to(organizations::get_provider))
                        .route(web::put().to(organizations::put_provider)),
                )
                .service(
                    web::resource("/{org}/tokens")
                        .route(web::get().to(organizations::list_tokens))
                        .route(web::post().to(organizations::create_token)),
                )
                .service(web::resource("/{org}/tokens/{token}").route(web::delete().to(organizations::revoke_token)))
                .service(web::resource("/{org}/agents").route(web::get().to(agents::list)))
                .service(web::resource("/{org}/repos").route(web::get().to(repos::list)).route(web::post().to(repos::create)))
                .service(
                    web::resource("/{org}/repos/{repo}")
                        .route(web::get().to(repos::get))
                        .route(web::delete().to(repos::delete)),
                )
                .service(web::resource("/{org}/repos/{repo}/setup").route(web::put().to(repos::put_setup)))
                .service(web::resource("/{org}/repos/{repo}/settings").route(web::put().to(repos::put_settings)))
                .service(web::resource("/{org}/repos/{repo}/branches").route(web::get().to(repos::branches)))
                .service(web::resource("/{org}/repos/{repo}/pulls").route(web::get().to(repos::pulls)))
                .service(web::resource("/{org}/repos/{repo}/conflicts").route(web::get().to(repos::conflicts)))
                .service(web::resource("/{org}/tasks").route(web::get().to(tasks::list)).route(web::post().to(tasks::create)))
                .service(web::resource("/{org}/tasks/{task}").route(web::get().to(tasks::get)))
                .service(web::resource("/{org}/tasks/{task}/terminal").route(web::get().to(terminal::connect)))
                .service(
                    web::resource("/{org}/tasks/{task}/sessions")
                        .route(web::get().to(sessions::list))
                        .route(web::post().to(sessions::create)),
                )
                .service(
                    web::resource("/{org}/tasks/{task}/sessions/{session}")
                        .route(web::get().to(sessions::get))
                        .route(web::delete().to(sessions::close)),
                )
                .service(web::resource("/{org}/tasks/{task}/sessions/{session}/transcript").route(web::get().to(sessions::transcript)))
                .service(web::resource("/{org}/tasks/{task}/sessions/{session}/prompt").route(web::post().to(sessions::prompt)))
                .service(web::resource("/{org}/tasks/{task}/sessions/{session}/cancel").route(web::post().to(sessions::cancel)))
                .service(
                    web::resource("/{org}/tasks/{task}/sessions/{session}/permissions/{request}")
                        .route(web::post().to(sessions::answer_permission)),
                )
                .service(web::resource("/{org}/tasks/{task}/diff").route(web::get().to(changes::diff)))
                .service(web::resource("/{org}/tasks/{task}/review").route(web::post().to(changes::review)))
                .service(web::resource("/{org}/tasks/{task}/{action}").route(web::post().to(tasks::action)))
                .service(
                    web::resource("/{org}/notifications/webhooks")
                        .route(web::get().to(notifications::list_webhooks))
                        .route(web::post().to(notifications::create_webhook)),
                )
                .service(
                    web::resource("/{org}/notifications/webhooks/{webhook}")
                        .route(web::get().to(notifications::get_webhook))
                        .route(web::patch().to(notifications::update_webhook))
                        .route(web::delete().to(notifications::delete_webhook)),
                )
                .service(web::resource("/{org}/notifications/webhooks/{webhook}/test").route(web::post().to(notifications::test_webhook)))
                .service(
                    web::resource("/{org}/notifications/webhooks/{webhook}/deliveries")
                        .route(web::get().to(notifications::list_deliveries)),
                )
                .service(
                    web::resource("/{org}/notifications/webhooks/{webhook}/deliveries/{delivery}")
                        .route(web::get().to(notifications::get_delivery)),
                )
                .service(web::resource("/{org}/inbox").route(web::get().to(notifications::inbox)))
                .service(web::resource("/{org}/inbox/read").route(web::post().to(notifications::mark_read)))
                .service(web::resource("/{org}/events").route(web::get().to(events::list)))
                .service(web::resource("/{org}/stream").route(web::get().to(stream::connect))),
        )
        .service(
            web::scope("/admin")
                .service(web::resource("/actors").route(web::get().to(admin::actors)))
                .service(web::resource("/config").route(web::get().to(admin::config)))
                .service(web::resource("/db/checkpoint").route(web::post().to(admin::checkpoint)))
                .service(web::resource("/db/backup").route(web::post().to(admin::backup)))
                .service(web::resource("/repos/maintain").route(web::post().to(admin::maintain_repos)))
                .service(web::resource("/pollers").route(web::get().to(admin::pollers)))
                .service(web::resource("/pollers/{key:.+}/{op}").route(web::post().to(admin::poller_control))),
        );
}

/// Rewrites every error answer that is not already our JSON (actix's own 404,
/// 405, 413 and 400s, and anything a future route lets through) into the JSON
/// error shape, keeping its status. No response is ever `text/plain`. A 405
/// says in `Allow` which methods the path takes, as the OpenAPI document lists
/// them (RFC 9110).
pub fn json_error_pages<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(rewrite_plain::<B>)
}

fn rewrite_plain<B: MessageBody + 'static>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (method, path) = (res.request().method().clone(), validate::truncate(res.request().path(), 200));
    let err = match status {
        StatusCode::NOT_FOUND => AppError::not_found("route_not_found", format!("no route for {method} {path}")),
        StatusCode::METHOD_NOT_ALLOWED => AppError::bad_request("method_not_allowed", format!("{method} is not allowed here")),
        StatusCode::PAYLOAD_TOO_LARGE => AppError::bad_request("payload_too_large", "the request body is larger than this route accepts"),
        StatusCode::BAD_REQUEST => AppError::bad_request("bad_body", "the request could not be read"),
        s if s.is_server_error() => {
            log::error!("{method} {path} answered {s} without a JSON body");
            AppError::bad_request("internal_error", "something went wrong inside Kiln; the server log has the details")
        }
        s => AppError::bad_request("bad_request", format!("the request was refused ({s})")),
    };
    let allow = (status == StatusCode::METHOD_NOT_ALLOWED)
        .then(|| res.request().match_pattern())
        .flatten()
        .and_then(|pattern| openapi::allowed_methods(&pattern));
    let (req, _) = res.into_parts();
    let mut body: HttpResponse<BoxBody> = err.error_response();
    *body.status_mut() = status;
    if let Some(allow) = allow.and_then(|a| actix_web::http::header::HeaderValue::from_str(&a).ok()) {
        body.headers_mut().insert(actix_web::http::header::ALLOW, allow);
    }
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, body).map_into_right_body::<B>()))
}

/// Middleware: an error's message passes through the server's `Redactor` (no
/// data dir location, no password in a URL), whatever produced it: git's
/// messages name the mirror and worktree they ran in.
pub async fn redact_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let res = next.call(req).await?;
    let redacted = res.response().error().and_then(|e| e.as_error::<AppError>()).and_then(|err| {
        let kiln = res.request().app_data::<web::Data<Kiln>>()?;
        err.redacted(|m| kiln.redactor.text(m))
    });
    match redacted {
        Some(err) => {
            let (req, _) = res.into_parts();
            Ok(ServiceResponse::new(req, err.error_response()).map_into_right_body())
        }
        None => Ok(res.map_into_left_body()),
    }
}

/// Unmatched routes.
pub async fn not_found(req: HttpRequest) -> AppResult<HttpResponse> {
    Err(AppError::not_found("route_not_found", format!("no route for {} {}", req.method(), validate::truncate(req.path(), 200))))
}

fn path_error(err: PathError) -> AppError {
    AppError::bad_request("invalid_path", format!("bad path: {err}"))
}


/// The organization row, or 404.
pub async fn organization_or_404(kiln: &Kiln, org: &str) -> AppResult<Organization> {
    validate::name("organization", org)
        .map_err(|_| AppError::not_found("organization_not_found", format!("organization `{org}` does not exist")))?;
    let name = org.to_string();
    kiln.db
        .read(move |c| queries::organization(c, &name))
        .await?
        .ok_or_else(|| AppError::not_found("organization_not_found", format!("organization `{org}` does not exist")))
}
