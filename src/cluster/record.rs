//! Users' states of record in a JetStream key-value bucket (`<prefix>_states`, one key per
//! user, history 1), as the hub's [`StateRecord`] when clustered.
//!
//! Writers merge: a write reads the stored value and its revision, raises each kind to the
//! larger of the two, and stores the result only if the revision is still the one it read
//! (compare-and-set), else reads again. So a state never goes backwards whatever the order of
//! writers, nodes or replays. Each node remembers the last value and revision it read or
//! wrote for a user, so a node that keeps writing one user's changes reads nothing first.
//!
//! The bucket republishes every stored value on the user's subject ([`super::names`]): a
//! stored state is one that the nodes serving the user hear, with no second message whose
//! loss or delay could leave them behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Link;
use crate::event::IdScheme;
use crate::stream::UserState;
use crate::stream::persist::{RecordError, RecordFuture, StateRecord};

/// The bucket's value of one user.
#[derive(Debug, Serialize, Deserialize)]
struct StoredValue {
    mail: u64,
    calendar: u64,
    contacts: u64,
    delivered: u64,
    /// The account's JMAP id scheme: 0 not known, 1 legacy, 2 compact.
    #[serde(default)]
    ids: u8,
}

/// The bucket, as the hub's state record.
pub struct KvRecord {
    pub(super) link: Arc<Link>,
    /// Made (or its settings restored) once NATS answers, and again after a failed write.
    bucket: tokio::sync::Mutex<Option<kv::Store>>,
    /// The last value and revision this node read or wrote per user. A std mutex: map
    /// operations only. Cleared whole past [`MAX_KNOWN`]: a miss costs one read.
    known: Mutex<HashMap<String, (UserState, u64)>>,
}

/// Users whose last revision a node remembers.
const MAX_KNOWN: usize = 100_000;
/// Writes of one flush in flight at once.
const WRITES_IN_FLIGHT: usize = 256;
/// Conflicting writers a write reads again for before it gives up (until the next flush).
const MAX_CONFLICTS: usize = 16;

/// Reads a stored value, or a republished one; None for anything else.
pub fn decode(bytes: &[u8]) -> Option<UserState> {
    let value: StoredValue = serde_json::from_slice(bytes).ok()?;
    Some(UserState {
        mail: value.mail,
        calendar: value.calendar,
        contacts: value.contacts,
        delivered: value.delivered,
        ids: IdScheme::from_code(value.ids),
    })
}

