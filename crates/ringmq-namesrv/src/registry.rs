//! The route registry: every broker's last accepted registration, the epoch rule that decides
//! a group's master, expiry, and the route listing. Pure: no I/O and no clock of its own (every
//! call is given `now_ms`, a monotonic millisecond count), so it is tested here without a
//! server or a real wait.
//!
//! Layout: cluster -> group (`broker_name`) -> broker id -> entry. Each group also keeps the
//! highest master epoch it has accepted and from which broker id (its `master_mark`); it
//! outlives the master's entry (expiry, unregister), so a stale master that outlives its
//! successor cannot take the group back with its old epoch. A group with no live broker keeps
//! its mark for the retention (`--group-epoch-retention-ms`, measured from its last live
//! broker), then is forgotten. Invariant: a group lists at most one broker with a master role,
//! and that broker holds the group's mark ([`Registry::check_invariant`], asserted after every
//! change in debug builds).
//!
//! Slaves' epochs decide nothing: a slave registering an epoch above the listed master's only
//! says it follows a newer master, and that master registers itself within one heartbeat; the
//! listed one meanwhile answers produces `NOT_MASTER` with the newer master's address. Only a
//! master claim (`cluster promote` in master/slave mode) changes a group's master.

use crate::bounds::{MAX_BROKERS, MAX_GROUPS, MAX_REGISTERED_BYTES, MAX_REGISTRATION_BYTES};
use ringmq_protocol::namesrv::{
    is_master_role, BrokerRegister, BrokerRoute, RegisterResult, Routes,
};
use std::collections::{BTreeMap, HashSet};

/// The roles a broker may register with.
pub const ROLES: [&str; 4] = ["SYNC_MASTER", "ASYNC_MASTER", "SLAVE", "FENCED"];

/// The flush modes a broker may register with (`FlushDiskType` names).
pub const FLUSH_DISK_TYPES: [&str; 2] = ["SYNC_FLUSH", "ASYNC_FLUSH"];

/// How long a group with no live broker keeps its highest epoch by default: far longer than
/// any restart or failover takes, so a stale master outliving its successor's expiry cannot
/// take the group back, yet finite, so a group whose stores were wiped is not stuck forever.
pub const DEFAULT_GROUP_EPOCH_RETENTION_MS: u64 = 10 * 60 * 1000;

/// Why a registration was not taken (answered `BAD_REQUEST` or `SYSTEM_BUSY`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The registration breaks a rule of its layout (the message names the field).
    Invalid(String),
    /// The registry holds as many brokers, groups or bytes as it may.
    Full(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Invalid(m) | RegistryError::Full(m) => f.write_str(m),
        }
    }
}

struct Entry {
    registration: BrokerRegister,
    /// Its encoded size, counted against [`MAX_REGISTERED_BYTES`].
    bytes: usize,
    last_seen_ms: u64,
}

#[derive(Default)]
struct Group {
    brokers: BTreeMap<u64, Entry>,
    /// The highest master epoch this group accepted, and the broker id that claimed it.
    master_mark: Option<(u32, u64)>,
    /// When the group last had a live broker: the latest registration or unregister of any of
    /// its brokers. With no broker left, the group (and its mark) is forgotten once this is
    /// older than the retention.
    last_live_ms: u64,
}

impl Group {
    fn master(&self) -> Option<&BrokerRegister> {
        self.brokers
            .values()
            .map(|e| &e.registration)
            .find(|r| is_master_role(&r.role))
    }

    fn result(&self, accepted: bool, expiry_ms: u64) -> RegisterResult {
        let master = self.master();
        RegisterResult {
            accepted: u8::from(accepted),
            master_listen: master.map(|m| m.listen.clone()).unwrap_or_default(),
            master_ha_listen: master.map(|m| m.ha_listen.clone()).unwrap_or_default(),
            master_broker_id: master.map_or(0, |m| m.broker_id),
            master_epoch: master.map_or(0, |m| m.epoch),
            expiry_ms: expiry_ms.min(u64::from(u32::MAX)) as u32,
            group_epoch: self.master_mark.map_or(0, |(epoch, _)| epoch),
            group_epoch_broker_id: self.master_mark.map_or(0, |(_, id)| id),
        }
    }

    /// The epoch rule for broker `id` claiming master at `epoch`: refused below the mark, or
    /// at it from another broker id. Taken, the claim becomes the mark and every other master
    /// entry (a lower epoch) steps down from the listing: at most one master per group.
    fn claim_master(&mut self, id: u64, epoch: u32) -> bool {
        if let Some((mark, holder)) = self.master_mark {
            if epoch < mark || (epoch == mark && holder != id) {
                return false;
            }
        }
        self.master_mark = Some((epoch, id));
        self.brokers
            .retain(|other, e| *other == id || !is_master_role(&e.registration.role));
        true
    }

