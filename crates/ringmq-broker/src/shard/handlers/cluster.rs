//! Cluster commands: `ClusterStatus` (role, offsets and links of every shard) and
//! `ClusterPromote` (turn a slave into the master of its group).

use super::bad_request;
use crate::config::BrokerRole;
use crate::protocol::message::ClusterPromote;
use crate::protocol::Status;
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::Shard;
use std::rc::Rc;
use tracing::{info, warn};

pub use crate::protocol::admin::{ClusterStatus, MasterLink, ShardStatus, SlaveStatus};

pub fn local_status(shard: &Shard) -> ShardStatus {
    let identity = shard.identity.borrow().clone();
    let max_offset = shard.store.max_offset();
    let slaves = shard
        .replicas
        .states()
        .into_iter()
        .map(|s| {
            let lag_bytes = max_offset.saturating_sub(s.acked_offset);
            SlaveStatus {
                peer: s.peer,
                acked_offset: s.acked_offset,
                lag_bytes,
                lag_ms: if lag_bytes == 0 {
                    0
                } else {
                    s.caught_up_at.elapsed().as_millis() as u64
                },
                connected_ms: s.connected_at.elapsed().as_millis() as u64,
                last_report_ms_ago: s.last_report_at.elapsed().as_millis() as u64,
            }
        })
        .collect();
    let master_link = (shard.role.get() == BrokerRole::Slave).then(|| MasterLink {
        master: shard.config.master.clone().unwrap_or_default(),
        streaming: shard.link_up.get(),
        master_confirmed_offset: shard.master_confirmed.get(),
    });
    ShardStatus {
        shard: shard.id,
        role: shard.role.get().name().to_string(),
        epoch: identity.last_epoch(),
        log_id: identity.log_id.iter().map(|b| format!("{b:02x}")).collect(),
        max_offset,
        flushed_offset: shard.store.flushed_offset(),
        confirmed_offset: shard.confirmed_offset(),
        divergence_points: identity.divergence_points,
        slaves,
        master_link,
    }
}

pub async fn status(shard: &Rc<Shard>) -> Reply {
    let mut shards = match shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await
    {
        Ok(others) => others,
        Err(reply) => return reply,
    };
    shards.push(local_status(shard));
    shards.sort_by_key(|s| s.shard);
    let status = ClusterStatus {
        broker_name: shard.config.broker_name.clone(),
        role: shard.role.get().name().to_string(),
        flush_disk_type: shard.config.flush_disk_type.name().to_string(),
        shards,
    };
    Reply::ok(serde_json::to_vec(&status).expect("status serializes"))
}

/// Promotes every shard; the body names the new role (empty: ASYNC_MASTER).
pub async fn promote(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match ClusterPromote::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let role = if request.role.is_empty() {
        BrokerRole::AsyncMaster
    } else {
        match request.role.parse::<BrokerRole>() {
            Ok(r) if r.is_master() => r,
            _ => {
                return Reply::error(
                    Status::BadRequest,
                    format!(
                        "promote to `{}`: the role must be SYNC_MASTER or ASYNC_MASTER",
                        request.role
                    ),
                )
            }
        }
    };
    if shard.role.get().is_master() {
        return Reply::error(
            Status::BadRequest,
            format!(
                "{} is already a {}",
                shard.config.broker_name,
                shard.role.get()
            ),
        );
    }
    let outcomes = match shard
        .ask_others(|reply| ShardRequest::Promote { role, reply })
        .await
    {
        Ok(outcomes) => outcomes,
        Err(reply) => return reply,
    };
    if let Some(Err(message)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Reply::error(Status::StoreError, message);
    }
    match promote_local(shard, role).await {
        Ok(()) => status(shard).await,
        Err(message) => Reply::error(Status::StoreError, message),
    }
}

/// Makes this shard a master: flush, open a new epoch at the end of its log (the divergence
/// point for a former master that rejoins), remember the promotion, then switch role.
pub async fn promote_local(shard: &Rc<Shard>, role: BrokerRole) -> Result<(), String> {
    if shard.role.get().is_master() {
        return Ok(());
    }
    let _gate = shard.store_gate.acquire_permit(1).await;
    shard.store.flush().await.map_err(|e| e.to_string())?;
    let end = shard.store.max_offset();
    let mut identity = shard.identity.borrow().next_epoch(end);
    identity.promoted_role = Some(role);
    identity
        .save(&shard.disk, &shard.store_dir)
        .await
        .map_err(|e| e.to_string())?;
    let epoch = identity.last_epoch();
    *shard.identity.borrow_mut() = identity;
    // Everything the old master confirmed stays visible; the rest waits for this master's
    // own guarantee (its flush, and under SYNC_MASTER its slaves).
    let confirmed = shard.master_confirmed.get().min(end);
    shard.completions.reset_to(shard.store.flushed_offset());
    shard.replicas.completions.reset_to(confirmed);
    shard.replicas.completions.release(confirmed);
    shard.role.set(role);
    shard.role_changed.notify();
    shard.visible.notify();
    if role == BrokerRole::SyncMaster && shard.replicas.needed() > 0 {
        warn!(
            shard = shard.id,
            "promoted to SYNC_MASTER: producers get SLAVE_NOT_AVAILABLE until a slave follows"
        );
    }
    info!(
        shard = shard.id,
        epoch,
        epoch_start_offset = end,
        "promoted to {role}"
    );
    Ok(())
}
