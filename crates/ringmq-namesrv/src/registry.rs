//! The route registry: every broker's last accepted registration, the epoch rule that decides
//! a group's master, expiry, and the route listing. Pure: no I/O and no clock of its own (every
//! call is given `now_ms`, a monotonic millisecond count), so it is tested here without a
//! server or a real wait.
//!
//! Layout: cluster -> group (`broker_name`) -> broker id -> entry. Each group also keeps the
//! highest master epoch it has accepted and from which broker id (its `master_mark`); it
//! outlives the master's entry (expiry, unregister), so a stale master that outlives its
//! successor cannot take the group back with its old epoch. Invariant: a group lists at most
//! one broker with a master role, and that broker holds the group's mark.

use ringmq_protocol::namesrv::{
    is_master_role, BrokerRegister, BrokerRoute, RegisterResult, Routes,
};
use std::collections::BTreeMap;

/// Brokers kept at most. Each entry holds a registration (its topic list included, bounded by
/// the frame size), so a misbehaving client registering endless broker ids must hit a bound.
pub const MAX_BROKERS: usize = 4096;

/// Groups kept at most (with or without live brokers: a group's mark outlives its brokers).
/// When full, groups with no live broker are forgotten to make room.
pub const MAX_GROUPS: usize = 4096;

/// Encoded bytes of all kept registrations at most, so the registry's memory is bounded and a
/// `Routes` answer listing everything fits the Rust client's 64 MiB frame.
pub const MAX_REGISTERED_BYTES: usize = 48 * 1024 * 1024;

/// The roles a broker may register with.
pub const ROLES: [&str; 4] = ["SYNC_MASTER", "ASYNC_MASTER", "SLAVE", "FENCED"];

/// Why a registration was not taken (answered `BAD_REQUEST` or `SYSTEM_BUSY`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The registration breaks a rule of its layout (the message names the field).
    Invalid(String),
    /// The registry holds as many brokers or groups as it may.
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
        }
    }
}

/// The registry's bounds (the constants above by default; tests use small ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub brokers: usize,
    pub groups: usize,
    pub registered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            brokers: MAX_BROKERS,
            groups: MAX_GROUPS,
            registered_bytes: MAX_REGISTERED_BYTES,
        }
    }
}

/// See the module documentation.
pub struct Registry {
    expiry_ms: u64,
    limits: Limits,
    clusters: BTreeMap<String, BTreeMap<String, Group>>,
}

impl Registry {
    /// A registry that drops a broker not heard from for `expiry_ms`.
    pub fn new(expiry_ms: u64) -> Self {
        Self::with_limits(expiry_ms, Limits::default())
    }