/// A state as the bucket stores it.
pub fn encode(state: &UserState) -> Bytes {
    let value = StoredValue {
        mail: state.mail,
        calendar: state.calendar,
        contacts: state.contacts,
        delivered: state.delivered,
        ids: state.ids.code(),
    };
    // Plain numbers: serializing cannot fail.
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

impl KvRecord {
    /// The record behind `link`; the bucket is made on first use.
    pub fn new(link: Arc<Link>) -> KvRecord {
        KvRecord {
            link,
            bucket: tokio::sync::Mutex::new(None),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket, made or its settings restored if this node has not done so yet.
    pub async fn bucket(&self) -> Result<kv::Store, RecordError> {
        if !self.link.is_connected() {
            // Fail at once rather than after the timeout: a stream's opening goes on with what
            // memory knows, and unsaved states wait for the reconnection.
            return Err(RecordError("cut off from NATS".into()));
        }
        let mut bucket = self.bucket.lock().await;
        if let Some(store) = &*bucket {
            return Ok(store.clone());
        }
        let made = tokio::time::timeout(self.link.timeout, ensure_bucket(&self.link)).await;
        let store = match made {
            Ok(Ok(store)) => store,
            Ok(Err(err)) => return Err(RecordError(format!("state bucket: {err}"))),
            Err(_) => {
                return Err(RecordError(format!(
                    "state bucket: no answer from NATS within {:?}",
                    self.link.timeout
                )));
            }
        };
        *bucket = Some(store.clone());
        Ok(store)
    }

    /// Drops the bucket handle after a failure, so the next use makes sure it exists (NATS
    /// may have come back without its data).
    async fn forget_bucket(&self) {
        *self.bucket.lock().await = None;
    }

    /// Reads `user`'s value and revision (0 when there is none).
    async fn read(&self, store: &kv::Store, user: &str) -> Result<(UserState, u64), String> {
        let key = self.link.names.state_key(user);
        let entry = tokio::time::timeout(self.link.timeout, store.entry(key))
            .await
            .map_err(|_| format!("no answer from NATS within {:?}", self.link.timeout))?
            .map_err(|err| err.to_string())?;
        let Some(entry) = entry else {
            return Ok((UserState::default(), 0));
        };
        let state = match entry.operation {
            kv::Operation::Put => decode(&entry.value).unwrap_or_else(|| {
                tracing::warn!(user = %user, revision = entry.revision, "cluster: a stored state does not read; the next write replaces it");
                UserState::default()
            }),
            kv::Operation::Delete | kv::Operation::Purge => UserState::default(),
        };
        self.remember(user, state, entry.revision);
        Ok((state, entry.revision))
    }

    /// Merges `state` into `user`'s stored value.
    async fn merge(&self, store: &kv::Store, user: &str, state: &UserState) -> Result<(), String> {
        let metrics = &self.link.metrics.cluster;
        for _ in 0..MAX_CONFLICTS {
            let (stored, revision) = match self.remembered(user) {
                Some(known) => known,
                None => self.read(store, user).await?,
            };
            let mut merged = stored;
            if !merged.raise_to(state) && revision != 0 {
                return Ok(());
            }
            let key = self.link.names.state_key(user);
            let written = tokio::time::timeout(
                self.link.timeout,
                store.update(key, encode(&merged), revision),
            )
            .await
            .map_err(|_| format!("no answer from NATS within {:?}", self.link.timeout))?;
            match written {
                Ok(revision) => {
                    metrics.state_written("written");
                    self.remember(user, merged, revision);
                    return Ok(());
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Another writer was first: read its value and merge again.
                    metrics.state_written("conflict");
                    self.forget(user);
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        Err(format!(
            "{MAX_CONFLICTS} writers in a row were first; trying again at the next flush"
        ))
    }

    /// Merges every state, [`WRITES_IN_FLIGHT`] at a time; returns why each failure failed.
    async fn merge_all(&self, store: &kv::Store, states: &[(String, UserState)]) -> Vec<String> {
        let mut waiting = states.iter();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut failures = Vec::new();
        loop {
            while in_flight.len() < WRITES_IN_FLIGHT {
                let Some((user, state)) = waiting.next() else {
                    break;
                };
                in_flight.push(self.merge(store, user, state));
            }
            match in_flight.next().await {
                Some(Ok(())) => {}
                Some(Err(err)) => failures.push(err),
                None => return failures,
            }
        }
    }

    fn remembered(&self, user: &str) -> Option<(UserState, u64)> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(user)
            .copied()
    }

    fn remember(&self, user: &str, state: UserState, revision: u64) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() >= MAX_KNOWN && !known.contains_key(user) {
            known.clear();
            known.shrink_to(MAX_KNOWN / 16);
        }
        known.insert(user.to_owned(), (state, revision));
    }

    fn forget(&self, user: &str) {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(user);
    }
}

impl StateRecord for KvRecord {
    fn load<'a>(&'a self, user: &'a str) -> RecordFuture<'a, Option<UserState>> {
        Box::pin(async move {
            let store = self.bucket().await?;
            match self.read(&store, user).await {
                Ok((state, revision)) => Ok((revision != 0).then_some(state)),
                Err(err) => {
                    self.forget_bucket().await;
                    Err(RecordError(err))
                }
            }
        })
    }

    fn save<'a>(&'a self, states: &'a [(String, UserState)]) -> RecordFuture<'a, ()> {
        Box::pin(async move {
            let store = self.bucket().await?;
            let failures = self.merge_all(&store, states).await;
            if failures.is_empty() {
                return Ok(());
            }
            self.link
                .metrics
                .cluster
                .states_failed(failures.len() as u64);
            self.forget_bucket().await;
            Err(RecordError(format!(
                "{} of {} states not written to NATS: {}",
                failures.len(),
                states.len(),
                failures[0]
            )))
        })
    }
}

/// Makes the bucket, or restores its settings (the republishing above all) if it exists.
/// The stream is set up here rather than by async-nats's `create_key_value`, which needs an
/// account-info answer that NATS servers before 2.10 do not give in its shape.
async fn ensure_bucket(link: &Link) -> Result<kv::Store, String> {
    let bucket = link.names.bucket();
    let mut context = jetstream::new(link.client.clone());
    context.set_timeout(link.timeout);
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("mailpush: each user's state of record".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        republish: Some(stream::Republish {
            source: format!("$KV.{bucket}.>"),
            destination: link.names.republish_destination(),
            headers_only: false,
        }),
        ..Default::default()
    };
    match context.update_stream(&config).await {
        Ok(_) => {}
        Err(err) if err.kind() == stream_not_found() => {
            context
                .create_stream(config)
                .await
                .map_err(|err| format!("cannot create the bucket {bucket}: {err}"))?;
            tracing::info!(bucket = %bucket, "cluster: state bucket created");
        }
        Err(err) => return Err(format!("cannot set up the bucket {bucket}: {err}")),
    }
    context
        .get_key_value(&bucket)
        .await
        .map_err(|err| format!("cannot open the bucket {bucket}: {err}"))
}

fn stream_not_found() -> jetstream::context::CreateStreamErrorKind {
    jetstream::context::CreateStreamErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_read_as_nothing() {
        let state = UserState {
            mail: 9_007_199_254_740_991,
            calendar: 7,
            contacts: 3,
            delivered: 9,
            ids: IdScheme::Compact,
        };
        assert_eq!(decode(&encode(&state)), Some(state));
        assert_eq!(
            decode(br#"{"mail":1,"calendar":2,"contacts":3,"delivered":1}"#),
            Some(UserState {
                mail: 1,
                calendar: 2,
                contacts: 3,
                delivered: 1,
                ids: IdScheme::Unknown,
            }),
            "ids may be absent"
        );
        for bad in [&b""[..], b"{}", b"null", b"{\"mail\":-1}", b"\xff"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
