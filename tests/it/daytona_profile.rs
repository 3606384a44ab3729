//! The organization's `daytona` profile: its settings are checked and stored
//! normalized (the CLI's `--setting cpu=2` becomes the number 2), its `api_key`
//! is checked and write-only, and a task on a repository registered from a path
//! cannot use it (a sandbox clones the repository's URL: docs/providers.md).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::common::{cli, git_repo, Server, BIN};

const PROFILE: &str = "/v1/organizations/default/providers/daytona";

#[actix_web::test]
async fn daytona_settings_are_validated_and_normalized() {
    let (server, _dir) = Server::start(&[]);
    let c = server.client();
    let body = json!({
        "config": {"api_url": "https://daytona.example.com/api/", "cpu": "2", "memory": 4, "disk": "20",
                   "target": "eu", "auto_stop_minutes": "45"},
        "secrets": {"api_key": "dtn_live_0123456789abcdef", "ANTHROPIC_API_KEY": "sk-ant-xyz"},
    });
    let r = c.put(PROFILE, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let stored = json!({"api_url": "https://daytona.example.com/api", "cpu": 2, "memory": 4, "disk": 20, "target": "eu", "auto_stop_minutes": 45});
    assert_eq!(r.body["config"], stored);
    assert_eq!(r.body["secrets"], json!(["ANTHROPIC_API_KEY", "api_key"]));

    let refused = [
        (json!({"api_url": "ftp://daytona.example.com"}), "invalid_provider_config", "api_url"),
        (json!({"api_url": "https://me:pw@daytona.example.com/api"}), "invalid_provider_config", "api_url"),
        (json!({"cpu": "0"}), "invalid_provider_config", "from 1 to 64"),
        (json!({"memory": 1000}), "invalid_provider_config", "from 1 to 256"),
        (json!({"auto_stop_minutes": -5}), "invalid_provider_config", "auto_stop_minutes"),
        (json!({"snapshot": "my-image", "cpu": 2}), "invalid_provider_config", "only without a snapshot"),
        (json!({"region": "eu"}), "invalid_provider_config", "no setting `region`"),
    ];
    for (config, code, needle) in refused {
        let r = c.put(PROFILE, json!({"config": config})).await;
        assert_eq!((r.status, r.code()), (422, code), "{config}: {r:?}");
        assert!(r.body["message"].as_str().unwrap().contains(needle), "{config}: {r:?}");
    }
    let r = c.put(PROFILE, json!({"secrets": {"api_key": "two words"}})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_secret"), "{r:?}");
    // Nothing refused was stored.
    let r = c.get(PROFILE).await;
    assert_eq!((r.body["config"].clone(), r.body["secrets"].clone()), (stored, json!(["ANTHROPIC_API_KEY", "api_key"])));
    assert!(!r.text.contains("dtn_live_0123456789abcdef"));
    let events = c.get("/v1/organizations/default/events?kind=provider.updated").await;
    assert!(!events.text.contains("dtn_live_0123456789abcdef") && !server.log().contains("dtn_live_0123456789abcdef"));

    // A repository registered from a path cannot go to a Daytona sandbox: refused, saying so.
    let dir = tempfile::tempdir().unwrap();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let r = c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": "x", "provider": "daytona"})).await;
    assert_eq!((r.status, r.code()), (422, "remote_source_required"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("register it by its URL"), "{r:?}");
}

#[actix_web::test]
async fn the_cli_sets_daytona_settings_and_the_key() {
    let (server, _dir) = Server::start(&[]);
    let (code, out, err) = cli(&server, &["provider", "set", "daytona", "--setting", "api_url=http://127.0.0.1:3986/api", "--setting", "cpu=2", "--setting", "memory=4"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&server, &["provider", "set", "daytona", "--setting", "cpu=100"]);
    assert_ne!(code, 0);
    assert!(err.contains("from 1 to 64"), "{err}");

    let mut child = Command::new(BIN)
        .args(["--url", &server.url, "provider", "set", "daytona", "--secret", "api_key"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &server.dir)
        .env("XDG_CONFIG_HOME", server.dir.join("config"))
        .env("KILN_DATA_DIR", server.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"dtn_from_stdin_42\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (code, out, err) = cli(&server, &["provider", "show", "daytona"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["config"], json!({"api_url": "http://127.0.0.1:3986/api", "cpu": 2, "memory": 4}));
    assert_eq!(shown["secrets"], json!(["api_key"]));
    assert!(!out.contains("dtn_from_stdin_42"));
}