    /// Whether the group may be forgotten at `now_ms`: no live broker, and either nothing to
    /// protect (no mark) or no live broker for the whole retention.
    fn forgettable(&self, now_ms: u64, retention_ms: u64) -> bool {
        self.brokers.is_empty()
            && (self.master_mark.is_none()
                || now_ms.saturating_sub(self.last_live_ms) >= retention_ms)
    }
}

/// The registry's bounds (the constants in [`crate::bounds`] by default; tests use small
/// ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub brokers: usize,
    pub groups: usize,
    pub registered_bytes: usize,
    pub registration_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            brokers: MAX_BROKERS,
            groups: MAX_GROUPS,
            registered_bytes: MAX_REGISTERED_BYTES,
            registration_bytes: MAX_REGISTRATION_BYTES,
        }
    }
}

/// See the module documentation.
pub struct Registry {
    expiry_ms: u64,
    retention_ms: u64,
    limits: Limits,
    clusters: BTreeMap<String, BTreeMap<String, Group>>,
}

impl Registry {
    /// A registry that drops a broker not heard from for `expiry_ms`, and forgets a group's
    /// highest epoch after [`DEFAULT_GROUP_EPOCH_RETENTION_MS`] without a live broker.
    pub fn new(expiry_ms: u64) -> Self {
        Self::with_limits(
            expiry_ms,
            DEFAULT_GROUP_EPOCH_RETENTION_MS,
            Limits::default(),
        )
    }

    pub fn with_limits(expiry_ms: u64, retention_ms: u64, limits: Limits) -> Self {
        Registry {
            expiry_ms,
            retention_ms,
            limits,
            clusters: BTreeMap::new(),
        }
    }

    pub fn expiry_ms(&self) -> u64 {
        self.expiry_ms
    }

    /// Live brokers (after the last expiry pass).
    pub fn broker_count(&self) -> usize {
        self.entries().count()
    }

    /// Groups kept, with or without live brokers.
    pub fn group_count(&self) -> usize {
        self.clusters.values().map(|c| c.len()).sum()
    }

    /// Encoded bytes of all kept registrations: about the size of a `Routes` answer listing
    /// everything.
    pub fn registered_bytes(&self) -> usize {
        self.entries().map(|(_, e)| e.bytes).sum()
    }

    fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.clusters
            .values()
            .flat_map(|c| c.values())
            .flat_map(|g| g.brokers.iter().map(|(id, e)| (*id, e)))
    }

    /// Takes one broker's registration (or heartbeat) at `now_ms`. A registration older than
    /// the one held for that broker (by `sequence`) is ignored. A master claim the epoch rule
    /// refuses (see [`Group::claim_master`]) is answered `accepted = 0` and the broker's entry
    /// removed. Either way the answer names the group's master and mark afterwards.
    pub fn register(
        &mut self,
        registration: BrokerRegister,
        now_ms: u64,
    ) -> Result<RegisterResult, RegistryError> {
        validate(&registration)?;
        self.expire(now_ms);
        let size = encoded_len(&registration);
        self.check_room(&registration, size)?;
        let expiry_ms = self.expiry_ms;
        let id = registration.broker_id;
        let group = self
            .clusters
            .entry(registration.cluster_name.clone())
            .or_default()
            .entry(registration.broker_name.clone())
            .or_default();
        if group
            .brokers
            .get(&id)
            .is_some_and(|e| is_out_of_order(&e.registration, &registration))
        {
            // An older registration of this broker arriving after a newer one (resent after
            // a timeout, or overtaken on another connection): the newer one stands, and so
            // does its expiry clock (this one was sent before it).
            return Ok(group.result(true, expiry_ms));
        }
        let accepted =
            !is_master_role(&registration.role) || group.claim_master(id, registration.epoch);
        group.last_live_ms = now_ms;
        if accepted {
            group.brokers.insert(
                id,
                Entry {
                    registration,
                    bytes: size,
                    last_seen_ms: now_ms,
                },
            );
        } else {
            // Its older entry (a slave, say) no longer describes it.
            group.brokers.remove(&id);
        }
        let result = group.result(accepted, expiry_ms);
        self.debug_check();
        Ok(result)
    }

    /// Fails when taking a registration of `size` bytes would pass a bound; this broker's own
    /// earlier entry is replaced, so it does not count.
    fn check_room(&self, registration: &BrokerRegister, size: usize) -> Result<(), RegistryError> {
        let limits = self.limits;
        let (cluster_name, group_name, id) = (
            &registration.cluster_name,
            &registration.broker_name,
            registration.broker_id,
        );
        if size > limits.registration_bytes {
            return Err(RegistryError::Invalid(format!(
                "registration of {cluster_name}/{group_name} broker {id} is {size} bytes; the name server takes at most {}",
                limits.registration_bytes
            )));
        }
        let group = self
            .clusters
            .get(cluster_name)
            .and_then(|c| c.get(group_name));
        if group.is_none() && self.group_count() >= limits.groups {
            return Err(RegistryError::Full(format!(
                "the name server keeps at most {} broker groups (a group without brokers is kept for its epoch); {cluster_name}/{group_name} not registered",
                limits.groups
            )));
        }
        let replaced = group
            .and_then(|g| g.brokers.get(&id))
            .map_or(0, |e| e.bytes);
        let brokers = self.broker_count() - usize::from(replaced > 0);
        let bytes = self.registered_bytes() - replaced;
        if brokers >= limits.brokers || bytes + size > limits.registered_bytes {
            return Err(RegistryError::Full(format!(
                "the name server keeps at most {} brokers and {} bytes of registrations; {cluster_name}/{group_name} broker {id} not registered",
                limits.brokers, limits.registered_bytes
            )));
        }
        Ok(())
    }

    /// Removes one broker at once; whether it was listed. The group keeps its mark for the
    /// retention.
    pub fn unregister(
        &mut self,
        cluster_name: &str,
        broker_name: &str,
        broker_id: u64,
        now_ms: u64,
    ) -> bool {
        let Some(group) = self
            .clusters
            .get_mut(cluster_name)
            .and_then(|c| c.get_mut(broker_name))
        else {
            return false;
        };
        let removed = group.brokers.remove(&broker_id).is_some();
        if removed {
            group.last_live_ms = now_ms;
        }
        self.debug_check();
        removed
    }

    /// Drops every broker not heard from for `expiry_ms` before `now_ms`, then every group
    /// [`Group::forgettable`] at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let (expiry_ms, retention_ms) = (self.expiry_ms, self.retention_ms);
        for groups in self.clusters.values_mut() {
            for group in groups.values_mut() {
                group
                    .brokers
                    .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < expiry_ms);
            }
            groups.retain(|_, g| !g.forgettable(now_ms, retention_ms));
        }
        self.clusters.retain(|_, groups| !groups.is_empty());
        self.debug_check();
    }

    /// Every live broker of `cluster_name` (empty: of every cluster), ordered by cluster,
    /// group and broker id, with the age of its last registration.
    pub fn routes(&mut self, cluster_name: &str, now_ms: u64) -> Routes {
        self.expire(now_ms);
        let brokers = self
            .live(cluster_name)
            .map(|e| BrokerRoute {
                broker: e.registration.clone(),
                last_heartbeat_ms_ago: now_ms.saturating_sub(e.last_seen_ms),
            })
            .collect();
        Routes { brokers }
    }

    /// The `Routes` answer [`Registry::routes`] would give, encoded straight into `out`
    /// without copying any registration first (a route query of a full registry would
    /// otherwise clone tens of MiB, then encode them).
    pub fn encode_routes(&mut self, cluster_name: &str, now_ms: u64, out: &mut Vec<u8>) {
        self.expire(now_ms);
        let count = self.live(cluster_name).count();
        // The list's count as the codec writes it (u32 little-endian); bounded by MAX_BROKERS.
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for entry in self.live(cluster_name) {
            entry.registration.encode(out);
            out.extend_from_slice(&now_ms.saturating_sub(entry.last_seen_ms).to_le_bytes());
        }
    }

    fn live<'a>(&'a self, cluster_name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.clusters
            .iter()
            .filter(move |(name, _)| cluster_name.is_empty() || name.as_str() == cluster_name)
            .flat_map(|(_, groups)| groups.values())
            .flat_map(|g| g.brokers.values())
    }

    /// The invariant (module documentation), checked after every change in debug builds.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            if let Err(e) = self.check_invariant() {
                panic!("registry invariant broken: {e}");
            }
        }
    }

    /// Every group lists at most one master, and that master holds the group's mark.
    pub fn check_invariant(&self) -> Result<(), String> {
        for (cluster, groups) in &self.clusters {
            for (name, group) in groups {
                let masters: Vec<&BrokerRegister> = group
                    .brokers
                    .values()
                    .map(|e| &e.registration)
                    .filter(|r| is_master_role(&r.role))
                    .collect();
                match masters.as_slice() {
                    [] => {}
                    [m] if group.master_mark == Some((m.epoch, m.broker_id)) => {}
                    [m] => {
                        return Err(format!(
                            "{cluster}/{name}: master {} at epoch {} does not hold the mark {:?}",
                            m.broker_id, m.epoch, group.master_mark
                        ))
                    }
                    _ => return Err(format!("{cluster}/{name}: {} masters", masters.len())),
                }
            }
        }
        Ok(())
    }
}

/// Whether `incoming` is older than `stored`, this broker's registration that the registry
/// holds: both sequenced (non-zero) and `incoming`'s sequence not above it. A sequence of 0
/// (a broker that does not sequence) is always applied.
fn is_out_of_order(stored: &BrokerRegister, incoming: &BrokerRegister) -> bool {
    incoming.sequence != 0 && stored.sequence != 0 && incoming.sequence <= stored.sequence
}

fn encoded_len(registration: &BrokerRegister) -> usize {
    let mut out = Vec::new();
    registration.encode(&mut out);
    out.len()
}

