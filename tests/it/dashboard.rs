//! The web dashboard: its assets and headers, signing in with a one-time link or
//! a pasted token, the session cookie's rules (CSRF, isolation, expiry, sign out,
//! revocation), the agents list, and the pages themselves in a real Chromium
//! (`browser.rs`), with a screenshot of every view.

use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::common::{cli, eventually, git_repo, Client, Server, Ws, WsItem};
use crate::web_support::{assert_no_overflow, cookie_of, org_with_token_id, raw, sign_in, sign_in_path, wait_live};

#[actix_web::test]
async fn the_dashboard_is_served_with_strict_headers_and_holds_no_data() {
    let (server, _dir) = Server::start(&[]);
    let url = &server.url;
    // No credential: the app shell, with its security headers, and nothing else.
    let page = raw("GET", &format!("{url}/"), &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy");
    for rule in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"] {
        assert!(csp.contains(rule), "CSP {csp:?} lacks {rule}");
    }
    assert!(!csp.contains("unsafe-eval") && !csp.split(';').any(|d| d.contains("script-src") && d.contains("unsafe-inline")), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("x-frame-options"), "DENY");
    let html = String::from_utf8_lossy(&page.bytes).to_string();
    assert!(html.contains("<script type=\"module\" src=\"/app.js\">"), "{html}");
    assert!(!html.contains("default") && !html.contains("token"), "the shell names no organization or token: {html}");
    // ETag revalidation, and gzip for clients that take it.
    let etag = page.header("etag");
    assert!(etag.starts_with('"'), "{etag}");
    let again = raw("GET", &format!("{url}/"), &[("if-none-match", &etag)], None).await;
    assert_eq!((again.status, again.bytes.len()), (304, 0));
    let js = raw("GET", &format!("{url}/vendor/xterm/xterm.mjs"), &[("accept-encoding", "gzip, br")], None).await;
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(js.header("content-encoding"), "gzip");
    assert!(js.bytes.len() < 200_000, "xterm.mjs gzipped is {} bytes", js.bytes.len());
    let plain = raw("GET", &format!("{url}/lib/api.js"), &[], None).await;
    assert_eq!((plain.status, plain.header("content-encoding").as_str()), (200, ""));
    assert!(String::from_utf8_lossy(&plain.bytes).contains("export async function api"));
    let license = raw("GET", &format!("{url}/vendor/xterm/LICENSE"), &[], None).await;
    assert!(String::from_utf8_lossy(&license.bytes).contains("MIT") || String::from_utf8_lossy(&license.bytes).contains("Permission"));
    // The app's own routes get the shell; an unknown file is a JSON 404; the API keeps its JSON 404.
    let task_page = raw("GET", &format!("{url}/tasks/2b0894e4"), &[], None).await;
    assert_eq!((task_page.status, task_page.bytes == page.bytes), (200, true));
    let missing = raw("GET", &format!("{url}/nope.js"), &[], None).await;
    assert_eq!((missing.status, missing.code()), (404, "route_not_found"));
    let api = raw("GET", &format!("{url}/v1/nothing-here"), &[], None).await;
    assert_eq!((api.status, api.code()), (401, "unauthorized"), "the API still needs a token");
    let post = raw("POST", &format!("{url}/"), &[], None).await;
    assert_eq!((post.status, post.code()), (405, "method_not_allowed"));
    let admin = raw("GET", &format!("{url}/admin/actors"), &[], None).await;
    assert_eq!(admin.status, 401, "operator routes are not the dashboard's");
}

