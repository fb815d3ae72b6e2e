//! The topic table: names, never-reused topic ids and queue placement.
//!
//! Shard 0 owns changes: it writes `<store>/topics.json` atomically, then sends the new table to
//! every shard, which adds or drops its queues. Every shard reads its own copy to route requests.

use super::ShardError;
use crate::constants::{MAX_NAME_BYTES, MAX_QUEUES_PER_TOPIC};
use crate::protocol::message::TopicInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicTable {
    /// Next topic id to hand out; ids are never reused, so records of a deleted topic are never
    /// dispatched into a new topic of the same name.
    pub next_topic_id: u32,
    pub topics: BTreeMap<String, TopicEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub topic_id: u32,
    /// `queue_shards[q]` owns queue `q`.
    pub queue_shards: Vec<u16>,
}

impl TopicEntry {
    pub fn info(&self, name: &str) -> TopicInfo {
        TopicInfo {
            name: name.to_string(),
            topic_id: self.topic_id,
            queue_shards: self.queue_shards.clone(),
        }
    }
    pub fn queue_count(&self) -> u32 {
        self.queue_shards.len() as u32
    }
}

pub fn topics_path(store_dir: &Path) -> PathBuf {
    store_dir.join("topics.json")
}

/// Names are used in file names and logs: letters, digits, `-`, `_` and `.`, not starting
/// with a dot.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ShardError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(ShardError::InvalidName(format!(
            "{kind} name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.starts_with('.') {
        return Err(ShardError::InvalidName(format!(
            "{kind} name `{name}` must not start with a dot"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ShardError::InvalidName(format!(
            "{kind} name `{name}` may contain only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// The retry topic of a group: rejected messages come back through it.
pub const RETRY_TOPIC_PREFIX: &str = "%RETRY%";
/// The dead-letter topic of a group: messages rejected `max_reconsume_times` times.
pub const DLQ_TOPIC_PREFIX: &str = "%DLQ%";
/// The broker's own topic of delayed retries, one queue per delay level (`shard/delays.rs`);
/// also the group name its progress offsets are kept under.
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";

pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_TOPIC_PREFIX}{group}")
}

pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_TOPIC_PREFIX}{group}")
}

/// A name the broker makes for itself: `%RETRY%<group>`, `%DLQ%<group>` (a valid group name
/// after the prefix) or `%SCHEDULE%`. Clients cannot create these (`%` is not allowed in their
/// names) but read them like any topic.
pub fn is_internal_name(name: &str) -> bool {
    if name == SCHEDULE_TOPIC {
        return true;
    }
    [RETRY_TOPIC_PREFIX, DLQ_TOPIC_PREFIX].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|group| validate_name("group", group).is_ok())
    })
}

/// A name the topic table or the group offsets may hold: a client's ([`validate_name`]) or one
/// the broker made ([`is_internal_name`]). Checked where names arrive from elsewhere (a
/// master's metadata frame).
pub fn validate_stored_name(kind: &str, name: &str) -> Result<(), ShardError> {
    if is_internal_name(name) {
        return Ok(());
    }
    validate_name(kind, name)
}

