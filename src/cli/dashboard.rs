//! `kiln dashboard`: signs a browser in to the web dashboard. Asks the server for
//! a one-time code (valid 60 s) for the CLI's own credential, prints the link and,
//! unless `--print`, opens it where a browser exists.

use serde_json::{json, Value};

use super::client::{Api, CliResult};

/// Makes the link for `org` (`explicit`: given with `--organization`) and
/// prints it; opens it unless `print_only`.
pub async fn dashboard(api: &Api, org: &str, explicit: bool, print_only: bool) -> CliResult<()> {
    let made: Value = match api.post("/v1/dashboard/codes", &json!({"organization": org})).await {
        Ok(v) => v,
        // An organization token signs in to its own organization: without `-o`,
        // the configured default may not be it.
        Err(e) if !explicit && e.0.contains("[forbidden,") => api.post("/v1/dashboard/codes", &json!({})).await?,
        Err(e) => return Err(e),
    };
    let path = made["path"].as_str().unwrap_or_default();
    let link = format!("{}{}", api.base, path);
    println!("{link}");
    eprintln!(
        "This link signs one browser in to organization `{}` and works once, within 60 seconds.",
        made["organization"].as_str().unwrap_or(org)
    );
    if !print_only {
        if let Some(opener) = browser_opener() {
            match std::process::Command::new(opener)
                .arg(&link)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(_) => eprintln!("Opening it in your browser."),
                Err(e) => eprintln!("Could not open a browser ({e}): open the link yourself."),
            }
        }
    }
    Ok(())
}

/// The program that opens a URL in the user's browser, where there is one: a
/// graphical session with `xdg-open` on Linux, `open` on macOS.
fn browser_opener() -> Option<&'static str> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
    };
    if cfg!(target_os = "macos") {
        return on_path("open").then_some("open");
    }
    let graphical = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    (graphical && on_path("xdg-open")).then_some("xdg-open")
}
