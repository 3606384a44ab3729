//! The organization's `daytona` profile: its settings (`config`) and its
//! `api_key` secret, checked when stored (`PUT …/providers/daytona`) and read
//! back into [`DaytonaSettings`]. Pure functions, unit-tested here.
//!
//! | key | type | range | default |
//! | --- | --- | --- | --- |
//! | `api_url` | http(s) URL | no userinfo, query or fragment | [`api::DEFAULT_API_URL`] |
//! | `snapshot` | name | 1-200 visible characters | Daytona's default snapshot |
//! | `cpu` | integer | 1-64 | Daytona's default |
//! | `memory` | integer, GB | 1-256 | Daytona's default |
//! | `disk` | integer, GB | 1-1024 | Daytona's default |
//! | `target` | region name | 1-64 of `a-z A-Z 0-9 - _` | Daytona's default |
//! | `auto_stop_minutes` | number | 0-10080, fractions allowed (0: never) | 30 |
//! | `agent_bin` | program | 1-200 of `a-z A-Z 0-9 / . _ + - @` | `sandbox-agent` (on the sandbox's `PATH`) |
//! | `agent_port` | port | 1-65535 (Daytona previews 3000-9999) | [`DEFAULT_AGENT_PORT`] |
//!
//! Numbers are taken as JSON numbers or as digit strings (the CLI's `--setting
//! cpu=2` sends a string) and stored as numbers. `snapshot` excludes `cpu`,
//! `memory` and `disk`, as Daytona does (it answers 400 to both).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::api::{self, ApiKey, CreateSandboxRequest, DaytonaClient};
use crate::error::AppError;

/// The secret holding the Daytona API key.
pub const API_KEY: &str = "api_key";
/// The profile secrets Kiln uses itself: never handed to agents as environment.
pub const KILN_SECRETS: &[&str] = &[API_KEY];
/// How long a task may idle before Kiln stops its sandbox (docs/providers.md, "Auto-stop").
pub const DEFAULT_AUTO_STOP_MINUTES: f64 = 30.0;
/// sandbox-agent's port in a sandbox: its own 2468, moved into the range
/// Daytona's preview URLs reach (3000-9999).
pub const DEFAULT_AGENT_PORT: u16 = 8468;
pub const DEFAULT_AGENT_BIN: &str = "sandbox-agent";

/// A `daytona` profile's settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaytonaSettings {
    pub api_url: String,
    pub snapshot: Option<String>,
    pub cpu: Option<u32>,
    pub memory: Option<u32>,
    pub disk: Option<u32>,
    pub target: Option<String>,
    /// Minutes of idleness before Kiln stops the sandbox; 0 never. Fractions
    /// are taken (0.5 is 30 s), to the second, at least one second.
    pub auto_stop_minutes: f64,
    /// The sandbox-agent program inside the sandbox (the snapshot provides it).
    pub agent_bin: String,
    /// The port sandbox-agent serves in the sandbox, reached by its preview URL.
    pub agent_port: u16,
}

fn invalid(message: String) -> AppError {
    AppError::invalid("invalid_provider_config", message)
}