impl TopicTable {
    /// Reads the table at start-up (before executors run, so plain blocking I/O is fine).
    pub fn load(store_dir: &Path) -> Result<TopicTable, ShardError> {
        let path = topics_path(store_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ShardError::Metadata(format!("{}: not a valid topic table: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TopicTable::default()),
            Err(e) => Err(ShardError::Metadata(format!("{}: {e}", path.display()))),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("topic table serializes")
    }

    /// A new table with the topic added. Queue `q` goes to shard `(hash(name) + q) % shards`:
    /// deterministic, spread evenly, and different topics start on different shards.
    pub fn with_topic(
        &self,
        name: &str,
        queue_count: u32,
        shard_count: usize,
    ) -> Result<(TopicTable, u32), ShardError> {
        validate_name("topic", name)?;
        self.with_topic_unchecked(name, queue_count, shard_count)
    }

    /// [`TopicTable::with_topic`] for a name the broker makes ([`is_internal_name`]).
    pub fn with_internal_topic(
        &self,
        name: &str,
        queue_count: u32,
        shard_count: usize,
    ) -> Result<(TopicTable, u32), ShardError> {
        if !is_internal_name(name) {
            return Err(ShardError::InvalidName(format!(
                "`{name}` is not a name the broker makes"
            )));
        }
        self.with_topic_unchecked(name, queue_count, shard_count)
    }

    fn with_topic_unchecked(
        &self,
        name: &str,
        queue_count: u32,
        shard_count: usize,
    ) -> Result<(TopicTable, u32), ShardError> {
        if queue_count == 0 || queue_count > MAX_QUEUES_PER_TOPIC {
            // Answered INVALID_NAME like a bad name, as it always was: part of the wire contract.
            return Err(ShardError::InvalidName(format!(
                "queue count {queue_count} must be between 1 and {MAX_QUEUES_PER_TOPIC}"
            )));
        }
        let start = crc32c::crc32c(name.as_bytes()) as usize;
        let queue_shards = (0..queue_count as usize)
            .map(|q| ((start + q) % shard_count) as u16)
            .collect();
        let topic_id = self.next_topic_id;
        let mut table = self.clone();
        table.next_topic_id = topic_id
            .checked_add(1)
            .ok_or_else(|| ShardError::InvalidName("topic ids exhausted".to_string()))?;
        table.topics.insert(
            name.to_string(),
            TopicEntry {
                topic_id,
                queue_shards,
            },
        );
        Ok((table, topic_id))
    }

    pub fn without_topic(&self, name: &str) -> TopicTable {
        let mut table = self.clone();
        table.topics.remove(name);
        table
    }

    pub fn infos(&self) -> Vec<TopicInfo> {
        self.topics.iter().map(|(n, e)| e.info(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spread() {
        let table = TopicTable::default();
        let (a, id_a) = table.with_topic("orders", 8, 3).unwrap();
        let (b, _) = table.with_topic("orders", 8, 3).unwrap();
        assert_eq!(a, b);
        let shards = &a.topics["orders"].queue_shards;
        for s in 0..3u16 {
            let n = shards.iter().filter(|x| **x == s).count();
            assert!((2..=3).contains(&n), "shard {s} owns {n} of 8 queues");
        }
        let (c, id_c) = a
            .without_topic("orders")
            .with_topic("orders", 1, 3)
            .unwrap();
        assert_ne!(id_a, id_c, "ids are never reused");
        assert_eq!(c.topics["orders"].queue_count(), 1);
    }

    #[test]
    fn names_and_counts_are_checked() {
        let t = TopicTable::default();
        assert!(t.with_topic("", 1, 1).is_err());
        assert!(t.with_topic("a/b", 1, 1).is_err());
        assert!(t.with_topic(".hidden", 1, 1).is_err());
        assert!(t.with_topic("ok", 0, 1).is_err());
        assert!(t.with_topic("ok", MAX_QUEUES_PER_TOPIC + 1, 1).is_err());
        assert!(t.with_topic(&"x".repeat(MAX_NAME_BYTES + 1), 1, 1).is_err());
        assert!(t.with_topic("ok-1.a_b", 4, 2).is_ok());
        assert!(
            t.with_topic("%RETRY%g", 1, 1).is_err(),
            "clients cannot make them"
        );
    }

    #[test]
    fn internal_names_are_the_broker_s_own_forms() {
        let t = TopicTable::default();
        for name in [
            retry_topic("app"),
            dlq_topic("app.v2"),
            SCHEDULE_TOPIC.to_string(),
        ] {
            assert!(is_internal_name(&name), "{name}");
            assert!(validate_stored_name("topic", &name).is_ok());
            assert!(t.with_internal_topic(&name, 2, 2).is_ok());
        }
        for name in [
            "%RETRY%",
            "%RETRY%a/b",
            "%DLQ%.x",
            "%SCHEDULE%x",
            "%OTHER%g",
            "plain",
        ] {
            assert!(!is_internal_name(name), "{name}");
        }
        assert!(t.with_internal_topic("plain", 1, 1).is_err());
        assert!(validate_stored_name("topic", "plain").is_ok());
    }
}
