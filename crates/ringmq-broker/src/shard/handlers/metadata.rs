//! Metadata: shard ports and topic placement, for shard-aware clients.

use super::body;
use crate::protocol::message::Metadata;
use crate::shard::groups::OffsetRow;
use crate::shard::mesh::Reply;
use crate::shard::mesh::ShardRequest;
use crate::shard::topics::TopicTable;
use crate::shard::{Shard, ShardError};
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

/// The whole topic table (with the next topic id) and every group offset, for tools; slaves
/// get the same over the replication link, in metadata frames (`replication::protocol`).
#[derive(Debug, Serialize, Deserialize)]
pub struct MetadataSnapshot {
    pub topics: TopicTable,
    pub group_offsets: Vec<OffsetRow>,
}

pub async fn snapshot<D: Disk>(shard: &Rc<Shard<D>>) -> Result<Reply, ShardError> {
    let mut group_offsets = shard.metadata().groups().all_rows();
    let others = shard
        .ask_others(|reply| ShardRequest::AllGroupOffsets { reply })
        .await?;
    group_offsets.extend(others.into_iter().flatten());
    let snapshot = MetadataSnapshot {
        topics: (*shard.topic_table()).clone(),
        group_offsets,
    };
    Ok(Reply::ok(
        serde_json::to_vec(&snapshot).expect("snapshot serializes"),
    ))
}
