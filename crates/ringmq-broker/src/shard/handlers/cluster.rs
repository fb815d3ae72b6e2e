//! Cluster commands: `ClusterStatus` (role, offsets and links of every shard),
//! `ClusterPromote` (turn a slave into the master of its group) and `ClusterDemote` (turn a
//! master into a slave of another master, or re-point a slave to another master). Both role
//! commands run the one role transition, [`Shard::change_role`], on every shard, at runtime.

use crate::config::BrokerRole;
use crate::protocol::message::{ClusterDemote, ClusterPromote};
use crate::replication::identity::{describe_epoch, promotion_epoch};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::role::{MasterMode, RoleTarget};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use std::net::SocketAddr;
use std::rc::Rc;

pub use crate::protocol::admin::{
    ClusterStatus, ControllerModeStatus, MasterLink, ShardStatus, SlaveStatus,
};

pub fn local_status<D: Disk>(shard: &Shard<D>) -> ShardStatus {
    let identity = shard.role_state().identity();
    let max_offset = shard.store().max_offset();
    let now = shard.clock().now();
    let since = |at: std::time::Instant| now.saturating_duration_since(at).as_millis() as u64;
    let slaves = shard
        .replicas()
        .map(|r| r.states())
        .unwrap_or_default()
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
                    since(s.caught_up_at)
                },
                connected_ms: since(s.connected_at),
                last_report_ms_ago: since(s.last_report_at),
            }
        })
        .collect();
    let master_link = shard.role_state().slave_link().map(|link| MasterLink {
        master: link
            .master()
            .map(|m| m.to_string())
            .or_else(|| shard.config().master.clone())
            .unwrap_or_default(),
        streaming: link.is_streaming(),
        master_confirmed_offset: link.master_confirmed(),
    });
    ShardStatus {
        shard: shard.id(),
        role: shard.role().name().to_string(),
        epoch: identity.last_epoch(),
        log_id: identity.log_id.iter().map(|b| format!("{b:02x}")).collect(),
        max_offset,
        flushed_offset: shard.store().flushed_offset(),
        confirmed_offset: shard.confirmed_offset(),
        divergence_points: identity.divergence_points,
        slaves,
        master_link,
    }
}

pub async fn status<D: Disk>(shard: &Rc<Shard<D>>) -> Result<Reply, ShardError> {
    let mut shards = shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await?;
    shards.push(local_status(shard));
    shards.sort_by_key(|s| s.shard);
    let status = ClusterStatus {
        broker_name: shard.config().broker_name.clone(),
        role: shard.role().name().to_string(),
        flush_disk_type: shard.config().flush_disk_type.name().to_string(),
        shards,
        namesrv: shard.registration().namesrv(),
        controller: shard.config().controller_mode().then(|| {
            let view = shard.controller().view();
            ControllerModeStatus {
                controllers: shard.config().controller.clone(),
                broker_id: view.broker_id,
                assigned_role: crate::protocol::controller::role_name(view.role).to_string(),
                master_broker_id: view.master_broker_id,
                master_epoch: view.master_epoch,
                sync_state_set_epoch: view.sync_state_set_epoch,
                sync_state_set: view.sync_state_set.clone(),
                pending_sync_state_set: view.pending_set.clone(),
                lease_ms_left: view.lease_until.map(|until| {
                    until
                        .saturating_duration_since(std::time::Instant::now())
                        .as_millis() as u64
                }),
            }
        }),
    };
    Ok(Reply::ok(
        serde_json::to_vec(&status).expect("status serializes"),
    ))
}

/// Promotes every shard; the body names the new role (empty: ASYNC_MASTER).
pub async fn promote<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = ClusterPromote::decode(raw)?;
    refuse_in_controller_mode(shard, "promote")?;
    let mode = if request.role.is_empty() {
        MasterMode::Async
    } else {
        request
            .role
            .parse::<BrokerRole>()
            .ok()
            .and_then(MasterMode::of)
            .ok_or_else(|| {
                ShardError::Refused(format!(
                    "promote to `{}`: the role must be SYNC_MASTER or ASYNC_MASTER",
                    request.role
                ))
            })?
    };
    if shard.is_master() {
        return Err(ShardError::Refused(format!(
            "{} is already a {}",
            shard.config().broker_name,
            shard.role()
        )));
    }
    let epoch = promotion_epoch_everywhere(shard).await?;
    change_everywhere(
        shard,
        RoleTarget::Master {
            mode,
            epoch: Some(epoch),
        },
    )
    .await?;
    status(shard).await
}