/// The rules of a registration beyond its layout. The name server trusts its network: these
/// catch a broken or confused broker, not an attacker (security issue 13 adds
/// authentication).
fn validate(r: &BrokerRegister) -> Result<(), RegistryError> {
    let invalid = |m: String| Err(RegistryError::Invalid(m));
    if r.cluster_name.is_empty() || r.broker_name.is_empty() {
        return invalid("cluster_name and broker_name must not be empty".into());
    }
    if r.broker_id == 0 {
        return invalid("broker_id must not be 0".into());
    }
    if !ROLES.contains(&r.role.as_str()) {
        return invalid(format!(
            "role {:?} is not one of {}",
            r.role,
            ROLES.join(", ")
        ));
    }
    if !FLUSH_DISK_TYPES.contains(&r.flush_disk_type.as_str()) {
        return invalid(format!(
            "flush_disk_type {:?} is not one of {}",
            r.flush_disk_type,
            FLUSH_DISK_TYPES.join(", ")
        ));
    }
    if !is_host_port(&r.listen) {
        return invalid(format!(
            "listen {:?} is not HOST:PORT with a host clients can reach (not 0.0.0.0 or [::]: set advertised_listen)",
            r.listen
        ));
    }
    if !r.ha_listen.is_empty() && !is_host_port(&r.ha_listen) {
        return invalid(format!(
            "ha_listen {:?} is not HOST:PORT with a reachable host (or empty)",
            r.ha_listen
        ));
    }
    if let Some(n) = r.shard_ports.iter().position(|p| *p == 0) {
        return invalid(format!("shard_ports[{n}] is 0"));
    }
    let mut names = HashSet::new();
    for topic in &r.topics {
        if !names.insert(topic.name.as_str()) {
            return invalid(format!("topics: {:?} is listed twice", topic.name));
        }
        if let Some(q) = topic
            .queue_shards
            .iter()
            .position(|s| usize::from(*s) >= r.shard_ports.len())
        {
            return invalid(format!(
                "topics: {:?} queue {q} is on shard {}, but shard_ports lists {} shards",
                topic.name,
                topic.queue_shards[q],
                r.shard_ports.len()
            ));
        }
    }
    Ok(())
}

