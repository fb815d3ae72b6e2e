//! Authorization at the handler edge and the ACL commands.
//!
//! [`authorize`] is the one decision: `handle_client` calls it for every client request (the
//! shared port, shard ports and the Kafka listener alike) before anything runs, so a request
//! forwarded to another shard was decided on the shard that read it, and a slave decides on
//! the rules its master replicated to it, by the stricter of its own configuration and its
//! master's (`authorization` and `superusers` travel with the rules, [`acl::Policy`]).
//! [`audit`] writes the admin calls' lines.
//!
//! `AclAdd`/`AclRemove` change the rules on shard 0 under the metadata gate (as topics are):
//! `<store>/acls.json` is written atomically, then every shard takes the new table; the
//! version bump sends it to the slaves in the next metadata frame. `AclList` reads this
//! shard's copy.

use crate::config::{Authorization, BrokerConfig};
use crate::metrics::Counter;
use crate::protocol::admin::AclList;
use crate::protocol::message::{AclAdd, AclRemove, ClusterDemote, ClusterPromote};
use crate::protocol::{Opcode, Status};
use crate::security::acl::{self, acls_path, AclTable, Need, Policy, Rule, Target};
use crate::security::audit::{self, AuditLine};
use crate::security::Principal;
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use futures_channel::oneshot;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use tracing::info;

/// Shard that owns the ACL rules (the topic table's too).
const METADATA_SHARD: usize = 0;

/// Who sent a client request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    pub principal: Option<&'a Principal>,
    pub peer: Option<SocketAddr>,
}

impl Caller<'_> {
    fn name(&self) -> &str {
        self.principal.map_or(acl::ANONYMOUS, |p| p.as_str())
    }
}

/// What an allowed request leaves to do after it ran: the audit line of an admin call.
pub struct Audited {
    operation: Opcode,
    target: String,
}

/// The rules and the policy one request is decided by: this shard's copy of the rules and,
/// on a slave, the policy of the master they came from (a master goes by its own
/// configuration alone, whatever an earlier master left in its file).
struct Decider<'a> {
    acls: Arc<AclTable>,
    own: &'a BrokerConfig,
    is_master: bool,
}

impl Decider<'_> {
    fn of<D: Disk>(shard: &Shard<D>) -> Decider<'_> {
        Decider {
            acls: shard.acls(),
            own: shard.config(),
            is_master: shard.is_master(),
        }
    }

    fn master(&self) -> Option<&Policy> {
        if self.is_master {
            return None;
        }
        self.acls.master.as_ref()
    }

    fn is_superuser(&self, caller: Caller<'_>) -> bool {
        Policy::is_superuser(&self.own.superusers, self.master(), caller.name())
    }

    fn decide(&self, caller: Caller<'_>, needs: &[Need]) -> Result<(), acl::Denied> {
        if self.is_superuser(caller) {
            return Ok(());
        }
        self.acls
            .decide(caller.principal.map(|p| p.as_str()), &[], needs)
    }
}

/// Whether this shard enforces the ACLs now: its own `authorization`, or (on a slave) its
/// master's ([`Policy::enforced`]). A master set to `off` pays a role read per request.
fn enforced<D: Disk>(shard: &Shard<D>) -> bool {
    let own = shard.config().authorization;
    if own == Authorization::Acl || shard.is_master() {
        return own == Authorization::Acl;
    }
    Policy::enforced(own, shard.acls().master.as_ref())
}