/// The epoch every shard opens on a promotion: the first of the term past every term this
/// broker has seen, on any shard's log and in the master the name servers named, so the new
/// master outranks every earlier one (a restarted old master included: it only ever moves
/// its generation). Computed once, so all shards open the same epoch and the registration's
/// highest epoch is every shard's.
async fn promotion_epoch_everywhere<D: Disk>(shard: &Rc<Shard<D>>) -> Result<u32, ShardError> {
    let others: Vec<ShardStatus> = shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await?;
    let seen = others
        .iter()
        .map(|s| s.epoch)
        .chain([shard.role_state().identity().last_epoch()])
        .chain(shard.registration().master().map(|m| m.epoch));
    promotion_epoch(seen).ok_or_else(|| {
        ShardError::Refused("promotion: every term an epoch can hold is used".to_string())
    })
}

/// Demotes every shard to a slave of the master whose HA port the body names (`HOST:PORT`);
/// on a slave, re-points every shard to that master.
pub async fn demote<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = ClusterDemote::decode(raw)?;
    refuse_in_controller_mode(shard, "demote")?;
    let master: SocketAddr = request.master.parse().map_err(|_| {
        ShardError::Refused(format!(
            "demote: `{}` is not the new master's HA address (an IP and a port)",
            request.master
        ))
    })?;
    // A slave is re-pointed: its link to the old master is replaced by one to `master`.
    change_everywhere(shard, RoleTarget::Slave(master)).await?;
    status(shard).await
}

/// In controller mode only the controllers change roles: an operator's promotion would make
/// a second master the controllers do not know about.
fn refuse_in_controller_mode<D: Disk>(shard: &Shard<D>, what: &str) -> Result<(), ShardError> {
    if shard.config().controller_mode() {
        return Err(ShardError::Refused(format!(
            "cluster {what}: {} runs in controller mode (--controller): the controllers \
             assign roles and elect the master; stop the master to fail over",
            shard.config().broker_name
        )));
    }
    Ok(())
}

/// Runs the role transition on every other shard, then on this one (only if all the others
/// changed). A transition that fails leaves its shard in its old role, but shards that already
/// changed stay changed (no rollback: a rollback can fail the same way): the error names the
/// shards of each kind, so the operator can retry the same command, which the changed shards
/// take as done.
pub(crate) async fn change_everywhere<D: Disk>(
    shard: &Rc<Shard<D>>,
    target: RoleTarget,
) -> Result<(), ShardError> {
    let outcomes = shard
        .ask_others(|reply| ShardRequest::ChangeRole { target, reply })
        .await?;
    let others = (0..shard.shard_count()).filter(|s| *s != shard.id());
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    for (other, outcome) in others.zip(outcomes) {
        match outcome {
            Ok(()) => changed.push(other),
            Err(e) => failed.push(format!("shard {other}: {e}")),
        }
    }
    if failed.is_empty() {
        let changed = shard.change_role(target).await;
        // Shard 0's name-server tasks register the new role at once, now that every shard has
        // it (shard 0 may have changed first, and registered a mix it reports as SLAVE).
        if shard.id() == 0 {
            shard.registration().changed();
        } else {
            // Shard 0 gone: the broker is stopping and unregisters anyway.
            let _ = shard.mesh().send(0, ShardRequest::Reregister).await;
        }
        match changed {
            Ok(()) => return Ok(()),
            Err(e) => failed.push(format!("shard {}: {e}", shard.id())),
        }
    } else {
        failed.push(format!(
            "shard {}: not tried after the failures above",
            shard.id()
        ));
    }
    Err(ShardError::Metadata(format!(
        "the role change to {} failed on some shards ({}); changed: {}",
        describe(target),
        failed.join("; "),
        if changed.is_empty() {
            "none".to_string()
        } else {
            changed
                .iter()
                .map(|s| format!("shard {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )))
}

fn describe(target: RoleTarget) -> String {
    match target {
        RoleTarget::Master { mode, epoch } => match epoch {
            Some(epoch) => format!("{} at epoch {}", mode.broker_role(), describe_epoch(epoch)),
            None => mode.broker_role().to_string(),
        },
        RoleTarget::Slave(master) => format!("SLAVE of {master}"),
    }
}
