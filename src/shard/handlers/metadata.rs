//! Metadata: shard ports and topic placement, for shard-aware clients.

use super::body;
use crate::protocol::message::Metadata;
use crate::shard::groups::OffsetRow;
use crate::shard::mesh::Reply;
use crate::shard::mesh::ShardRequest;
use crate::shard::topics::TopicTable;
use crate::shard::Shard;
use crate::store::io::Disk;
use serde::{Deserialize, Serialize};
use std::rc::Rc;

pub fn handle<D: Disk>(shard: &Shard<D>) -> Reply {
    let metadata = Metadata {
        broker_name: shard.config().broker_name.clone(),
        role: shard.role().name().to_string(),
        flush_disk_type: shard.config().flush_disk_type.name().to_string(),
        shard_ports: shard.shard_ports().to_vec(),
        topics: shard.topic_table().infos(),
    };
    Reply::ok(body(|out| metadata.encode(out)))
}

/// What a slave copies from its master: the whole topic table (with the next topic id, so a
/// promoted slave never reuses a deleted topic's id) and every group offset.
#[derive(Debug, Serialize, Deserialize)]
pub struct MetadataSnapshot {
    pub topics: TopicTable,
    pub group_offsets: Vec<OffsetRow>,
}

pub async fn snapshot<D: Disk>(shard: &Rc<Shard<D>>) -> Reply {
    let mut group_offsets = shard.metadata().groups().all_rows();
    match shard
        .ask_others(|reply| ShardRequest::AllGroupOffsets { reply })
        .await
    {
        Ok(others) => group_offsets.extend(others.into_iter().flatten()),
        Err(e) => return e.into(),
    }
    let snapshot = MetadataSnapshot {
        topics: (*shard.topic_table()).clone(),
        group_offsets,
    };
    Reply::ok(serde_json::to_vec(&snapshot).expect("snapshot serializes"))
}