/// The decision for one client request. `Ok(Some)`: allowed, an admin call to audit once it
/// is answered; `Ok(None)`: allowed; `Err`: the refusal to answer (already audited when it
/// was an admin call). With authorization off (here and, on a slave, on its master) only
/// admin calls are looked at (for the audit log), so the hot path pays nothing.
pub fn authorize<D: Disk>(
    shard: &Shard<D>,
    opcode: Opcode,
    body: &[u8],
    caller: Caller<'_>,
) -> Result<Option<Audited>, Reply> {
    let enforced = enforced(shard);
    if !enforced && !acl::is_admin(opcode) {
        return Ok(None);
    }
    let needs = match acl::needs(opcode, body) {
        Ok(needs) => needs,
        // Undecodable: the handler answers BAD_REQUEST as it always did, and refuses
        // nothing it would not; under enforcement nothing unchecked runs, and an admin call
        // refused so is audited like any other.
        Err(e) if enforced => {
            let refused = Reply::from(ShardError::from(e));
            if acl::is_admin(opcode) {
                let audited = Audited {
                    operation: opcode,
                    target: "unknown (the request did not decode)".to_string(),
                };
                audit(shard, &audited, caller, refused.status);
            }
            return Err(refused);
        }
        Err(_) => Vec::new(),
    };
    let audited = acl::is_admin(opcode).then(|| Audited {
        operation: opcode,
        target: describe_target(opcode, body, &needs),
    });
    if !enforced {
        return Ok(audited);
    }
    match Decider::of(shard).decide(caller, &needs) {
        Ok(()) => Ok(audited),
        Err(denied) => {
            shard.probe().add(Counter::AuthorizationRefused, 1);
            let refused = Reply::error(Status::NotAuthorized, denied.to_string());
            if let Some(audited) = audited {
                audit(shard, &audited, caller, refused.status);
            }
            Err(refused)
        }
    }
}

/// Authorizes a request the Kafka listener makes of its own (a Kafka produce, which does not
/// go through `handle_client`), for the needs it names.
pub fn authorize_needs<D: Disk>(
    shard: &Shard<D>,
    caller: Caller<'_>,
    needs: &[Need],
) -> Result<(), String> {
    if !enforced(shard) {
        return Ok(());
    }
    Decider::of(shard).decide(caller, needs).map_err(|denied| {
        shard.probe().add(Counter::AuthorizationRefused, 1);
        denied.to_string()
    })
}

/// Kafka's InitProducerId: allowed to a producer allowed to produce to some topic (KIP-679:
/// WRITE on any topic implies IdempotentWrite; ringmq has no cluster-wide produce right, so
/// this is the whole check), refused otherwise.
pub fn authorize_idempotent_producer<D: Disk>(
    shard: &Shard<D>,
    caller: Caller<'_>,
) -> Result<(), String> {
    if !enforced(shard) {
        return Ok(());
    }
    let decider = Decider::of(shard);
    let name = caller.name();
    if decider.is_superuser(caller)
        || decider
            .acls
            .may_produce_somewhere(caller.principal.map(|p| p.as_str()), &[])
    {
        return Ok(());
    }
    shard.probe().add(Counter::AuthorizationRefused, 1);
    Err(format!(
        "principal `{name}` is not authorized to produce to any topic (InitProducerId needs it)"
    ))
}

/// What an admin call acts on, for its audit line: `topic:NAME`, `group:NAME`, `cluster`, or
/// for the calls that change the cluster, what they change: the rule an `AclAdd` or
/// `AclRemove` names, the role a promotion asks for, the master a demotion follows.
fn describe_target(opcode: Opcode, body: &[u8], needs: &[Need]) -> String {
    let rule = |principal: &str, operation: &str, resource: &str, effect: &str| {
        format!("acl:{effect} {principal} {operation} on {resource}")
    };
    let named = match opcode {
        Opcode::AclAdd => AclAdd::decode(body)
            .ok()
            .map(|r| rule(&r.principal, &r.operation, &r.resource, &r.effect)),
        Opcode::AclRemove => AclRemove::decode(body)
            .ok()
            .map(|r| rule(&r.principal, &r.operation, &r.resource, &r.effect)),
        Opcode::ClusterPromote => ClusterPromote::decode(body).ok().map(|r| {
            let role = if r.role.is_empty() {
                "default"
            } else {
                &r.role
            };
            format!("cluster (promote to role {role})")
        }),
        Opcode::ClusterDemote => ClusterDemote::decode(body)
            .ok()
            .map(|r| format!("cluster (demote to follow master {})", r.master)),
        _ => None,
    };
    if let Some(named) = named {
        return named;
    }
    match needs.first().map(|n| &n.target) {
        Some(Target::Topic(name)) => format!("topic:{name}"),
        Some(Target::Group(name)) => format!("group:{name}"),
        Some(Target::Cluster) => "cluster".to_string(),
        None => "unknown (the request did not decode)".to_string(),
    }
}

