use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_in};

#[tokio::test]
async fn healthz_answers_with_the_head_of_an_empty_log() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["log_head"], 0);
}

#[tokio::test]
async fn a_stopped_server_releases_its_log_for_the_next_start() {
    let first = spawn_app().await;
    let data_dir = first.stop().await.unwrap();
    // sled locks its directory: a second start only succeeds if the first let go of it.
    let second = spawn_app_in(data_dir).await;
    let response = second
        .client
        .get(format!("{}/healthz", second.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