/// Checks a `daytona` profile's `config`; answers it normalized (numbers as
/// numbers, text trimmed), as it is then stored.
pub fn validate_config(config: &Map<String, Value>) -> Result<Map<String, Value>, AppError> {
    let mut out = Map::new();
    for (key, value) in config {
        let normalized = match key.as_str() {
            "api_url" => Value::String(api_url(value)?),
            "snapshot" => Value::String(text(key, value, 200, |c| c.is_ascii_graphic())?),
            "target" => Value::String(text(key, value, 64, |c| c.is_ascii_alphanumeric() || c == '-' || c == '_')?),
            "cpu" => Value::from(number(key, value, 1, 64)?),
            "memory" => Value::from(number(key, value, 1, 256)?),
            "disk" => Value::from(number(key, value, 1, 1024)?),
            "auto_stop_minutes" => minutes(key, value, 10_080.0)?,
            "agent_bin" => Value::String(text(key, value, 200, |c| c.is_ascii_alphanumeric() || "/._+-@".contains(c))?),
            "agent_port" => Value::from(number(key, value, 1, 65_535)?),
            other => {
                return Err(invalid(format!(
                    "the daytona provider takes no setting `{}`: use api_url, snapshot, cpu, memory, disk, target, auto_stop_minutes, agent_bin or agent_port",
                    crate::validate::truncate(other, 40)
                )))
            }
        };
        out.insert(key.clone(), normalized);
    }
    let resources: Vec<&str> = ["cpu", "memory", "disk"].into_iter().filter(|k| out.contains_key(*k)).collect();
    if out.contains_key("snapshot") && !resources.is_empty() {
        return Err(invalid(format!(
            "Daytona takes {} only without a snapshot (a snapshot sets its own resources): remove `snapshot` or {}",
            resources.join(", "),
            resources.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

/// Checks one secret of the `daytona` profile. `api_key` goes into an HTTP
/// header: visible ASCII only. Other secrets are the agents' environment.
pub fn validate_secret(name: &str, value: &str) -> Result<(), AppError> {
    if name == API_KEY && (value.is_empty() || value.len() > 1024 || !value.chars().all(|c| c.is_ascii_graphic())) {
        return Err(AppError::invalid(
            "invalid_secret",
            "secret `api_key` must be a Daytona API key: 1-1024 visible ASCII characters, no spaces",
        ));
    }
    Ok(())
}

fn api_url(value: &Value) -> Result<String, AppError> {
    let bad = || invalid("`api_url` must be an http:// or https:// URL without a user, query or fragment, e.g. https://app.daytona.io/api".into());
    let s = value.as_str().map(str::trim).filter(|s| !s.is_empty() && s.len() <= 2048).ok_or_else(bad)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.contains(['?', '#']) {
        return Err(bad());
    }
    let uri: actix_web::http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    let authority = uri.authority().ok_or_else(bad)?;
    if !scheme_ok || authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad());
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn text(key: &str, value: &Value, max: usize, allowed: impl Fn(char) -> bool) -> Result<String, AppError> {
    let s = value.as_str().map(str::trim).unwrap_or_default();
    if s.is_empty() || s.chars().count() > max || !s.chars().all(allowed) {
        return Err(invalid(format!("`{key}` must be 1-{max} characters without spaces")));
    }
    Ok(s.to_string())
}

fn number(key: &str, value: &Value, min: u64, max: u64) -> Result<u64, AppError> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_digit()) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(format!("`{key}` must be a whole number from {min} to {max}")))
}

/// A number of minutes from 0 to `max`, fractions allowed (as a JSON number or a
/// decimal string); stored as an integer when it is whole.
fn minutes(key: &str, value: &Value, max: f64) -> Result<Value, AppError> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let decimal = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') && s.matches('.').count() <= 1 && s != ".";
            decimal.then(|| s.parse::<f64>().ok()).flatten()
        }
        _ => None,
    };
    let n = n.filter(|n| n.is_finite() && (0.0..=max).contains(n)).ok_or_else(|| {
        invalid(format!("`{key}` must be a number of minutes from 0 to {max} (0 never stops; fractions such as 0.5 are taken)"))
    })?;
    Ok(if n.fract() == 0.0 { Value::from(n as u64) } else { Value::from(n) })
}

impl DaytonaSettings {
    /// How long a task may idle before Kiln stops its sandbox; `None`: never.
    pub fn auto_stop_after(&self) -> Option<std::time::Duration> {
        if self.auto_stop_minutes <= 0.0 {
            return None;
        }
        let secs = (self.auto_stop_minutes * 60.0).round().max(1.0);
        Some(std::time::Duration::from_secs(secs as u64))
    }

    /// The settings of a stored (already validated) profile config; defaults for
    /// what it leaves out. Validates again, so a hand-edited row fails clearly.
    pub fn from_config(config: &Value) -> Result<DaytonaSettings, AppError> {
        let empty = Map::new();
        let map = validate_config(config.as_object().unwrap_or(&empty))?;
        let num = |k: &str| map.get(k).and_then(Value::as_u64).map(|n| n as u32);
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(DaytonaSettings {
            api_url: text("api_url").unwrap_or_else(|| api::DEFAULT_API_URL.to_string()),
            snapshot: text("snapshot"),
            cpu: num("cpu"),
            memory: num("memory"),
            disk: num("disk"),
            target: text("target"),
            auto_stop_minutes: map.get("auto_stop_minutes").and_then(Value::as_f64).unwrap_or(DEFAULT_AUTO_STOP_MINUTES),
            agent_bin: text("agent_bin").unwrap_or_else(|| DEFAULT_AGENT_BIN.to_string()),
            agent_port: num("agent_port").map(|p| p as u16).unwrap_or(DEFAULT_AGENT_PORT),
        })
    }

    /// A client for these settings and the profile's secrets (`api_key` needed).
    pub fn client(&self, secrets: &Map<String, Value>) -> Result<DaytonaClient, AppError> {
        let key = secrets.get(API_KEY).and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or_else(|| {
            AppError::invalid(
                "daytona_not_configured",
                "this organization has no Daytona API key: `echo \"$DAYTONA_API_KEY\" | kiln provider set daytona --secret api_key`",
            )
        })?;
        Ok(DaytonaClient::new(&self.api_url, ApiKey::new(key)))
    }

