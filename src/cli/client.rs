//! The API client the CLI uses: awc with the bearer token, and errors that say
//! what went wrong and what to do. Bodies are the server's own request types
//! (`http::dto`), and answers are read into its response types where the CLI
//! looks into them, so a renamed field breaks the build, not a user.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::http::auth::ADMIN_TOKEN_FILE;

/// A CLI failure: printed as `error: …` and exit code 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub struct Api {
    pub base: String,
    pub token: Option<String>,
    client: awc::Client,
}

impl Api {
    /// Connects to `--url` (or config) with `--token`, `KILN_TOKEN`, the config's
    /// `client.token`, or the admin token file in the data dir, in that order.
    pub fn new(config: &Config, url: Option<&str>, token: Option<&str>) -> Api {
        let base = url.map(|u| u.trim_end_matches('/').to_string()).unwrap_or_else(|| config.client_url());
        let token = token
            .map(str::to_string)
            .or_else(|| Some(config.client.token.clone()).filter(|t| !t.is_empty()))
            .or_else(|| {
                std::fs::read_to_string(config.data_dir().join(ADMIN_TOKEN_FILE))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let client = awc::Client::builder().timeout(Duration::from_secs(3600)).finish();
        Api { base, token, client }
    }

    fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send(self.request(awc::http::Method::GET, path), None::<&Value>).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CliResult<T> {
        self.send(self.request(awc::http::Method::POST, path), Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CliResult<T> {
        self.send(self.request(awc::http::Method::PUT, path), Some(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CliResult<T> {
        self.send(self.request(awc::http::Method::PATCH, path), Some(body)).await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send(self.request(awc::http::Method::DELETE, path), None::<&Value>).await
    }

    /// POST, answering the status too (201 created, 200 already there).
    pub async fn post_status<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CliResult<(u16, T)> {
        self.send_status(self.request(awc::http::Method::POST, path), Some(body)).await
    }

    async fn send<T: DeserializeOwned>(&self, req: awc::ClientRequest, body: Option<&impl Serialize>) -> CliResult<T> {
        self.send_status(req, body).await.map(|(_, v)| v)
    }

    async fn send_status<T: DeserializeOwned>(&self, req: awc::ClientRequest, body: Option<&impl Serialize>) -> CliResult<(u16, T)> {
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| self.unreachable(e))?;
        let bytes = res.body().limit(64 * 1024 * 1024).await?;
        let status = res.status();
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        let value = serde_json::from_slice(text).map_err(|e| CliError(format!("the server sent an answer this CLI cannot read: {e}")))?;
        Ok((status.as_u16(), value))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        CliError(format!("cannot reach Kiln at {} ({e}): is `kiln serve` running? Set --url or client.url", self.base))
    }

    /// Opens a WebSocket to `path` (`ws://` form of the base URL).
    pub async fn websocket(
        &self,
        path: &str,
    ) -> CliResult<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>> {
        let url = format!("{}{}", self.base.replacen("http", "ws", 1), path);
        let mut ws = self.client.ws(url).max_frame_size(16 * 1024 * 1024);
        if let Some(token) = &self.token {
            ws = ws.bearer_auth(token);
        }
        match ws.connect().await {
            Ok((_, framed)) => Ok(framed),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                Err(CliError(format!("the server refused the stream ({status}): check the organization and token")))
            }
            Err(e) => Err(self.unreachable(e)),
        }
    }
}

/// Turns the server's `{"error","message"}` into a message with a hint.
fn api_error(status: u16, body: &[u8]) -> CliError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed.as_ref().and_then(|v| v["error"].as_str()).unwrap_or("http_error").to_string();
    let message = parsed
        .as_ref()
        .and_then(|v| v["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let hint = match status {
        401 => " (check --token, KILN_TOKEN or client.token; the admin token is in <data_dir>/admin.token)",
        403 => " (this token cannot do that: use a token of that organization, or the admin token)",
        _ => "",
    };
    CliError(format!("{message} [{code}, HTTP {status}]{hint}"))
}