/// Writes the audit line of an admin call answered with `status`.
pub fn audit<D: Disk>(shard: &Shard<D>, audited: &Audited, caller: Caller<'_>, status: Status) {
    let result = match status {
        Status::Ok => "ok",
        _ => "refused",
    };
    let line = AuditLine {
        time_ms: audit::time_ms(),
        principal: caller.name(),
        peer: caller.peer,
        operation: audited.operation.name(),
        target: &audited.target,
        result,
        status: status.name(),
    };
    let dropped = audit::record(&line);
    if dropped > 0 {
        shard.probe().add(Counter::AuditLinesDropped, dropped);
    }
}

/// A rule from an `AclAdd`/`AclRemove` body's texts; a bad part is `BAD_REQUEST` naming it.
fn rule_of(
    principal: &str,
    operation: &str,
    resource: &str,
    effect: &str,
) -> Result<Rule, ShardError> {
    Rule::parse(principal, operation, resource, effect).map_err(ShardError::Refused)
}

pub async fn add<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = AclAdd::decode(raw)?;
    let rule = rule_of(
        &request.principal,
        &request.operation,
        &request.resource,
        &request.effect,
    )?;
    let described = rule.to_string();
    change(shard, Opcode::AclAdd, raw, &described, |table| {
        table.with_rule(rule.clone()).map_err(ShardError::Refused)
    })
    .await
}

pub async fn remove<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = AclRemove::decode(raw)?;
    let rule = rule_of(
        &request.principal,
        &request.operation,
        &request.resource,
        &request.effect,
    )?;
    let described = rule.to_string();
    change(shard, Opcode::AclRemove, raw, &described, |table| {
        Ok(table.without_rule(&rule))
    })
    .await
}

/// Runs an ACL change: refused on a slave (it copies its master's rules), forwarded to shard
/// 0, then there under the metadata gate: `edit` makes the new table (`None`: nothing to
/// change, answered OK: adding a rule held, removing one not held), which is written and
/// handed to every shard before the answer.
async fn change<D: Disk>(
    shard: &Rc<Shard<D>>,
    opcode: Opcode,
    raw: &[u8],
    rule: &str,
    edit: impl FnOnce(&AclTable) -> Result<Option<AclTable>, ShardError>,
) -> Result<Reply, ShardError> {
    if !shard.is_master() {
        return Err(ShardError::NotMaster(
            "ACLs are changed on the master; this slave copies them".to_string(),
        ));
    }
    if shard.id() != METADATA_SHARD {
        return Ok(shard.forward(METADATA_SHARD, opcode, raw.to_vec()).await);
    }
    let _gate = shard.metadata().lock().await;
    if let Some(table) = edit(&shard.acls())? {
        let rules = table.rules.len();
        publish(shard, table).await?;
        info!(rules, "ACL rules changed ({}: {rule})", opcode.name());
    }
    Ok(Reply::ok(Vec::new()))
}

/// Makes a new rule table durable, then hands it to every shard (this one last). Also the
/// path of a slave's shard 0 taking its master's rules.
pub async fn publish<D: Disk>(shard: &Rc<Shard<D>>, table: AclTable) -> Result<(), ShardError> {
    let path = acls_path(&shard.config().store_dir);
    shard
        .disk()
        .write_atomic(&path, table.to_json())
        .await
        .map_err(|e| ShardError::Metadata(format!("{}: {e}", path.display())))?;
    let table = Arc::new(table);
    shard
        .ask_others(|reply| ShardRequest::ApplyAcls {
            table: table.clone(),
            reply,
        })
        .await?;
    shard.metadata().set_acls(table);
    Ok(())
}

/// Takes shard 0's new table (`ShardRequest::ApplyAcls`).
pub fn apply<D: Disk>(shard: &Shard<D>, table: Arc<AclTable>, reply: oneshot::Sender<()>) {
    shard.metadata().set_acls(table);
    let _ = reply.send(());
}

pub fn list<D: Disk>(shard: &Shard<D>) -> Result<Reply, ShardError> {
    let list = AclList {
        authorization: shard.config().authorization.name().to_string(),
        rules: shard.acls().entries(),
    };
    Ok(Reply::ok(
        serde_json::to_vec(&list).expect("an ACL list serializes"),
    ))
}