    pub fn with_limits(expiry_ms: u64, limits: Limits) -> Self {
        Registry {
            expiry_ms,
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

    fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.clusters
            .values()
            .flat_map(|c| c.values())
            .flat_map(|g| g.brokers.iter().map(|(id, e)| (*id, e)))
    }

    /// Takes one broker's registration (or heartbeat) at `now_ms`. A master claim below the
    /// group's mark, or at the mark from another broker id, is refused (`accepted = 0`) and
    /// the broker's entry removed; an accepted master claim above the mark removes the old
    /// master's entry. Either way the answer names the group's master afterwards.
    pub fn register(
        &mut self,
        registration: BrokerRegister,
        now_ms: u64,
    ) -> Result<RegisterResult, RegistryError> {
        validate(&registration)?;
        self.expire(now_ms);
        let expiry_ms = self.expiry_ms;
        let cluster_name = registration.cluster_name.clone();
        let group_name = registration.broker_name.clone();
        let id = registration.broker_id;
        if !self.has_group(&cluster_name, &group_name) {
            self.make_room_for_group()?;
        }
        // This broker's earlier entry is replaced, so it does not count.
        let (mut brokers, mut bytes) = (0, 0);
        for (other, entry) in self.entries() {
            let replaced = other == id
                && entry.registration.cluster_name == cluster_name
                && entry.registration.broker_name == group_name;
            if !replaced {
                brokers += 1;
                bytes += entry.bytes;
            }
        }
        let size = encoded_len(&registration);
        let limits = self.limits;
        if brokers >= limits.brokers || bytes + size > limits.registered_bytes {
            return Err(RegistryError::Full(format!(
                "the name server keeps at most {} brokers and {} bytes of registrations; {cluster_name}/{group_name} broker {id} not registered",
                limits.brokers, limits.registered_bytes
            )));
        }
        let group = self
            .clusters
            .entry(cluster_name)
            .or_default()
            .entry(group_name)
            .or_default();
        if is_master_role(&registration.role) {
            let refused = match group.master_mark {
                Some((epoch, holder)) => {
                    registration.epoch < epoch || (registration.epoch == epoch && holder != id)
                }
                None => false,
            };
            if refused {
                group.brokers.remove(&id);
                return Ok(group.result(false, expiry_ms));
            }
            group.master_mark = Some((registration.epoch, id));
            // The previous master (a lower epoch, or this broker's own older entry) steps
            // down from the listing: at most one master per group.
            let superseded: Vec<u64> = group
                .brokers
                .iter()
                .filter(|(other, e)| **other != id && is_master_role(&e.registration.role))
                .map(|(other, _)| *other)
                .collect();
            for other in superseded {
                group.brokers.remove(&other);
            }
        }
        group.brokers.insert(
            id,
            Entry {
                registration,
                bytes: size,
                last_seen_ms: now_ms,
            },
        );
        Ok(group.result(true, expiry_ms))
    }

    /// Removes one broker at once; whether it was listed. The group keeps its mark.
    pub fn unregister(&mut self, cluster_name: &str, broker_name: &str, broker_id: u64) -> bool {
        self.clusters
            .get_mut(cluster_name)
            .and_then(|c| c.get_mut(broker_name))
            .and_then(|g| g.brokers.remove(&broker_id))
            .is_some()
    }

    /// Drops every broker not heard from for `expiry_ms` before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let expiry_ms = self.expiry_ms;
        for group in self.clusters.values_mut().flat_map(|c| c.values_mut()) {
            group
                .brokers
                .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < expiry_ms);
        }
    }

    /// Every live broker of `cluster_name` (empty: of every cluster), ordered by cluster,
    /// group and broker id, with the age of its last registration.
    pub fn routes(&mut self, cluster_name: &str, now_ms: u64) -> Routes {
        self.expire(now_ms);
        let brokers = self
            .clusters
            .iter()
            .filter(|(name, _)| cluster_name.is_empty() || name.as_str() == cluster_name)
            .flat_map(|(_, groups)| groups.values())
            .flat_map(|g| g.brokers.values())
            .map(|e| BrokerRoute {
                broker: e.registration.clone(),
                last_heartbeat_ms_ago: now_ms.saturating_sub(e.last_seen_ms),
            })
            .collect();
        Routes { brokers }
    }

    fn has_group(&self, cluster_name: &str, group_name: &str) -> bool {
        self.clusters
            .get(cluster_name)
            .is_some_and(|c| c.contains_key(group_name))
    }

    fn group_count(&self) -> usize {
        self.clusters.values().map(|c| c.len()).sum()
    }

    /// Before a new group is made: when at the bound, forgets groups without live brokers
    /// (their marks); fails when every group has one.
    fn make_room_for_group(&mut self) -> Result<(), RegistryError> {
        if self.group_count() < self.limits.groups {
            return Ok(());
        }
        for groups in self.clusters.values_mut() {
            groups.retain(|_, g| !g.brokers.is_empty());
        }
        self.clusters.retain(|_, groups| !groups.is_empty());
        if self.group_count() < self.limits.groups {
            return Ok(());
        }
        Err(RegistryError::Full(format!(
            "the name server keeps at most {} broker groups, each with a live broker",
            self.limits.groups
        )))
    }
}

fn encoded_len(registration: &BrokerRegister) -> usize {
    let mut out = Vec::new();
    registration.encode(&mut out);
    out.len()
}

/// The rules of a registration beyond its layout.
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
    if !is_host_port(&r.listen) {
        return invalid(format!("listen {:?} is not HOST:PORT", r.listen));
    }
    if !r.ha_listen.is_empty() && !is_host_port(&r.ha_listen) {
        return invalid(format!(
            "ha_listen {:?} is not HOST:PORT (or empty)",
            r.ha_listen
        ));
    }
    Ok(())
}

fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: u64 = 1000;

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
        assert!(r.unregister("c", "a", 1));
        assert!(!r.unregister("c", "a", 1), "already gone");
        assert!(!r.unregister("c", "nosuch", 2));
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
        ];
        for (registration, field) in cases {
            match r.register(registration, 0) {
                Err(RegistryError::Invalid(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(r.broker_count(), 0);
        let no_ha = BrokerRegister {
            ha_listen: String::new(),
            ..reg("c", "a", 1, "SLAVE", 1)
        };
        assert!(r.register(no_ha, 0).is_ok());
    }

    fn small(brokers: usize, groups: usize, registered_bytes: usize) -> Registry {
        Registry::with_limits(
            EXPIRY,
            Limits {
                brokers,
                groups,
                registered_bytes,
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
    fn the_group_bound_forgets_empty_groups_first() {
        let mut r = small(100, 4, usize::MAX);
        for g in 0..4 {
            r.register(reg("c", &format!("g{g}"), 1, "SLAVE", 1), 0)
                .unwrap();
        }
        assert!(matches!(
            r.register(reg("c", "new", 1, "SLAVE", 1), 1),
            Err(RegistryError::Full(_))
        ));
        r.unregister("c", "g0", 1);
        assert!(r.register(reg("c", "new", 1, "SLAVE", 1), 1).is_ok());
    }
}
