//! Creating the log's streams and buckets, or checking that those found are compatible: an
//! existing stream is never changed.

use super::*;

/// A stream beside the event log whose messages age out (the records, the run detail): file
/// storage, kept `max_age`, deletes denied, purges allowed, direct gets; `subjects` its one
/// subject filter.
pub(crate) fn aging_stream(
    config: &JetStreamConfig,
    name: String,
    description: &str,
    subjects: String,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name,
        description: Some(description.to_owned()),
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age,
        duplicate_window: config.duplicate_window.min(max_age),
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        ..Default::default()
    }
}

/// A JetStream context on `store`'s connection with its request timeout, for a log beside it.
pub(crate) fn beside(store: &JetStreamEventStore) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(store.config().request_timeout)
        .build(store.client().clone())
}

/// Creates the stream, or checks that the one found is compatible with `wanted`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<(), StoreError> {
    match js.get_stream(&wanted.name).await {
        Ok(mut existing) => {
            let found = existing
                .info()
                .await
                .map_err(|error| unavailable("reading the stream's configuration", error))?
                .config
                .clone();
            let mismatches = incompatibilities(&found, &wanted);
            if mismatches.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Misconfigured(format!(
                    "the JetStream stream {} exists with a configuration this service cannot use \
                     ({}); it is left unchanged: fix or remove it by hand",
                    wanted.name,
                    mismatches.join("; ")
                )))
            }
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted.clone())
                .await
                .map(|_| ())
                .or_else(|error| {
                    // Another process may have created it in between.
                    if error.to_string().contains("already in use") {
                        Ok(())
                    } else {
                        Err(unavailable(
                            &format!("creating stream {}", wanted.name),
                            error,
                        ))
                    }
                })
        }
        Err(error) => Err(unavailable(
            &format!("looking up stream {}", wanted.name),
            error,
        )),
    }
}

/// What differs between a found stream and the one required, in words.
pub(super) fn incompatibilities(found: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    pub(super) fn differs<T: PartialEq + std::fmt::Debug>(
        out: &mut Vec<String>,
        what: &str,
        found: &T,
        wanted: &T,
    ) {
        if found != wanted {
            out.push(format!("{what} is {found:?}, needs {wanted:?}"));
        }
    }
    let mut out = Vec::new();
    differs(&mut out, "subjects", &found.subjects, &wanted.subjects);
    differs(&mut out, "storage", &found.storage, &wanted.storage);
    differs(
        &mut out,
        "replicas",
        &found.num_replicas,
        &wanted.num_replicas,
    );
    differs(&mut out, "retention", &found.retention, &wanted.retention);
    differs(
        &mut out,
        "deny_delete",
        &found.deny_delete,
        &wanted.deny_delete,
    );
    differs(
        &mut out,
        "deny_purge",
        &found.deny_purge,
        &wanted.deny_purge,
    );
    differs(
        &mut out,
        "allow_direct",
        &found.allow_direct,
        &wanted.allow_direct,
    );
    differs(
        &mut out,
        "allow_atomic",
        &found.allow_atomic_publish,
        &wanted.allow_atomic_publish,
    );
    differs(
        &mut out,
        "duplicate_window",
        &found.duplicate_window,
        &wanted.duplicate_window,
    );
    differs(&mut out, "max_age", &found.max_age, &wanted.max_age);
    // Limits that would drop messages before their age.
    let unlimited =
        found.max_messages <= 0 && found.max_bytes <= 0 && found.max_messages_per_subject <= 0;
    if !unlimited {
        out.push(
            "limits are set (max_msgs, max_bytes or max_msgs_per_subject), needs none: nothing \
             may be dropped before its age"
                .into(),
        );
    }
    out
}

pub(super) async fn ensure_bucket(
    js: &jetstream::Context,
    config: &JetStreamConfig,
) -> Result<kv::Store, StoreError> {
    let bucket = config.snapshots_bucket();
    match js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description:
                    "Harmony Sync: aggregate snapshots (derived, checked on load) and checkpoints"
                        .into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(&format!("creating bucket {bucket}"), error)),
    }
}
