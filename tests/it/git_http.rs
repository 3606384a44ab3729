//! A git smart-HTTP server for tests and benches (`git http-backend` as CGI on
//! an ephemeral loopback port) that demands one user and password. Benches
//! include it with `#[path]`, so it uses nothing of the test harness.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// A git smart-HTTP server (`git http-backend` as CGI) that demands HTTP basic
/// auth with one user and password; it counts the requests it let through.
pub struct GitHttp {
    pub url: String,
    server: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<GitHttpState>,
}

struct GitHttpState {
    root: PathBuf,
    authorization: String,
    /// (method, path and query, whether the credentials were right).
    requests: Mutex<Vec<(String, String, bool)>>,
}

impl GitHttp {
    pub fn start(root: &Path, user: &str, password: &str) -> GitHttp {
        let shared = Arc::new(GitHttpState {
            root: root.to_path_buf(),
            authorization: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            requests: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::from(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(cgi)))
                    .workers(1)
                    .disable_signals()
                    .listen(listener)
                    .expect("listen")
                    .run();
                tx.send(server.handle()).unwrap();
                let _ = server.await;
            })
        });
        let server = rx.recv().unwrap();
        GitHttp { url, server, thread: Some(thread), shared }
    }

    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        drop(self.server.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn cgi(req: HttpRequest, body: web::Bytes, state: web::Data<GitHttpState>) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let authorized = header("authorization") == state.authorization;
    let target = format!("{}?{}", req.path(), req.query_string());
    state.requests.lock().unwrap().push((req.method().to_string(), target, authorized));
    if !authorized {
        return HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Basic realm=\"git\"")).finish();
    }
    let mut cmd = std::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "kiln")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("PATH_INFO", req.path())
        .env("QUERY_STRING", req.query_string())
        .env("REQUEST_METHOD", req.method().as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let out = web::block(move || {
        use std::io::Write;
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&body));
        let out = child.wait_with_output()?;
        let _ = feeder.join();
        Ok::<_, std::io::Error>(out.stdout)
    })
    .await
    .unwrap()
    .unwrap();
    // CGI: headers, a blank line, the body.
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, p + 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, p + 2)));
    let Some((head_end, body_start)) = split else { return HttpResponse::BadGateway().finish() };
    let mut res = HttpResponse::Ok();
    for line in String::from_utf8_lossy(&out[..head_end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(500);
            res.status(actix_web::http::StatusCode::from_u16(code).unwrap());
        } else {
            res.insert_header((name.trim().to_string(), value.to_string()));
        }
    }
    res.body(out[body_start..].to_vec())
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
