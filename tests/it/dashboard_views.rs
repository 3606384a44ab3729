//! The dashboard's Repositories, Organization, Tokens and Admin views (issue 11):
//! the operator routes with a dashboard session (the admin's works, with the
//! same CSRF rules; an organization's is refused), the `kiln_tasks` metric the
//! Admin view reads, and the views themselves in a real Chromium, with a
//! screenshot of each at desktop and phone width.

use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::common::{eventually, git_repo, Client, Server};
use crate::web_support::{assert_no_overflow, org_with_token, raw, session_cookie, sign_in, wait_live};
use crate::fake_github::FakeGithub;

/// The value of one sample of the Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[actix_web::test]
async fn operator_routes_take_the_admin_s_dashboard_session_with_its_csrf_rules_and_refuse_an_organization_s() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let task = admin.create_task("acme", "app", "count me").await;
    let url = server.url.clone();
    let backups = || std::fs::read_dir(server.data_dir().join("backups")).map(|d| d.count()).unwrap_or(0);

    // The admin's session: reads need nothing more than the cookie.
    let cookie = session_cookie(&server, &server.token, "acme").await;
    for path in ["/admin/actors", "/admin/pollers", "/metrics"] {
        let r = raw("GET", &format!("{url}{path}"), &[("cookie", &cookie)], None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // The metric the Admin view's summary reads: every status, zeros included.
    let metrics = raw("GET", &format!("{url}/metrics"), &[("cookie", &cookie)], None).await.text();
    assert_eq!(sample(&metrics, "kiln_tasks{status=\"running\"}"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "kiln_tasks{status=\"killed\"}"), Some(0.0), "{metrics}");
    assert!(metrics.contains("# TYPE kiln_tasks gauge"), "{metrics}");
    let id = task["id"].as_str().unwrap();
    assert_eq!(admin.post(&format!("/v1/organizations/acme/tasks/{id}/kill"), json!({})).await.status, 200);
    let metrics = raw("GET", &format!("{url}/metrics"), &[("cookie", &cookie)], None).await.text();
    assert_eq!(
        (sample(&metrics, "kiln_tasks{status=\"running\"}"), sample(&metrics, "kiln_tasks{status=\"killed\"}")),
        (Some(0.0), Some(1.0)),
        "{metrics}"
    );

    // Changes need the dashboard's own origin, as everywhere else.
    let evil = [("cookie", cookie.as_str()), ("origin", "http://evil.example")];
    let cross = [("cookie", cookie.as_str()), ("origin", url.as_str()), ("sec-fetch-site", "cross-site")];
    for headers in [&[("cookie", cookie.as_str())][..], &evil[..], &cross[..]] {
        let r = raw("POST", &format!("{url}/admin/db/backup"), headers, None).await;
        assert_eq!((r.status, r.code()), (403, "cross_origin_refused"), "{headers:?}");
    }
    assert_eq!(backups(), 0, "a refused backup wrote nothing");
    let same = [("cookie", cookie.as_str()), ("origin", url.as_str()), ("sec-fetch-site", "same-origin")];
    let r = raw("POST", &format!("{url}/admin/db/backup"), &same, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(backups(), 1);
    let key = "org/acme/repo/app/branch-sync";
    let r = raw("POST", &format!("{url}/admin/pollers/{key}/poll"), &same, None).await;
    assert_eq!((r.status, r.body["done"].as_str()), (200, Some("poll")), "{}", r.body);

    // An organization's session: every operator route refused, changes too.
    let org_cookie = session_cookie(&server, &token, "acme").await;
    for path in ["/admin/actors", "/admin/pollers", "/admin/config", "/metrics", "/v1/organizations/acme/tokens"] {
        let r = raw("GET", &format!("{url}{path}"), &[("cookie", &org_cookie)], None).await;
        let text = r.text();
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{path}: {text}");
        assert!(!text.contains("kiln_tasks") && !text.contains("org/acme"), "{path} leaked data: {text}");
    }
    let org_same = [("cookie", org_cookie.as_str()), ("origin", url.as_str()), ("sec-fetch-site", "same-origin")];
    for path in ["/admin/db/backup".to_string(), format!("/admin/pollers/{key}/stop")] {
        let r = raw("POST", &format!("{url}{path}"), &org_same, None).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{path}");
    }
    assert_eq!(backups(), 1);
    let live = admin.get("/admin/pollers").await.body["items"].as_array().unwrap().iter().any(|p| p["key"] == key);
    assert!(live, "the organization's session could not stop the poller");
}

// --- In a real browser -------------------------------------------------------

/// Screenshots the page at desktop and phone width (`{name}-desktop`, `{name}-phone`),
/// asserting that nothing scrolls sideways on the phone.
async fn both_widths(browser: &Browser, name: &str) {
    browser.eval("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot(&format!("{name}-desktop")).await;
    browser.viewport(390, 844).await;
    browser.eval("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot(&format!("{name}-phone")).await;
    assert_no_overflow(browser, &format!("{name} scrolls sideways at phone width")).await;
    browser.viewport(1280, 800).await;
}

/// A repository with enough objects for git to report its progress.
fn big_repo(parent: &std::path::Path, name: &str) -> std::path::PathBuf {
    let src = git_repo(parent, name);
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}.txt")), format!("{i}\n").repeat(300)).unwrap();
    }
    crate::common::git(&src, &["add", "."]);
    crate::common::git(&src, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "more"]);
    src
}

const CONFIRM_YES: &str = "window.confirm = () => true;";

#[actix_web::test]
async fn in_a_browser_a_repository_is_added_with_its_clone_progress_and_its_settings_show_the_api_s_refusal_then_save() {
    let (server, dir) = Server::start(&[("KILN_GITHUB__PR_POLL_MS", "300")]);
    let admin = server.client();
    admin.post("/v1/organizations", json!({"name": "acme"})).await;
    admin.add_repo("acme", &git_repo(dir.path(), "web.app")).await;
    admin.create_task_with("acme", json!({"repo": "web.app", "description": "Tidy the footer"})).await;
    let src = big_repo(dir.path(), "big");
    // On (a fake) GitHub, with a pull request opened by hand.
    let gh = FakeGithub::start();
    gh.add_repo("acme/big", &src);
    gh.add_pull("acme/big", "feature", "main", "Add the feature flag");
    let profile = json!({"config": {"api_url": gh.url.clone()}, "secrets": {"token": gh.token()}});
    assert_eq!(admin.put("/v1/organizations/acme/providers/github", profile).await.status, 200);
    let browser = Browser::start().await;
    sign_in(&browser, &server, &server.token, "acme").await;

    // Repositories, from the shell's navigation.
    browser.click("a[data-nav='repos']").await;
    browser.wait_for("tr[data-repo='web.app']").await;
    wait_live(&browser).await;
    browser.type_into("#repo-source", src.to_str().unwrap()).await;
    browser.click("#repo-add-form button[type='submit']").await;
    browser.wait_for("tr[data-repo='big']").await;
    // The clone's progress came over the stream, step by step, as `kiln repo add` prints it.
    let steps = browser
        .until("the clone's progress steps", "const s = document.querySelectorAll('#repo-add-status .clone-step'); return s.length && s.length", json!([]))
        .await;
    assert!(steps.as_u64().unwrap() >= 1, "{steps}");
    browser
        .until("the clone finished", "return document.getElementById('repo-add-status').innerText.includes('Registered `big`')", json!([]))
        .await;
    let log = browser.eval("return document.getElementById('repo-add-status').innerText", json!([])).await;
    let log = log.as_str().unwrap();
    assert!(log.contains("Cloning ") && log.contains('%'), "{log}");
    assert_eq!(admin.get("/v1/organizations/acme/repos/big").await.status, 200);
    both_widths(&browser, "repos").await;
    // A second add of the same source says so; a bad one shows the API's words.
    browser.type_into("#repo-source", src.to_str().unwrap()).await;
    browser.click("#repo-add-form button[type='submit']").await;
    browser
        .until("registered already", "return document.getElementById('repo-add-status').innerText.includes('registered already')", json!([]))
        .await;
    browser.type_into("#repo-source", "ext::sh -c touch% /tmp/pwned").await;
    browser.click("#repo-add-form button[type='submit']").await;
    browser.until("the refusal", "return document.querySelector('#repo-add-form .error:not([hidden])')?.innerText", json!([])).await;
    browser.eval("document.getElementById('repo-source').value = ''", json!([])).await;

    // A repository's page: its settings refuse a bad slug with the API's message, then save.
    browser.click("tr[data-repo='big'] a").await;
    browser.wait_for("#settings-form").await;
    browser.type_into("#rs-github", "not a slug").await;
    browser.click("#settings-form button[type='submit']").await;
    let refused = browser.until("the validation message", "const e = document.getElementById('settings-error'); return !e.hidden && e.innerText", json!([])).await;
    assert!(refused.as_str().unwrap().contains("github must be `owner/name`"), "{refused}");
    let settings = admin.get("/v1/organizations/acme/repos/big").await.body["settings"].clone();
    assert_eq!(settings, json!({}), "nothing was saved");
    browser.eval("document.getElementById('rs-github').value = ''", json!([])).await;
    browser.type_into("#rs-github", "acme/big").await;
    browser.click("#rs-idle-commit").await;
    browser.eval("document.getElementById('rx-ci_failed-max').value = ''", json!([])).await;
    browser.type_into("#rx-ci_failed-max", "5").await;
    browser.click("#settings-form button[type='submit']").await;
    browser.until("saved", "const e = document.getElementById('settings-saved'); return !e.hidden && document.getElementById('settings-error').hidden", json!([])).await;
    let settings = admin.get("/v1/organizations/acme/repos/big").await.body["settings"].clone();
    assert_eq!(settings["github"], "acme/big");
    assert_eq!(settings["automation"]["on_idle"]["commit"], true);
    assert_eq!(settings["reactions"]["ci_failed"]["max_attempts"], 5);
    // Another client's change shows in the untouched form, live.
    let mut other = settings.clone();
    other["keep_after_merge"] = json!(true);
    assert_eq!(admin.put("/v1/organizations/acme/repos/big/settings", other).await.status, 200);
    browser.until("the stream's settings", "return document.getElementById('rs-keep').checked", json!([])).await;
    both_widths(&browser, "repo-settings").await;

    // Setup: current values, saved with PUT, the API's refusal shown.
    browser.click("#tab-setup").await;
    browser.type_into("#setup-commands", "npm ci\necho ready").await;
    browser.type_into("#setup-copy", "../outside").await;
    browser.click("#setup-form button[type='submit']").await;
    let refused = browser.until("the setup refusal", "const e = document.getElementById('setup-error'); return !e.hidden && e.innerText", json!([])).await;
    assert!(refused.as_str().unwrap().contains("relative path inside the checkout"), "{refused}");
    browser.eval("document.getElementById('setup-copy').value = '.env'", json!([])).await;
    browser.click("#setup-form button[type='submit']").await;
    browser.until("setup saved", "return !document.getElementById('setup-saved').hidden", json!([])).await;
    let setup = admin.get("/v1/organizations/acme/repos/big").await.body["setup"].clone();
    assert_eq!(setup, json!({"commands": ["npm ci", "echo ready"], "copy": [".env"]}));

    // Branches (the branch poller's rows) and pull requests.
    browser.click("#tab-branches").await;
    browser.wait_for("tr[data-branch='dev']").await;
    browser.wait_for("tr[data-branch='main']").await;
    both_widths(&browser, "repo-branches").await;
    eventually(Duration::from_secs(30), "the PR poller read the pull request", || {
        let c = server.client();
        async move {
            let r = c.get("/v1/organizations/acme/repos/big/pulls").await;
            (!r.body["items"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    browser.click("#tab-pulls").await;
    browser.wait_for("tr[data-pr='1']").await;
    let row = browser.eval("return document.querySelector(\"tr[data-pr='1']\").innerText", json!([])).await;
    let row = row.as_str().unwrap();
    assert!(row.contains("Add the feature flag") && row.contains("open") && row.contains("feature"), "{row}");
    both_widths(&browser, "repo-pulls").await;

    // A name with a dot is a page, not an asset, when opened directly.
    browser.goto(&format!("{}/repos/web.app?tab=settings", server.url)).await;
    browser.wait_for("#settings-form").await;
    assert!(browser.text().await.contains("web.app"));
}

#[actix_web::test]
async fn in_a_browser_the_admin_manages_secrets_tokens_and_pollers_and_backs_up() {
    // The branch poller polls only when asked, so a count that grows is the button's.
    let (server, dir) = Server::start(&[("KILN_REPOS__BRANCH_POLL_MS", "3600000")]);
    let admin = server.client();
    admin.post("/v1/organizations", json!({"name": "acme", "display_name": "Acme Co"})).await;
    admin.post("/v1/organizations", json!({"name": "globex"})).await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.create_task("acme", "app", "Keep the lights on").await;
    let browser = Browser::start().await;
    sign_in(&browser, &server, &server.token, "acme").await;

    // Organization: the switcher lists every organization; secrets are write-only.
    browser.click("a[data-nav='organization']").await;
    browser.wait_for("#org-switcher li[data-org='globex'] button").await;
    browser.wait_for("#provider-github #secret-name-github").await;
    browser.type_into("#secret-name-github", "token").await;
    browser.type_into("#secret-value-github", "ghp_supersecretvalue42").await;
    browser.click("#provider-github button[type='submit']").await;
    browser.wait_for("#provider-github li[data-secret='token']").await;
    let profile = admin.get("/v1/organizations/acme/providers/github").await.body;
    assert_eq!(profile["secrets"], json!(["token"]));
    let html = browser.eval("return document.documentElement.outerHTML", json!([])).await;
    assert!(!html.as_str().unwrap().contains("ghp_supersecretvalue42"), "the value is never in the page");
    // Another secret, and the config kept alongside (a PUT replaces config as a whole).
    assert_eq!(
        admin.put("/v1/organizations/acme/providers/github", json!({"config": {"api_url": "http://127.0.0.1:9/api"}})).await.status,
        200
    );
    browser.until("the stream's profile", "return document.getElementById('config-github-api_url')?.value === 'http://127.0.0.1:9/api'", json!([])).await;
    browser.type_into("#secret-name-github", "webhook_secret").await;
    browser.type_into("#secret-value-github", "whsec").await;
    browser.click("#provider-github button[type='submit']").await;
    browser.wait_for("#provider-github li[data-secret='webhook_secret']").await;
    let profile = admin.get("/v1/organizations/acme/providers/github").await.body;
    assert_eq!(profile["config"], json!({"api_url": "http://127.0.0.1:9/api"}), "the config was kept");
    // A bad name shows the API's words.
    browser.type_into("#secret-name-worktree", "not-an-env-name").await;
    browser.type_into("#secret-value-worktree", "x").await;
    browser.click("#provider-worktree button[type='submit']").await;
    let refused = browser
        .until("the secret refusal", "const e = document.querySelector('#provider-worktree .error:not([hidden])'); return e && e.innerText", json!([]))
        .await;
    assert!(refused.as_str().unwrap().contains("environment variable name"), "{refused}");
    browser.eval("document.querySelector('#provider-worktree .error').hidden = true", json!([])).await;
    browser.eval("document.getElementById('secret-name-worktree').value = ''; document.getElementById('secret-value-worktree').value = ''", json!([])).await;
    both_widths(&browser, "organization").await;
    // Clearing one (after a confirmation).
    browser.eval(CONFIRM_YES, json!([])).await;
    browser.click("#provider-github li[data-secret='webhook_secret'] button").await;
    browser
        .until("the secret is gone", "return !document.querySelector(\"#provider-github li[data-secret='webhook_secret']\")", json!([]))
        .await;
    assert_eq!(admin.get("/v1/organizations/acme/providers/github").await.body["secrets"], json!(["token"]));

    // Tokens: created and shown once, it works; revoked, it does not.
    browser.click("a[data-nav='tokens']").await;
    browser.type_into("#token-name", "ci").await;
    browser.click("#token-form button[type='submit']").await;
    let secret = browser.until("the new token", "return document.getElementById('token-secret')?.value", json!([])).await;
    let secret = secret.as_str().unwrap().to_string();
    assert!(secret.starts_with("kiln_"), "{secret}");
    assert!(browser.text().await.contains("only time Kiln shows it"));
    let ci = Client::new(&server.url, Some(&secret));
    assert_eq!(ci.get("/v1/organizations/acme/repos").await.status, 200);
    browser.click("#token-copy").await;
    let id = browser.until("the token's row", "return document.querySelector('tr[data-token] td strong')?.closest('tr').dataset.token", json!([])).await;
    both_widths(&browser, "tokens").await;
    browser.click("#token-created button.ghost").await;
    assert!(browser.eval("return !document.getElementById('token-secret')", json!([])).await == true, "shown once: gone when dismissed");
    browser.eval(CONFIRM_YES, json!([])).await;
    browser.click(&format!("button[data-revoke='{}']", id.as_str().unwrap())).await;
    browser.until("the token is revoked", "return document.querySelector('tr.revoked') !== null", json!([])).await;
    assert_eq!(ci.get("/v1/organizations/acme/repos").await.status, 401);

    // Admin: metrics, pollers (poll now, stop), actors, backup.
    browser.click("a[data-nav='admin']").await;
    let key = "org/acme/repo/app/branch-sync";
    let row = format!("tr[data-poller='{key}']");
    browser.wait_for(&row).await;
    browser.until("the tasks metric", "return document.querySelector('#metrics [data-status=running]')?.innerText.includes('1')", json!([])).await;
    browser.wait_for("tr[data-actor='org/acme/repo/app']").await;
    let polls = |c: Client| async move {
        let r = c.get("/admin/pollers").await.body;
        r["items"].as_array().unwrap().iter().find(|p| p["key"] == key).map(|p| p["polls"].as_u64().unwrap())
    };
    let before = polls(server.client()).await.unwrap();
    browser.click(&format!("{row} button[data-op='poll']")).await;
    browser.until("poll requested", "return !document.getElementById('poller-status').hidden", json!([])).await;
    eventually(Duration::from_secs(30), "the poll ran", || {
        let c = server.client();
        async move { (polls(c).await? > before).then_some(()) }
    })
    .await;
    browser.click("#admin-refresh").await;
    browser
        .until("the new count", &format!("return Number(document.querySelector(\"{row} .polls\")?.innerText) > {before}"), json!([]))
        .await;
    browser.click("#backup").await;
    let path = browser.until("the backup's path", "return document.getElementById('backup-path')?.innerText", json!([])).await;
    let path = std::path::PathBuf::from(path.as_str().unwrap());
    assert!(path.starts_with(server.data_dir().join("backups")) && path.is_file(), "{path:?}");
    both_widths(&browser, "admin").await;
    // Dark mode follows the system.
    browser.dark(true).await;
    browser.eval("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot("admin-dark-desktop").await;
    browser.click("a[data-nav='organization']").await;
    browser.wait_for("#provider-github li[data-secret='token']").await;
    browser.viewport(390, 844).await;
    browser.screenshot("organization-dark-phone").await;
    browser.viewport(1280, 800).await;
    browser.dark(false).await;
    browser.click("a[data-nav='admin']").await;
    browser.wait_for(&row).await;
    browser.eval(CONFIRM_YES, json!([])).await;
    browser.click(&format!("{row} button[data-op='stop']")).await;
    browser.until("the poller is gone", &format!("return !document.querySelector(\"{row}\")"), json!([])).await;
    assert_eq!(polls(server.client()).await, None, "stopped");
}

#[actix_web::test]
async fn in_a_browser_an_organization_s_session_sees_no_admin_views_and_is_refused_them() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let token = org_with_token(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.wait_for("a[data-nav='repos']").await;
    let navs = browser.eval("return [...document.querySelectorAll('nav a[data-nav]')].map(a => a.dataset.nav).join(',')", json!([])).await;
    assert_eq!(navs, "repos,organization", "no Tokens or Admin in the navigation");

    // Opened directly: a clear refusal and no data.
    for (page, title) in [("/server", "Admin"), ("/tokens", "Tokens")] {
        browser.goto(&format!("{}{page}", server.url)).await;
        browser.wait_for("#admin-only").await;
        let text = browser.text().await;
        assert!(text.contains(title) && text.contains("Only the Kiln admin can see this page"), "{page}: {text}");
        for leak in ["Pollers", "branch-sync", "dashboard", "tok_", "Backup"] {
            assert!(!text.contains(leak), "{page} shows {leak}: {text}");
        }
    }
    browser.viewport(390, 844).await;
    browser.screenshot("admin-refused-phone").await;
    browser.viewport(1280, 800).await;
    // The server refuses the page's own scripts too.
    for path in ["/admin/pollers", "/metrics", "/v1/organizations/acme/tokens"] {
        let status = browser
            .eval_async(
                "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));",
                json!([path]),
            )
            .await;
        assert_eq!(status, 403, "{path}");
    }
    // Its own organization's views work, without the admin's switcher.
    browser.click("a[data-nav='organization']").await;
    browser.wait_for("#provider-github #secret-name-github").await;
    assert!(browser.eval("return !document.getElementById('org-switcher')", json!([])).await == true);
    browser.click("a[data-nav='repos']").await;
    browser.wait_for("tr[data-repo='app']").await;
}
