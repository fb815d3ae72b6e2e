//! Consumer-group offsets of the queues this shard owns, in `<shard>/groups.json`.
//!
//! A commit updates memory and then waits for a durable write (write, fsync, rename, fsync the
//! directory). Writes are serialized and coalesced: a commit that arrives while a write is in
//! flight is covered by the next one, so a burst of commits costs two writes, not one each.

use super::ShardError;
use crate::store::io::Disk;
use glommio::sync::Semaphore;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRow {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
}

pub struct GroupOffsets<D: Disk> {
    disk: D,
    path: PathBuf,
    offsets: RefCell<BTreeMap<(String, String, u32), u64>>,
    /// The newest group generation that committed each row through a member's pull. A
    /// member's commit at an older generation is refused, so a member fenced out while its
    /// commit crossed the mesh cannot land after its successor's. In memory: after a restart
    /// every session starts over, and the coordinator's generations start above every
    /// generation of the earlier boot (`Coordinator::booted`), so nothing stale passes.
    fences: RefCell<std::collections::HashMap<(String, String, u32), u64>>,
    version: Cell<u64>,
    persisted_version: Cell<u64>,
    write_gate: Semaphore,
}

impl<D: Disk> GroupOffsets<D> {
    pub async fn load(disk: D, path: PathBuf) -> Result<Self, ShardError> {
        let rows: Vec<OffsetRow> = match disk.read_file(&path).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|e| {
                ShardError::Metadata(format!(
                    "{}: not a valid group offset file: {e}",
                    path.display()
                ))
            })?,
            Ok(None) => Vec::new(),
            Err(e) => return Err(ShardError::Metadata(format!("{}: {e}", path.display()))),
        };
        let offsets = rows
            .into_iter()
            .map(|r| ((r.group, r.topic, r.queue), r.offset))
            .collect();
        Ok(GroupOffsets {
            disk,
            path,
            offsets: RefCell::new(offsets),
            fences: RefCell::new(std::collections::HashMap::new()),
            version: Cell::new(0),
            persisted_version: Cell::new(0),
            write_gate: Semaphore::new(1),
        })
    }

    pub fn get(&self, group: &str, topic: &str, queue: u32) -> Option<u64> {
        self.offsets
            .borrow()
            .get(&(group.to_string(), topic.to_string(), queue))
            .copied()
    }

    /// Every (topic, queue, offset) committed by `group`.
    pub fn of_group(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.offsets
            .borrow()
            .iter()
            .filter(|((g, _, _), _)| g == group)
            .map(|((_, t, q), o)| (t.clone(), *q, *o))
            .collect()
    }

    /// Records the offset and returns once it is on disk.
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        queue: u32,
        offset: u64,
    ) -> Result<(), ShardError> {
        let version = self.record(group, topic, queue, offset);
        self.persist(version).await
    }

    /// Records the offset in memory only and returns the version that covers it: a commit
    /// that rides on a group member's pull does not hold the read for a file write;
    /// [`GroupOffsets::persist`] with the version (run in the background) makes it durable.
    pub fn record(&self, group: &str, topic: &str, queue: u32, offset: u64) -> u64 {
        self.offsets
            .borrow_mut()
            .insert((group.to_string(), topic.to_string(), queue), offset);
        self.version.set(self.version.get() + 1);
        self.version.get()
    }

    pub fn all_rows(&self) -> Vec<OffsetRow> {
        self.offsets
            .borrow()
            .iter()
            .map(|((g, t, q), o)| OffsetRow {
                group: g.clone(),
                topic: t.clone(),
                queue: *q,
                offset: *o,
            })
            .collect()
    }

    /// Slave: takes the master shard's offsets. A frame carries every row of the queues that
    /// master shard owns, which are the queues this shard owns, so it replaces this shard's
    /// rows outright: a row the master dropped (its topic was deleted) goes here too, whatever
    /// order the links deliver frames in. Rows `keep` refuses (a topic this shard's table does
    /// not hold, a queue it does not own) are left out; the master resends its rows every sync
    /// interval, so a row whose topic arrives later comes with a later frame.
    pub async fn apply_from_master(
        &self,
        rows: Vec<OffsetRow>,
        keep: impl Fn(&OffsetRow) -> bool,
    ) -> Result<(), ShardError> {
        let rows: BTreeMap<(String, String, u32), u64> = rows
            .into_iter()
            .filter(|row| keep(row))
            .map(|r| ((r.group, r.topic, r.queue), r.offset))
            .collect();
        if *self.offsets.borrow() == rows {
            return Ok(());
        }
        *self.offsets.borrow_mut() = rows;
        self.version.set(self.version.get() + 1);
        self.persist(self.version.get()).await
    }

    /// Drops every group's offsets for a deleted topic.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), ShardError> {
        self.offsets.borrow_mut().retain(|(_, t, _), _| t != topic);
        self.fences.borrow_mut().retain(|(_, t, _), _| t != topic);
        self.version.set(self.version.get() + 1);
        self.persist(self.version.get()).await
    }

    /// [`GroupOffsets::record`] for a group member's commit at `generation`: refused when a
    /// newer generation already committed the row.
    pub fn record_fenced(
        &self,
        group: &str,
        topic: &str,
        queue: u32,
        offset: u64,
        generation: u64,
    ) -> Result<u64, ShardError> {
        let key = (group.to_string(), topic.to_string(), queue);
        let mut fences = self.fences.borrow_mut();
        let floor = fences.entry(key).or_insert(generation);
        if generation < *floor {
            return Err(ShardError::IllegalGeneration(format!(
                "generation {floor} of group `{group}` already committed {topic}/{queue}; \
                 this commit is from generation {generation}"
            )));
        }
        *floor = generation;
        drop(fences);
        Ok(self.record(group, topic, queue, offset))
    }

    /// Writes whatever is recorded and not yet on disk (a clean stop: commits recorded by
    /// [`GroupOffsets::record`] whose background write has not run).
    pub async fn flush(&self) -> Result<(), ShardError> {
        self.persist(self.version.get()).await
    }

    /// Returns once everything up to version `wanted` is on disk (writes coalesce: one write
    /// covers every change made before it started).
    pub async fn persist(&self, wanted: u64) -> Result<(), ShardError> {
        let _permit = self
            .write_gate
            .acquire_permit(1)
            .await
            .map_err(|e| ShardError::Internal(format!("group offsets: {e}")))?;
        if self.persisted_version.get() >= wanted {
            return Ok(());
        }
        let version = self.version.get();
        let rows = self.all_rows();
        let bytes = serde_json::to_vec(&rows).expect("offsets serialize");
        self.disk
            .write_atomic(&self.path, bytes)
            .await
            .map_err(|e| ShardError::Metadata(format!("{}: {e}", self.path.display())))?;
        self.persisted_version.set(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{GroupOffsets, OffsetRow};
    use crate::testing::SimDisk;
    use futures_lite::future::block_on;
    use std::path::PathBuf;

    fn row(topic: &str, queue: u32, offset: u64) -> OffsetRow {
        OffsetRow {
            group: "readers".into(),
            topic: topic.into(),
            queue,
            offset,
        }
    }

    /// A lagging link delivers a frame from before a topic's deletion after the deletion
    /// reached this shard: its rows must not come back, and a later frame must clear what an
    /// earlier one held.
    #[test]
    fn a_master_frame_replaces_the_rows_and_skips_topics_this_shard_lacks() {
        block_on(async {
            let disk = SimDisk::new();
            let path = PathBuf::from("/groups.json");
            let groups = GroupOffsets::load(disk.clone(), path.clone())
                .await
                .unwrap();
            let known = |r: &OffsetRow| r.topic == "orders";
            groups
                .apply_from_master(vec![row("orders", 0, 5), row("orders", 1, 9)], known)
                .await
                .unwrap();
            assert_eq!(groups.get("readers", "orders", 1), Some(9));
            // "gone" was deleted here before this older frame arrived.
            groups
                .apply_from_master(vec![row("orders", 0, 6), row("gone", 0, 40)], known)
                .await
                .unwrap();
            assert_eq!(groups.get("readers", "gone", 0), None);
            assert_eq!(groups.get("readers", "orders", 0), Some(6));
            assert_eq!(
                groups.get("readers", "orders", 1),
                None,
                "a row the master no longer sends stays on the slave"
            );
            groups.apply_from_master(Vec::new(), known).await.unwrap();
            assert!(groups.all_rows().is_empty());
            let reloaded = GroupOffsets::load(disk, path).await.unwrap();
            assert!(
                reloaded.all_rows().is_empty(),
                "the replacement was not persisted"
            );
        });
    }
}
