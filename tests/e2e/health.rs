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

#[tokio::test]
async fn the_read_models_catch_up_with_a_log_written_before_the_start() {
    use domain::catalog::AppScope;
    use domain::testing::{as_user, connect_command};
    use domain::Role;

    let data_dir = tempfile::tempdir().unwrap();
    {
        let store = std::sync::Arc::new(
            eventstore::SledEventStore::open(data_dir.path().join("log")).unwrap(),
        );
        let repository = command::repository::Repository::new(store);
        for (app, scope, user) in [
            ("hubspot", AppScope::Workspace, "ada"),
            ("gmail", AppScope::Personal, "max"),
        ] {
            let caller = as_user(user, Role::Admin);
            let command = connect_command(app, scope, &[]);
            command::lifecycle::connect(
                &repository,
                &caller,
                command,
                command::lifecycle::DEFAULT_ABANDON_AFTER,
            )
            .await
            .unwrap();
        }
    }
    let app = spawn_app_in(data_dir).await;
    let body = eventstore::waiting::eventually(
        std::time::Duration::from_secs(30),
        "the projections catching up",
        || async {
            let body = app.get_json("/healthz", None).await;
            let head = body["log_head"].as_u64().unwrap();
            ["installed", "sync_runs"]
                .iter()
                .all(|name| body["projections"][name]["position"].as_u64() == Some(head))
                .then_some(body)
        },
    )
    .await;
    assert_eq!(body["read_models"], "sqlite");
    assert!(body["log_head"].as_u64().unwrap() >= 4, "{body}");
    assert_eq!(body["projections"]["installed"]["lag_events"], 0);
}