/// `HOST:PORT` with a non-zero port and a host a client can connect to: not the unspecified
/// address (a broker bound to every interface must advertise one of them).
fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            let unspecified = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            !host.is_empty() && !unspecified && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_protocol::message::TopicInfo;

    const EXPIRY: u64 = 1000;
    const RETENTION: u64 = 60_000;

    fn reg(cluster: &str, group: &str, id: u64, role: &str, epoch: u32) -> BrokerRegister {
        BrokerRegister {
            cluster_name: cluster.into(),
            broker_name: group.into(),
            broker_id: id,
            role: role.into(),
            epoch,
            flush_disk_type: "SYNC_FLUSH".into(),
            listen: format!("127.0.0.1:{}", 10000 + id),
            ha_listen: format!("127.0.0.1:{}", 20000 + id),
            shard_ports: vec![],
            topics: vec![],
            shards: vec![],
            sequence: 0,
            signed_at_ms: 0,
            signature: vec![],
        }
    }

    fn topic(name: &str, queue_shards: &[u16]) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            topic_id: 1,
            queue_shards: queue_shards.to_vec(),
        }
    }

    /// (broker id, role, epoch) of every listed broker, in listing order.
    fn listed(registry: &mut Registry, cluster: &str, now: u64) -> Vec<(u64, String, u32)> {
        registry
            .routes(cluster, now)
            .brokers
            .into_iter()
            .map(|b| (b.broker.broker_id, b.broker.role, b.broker.epoch))
            .collect()
    }

    #[test]
    fn a_demoted_master_never_replaces_its_successor() {
        let mut r = Registry::new(EXPIRY);
        assert!(r
            .register(reg("c", "a", 1, "SYNC_MASTER", 1), 0)
            .unwrap()
            .is_accepted());
        assert!(r
            .register(reg("c", "a", 2, "SLAVE", 1), 0)
            .unwrap()
            .is_accepted());
        // Broker 2 is promoted (epoch 2): broker 1's entry steps down from the listing.
        let promoted = r.register(reg("c", "a", 2, "SYNC_MASTER", 2), 10).unwrap();
        assert!(promoted.is_accepted());
        assert_eq!((promoted.master_broker_id, promoted.master_epoch), (2, 2));
        assert_eq!(listed(&mut r, "", 10), vec![(2, "SYNC_MASTER".into(), 2)]);
        // The old master heartbeats before it learns it was replaced: refused, not listed,
        // and told who the master is.
        let stale = r.register(reg("c", "a", 1, "SYNC_MASTER", 1), 20).unwrap();
        assert!(!stale.is_accepted());
        assert_eq!(stale.master_listen, "127.0.0.1:10002");
        assert_eq!(stale.master_ha_listen, "127.0.0.1:20002");
        assert_eq!((stale.master_broker_id, stale.master_epoch), (2, 2));
        assert_eq!(listed(&mut r, "", 20), vec![(2, "SYNC_MASTER".into(), 2)]);
        // Even after the successor expires, the old epoch cannot take the group back.
        let later = 10 + EXPIRY + 1;
        let stale = r
            .register(reg("c", "a", 1, "ASYNC_MASTER", 1), later)
            .unwrap();
        assert!(!stale.is_accepted());
        assert_eq!(stale.master_listen, "");
        // No master is listed, but the answer says what the claim lost to.
        assert_eq!((stale.group_epoch, stale.group_epoch_broker_id), (2, 2));
        assert!(listed(&mut r, "", later).is_empty());
        // Demoted for real, it registers as a slave and is listed again.
        assert!(r
            .register(reg("c", "a", 1, "SLAVE", 2), later)
            .unwrap()
            .is_accepted());
        // A higher epoch from it wins again (promoted back).
        let back = r
            .register(reg("c", "a", 1, "SYNC_MASTER", 3), later)
            .unwrap();
        assert!(back.is_accepted());
        assert_eq!((back.master_broker_id, back.master_epoch), (1, 3));
    }

    #[test]
    fn a_late_registration_never_undoes_a_newer_one() {
        let mut r = Registry::new(EXPIRY);
        let sequenced = |role: &str, epoch: u32, sequence: u64| BrokerRegister {
            sequence,
            ..reg("c", "a", 1, role, epoch)
        };
        assert!(r
            .register(sequenced("SYNC_MASTER", 1, 10), 0)
            .unwrap()
            .is_accepted());
        // Demoted (sequence 11), then its earlier master registration arrives late (10, then
        // a resend of 11's predecessor): both are ignored, the slave entry stands.
        r.register(sequenced("SLAVE", 1, 11), 100).unwrap();
        for late in [10, 11] {
            let answer = r.register(sequenced("SYNC_MASTER", 1, late), 200).unwrap();
            assert_eq!(answer.master_listen, "", "sequence {late}");
            assert_eq!(listed(&mut r, "", 200), vec![(1, "SLAVE".into(), 1)]);
        }
        // The ignored ones did not refresh the entry: it expires on the slave's clock.
        assert!(listed(&mut r, "", 100 + EXPIRY).is_empty());
        // A restarted broker's sequence is larger (boot-time based): applied.
        assert!(r
            .register(sequenced("SYNC_MASTER", 1, 1_000), 2000)
            .unwrap()
            .is_accepted());
        assert!(r
            .register(sequenced("SLAVE", 1, 1_001), 2001)
            .unwrap()
            .is_accepted());
        // Sequence 0 (a broker that does not sequence) is applied in arrival order.
        r.register(sequenced("SYNC_MASTER", 2, 0), 2002).unwrap();
        assert_eq!(listed(&mut r, "", 2002), vec![(1, "SYNC_MASTER".into(), 2)]);
        r.register(sequenced("SLAVE", 2, 0), 2003).unwrap();
        assert_eq!(listed(&mut r, "", 2003), vec![(1, "SLAVE".into(), 2)]);
    }

    #[test]
    fn same_epoch_from_another_broker_is_refused_and_the_same_broker_is_taken() {
        let mut r = Registry::new(EXPIRY);
        assert!(r
            .register(reg("c", "a", 1, "SYNC_MASTER", 5), 0)
            .unwrap()
            .is_accepted());
        let other = r.register(reg("c", "a", 2, "SYNC_MASTER", 5), 1).unwrap();
        assert!(!other.is_accepted());
        assert_eq!(other.master_broker_id, 1);
        // The same broker at the same epoch (a heartbeat, a restart): the newer one counts.
        let mut again = reg("c", "a", 1, "ASYNC_MASTER", 5);
        again.listen = "10.0.0.9:1234".into();
        let result = r.register(again, 2).unwrap();
        assert!(result.is_accepted());
        assert_eq!(result.master_listen, "10.0.0.9:1234");
        assert_eq!(listed(&mut r, "", 2), vec![(1, "ASYNC_MASTER".into(), 5)]);
        assert_eq!(r.broker_count(), 1);
    }

    #[test]
    fn a_refused_claim_removes_that_brokers_older_entry() {
        let mut r = Registry::new(EXPIRY);
        r.register(reg("c", "a", 1, "SYNC_MASTER", 2), 0).unwrap();
        r.register(reg("c", "a", 2, "SLAVE", 2), 0).unwrap();
        // Broker 2 claims master at a stale epoch: its slave entry no longer describes it.
        assert!(!r
            .register(reg("c", "a", 2, "SYNC_MASTER", 1), 1)
            .unwrap()
            .is_accepted());
        assert_eq!(listed(&mut r, "", 1), vec![(1, "SYNC_MASTER".into(), 2)]);
        assert_eq!(r.broker_count(), 1);
    }

    #[test]
    fn a_silent_broker_expires_and_a_heartbeat_keeps_it() {
        let mut r = Registry::new(EXPIRY);
        r.register(reg("c", "a", 1, "SYNC_MASTER", 1), 0).unwrap();
        r.register(reg("c", "a", 2, "SLAVE", 1), 0).unwrap();
        // Broker 1 heartbeats at 600; broker 2 stays silent.
        r.register(reg("c", "a", 1, "SYNC_MASTER", 1), 600).unwrap();
        let routes = r.routes("", 999);
        assert_eq!(routes.brokers.len(), 2);
        assert_eq!(routes.brokers[0].last_heartbeat_ms_ago, 399);
        assert_eq!(routes.brokers[1].last_heartbeat_ms_ago, 999);
        assert_eq!(
            listed(&mut r, "", EXPIRY),
            vec![(1, "SYNC_MASTER".into(), 1)]
        );
        assert_eq!(r.broker_count(), 1);
        assert!(listed(&mut r, "", 600 + EXPIRY).is_empty());
        assert_eq!(r.broker_count(), 0);
        // The expired master comes back with the same id and epoch: taken.
        assert!(r
            .register(reg("c", "a", 1, "SYNC_MASTER", 1), 5000)
            .unwrap()
            .is_accepted());
    }

    #[test]
    fn unregister_drops_at_once_and_keeps_the_mark() {
        let mut r = Registry::new(EXPIRY);
        r.register(reg("c", "a", 1, "SYNC_MASTER", 4), 0).unwrap();
        r.register(reg("c", "a", 2, "SLAVE", 4), 0).unwrap();
        assert!(r.unregister("c", "a", 1, 1));
        assert!(!r.unregister("c", "a", 1, 1), "already gone");
        assert!(!r.unregister("c", "nosuch", 2, 1));
        assert_eq!(listed(&mut r, "", 1), vec![(2, "SLAVE".into(), 4)]);
        // A master claim below the mark is still refused after its holder left.
        assert!(!r
            .register(reg("c", "a", 3, "SYNC_MASTER", 3), 2)
            .unwrap()
            .is_accepted());
        assert!(r
            .register(reg("c", "a", 2, "SYNC_MASTER", 5), 2)
            .unwrap()
            .is_accepted());
    }

    #[test]
    fn clusters_and_groups_are_separate() {
        let mut r = Registry::new(EXPIRY);
        r.register(reg("prod", "b", 3, "SYNC_MASTER", 1), 0)
            .unwrap();
        r.register(reg("prod", "a", 1, "SYNC_MASTER", 7), 0)
            .unwrap();
        // Same group name, another cluster: its own epochs.
        assert!(r
            .register(reg("test", "a", 9, "ASYNC_MASTER", 1), 0)
            .unwrap()
            .is_accepted());
        r.register(reg("prod", "a", 2, "SLAVE", 7), 0).unwrap();
        let ids = |routes: Routes| -> Vec<(String, String, u64)> {
            routes
                .brokers
                .into_iter()
                .map(|b| {
                    (
                        b.broker.cluster_name,
                        b.broker.broker_name,
                        b.broker.broker_id,
                    )
                })
                .collect()
        };
        assert_eq!(
            ids(r.routes("", 1)),
            vec![
                ("prod".into(), "a".into(), 1),
                ("prod".into(), "a".into(), 2),
                ("prod".into(), "b".into(), 3),
                ("test".into(), "a".into(), 9),
            ]
        );
        assert_eq!(
            ids(r.routes("test", 1)),
            vec![("test".into(), "a".into(), 9)]
        );
        assert!(r.routes("nosuch", 1).brokers.is_empty());
    }

    #[test]
    fn bad_registrations_are_refused_with_the_field_named() {
        let mut r = Registry::new(EXPIRY);
        let cases = [
            (reg("c", "a", 0, "SLAVE", 1), "broker_id"),
            (reg("", "a", 1, "SLAVE", 1), "cluster_name"),
            (reg("c", "a", 1, "LEADER", 1), "role"),
            (
                BrokerRegister {
                    listen: "nohost".into(),
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "listen",
            ),
            (
                BrokerRegister {
                    ha_listen: "h:x".into(),
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "ha_listen",
            ),
            (
                BrokerRegister {
                    listen: "0.0.0.0:9000".into(),
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "listen",
            ),
            (
                BrokerRegister {
                    ha_listen: "[::]:9100".into(),
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "ha_listen",
            ),
            (
                BrokerRegister {
                    flush_disk_type: "SOMETIMES".into(),
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "flush_disk_type",
            ),
            (
                BrokerRegister {
                    shard_ports: vec![9000, 0],
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "shard_ports[1]",
            ),
            (
                BrokerRegister {
                    shard_ports: vec![9000],
                    topics: vec![topic("t", &[0, 1])],
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "queue 1 is on shard 1",
            ),
            (
                BrokerRegister {
                    shard_ports: vec![9000],
                    topics: vec![topic("t", &[0]), topic("t", &[0])],
                    ..reg("c", "a", 1, "SLAVE", 1)
                },
                "listed twice",
            ),
        ];
        for (registration, field) in cases {
            match r.register(registration, 0) {
                Err(RegistryError::Invalid(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(r.broker_count(), 0);
        let ipv6 = BrokerRegister {
            listen: "[::1]:9000".into(),
            shard_ports: vec![9000, 9001],
            topics: vec![topic("t", &[0, 1]), topic("u", &[1])],
            ..reg("c", "a", 1, "SLAVE", 1)
        };
        assert!(r.register(ipv6, 0).is_ok());
        let no_ha = BrokerRegister {
            ha_listen: String::new(),
            ..reg("c", "a", 1, "SLAVE", 1)
        };
        assert!(r.register(no_ha, 0).is_ok());
    }

    fn small(brokers: usize, groups: usize, registered_bytes: usize) -> Registry {
        Registry::with_limits(
            EXPIRY,
            RETENTION,
            Limits {
                brokers,
                groups,
                registered_bytes,
                registration_bytes: MAX_REGISTRATION_BYTES,
            },
        )
    }

    #[test]
    fn the_broker_bound_holds_and_expiry_frees_room() {
        let mut r = small(8, 8, usize::MAX);
        for id in 1..=8 {
            r.register(reg("c", "g", id, "SLAVE", 1), 0).unwrap();
        }
        assert!(matches!(
            r.register(reg("c", "g", 9, "SLAVE", 1), 1),
            Err(RegistryError::Full(_))
        ));
        // A known broker's heartbeat is still taken at the bound; once the silent ones
        // expire there is room again.
        assert!(r.register(reg("c", "g", 1, "SLAVE", 1), 1).is_ok());
        assert!(r.register(reg("c", "g", 9, "SLAVE", 1), EXPIRY).is_ok());
        assert_eq!(r.broker_count(), 2);
    }

    #[test]
    fn the_byte_bound_counts_a_replaced_registration_once() {
        let one = encoded_len(&reg("c", "g", 1, "SLAVE", 1));
        let mut r = small(100, 100, 2 * one);
        r.register(reg("c", "g", 1, "SLAVE", 1), 0).unwrap();
        r.register(reg("c", "g", 2, "SLAVE", 1), 0).unwrap();
        assert!(matches!(
            r.register(reg("c", "g", 3, "SLAVE", 1), 0),
            Err(RegistryError::Full(_))
        ));
        assert!(r.register(reg("c", "g", 2, "SLAVE", 1), 1).is_ok());
    }

    #[test]
    fn a_full_group_table_refuses_new_groups_and_keeps_every_epoch() {
        let mut r = small(100, 4, usize::MAX);
        for g in 0..4 {
            r.register(reg("c", &format!("g{g}"), 1, "SYNC_MASTER", 5), 0)
                .unwrap();
        }
        assert!(matches!(
            r.register(reg("c", "new", 1, "SLAVE", 1), 1),
            Err(RegistryError::Full(_))
        ));
        // g0's master leaves: its group stays for its epoch, so the table is still full and
        // a stale claim on g0 is still refused.
        r.unregister("c", "g0", 1, 1);
        assert!(matches!(
            r.register(reg("c", "new", 1, "SLAVE", 1), 2),
            Err(RegistryError::Full(_))
        ));
        assert!(!r
            .register(reg("c", "g0", 9, "SYNC_MASTER", 4), 3)
            .unwrap()
            .is_accepted());
        // Once the retention passed with no live broker in g0 it is forgotten: room again,
        // and g0 starts afresh.
        let later = 3 + RETENTION;
        for g in 1..4 {
            r.register(reg("c", &format!("g{g}"), 1, "SYNC_MASTER", 5), later)
                .unwrap();
        }
        assert!(r.register(reg("c", "new", 1, "SLAVE", 1), later).is_ok());
        assert_eq!(r.group_count(), 4);
    }

    #[test]
    fn a_groups_epoch_is_kept_for_the_retention_then_forgotten() {
        let mut r = small(100, 100, usize::MAX);
        r.register(reg("c", "a", 1, "SYNC_MASTER", 7), 0).unwrap();
        // The master expires at EXPIRY; its epoch is kept until RETENTION after it was last
        // heard from, and a refused claim meanwhile keeps the group alive as well.
        let refused = r
            .register(reg("c", "a", 2, "SYNC_MASTER", 3), EXPIRY)
            .unwrap();
        assert!(!refused.is_accepted());
        assert_eq!((refused.group_epoch, refused.group_epoch_broker_id), (7, 1));
        assert!(!r
            .register(reg("c", "a", 2, "SYNC_MASTER", 3), EXPIRY + RETENTION - 1)
            .unwrap()
            .is_accepted());
        // Silent for the whole retention (a wiped store would be): forgotten, and a fresh
        // start at a low epoch is taken.
        let later = EXPIRY + RETENTION - 1 + RETENTION;
        r.expire(later);
        assert_eq!(r.group_count(), 0);
        let fresh = r
            .register(reg("c", "a", 2, "SYNC_MASTER", 1), later)
            .unwrap();
        assert!(fresh.is_accepted());
        assert_eq!((fresh.group_epoch, fresh.group_epoch_broker_id), (1, 2));
    }

    #[test]
    fn a_group_with_nothing_to_protect_is_forgotten_at_once() {
        let mut r = small(100, 1, usize::MAX);
        r.register(reg("c", "slaves", 1, "SLAVE", 1), 0).unwrap();
        r.unregister("c", "slaves", 1, 1);
        assert!(r.register(reg("c", "other", 2, "SLAVE", 1), 2).is_ok());
    }

    #[test]
    fn routes_encode_straight_into_the_buffer_as_the_routes_body() {
        let mut r = Registry::new(EXPIRY);
        r.register(reg("c", "a", 1, "SYNC_MASTER", 1), 0).unwrap();
        r.register(reg("c", "a", 2, "SLAVE", 1), 5).unwrap();
        r.register(reg("d", "b", 3, "SLAVE", 1), 5).unwrap();
        for cluster in ["", "c", "d", "none"] {
            let mut direct = vec![0xAA];
            r.encode_routes(cluster, 9, &mut direct);
            let mut cloned = vec![0xAA];
            r.routes(cluster, 9).encode(&mut cloned);
            assert_eq!(direct, cloned, "{cluster:?}");
        }
    }

    #[test]
    fn a_registration_over_its_cap_is_refused() {
        let mut r = Registry::with_limits(
            EXPIRY,
            RETENTION,
            Limits {
                registration_bytes: 100,
                ..Limits::default()
            },
        );
        let mut big = reg("c", "a", 1, "SLAVE", 1);
        big.shard_ports = vec![1; 100];
        match r.register(big, 0) {
            Err(RegistryError::Invalid(m)) => assert!(m.contains("at most 100"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Clone, Debug)]
        enum Op {
            Register {
                group: u8,
                id: u64,
                role: usize,
                epoch: u32,
                sequence: u64,
            },
            Unregister {
                group: u8,
                id: u64,
            },
            /// Time passes (some brokers expire).
            Wait(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..2u8, 1..5u64, 0..4usize, 0..6u32, 0..8u64).prop_map(
                    |(group, id, role, epoch, sequence)| Op::Register {
                        group,
                        id,
                        role,
                        epoch,
                        sequence,
                    }
                ),
                1 => (0..2u8, 1..5u64).prop_map(|(group, id)| Op::Unregister { group, id }),
                1 => (0..2 * EXPIRY).prop_map(Op::Wait),
            ]
        }

        proptest! {
            /// Whatever brokers send, in whatever order, and whoever expires: at most one
            /// master per group, it holds the group's highest accepted epoch, and no claim
            /// below that epoch is ever accepted (retention outlasts the run).
            #[test]
            fn one_master_per_group_never_below_the_groups_highest_epoch(
                ops in proptest::collection::vec(op(), 1..80)
            ) {
                let mut r = Registry::with_limits(EXPIRY, u64::MAX, Limits::default());
                let mut highest: HashMap<u8, (u32, u64)> = HashMap::new();
                let mut now = 0;
                for op in ops {
                    match op {
                        Op::Register { group, id, role, epoch, sequence } => {
                            let registration = BrokerRegister {
                                sequence,
                                ..reg("c", &format!("g{group}"), id, ROLES[role], epoch)
                            };
                            let result = r.register(registration, now).unwrap();
                            let listed_here = r
                                .routes("c", now)
                                .brokers
                                .iter()
                                .any(|b| b.broker.broker_id == id
                                    && b.broker.broker_name == format!("g{group}")
                                    && b.broker.role == ROLES[role]
                                    && b.broker.epoch == epoch);
                            if is_master_role(ROLES[role]) && result.is_accepted() && listed_here {
                                if let Some((top, holder)) = highest.get(&group) {
                                    prop_assert!(
                                        epoch > *top || (epoch == *top && id == *holder),
                                        "claim {id}@{epoch} accepted over {holder}@{top}"
                                    );
                                }
                                highest.insert(group, (epoch, id));
                            }
                            if let Some(mark) = highest.get(&group) {
                                prop_assert_eq!(
                                    (result.group_epoch, result.group_epoch_broker_id),
                                    *mark
                                );
                            }
                        }
                        Op::Unregister { group, id } => {
                            r.unregister("c", &format!("g{group}"), id, now);
                        }
                        Op::Wait(ms) => now += ms,
                    }
                    prop_assert_eq!(r.check_invariant(), Ok(()));
                    for b in r.routes("", now).brokers.iter().filter(|b| b.is_master()) {
                        let group: u8 = b.broker.broker_name[1..].parse().unwrap();
                        prop_assert_eq!(
                            highest.get(&group).copied(),
                            Some((b.broker.epoch, b.broker.broker_id))
                        );
                    }
                }
            }
        }
    }
}
