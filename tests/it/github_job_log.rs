//! The Actions job-log download (docs/git.md, `ci_failed`): GitHub's 302 is
//! followed to its own host, or to a public one; a redirect into the server's
//! own networks (loopback, link-local, private) is not followed, since what it
//! answers would be handed to the agent.

use kiln::integrations::github::GitHub;

use crate::common::*;
use crate::fake_github::FakeGithub;
use crate::git_lifecycle::bare_origin;

#[actix_web::test]
async fn a_job_log_redirect_is_followed_to_the_api_s_own_host_but_not_into_private_addresses() {
    let dir = tempdir();
    let gh = FakeGithub::start();
    let (bare, _work) = bare_origin(dir.path());
    gh.add_repo("acme/app", &bare);
    let job = gh.add_failed_actions_job("acme/app", "0123456789012345678901234567890123456789", "build", "failed", "step 1\nerror: boom\n");
    let client = GitHub::new(&gh.url, gh.token(), "acme/app");

    // The fake's own host (as github.com's API and its log storage are both public).
    let log = client.job_log(job as i64).await.expect("followed").expect("small enough");
    assert!(String::from_utf8_lossy(&log).contains("error: boom"));

    // The same fake, named `localhost`: another host, on a loopback address.
    let port = gh.url.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    gh.set_blob_base(Some(&format!("http://localhost:{port}")));
    let err = client.job_log(job as i64).await.expect_err("not followed");
    assert!(err.to_string().contains("redirect was not followed") && err.to_string().contains("private"), "{err}");
    let blobs = gh.requests().into_iter().filter(|r| r.path.starts_with("/_blobs/")).count();
    assert_eq!(blobs, 1, "only the first, same-host download reached the storage");
}
