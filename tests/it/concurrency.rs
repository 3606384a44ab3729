//! Concurrency: parallel writers through one writer connection never see
//! "database is locked".

use serde_json::json;

use crate::common::*;

#[actix_web::test]
async fn fifty_parallel_creates_make_fifty_tasks() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let creates: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            async move {
                c.post("/v1/organizations/default/tasks", json!({"repo": "app", "description": format!("parallel {i}")}))
                    .await
            }
        })
        .collect();
    let replies = futures_util::future::join_all(creates).await;
    for r in &replies {
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut ids: Vec<&str> = replies.iter().map(|r| r.body["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    let listed = c.get("/v1/organizations/default/tasks?limit=100").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 50);
    let created = c.events_since("default", 0).await.into_iter().filter(|e| e["kind"] == "task.created").count();
    assert_eq!(created, 50);
    assert!(!server.log().contains("database is locked"));
}

#[actix_web::test]
async fn parallel_registrations_of_one_repository_make_one_row() {
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    let src = git_repo(dir.path(), "app");
    let regs: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let body = json!({"source": src.to_str().unwrap()});
            async move { c.post("/v1/organizations/default/repos", body).await }
        })
        .collect();
    let replies = futures_util::future::join_all(regs).await;
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1, "{replies:?}");
    assert_eq!(replies.iter().filter(|r| r.status == 200).count(), 7, "{replies:?}");
    assert_eq!(c.get("/v1/organizations/default/repos").await.body["items"].as_array().unwrap().len(), 1);
}
