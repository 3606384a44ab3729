//! The API-key check at create (docs/providers.md, "Checks at create"): a key
//! Daytona took is not asked about again for a minute, so tasks created
//! together cost one list call, not one each; a changed or refused key is
//! checked again.

use serde_json::json;

use crate::daytona_provider::{bin, daytona_server, fast, port, Remote};
use crate::fake_daytona::FakeDaytona;

/// The preflight's probe: a list by the `kiln/task` label `-`.
fn probes(fake: &FakeDaytona) -> usize {
    fake.calls().iter().filter(|c| c.method == "GET" && c.path.contains("labels=") && c.path.contains("%22-%22")).count()
}

#[actix_web::test]
async fn a_key_daytona_took_is_not_checked_again_at_each_create_but_a_new_wrong_one_is() {
    let fake = FakeDaytona::with_timing(fast());
    let remote = Remote::start();
    let (server, _dir) = daytona_server(&fake, &remote, &fake.key()).await;
    let c = server.client();
    for what in ["first", "second", "third"] {
        let r = c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": what, "provider": "daytona"})).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    assert_eq!(probes(&fake), 1, "one key check for three creates: {:?}", fake.calls().iter().map(|c| &c.path).collect::<Vec<_>>());
    // Another key is checked at once, and refused with nothing made.
    let r = c.put("/v1/organizations/default/providers/daytona", json!({"config": {"api_url": fake.api_url(), "agent_bin": bin(), "agent_port": port()}, "secrets": {"api_key": "wrong-key"}})).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The three sandboxes are made (in the background, after each POST).
    crate::common::eventually(crate::daytona_provider::WAIT, "three creates", || async { (fake.creates().len() == 3).then_some(()) }).await;
    let r = c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": "refused", "provider": "daytona"})).await;
    assert_eq!((r.status, r.code()), (422, "daytona_unauthorized"), "{r:?}");
    assert_eq!(probes(&fake), 2);
    assert_eq!(fake.creates().len(), 3, "nothing made with a refused key");
}
