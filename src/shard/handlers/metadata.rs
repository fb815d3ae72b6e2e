//! Metadata: shard ports and topic placement, for shard-aware clients.

use super::body;
use crate::protocol::message::Metadata;
use crate::shard::mesh::Reply;
use crate::shard::Shard;

pub fn handle(shard: &Shard) -> Reply {
    let metadata = Metadata {
        broker_name: shard.config.broker_name.clone(),
        role: "ASYNC_MASTER".to_string(),
        flush_disk_type: shard.config.flush_disk_type.name().to_string(),
        shard_ports: shard.shard_ports.to_vec(),
        topics: shard.topic_table().infos(),
    };
    Reply::ok(body(|out| metadata.encode(out)))
}
