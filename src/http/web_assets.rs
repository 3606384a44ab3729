//! The web dashboard's assets (`src/web/`), compiled into the binary and served
//! for every path outside `/v1`, `/admin` and `/metrics`.
//!
//! - A path that names an asset gets it; any other path without a file extension
//!   (`/`, `/tasks/2b0894e4`, `/new`) gets `index.html`, and the page routes itself.
//! - Every answer carries a strict Content-Security-Policy (scripts and
//!   connections from this origin only, no framing), `nosniff` and
//!   `Referrer-Policy: no-referrer`. Assets are revalidated by a strong `ETag`
//!   (their SHA-256), and sent gzipped to clients that accept it.
//! - `GET /sign-in?code=…` is the link `kiln dashboard` prints (`dashboard.rs`).
//!
//! The assets hold no data and need no credential: the page asks the API, which
//! does.

use std::sync::OnceLock;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::Kiln;
use crate::error::{AppError, AppResult};

/// The policy every dashboard answer carries. Scripts, fonts, images and
/// connections (the API and its WebSockets) come from this origin only.
/// Styles also allow inline `<style>`: xterm.js writes its theme and cell
/// metrics into style elements at run time. No `eval`, no inline script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                       font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../web", $path)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything under `src/web/`, by the path it is served at.
static ASSETS: &[Asset] = &[
    asset!("/index.html", "text/html; charset=utf-8"),
    asset!("/style.css", CSS),
    asset!("/favicon.svg", "image/svg+xml"),
    asset!("/app.js", JS),
    asset!("/lib/api.js", JS),
    asset!("/lib/dom.js", JS),
    asset!("/lib/store.js", JS),
    asset!("/lib/format.js", JS),
    asset!("/lib/markdown.js", JS),
    asset!("/lib/transcript.js", JS),
    asset!("/lib/attention.js", JS),
    asset!("/lib/dialog.js", JS),
    asset!("/lib/theme.js", JS),
    asset!("/views/sign-in.js", JS),
    asset!("/views/board.js", JS),
    asset!("/views/new-task.js", JS),
    asset!("/views/task.js", JS),
    asset!("/views/terminal.js", JS),
    asset!("/views/session.js", JS),
    asset!("/views/pull-request.js", JS),
    asset!("/views/changes.js", JS),
    asset!("/views/inbox.js", JS),
    asset!("/views/palette.js", JS),
    asset!("/views/repos.js", JS),
    asset!("/views/repo.js", JS),
    asset!("/views/organization.js", JS),
    asset!("/views/tokens.js", JS),
    asset!("/views/admin.js", JS),
    asset!("/lib/prometheus.js", JS),
    asset!("/vendor/xterm/xterm.mjs", JS),
    asset!("/vendor/xterm/xterm.css", CSS),
    asset!("/vendor/xterm/LICENSE", "text/plain; charset=utf-8"),
    asset!("/vendor/xterm-addon-fit/addon-fit.mjs", JS),
    asset!("/vendor/xterm-addon-fit/LICENSE", "text/plain; charset=utf-8"),
];

/// An asset with what is worked out once: its ETag and gzipped body.
struct Prepared {
    asset: &'static Asset,
    etag: String,
    gzip: Option<Vec<u8>>,
}

/// The prepared assets. The first call hashes and compresses them (a few
/// milliseconds); `app::start` makes it on the blocking pool before serving.
fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| ASSETS.iter().map(prepare).collect())
}

/// Hashes and compresses every asset now (blocking: call on the blocking pool).
pub fn prepare_assets() -> usize {
    prepared().len()
}

fn prepare(asset: &'static Asset) -> Prepared {
    use std::io::Write;
    let etag = format!("\"{}\"", &crate::util::sha256_hex(asset.body)[..32]);
    let compressible = !asset.content_type.starts_with("image/") || asset.content_type.starts_with("image/svg");
    let gzip = compressible
        .then(|| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(asset.body).ok()?;
            enc.finish().ok()
        })
        .flatten()
        .filter(|gz| gz.len() < asset.body.len());
    Prepared { asset, etag, gzip }
}