#[actix_web::test]
async fn a_sign_in_link_works_once_and_its_cookie_is_the_token_s_and_only_from_this_origin() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let (token, token_id) = org_with_token_id(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.post("/v1/organizations", json!({"name": "globex"})).await;
    let url = &server.url;

    // No credential, no code.
    let r = raw("POST", &format!("{url}/v1/dashboard/codes"), &[], None).await;
    assert_eq!(r.status, 401);
    // An organization token cannot make a code for another organization.
    let r = Client::new(url, Some(&token)).post("/v1/dashboard/codes", json!({"organization": "globex"})).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{r:?}");

    let path = sign_in_path(&server, &token, json!({})).await;
    assert!(path.starts_with("/sign-in?code="), "{path}");
    let made = Client::new(url, Some(&token)).post("/v1/dashboard/codes", json!({})).await.body;
    assert!(made["expires_at"].as_i64().unwrap() - kiln::util::now_ms() <= 60_000, "{made}");

    // Opened from outside a page: signed in, sent to the board, no code left in the address bar.
    let opened = raw("GET", &format!("{url}{path}"), &[("sec-fetch-site", "none")], None).await;
    assert_eq!(opened.status, 303, "{:?}", opened.body);
    assert_eq!(opened.header("location"), "/");
    assert_eq!(opened.header("referrer-policy"), "no-referrer");
    let set = opened.header("set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "Set-Cookie {set:?} lacks {attr}");
    }
    assert!(!set.contains("Secure"), "plain http: no Secure flag");
    let cookie = cookie_of(&opened);
    assert!(cookie.starts_with("kiln_session=") && cookie.len() > 40, "{cookie}");
    // The same link again: refused, and the page says why.
    let reused = raw("GET", &format!("{url}{path}"), &[("sec-fetch-site", "none")], None).await;
    assert_eq!(reused.status, 303);
    assert_eq!(reused.header("location"), "/sign-in?error=sign_in_code_invalid");
    assert!(reused.header("set-cookie").is_empty());
    let code = path.trim_start_matches("/sign-in?code=");
    let again = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", url)], Some(json!({"code": code}))).await;
    assert_eq!((again.status, again.code()), (403, "sign_in_code_invalid"));
    // Followed from another site, the link signs nobody in: the page asks first.
    let other = sign_in_path(&server, &token, json!({})).await;
    let cross = raw("GET", &format!("{url}{other}"), &[("sec-fetch-site", "cross-site")], None).await;
    assert_eq!(cross.status, 200);
    assert!(cross.header("set-cookie").is_empty());
    // So is one from a browser that does not say where the link came from.
    let unsaid = raw("GET", &format!("{url}{other}"), &[], None).await;
    assert_eq!(unsaid.status, 200);
    assert!(unsaid.header("set-cookie").is_empty());
    // Neither spent the code: the confirm button still signs in with it.
    let code = other.trim_start_matches("/sign-in?code=");
    let confirmed = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", url)], Some(json!({"code": code}))).await;
    assert!(confirmed.status < 300 && !confirmed.header("set-cookie").is_empty(), "{:?}", confirmed.body);

    // The cookie is the token: its organization's data, nothing of another's.
    let with = |extra: &[(&'static str, String)]| {
        let mut h: Vec<(&'static str, String)> = vec![("cookie", cookie.clone())];
        h.extend(extra.iter().cloned());
        h
    };
    let get = |path: String, headers: Vec<(&'static str, String)>| async move {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        raw("GET", &format!("{url}{path}"), &hs, None).await
    };
    let me = get("/v1/dashboard/session".into(), with(&[])).await;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!((me.body["organization"].as_str(), me.body["admin"].as_bool(), me.body["token"].as_str()), (Some("acme"), Some(false), Some(token_id.as_str())));
    assert_eq!(get("/v1/organizations/acme/tasks".into(), with(&[])).await.status, 200);
    assert_eq!(get("/v1/organizations/globex/tasks".into(), with(&[])).await.status, 403);
    assert_eq!(get("/admin/actors".into(), with(&[])).await.status, 403);

    // Changes need the dashboard's own origin (CSRF): none, another site, or a
    // cross-site fetch are refused before anything happens.
    let create = json!({"repo": "app", "description": "from the page"});
    let post = |headers: Vec<(&'static str, String)>| {
        let create = create.clone();
        async move {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            raw("POST", &format!("{url}/v1/organizations/acme/tasks"), &hs, Some(create)).await
        }
    };
    for headers in [
        with(&[]),
        with(&[("origin", "http://evil.example".into())]),
        with(&[("origin", url.clone()), ("sec-fetch-site", "cross-site".into())]),
        with(&[("sec-fetch-site", "same-site".into())]),
    ] {
        let r = post(headers.clone()).await;
        assert_eq!((r.status, r.code()), (403, "cross_origin_refused"), "{headers:?}: {:?}", r.body);
    }
    assert_eq!(admin.get("/v1/organizations/acme/tasks").await.body["items"].as_array().unwrap().len(), 0, "nothing was created");
    let ok = post(with(&[("origin", url.clone()), ("sec-fetch-site", "same-origin".into())])).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    let ok = post(with(&[("sec-fetch-site", "same-origin".into())])).await;
    assert_eq!(ok.status, 201, "no Origin but same-origin fetch metadata: {:?}", ok.body);
    // A bearer token needs no Origin: the CLI is unchanged.
    assert_eq!(Client::new(url, Some(&token)).post("/v1/organizations/acme/tasks", create.clone()).await.status, 201);

    // Sign out: the cookie stops working and is cleared.
    let out = raw("DELETE", &format!("{url}/v1/dashboard/session"), &[("cookie", &cookie), ("origin", url)], None).await;
    assert_eq!(out.status, 204, "{:?}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(get("/v1/organizations/acme/tasks".into(), with(&[])).await.status, 401);

    // A pasted token signs in too (POST body, same origin only); revoking the token ends that session.
    let pasted = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", url)], Some(json!({"token": token}))).await;
    assert_eq!(pasted.status, 201, "{:?}", pasted.body);
    let cookie2 = cookie_of(&pasted);
    let cross = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", "http://evil.example")], Some(json!({"token": token}))).await;
    assert_eq!((cross.status, cross.code()), (403, "cross_origin_refused"), "no login CSRF");
    let bad = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", url)], Some(json!({"token": "kiln_nope"}))).await;
    assert_eq!(bad.status, 401);
    let live = raw("GET", &format!("{url}/v1/organizations/acme/tasks"), &[("cookie", &cookie2)], None).await;
    assert_eq!(live.status, 200);
    let revoked = admin.delete(&format!("/v1/organizations/acme/tokens/{token_id}")).await;
    assert_eq!(revoked.status, 200);
    let dead = raw("GET", &format!("{url}/v1/organizations/acme/tasks"), &[("cookie", &cookie2)], None).await;
    assert_eq!(dead.status, 401, "a session dies with its token");
    let left = sqlite_count(&server, "SELECT count(*) FROM web_sessions WHERE token_id = ?1", &token_id);
    assert_eq!(left, 0, "revoking the token deleted its sessions");
    // Codes are stored hashed, never as given.
    assert_eq!(sqlite_count(&server, "SELECT count(*) FROM web_sign_in_codes WHERE code_hash = ?1", code), 0);
}

#[actix_web::test]
async fn dashboard_sessions_expire() {
    let (server, _dir) = Server::start(&[("KILN_DASHBOARD__SESSION_TTL_SECS", "1")]);
    let url = server.url.clone();
    let path = sign_in_path(&server, &server.token, json!({"organization": "default"})).await;
    let opened = raw("GET", &format!("{url}{path}"), &[("sec-fetch-site", "none")], None).await;
    assert_eq!(opened.status, 303);
    let cookie = cookie_of(&opened);
    let me = raw("GET", &format!("{url}/v1/dashboard/session"), &[("cookie", &cookie)], None).await;
    assert_eq!((me.status, me.body["admin"].as_bool()), (200, Some(true)), "the admin's link signs in as the admin");
    eventually(Duration::from_secs(20), "the session expires", || {
        let (url, cookie) = (url.clone(), cookie.clone());
        async move {
            let r = raw("GET", &format!("{url}/v1/organizations/default/tasks"), &[("cookie", &cookie)], None).await;
            (r.status == 401).then_some(())
        }
    })
    .await;
}

#[actix_web::test]
async fn agents_lists_the_profiles_and_providers_without_their_commands() {
    let (server, _dir) = Server::start(&[]);
    let r = server.client().get("/v1/organizations/default/agents").await;
    assert_eq!(r.status, 200, "{r:?}");
    let agents = r.body["agents"].as_array().unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for name in ["fake", "quick", "typed", "acp", "ghost"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let fake = agents.iter().find(|a| a["name"] == "fake").unwrap();
    assert_eq!((fake["default"].as_bool(), fake["sessions"].as_bool(), fake["prompt"].as_str()), (Some(true), Some(false), Some("argument")));
    assert_eq!(agents.iter().find(|a| a["name"] == "acp").unwrap()["sessions"], true);
    assert!(!r.text.contains("fake-agent.sh"), "no commands: {r:?}");
    assert_eq!(
        r.body["providers"],
        json!([{"name": "worktree", "default": true, "available": true}, {"name": "daytona", "default": false, "available": true}])
    );
    let other = server.client().with_token(Some("kiln_nope")).get("/v1/organizations/default/agents").await;
    assert_eq!(other.status, 401);
}

/// Counts rows with one text parameter, reading the server's database directly.
fn sqlite_count(server: &Server, sql: &str, param: &str) -> i64 {
    use diesel::prelude::*;
    let mut conn = diesel::sqlite::SqliteConnection::establish(server.data_dir().join("kiln.db").to_str().unwrap()).unwrap();
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = sql.replacen("count(*)", "count(*) AS n", 1).replace("?1", "?");
    diesel::sql_query(sql).bind::<diesel::sql_types::Text, _>(param).get_result::<Count>(&mut conn).unwrap().n
}

// --- In a real browser -------------------------------------------------------

/// The column a task's card is in, or null.
const COLUMN_OF: &str = "const c = document.querySelector(`[data-task=\"${arguments[0]}\"]`); \
                         return c ? c.closest('.column').dataset.column : null;";

#[actix_web::test]
async fn in_a_browser_a_link_signs_in_once_unauthenticated_pages_show_nothing_and_an_organization_sees_only_its_tasks() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let (token, _) = org_with_token_id(&admin, "acme").await;
    admin.post("/v1/organizations", json!({"name": "globex"})).await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.add_repo("globex", &git_repo(&dir.path().join("g"), "secret-repo")).await;
    let mine = admin.create_task_with("acme", json!({"repo": "app", "description": "Fix the login bug", "agent": "fake"})).await;
    let theirs =
        admin.create_task_with("globex", json!({"repo": "secret-repo", "description": "Globex merger plans", "agent": "fake"})).await;
    let browser = Browser::start().await;

    // Unauthenticated: every page is the sign-in page, with no data.
    for page in ["/", &format!("/tasks/{}", mine["id"].as_str().unwrap()), "/new"] {
        browser.goto(&format!("{}{page}", server.url)).await;
        browser.wait_for("form #token").await;
        let text = browser.text().await;
        assert!(text.contains("Sign in to Kiln"), "{page}: {text}");
        assert!(!text.contains("Fix the login bug") && !text.contains("acme"), "{page} shows data: {text}");
    }
    browser.screenshot("sign-in-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("sign-in-phone").await;
    browser.viewport(1280, 800).await;

    // A link signs in; the cookie is HttpOnly and Strict; the board shows acme's task only.
    let path = sign_in_path(&server, &token, json!({})).await;
    browser.goto(&format!("{}{path}", server.url)).await;
    browser.until("the board shows acme's task", "return document.body.innerText.includes('Fix the login bug')", json!([])).await;
    assert_eq!(browser.url().await, format!("{}/", server.url));
    let cookies = browser.cookies().await;
    let session = cookies.iter().find(|c| c["name"] == "kiln_session").expect("the session cookie");
    assert_eq!((session["httpOnly"].as_bool(), session["sameSite"].as_str()), (Some(true), Some("Strict")), "{session}");
    assert_eq!(browser.eval("return document.cookie", json!([])).await, "", "scripts cannot read the session");
    let text = browser.text().await;
    assert!(!text.contains("Globex merger plans") && !text.contains("secret-repo"), "{text}");
    // Even the page's own scripts cannot reach globex: the API answers 403.
    let status = browser
        .eval_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));",
            json!([format!("/v1/organizations/globex/tasks/{}", theirs["id"].as_str().unwrap())]),
        )
        .await;
    assert_eq!(status, 403);

    // The same link again, in a fresh browser with no session, signs nobody in.
    let second = Browser::start().await;
    second.goto(&format!("{}{path}", server.url)).await;
    second.until("the link is refused", "return document.body.innerText.includes('used already')", json!([])).await;
    assert!(second.cookies().await.iter().all(|c| c["name"] != "kiln_session"));
    assert!(!second.text().await.contains("Fix the login bug"));
    second.screenshot("sign-in-link-used").await;
}

#[actix_web::test]
async fn in_a_browser_the_board_is_live_and_a_task_is_created_from_the_form() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let (token, _) = org_with_token_id(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.add_repo("acme", &git_repo(dir.path(), "api")).await;
    let a = admin.create_task_with("acme", json!({"repo": "app", "description": "Add dark mode to settings"})).await;
    let b = admin.create_task_with("acme", json!({"repo": "api", "description": "Rate-limit the login endpoint", "agent": "quick"})).await;
    let c = admin.create_task_with("acme", json!({"repo": "app", "description": "Upgrade the date library"})).await;
    let (a, b, c) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap(), c["id"].as_str().unwrap());
    admin.wait_status("acme", a, "running").await;
    admin.wait_status("acme", c, "running").await;
    // `quick` goes idle after a quiet second: it needs its person.
    admin.wait_status("acme", b, "idle").await;
    let archived = admin.create_task_with("acme", json!({"repo": "api", "description": "Remove the v1 endpoints"})).await;
    let archived = archived["id"].as_str().unwrap();
    admin.wait_status("acme", archived, "running").await;
    assert_eq!(admin.post(&format!("/v1/organizations/acme/tasks/{archived}/archive"), json!({})).await.status, 200);

    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    browser.until("a's card is in Working", COLUMN_OF, json!([a])).await;
    assert_eq!(browser.eval(COLUMN_OF, json!([a])).await, "working");
    assert_eq!(browser.eval(COLUMN_OF, json!([b])).await, "needs-you");
    assert_eq!(browser.eval(COLUMN_OF, json!([archived])).await, "done");
    assert!(browser.text().await.contains("Idle"), "the needs-input badge names why");
    wait_live(&browser).await;
    let title = browser.eval("return document.title", json!([])).await;
    assert_eq!(title, "(1) Kiln", "the title counts what needs you");
    browser.screenshot("board-desktop").await;

    // The CLI kills a task: its card moves to Stopped with no reload.
    browser.eval("window.__sameDocument = true", json!([])).await;
    let (code, out, err) = cli(&server, &["-o", "acme", "kill", a]);
    assert_eq!(code, 0, "{out}{err}");
    browser.until("a's card moves to Stopped", &format!("{COLUMN_OF}"), json!([a])).await;
    browser
        .until("a's card is in Stopped", "const c = document.querySelector(`[data-task=\"${arguments[0]}\"]`); return c && c.closest('.column').dataset.column === 'stopped';", json!([a]))
        .await;
    assert_eq!(browser.eval("return window.__sameDocument === true", json!([])).await, true, "the page was not reloaded");

    // Filters and search narrow the board.
    browser.type_into("#search", "date library").await;
    browser.until("only c matches", "return document.querySelectorAll('.card').length === 1", json!([])).await;
    assert_eq!(browser.eval(COLUMN_OF, json!([c])).await, "working");
    browser.eval("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));", json!([])).await;
    browser.select("#filter-repo", "api").await;
    browser.until("only api's tasks", "return [...document.querySelectorAll('.card .repo')].every(r => r.textContent === 'api') && document.querySelectorAll('.card').length === 2", json!([])).await;
    browser.select("#filter-repo", "").await;

    browser.viewport(390, 844).await;
    browser.screenshot("board-phone").await;
    assert_no_overflow(&browser, "no sideways scrolling at phone width").await;
    browser.viewport(1280, 800).await;

    // The form: repository, base branch from the branches API, agent and provider from the agents API.
    browser.click("a[href='/new']").await;
    browser.wait_for("#nt-agent option[value='typed']").await;
    browser.select("#nt-repo", "app").await;
    browser.wait_for("#nt-base option[value='dev']").await;
    browser.select("#nt-base", "dev").await;
    browser.select("#nt-agent", "fake").await;
    browser.type_into("#nt-title", "Write the changelog").await;
    browser.type_into("#nt-description", "Write the changelog for 2.0").await;
    browser.screenshot("new-task-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("new-task-phone").await;
    browser.viewport(1280, 800).await;
    browser.click(".new-task-form button[type='submit']").await;
    let url = browser.until("the task page", "return /\\/tasks\\/[0-9a-f]{8}$/.test(location.pathname) && location.pathname", json!([])).await;
    let id = url.as_str().unwrap().trim_start_matches("/tasks/").to_string();
    let task = admin.get(&format!("/v1/organizations/acme/tasks/{id}")).await.body;
    assert_eq!((task["title"].as_str(), task["base_branch"].as_str(), task["agent"].as_str()), (Some("Write the changelog"), Some("dev"), Some("fake")));
    browser.until("the task runs", "return document.getElementById('task-status')?.textContent === 'Running'", json!([])).await;
    // Its terminal shows the agent's output (xterm.js over the terminal WebSocket, with the cookie).
    browser.until("the terminal shows output", "return (document.querySelector('.xterm-rows')?.textContent || '').trim().length > 0", json!([])).await;
    browser.screenshot("task-desktop").await;
    browser.viewport(390, 844).await;
    browser.screenshot("task-phone").await;
    browser.viewport(1280, 800).await;
    // A refused action shows the API's words.
    browser.click("#tab-events").await;
    browser.until("the events list", "return document.querySelectorAll('.event').length > 0", json!([])).await;
    browser.screenshot("task-events-desktop").await;
    let (code, out, err) = cli(&server, &["-o", "acme", "kill", &id]);
    assert_eq!(code, 0, "{out}{err}");
    browser.until("the page shows it killed", "return document.getElementById('task-status')?.textContent === 'Killed'", json!([])).await;
    assert!(browser.text().await.contains("No actions"), "a killed task offers no actions");
}

#[actix_web::test]
async fn in_a_browser_revoking_the_token_ends_the_session() {
    let (server, dir) = Server::start(&[]);
    let admin = server.client();
    let (token, token_id) = org_with_token_id(&admin, "acme").await;
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    admin.create_task_with("acme", json!({"repo": "app", "description": "Keep me private"})).await;
    let browser = Browser::start().await;
    sign_in(&browser, &server, &token, "acme").await;
    wait_live(&browser).await;
    // "Live" can come before the board has drawn its first cards: wait for the card.
    browser.until("the task on the board", "return document.body.innerText.includes('Keep me private')", json!([])).await;
    let r = admin.delete(&format!("/v1/organizations/acme/tokens/{token_id}")).await;
    assert_eq!(r.status, 200);
    // The stream closes with 4001 and the page signs out by itself.
    browser.until("the sign-in page", "return !!document.querySelector('form #token')", json!([])).await;
    assert!(!browser.text().await.contains("Keep me private"));
    // Reloading does not bring it back.
    browser.goto(&format!("{}/", server.url)).await;
    browser.wait_for("form #token").await;
    assert!(!browser.text().await.contains("Keep me private"));
}

#[actix_web::test]
async fn kiln_dashboard_prints_a_link_for_its_own_token() {
    let (server, _dir) = Server::start(&[]);
    let admin = server.client();
    let (token, token_id) = org_with_token_id(&admin, "acme").await;
    // An organization token, with the CLI's default organization (`default`) not its own.
    let (code, out, err) = cli(&server, &["dashboard", "--print", "--token", &token]);
    assert_eq!(code, 0, "{out}{err}");
    let link = out.trim().to_string();
    assert!(link.starts_with(&format!("{}/sign-in?code=", server.url)), "{out}");
    assert!(err.contains("organization `acme`") && err.contains("60 seconds"), "{err}");
    let opened = raw("GET", &link, &[("sec-fetch-site", "none")], None).await;
    assert_eq!((opened.status, opened.header("location").as_str()), (303, "/"));
    let me = raw("GET", &format!("{}/v1/dashboard/session", server.url), &[("cookie", &cookie_of(&opened))], None).await;
    assert_eq!((me.body["organization"].as_str(), me.body["token"].as_str()), (Some("acme"), Some(token_id.as_str())));
    // The admin picks the board with -o; another organization's token cannot.
    let (code, out, err) = cli(&server, &["-o", "acme", "dashboard", "--print"]);
    assert_eq!(code, 0, "{out}{err}");
    let opened = raw("GET", out.trim(), &[("sec-fetch-site", "none")], None).await;
    let me = raw("GET", &format!("{}/v1/dashboard/session", server.url), &[("cookie", &cookie_of(&opened))], None).await;
    assert_eq!((me.body["organization"].as_str(), me.body["admin"].as_bool()), (Some("acme"), Some(true)));
    let (code, _, err) = cli(&server, &["-o", "default", "dashboard", "--print", "--token", &token]);
    assert_eq!(code, 1);
    assert!(err.contains("forbidden"), "{err}");
}

/// Revoking a token ends every dashboard session signed in with it: the rows are
/// deleted, and every WebSocket opened through them (the stream, a terminal)
/// closes with 4001 at once; a session of another token of the same
/// organization, and its stream, live on.
#[actix_web::test]
async fn revoking_a_token_closes_its_sessions_websockets_and_deletes_them() {
    const WAIT: Duration = Duration::from_secs(30);
    let (server, dir) = Server::start(&[]);
    let url = server.url.clone();
    let admin = server.client();
    let (token, token_id) = org_with_token_id(&admin, "acme").await;
    let other = admin.post("/v1/organizations/acme/tokens", json!({"name": "other"})).await.body["token"].as_str().unwrap().to_string();
    admin.add_repo("acme", &git_repo(dir.path(), "app")).await;
    let id = admin.create_task("acme", "app", "watched").await["id"].as_str().unwrap().to_string();
    let session = |t: String| {
        let url = url.clone();
        async move {
            let r = raw("POST", &format!("{url}/v1/dashboard/sessions"), &[("origin", &url)], Some(json!({"token": t}))).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            cookie_of(&r)
        }
    };
    let (mine1, mine2, theirs) = (session(token.clone()).await, session(token.clone()).await, session(other).await);
    let ws = |path: String, cookie: String| {
        let url = url.clone();
        async move {
            let (_, framed) = awc::Client::new()
                .ws(format!("{}{path}", url.replacen("http", "ws", 1)))
                .header("cookie", cookie)
                .header("origin", url.as_str())
                .max_frame_size(16 * 1024 * 1024)
                .connect()
                .await
                .expect("websocket connect");
            Ws { framed }
        }
    };
    let mut stream = ws("/v1/organizations/acme/stream".into(), mine1.clone()).await;
    let mut terminal = ws(format!("/v1/organizations/acme/tasks/{id}/terminal"), mine2.clone()).await;
    let mut survivor = ws("/v1/organizations/acme/stream".into(), theirs.clone()).await;
    eventually(WAIT, "both streams subscribed", || {
        let admin = admin.clone();
        async move {
            let m = admin.get("/metrics").await.text;
            m.lines().any(|l| l == "kiln_stream_subscribers 2").then_some(())
        }
    })
    .await;
    let r = admin.delete(&format!("/v1/organizations/acme/tokens/{token_id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (what, ws) in [("the stream", &mut stream), ("the terminal", &mut terminal)] {
        let reason = loop {
            match ws.next(WAIT).await {
                WsItem::Event(_) => continue,
                WsItem::Close(reason) => break reason.unwrap_or_else(|| panic!("{what}: a close without a reason")),
                WsItem::Ended => panic!("{what} ended without a close frame"),
            }
        };
        assert_eq!(reason.code, awc::ws::CloseCode::Other(4001), "{what}: {reason:?}");
    }
    assert_eq!(sqlite_count(&server, "SELECT count(*) FROM web_sessions WHERE token_id = ?1", &token_id), 0);
    for cookie in [&mine1, &mine2] {
        let dead = raw("GET", &format!("{url}/v1/organizations/acme/tasks"), &[("cookie", cookie)], None).await;
        assert_eq!(dead.status, 401);
    }
    // The other token's session and stream are untouched.
    let live = raw("GET", &format!("{url}/v1/organizations/acme/tasks"), &[("cookie", &theirs)], None).await;
    assert_eq!(live.status, 200);
    admin.patch("/v1/organizations/acme", json!({"display_name": "still here"})).await;
    loop {
        match survivor.next(WAIT).await {
            WsItem::Event(e) if e["data"]["display_name"] == "still here" => break,
            WsItem::Event(_) => continue,
            other => panic!("the other session's stream ended: {other:?}"),
        }
    }
}
