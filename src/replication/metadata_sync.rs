//! Slave: copies topics and consumer-group offsets from the master, on shard 0, when the link
//! comes up, as soon as a master shard reports a change (its metadata version moved) and every
//! `metadata_sync_interval_ms`.
//!
//! It asks the master's client port (learned in the replication handshake) for a
//! `MetadataSnapshot` with the blocking client on glommio's blocking pool, so the core never
//! waits on the network. A new topic table is published exactly like a topic change on a
//! master (atomic write, then every shard applies it); group offsets go to the shards that own
//! their queues.

use crate::client::{Connection, ConnectionOptions};
use crate::protocol::Opcode;
use crate::shard::groups::OffsetRow;
use crate::shard::handlers::metadata::MetadataSnapshot;
use crate::shard::handlers::topic::publish;
use crate::shard::mesh::ShardRequest;
use crate::shard::Shard;
use crate::store::io::Disk;
use futures_channel::oneshot;
use futures_lite::future;
use std::rc::Rc;
use std::time::Duration;
use tracing::{info, warn};

pub async fn run<D: Disk>(shard: Rc<Shard<D>>) {
    let interval = Duration::from_millis(shard.config().metadata_sync_interval_ms);
    while let Some(link) = shard.role_state().slave_link() {
        if let Some(addr) = link.master_client_addr() {
            if let Err(e) = sync_once(&shard, addr).await {
                warn!("copying metadata from the master: {e}");
            }
        }
        let role_changed = shard.role_state().listen_changed();
        let link_established = link.listen_established();
        let changed = shard.metadata().listen_master_changed();
        drop(link);
        let woken = async {
            future::or(
                async {
                    let _ = role_changed.await;
                },
                future::or(
                    async {
                        let _ = link_established.await;
                    },
                    async {
                        let _ = changed.await;
                    },
                ),
            )
            .await
        };
        future::or(woken, shard.clock().sleep(interval)).await;
    }
}

fn fetch(addr: &str) -> Result<MetadataSnapshot, String> {
    let mut connection = Connection::connect(addr, ConnectionOptions::default())
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let response = connection
        .call(Opcode::MetadataSnapshot, &[])
        .map_err(|e| format!("{addr}: {e}"))?;
    let (_, body) = response
        .into_result(addr)
        .map_err(|e| format!("{addr}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{addr}: bad metadata snapshot: {e}"))
}

async fn sync_once<D: Disk>(shard: &Rc<Shard<D>>, addr: String) -> Result<(), String> {
    let snapshot = glommio::executor()
        .spawn_blocking(move || fetch(&addr))
        .await?;
    if *shard.topic_table() != snapshot.topics {
        let topics = snapshot.topics.topics.len();
        publish(shard, snapshot.topics)
            .await
            .map_err(|e| e.to_string())?;
        info!(topics, "copied the topic table from the master");
    }
    let table = shard.topic_table();
    let mut by_shard: Vec<Vec<OffsetRow>> = vec![Vec::new(); shard.shard_count()];
    for row in snapshot.group_offsets {
        let owner = table
            .topics
            .get(&row.topic)
            .and_then(|t| t.queue_shards.get(row.queue as usize));
        if let Some(owner) = owner {
            by_shard[*owner as usize].push(row);
        }
    }
    for (owner, rows) in by_shard.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        if owner == shard.id() {
            shard.metadata().groups().apply_from_master(rows).await?;
            continue;
        }
        let (tx, rx) = oneshot::channel();
        shard
            .mesh()
            .send(owner, ShardRequest::ApplyGroupOffsets { rows, reply: tx })
            .await
            .map_err(|g| format!("shard {} is not running", g.0))?;
        rx.await.map_err(|_| "a shard stopped".to_string())??;
    }
    Ok(())
}