/// Whether `path` belongs to the API (`/v1`, `/admin`, `/metrics`) rather than
/// to the dashboard.
pub fn is_api_path(path: &str) -> bool {
    ["/v1", "/admin", "/metrics"]
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// `/repos/{name}`: a repository's page, whatever its name holds (names may
/// have dots, so it cannot be told from an asset by its extension).
fn is_repo_page(path: &str) -> bool {
    path.strip_prefix("/repos/").is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The default service: the dashboard for its paths, the JSON 404 for the API's.
pub async fn serve(req: HttpRequest, kiln: web::Data<Kiln>) -> AppResult<HttpResponse> {
    let path = req.path().to_string();
    if is_api_path(&path) {
        return super::not_found(req).await;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let message = format!("{} is not allowed here: the dashboard's pages are read with GET", req.method());
        return Ok(HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .json(serde_json::json!({"error": "method_not_allowed", "message": message})));
    }
    if path == "/sign-in" {
        if let Some(code) = query_param(req.query_string(), "code") {
            if let Some(answer) = super::dashboard::sign_in_link(&req, &kiln, &code).await {
                return Ok(answer);
            }
        }
    }
    let wanted = if path == "/" { "/index.html" } else { path.as_str() };
    let found = prepared().iter().find(|p| p.asset.path == wanted);
    let last = path.rsplit('/').next().unwrap_or("");
    let prepared = match found {
        Some(p) => p,
        // A page of the app (`/tasks/2b0894e4`): the app routes itself. A
        // repository's page keeps its name's dots (`/repos/repo.js`).
        None if !last.contains('.') || is_repo_page(&path) => prepared().iter().find(|p| p.asset.path == "/index.html").ok_or_else(|| AppError::bug("index.html is not embedded"))?,
        None => return super::not_found(req).await,
    };
    Ok(answer(&req, prepared))
}

fn answer(req: &HttpRequest, p: &Prepared) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::ETAG, p.etag.clone()));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == p.etag || t.trim() == "*"));
    if fresh {
        res.status(actix_web::http::StatusCode::NOT_MODIFIED);
        return res.finish();
    }
    res.insert_header((header::CONTENT_TYPE, p.asset.content_type));
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))));
    match (&p.gzip, gzip_ok) {
        (Some(gz), true) => {
            res.insert_header((header::CONTENT_ENCODING, "gzip"));
            res.body(gz.clone())
        }
        _ => res.body(p.asset.body),
    }
}

/// One parameter of a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(query).ok()?.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_not_the_dashboard() {
        for p in ["/v1", "/v1/health", "/admin", "/admin/actors", "/metrics", "/metrics/"] {
            assert!(is_api_path(p), "{p}");
        }
        for p in ["/", "/v1x", "/administrator", "/metricsx", "/tasks/2b0894e4", "/app.js"] {
            assert!(!is_api_path(p), "{p}");
        }
    }

    #[test]
    fn a_repository_s_page_is_a_page_even_with_a_dot_in_its_name() {
        for p in ["/repos/app", "/repos/repo.js", "/repos/my.lib.v2"] {
            assert!(is_repo_page(p), "{p}");
        }
        for p in ["/repos", "/repos/", "/repos/a/b.js", "/lib/api.js", "/reposx/a.js"] {
            assert!(!is_repo_page(p), "{p}");
        }
    }

    #[test]
    fn every_asset_is_prepared_with_an_etag_and_scripts_are_gzipped() {
        for p in prepared() {
            assert!(p.etag.starts_with('"') && p.etag.len() == 34, "{}", p.asset.path);
            if p.asset.content_type.starts_with("text/javascript") && p.asset.body.len() > 2048 {
                assert!(p.gzip.as_ref().is_some_and(|g| g.len() < p.asset.body.len()), "{}", p.asset.path);
            }
        }
        let paths: Vec<&str> = prepared().iter().map(|p| p.asset.path).collect();
        let unique: std::collections::BTreeSet<&str> = paths.iter().copied().collect();
        assert_eq!(paths.len(), unique.len(), "an asset is listed twice");
    }

    /// A file added under src/web/ but not to `ASSETS` would be missing from the binary.
    #[test]
    fn every_file_under_src_web_is_served() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(format!("/{}", path.strip_prefix(root).unwrap().display()));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        for file in files {
            assert!(ASSETS.iter().any(|a| a.path == file), "{file} is under src/web but not in web::ASSETS");
        }
    }
}
