//! Where a webhook may point, and one attempt at a delivery.
//!
//! A webhook URL is `http` or `https`, with a host and no user name, password
//! or fragment. The host policy is the one repository sources use (`hosts`),
//! with its own settings (`notifications.*`), and it holds for every caller,
//! the admin too: deliveries go out unattended, for as long as the webhook
//! exists. It is checked at creation and again before every attempt (DNS can
//! change), and the attempt connects to the very address that was checked.
//! Redirects are never followed; every attempt has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use super::state::{self, Outcome};
use super::view::Due;
use crate::actors::repository::hosts::{self, Pin, Refusal};
use crate::config::NotificationsConfig;

/// The longest URL a webhook may have.
pub const MAX_URL: usize = 2048;

/// Checks a URL's shape (not its host): answers why it is refused.
pub fn url_shape(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("the URL is longer than {MAX_URL} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains white space or control characters".into());
    }
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err("a webhook URL must start with https:// or http://".into());
    }
    let uri: awc::http::Uri = url.parse().map_err(|_| "the URL does not parse".to_string())?;
    let Some(authority) = uri.authority() else { return Err("the URL names no host".into()) };
    if authority.as_str().contains('@') {
        return Err("the URL may not carry a user name or password".into());
    }
    if authority.host().is_empty() {
        return Err("the URL names no host".into());
    }
    if url.contains('#') {
        return Err("the URL may not have a fragment (#…)".into());
    }
    Ok(())
}

/// The host policy for a webhook URL: `Ok(None)` when nothing is pinned (the
/// policy is off or the host is allowed), else the addresses to connect to.
/// Resolves the host: call it on the blocking pool.
pub fn policy(cfg: &NotificationsConfig, url: &str) -> Result<Option<Pin>, String> {
    url_shape(url)?;
    let target = hosts::target(url).ok_or_else(|| "the URL names no host".to_string())?;
    if cfg.only_allowed_hosts && !hosts::allowed(&cfg.allowed_hosts, &target.host) {
        return Err(format!(
            "the webhook's host `{}` is not one of notifications.allowed_hosts, and this server delivers only to those",
            target.host
        ));
    }
    hosts::check_with(cfg.deny_private_hosts, &cfg.allowed_hosts, url).map_err(|refusal| match refusal {
        Refusal::Private { host, addr } => format!(
            "the webhook's host `{host}` is {addr}, a loopback, link-local or private address: webhooks may only reach public hosts (the server's operator can allow a host with notifications.allowed_hosts)"
        ),
        Refusal::Unresolved { host, error } => format!("the webhook's host `{host}` does not resolve: {error}"),
    })
}

/// One attempt: the policy again, then a POST of the stored body, signed.
pub async fn attempt(client: &awc::Client, cfg: &NotificationsConfig, due: &Due) -> Outcome {
    let (c, url) = (cfg.clone(), due.url.clone());
    let pin = match crate::db::pool::blocking(move || Ok(policy(&c, &url))).await {
        Ok(Ok(pin)) => pin,
        Ok(Err(refused)) => return Outcome::Refused(refused),
        Err(e) => return Outcome::Failed(format!("the host could not be checked: {e}")),
    };
    let timestamp = crate::util::now_ms() / 1000;
    let signature = state::signature(&due.secret, timestamp, due.body.as_bytes());
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let mut req = client
        .post(&due.url)
        .timeout(timeout)
        .insert_header(("content-type", "application/json"))
        .insert_header(("user-agent", concat!("Kiln-Notifications/", env!("CARGO_PKG_VERSION"))))
        .insert_header(("x-kiln-delivery", due.id.as_str()))
        .insert_header(("x-kiln-event", due.kind.as_str()))
        .insert_header(("x-kiln-timestamp", timestamp.to_string()))
        .insert_header(("x-kiln-signature-256", signature));
    if let Some(addr) = pin.as_ref().and_then(|p| p.addrs.first().map(|a| SocketAddr::new(*a, p.target.port))) {
        req = req.address(addr);
    }
    match tokio::time::timeout(timeout, req.send_body(due.body.clone())).await {
        Err(_) => Outcome::Failed(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Outcome::Failed(describe(&e, timeout)),
        Ok(Ok(mut res)) => {
            // Read (a bounded part of) the answer so the connection can be reused.
            let _ = tokio::time::timeout(timeout, res.body().limit(64 * 1024)).await;
            Outcome::Status(res.status().as_u16())
        }
    }
}

/// Why a request got no answer, in words that never repeat the URL.
fn describe(e: &awc::error::SendRequestError, timeout: Duration) -> String {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => format!("no answer within {} ms", timeout.as_millis()),
        E::Connect(c) => format!("could not connect: {c}"),
        E::Send(_) | E::Response(_) => "the connection broke off".into(),
        E::Url(_) => "the URL is not usable".into(),
        _ => "the request failed".into(),
    }
}