    /// The create request for a sandbox: these resources, `labels`, and `env`.
    /// Daytona's own auto-stop is off (Kiln stops an idle sandbox itself after
    /// `auto_stop_minutes`, since an agent thinking makes no traffic Daytona
    /// sees), and so is auto-delete (Kiln saves work before it deletes).
    pub fn create_request(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        env: BTreeMap<String, String>,
    ) -> CreateSandboxRequest {
        CreateSandboxRequest {
            name: Some(name.to_string()),
            snapshot: self.snapshot.clone(),
            env,
            labels,
            public: Some(false),
            target: self.target.clone(),
            cpu: self.cpu,
            memory: self.memory,
            disk: self.disk,
            auto_stop_interval: Some(0),
            auto_delete_interval: Some(-1),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Value, String> {
        validate_config(v.as_object().unwrap()).map(Value::Object).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_are_normalized() {
        let got = check(json!({"api_url": " https://daytona.example.com/api/ ", "cpu": "2", "memory": 4, "disk": "20", "target": "eu", "auto_stop_minutes": "0"}));
        assert_eq!(got, Ok(json!({"api_url": "https://daytona.example.com/api", "cpu": 2, "memory": 4, "disk": 20, "target": "eu", "auto_stop_minutes": 0})));
        assert_eq!(check(json!({"snapshot": "my-image:1.2", "api_url": "http://127.0.0.1:3986/api"})).unwrap()["snapshot"], "my-image:1.2");
        assert_eq!(check(json!({"auto_stop_minutes": "0.5"})).unwrap()["auto_stop_minutes"], 0.5);
        assert_eq!(check(json!({"auto_stop_minutes": 45.0})).unwrap()["auto_stop_minutes"], 45);
        assert_eq!(check(json!({})), Ok(json!({})));
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let cases = [
            (json!({"api_url": "ftp://x/api"}), "api_url"),
            (json!({"api_url": "https://user:pw@x/api"}), "api_url"),
            (json!({"api_url": "https://x/api?key=1"}), "api_url"),
            (json!({"api_url": "not a url"}), "api_url"),
            (json!({"api_url": "https:///api"}), "api_url"),
            (json!({"api_url": 7}), "api_url"),
            (json!({"cpu": 0}), "from 1 to 64"),
            (json!({"cpu": "65"}), "from 1 to 64"),
            (json!({"cpu": -1}), "cpu"),
            (json!({"cpu": 1.5}), "cpu"),
            (json!({"memory": "lots"}), "memory"),
            (json!({"disk": 100000}), "disk"),
            (json!({"auto_stop_minutes": 10081}), "auto_stop_minutes"),
            (json!({"auto_stop_minutes": -1}), "auto_stop_minutes"),
            (json!({"auto_stop_minutes": "1e3"}), "auto_stop_minutes"),
            (json!({"auto_stop_minutes": "soon"}), "auto_stop_minutes"),
            (json!({"target": "us east"}), "target"),
            (json!({"snapshot": ""}), "snapshot"),
            (json!({"snapshot": "s", "cpu": 2, "disk": 10}), "only without a snapshot"),
            (json!({"region": "eu"}), "no setting `region`"),
        ];
        for (config, needle) in cases {
            let err = check(config.clone()).expect_err(&config.to_string());
            assert!(err.contains(needle), "{config}: {err}");
        }
        let code = validate_config(json!({"cpu": 0}).as_object().unwrap()).unwrap_err().code();
        assert_eq!(code, "invalid_provider_config");
    }

    #[test]
    fn the_api_key_must_fit_a_header() {
        assert!(validate_secret("api_key", "dtn_0123abcd").is_ok());
        for bad in ["", "two words", "line\nbreak", "ключ"] {
            assert_eq!(validate_secret("api_key", bad).unwrap_err().code(), "invalid_secret", "{bad:?}");
        }
        assert!(validate_secret("ANTHROPIC_API_KEY", "anything goes here").is_ok());
    }

    #[test]
    fn defaults_and_the_create_request() {
        let s = DaytonaSettings::from_config(&json!({})).unwrap();
        assert_eq!((s.api_url.as_str(), s.auto_stop_minutes, s.cpu), (api::DEFAULT_API_URL, 30.0, None));
        assert_eq!(s.auto_stop_after(), Some(std::time::Duration::from_secs(1800)));
        let never = DaytonaSettings::from_config(&json!({"auto_stop_minutes": 0})).unwrap();
        assert_eq!(never.auto_stop_after(), None);
        let quick = DaytonaSettings::from_config(&json!({"auto_stop_minutes": "0.05"})).unwrap();
        assert_eq!(quick.auto_stop_after(), Some(std::time::Duration::from_secs(3)), "fractions of a minute, to the second");
        let s = DaytonaSettings::from_config(&json!({"cpu": 2, "memory": 4, "target": "eu"})).unwrap();
        let labels = BTreeMap::from([("kiln/task".to_string(), "1a2b3c4d".to_string())]);
        let req = serde_json::to_value(s.create_request("kiln-1a2b3c4d", labels, BTreeMap::new())).unwrap();
        assert_eq!(
            req,
            json!({"name": "kiln-1a2b3c4d", "labels": {"kiln/task": "1a2b3c4d"}, "public": false, "target": "eu",
                   "cpu": 2, "memory": 4, "autoStopInterval": 0, "autoDeleteInterval": -1})
        );
        let err = s.client(&Map::new()).unwrap_err();
        assert_eq!(err.code(), "daytona_not_configured");
        assert!(s.client(json!({"api_key": "k"}).as_object().unwrap()).is_ok());
    }
}
