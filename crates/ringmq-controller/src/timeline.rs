//! The failover timeline: what the leader notes while a master switch it makes runs, and the
//! [`Command::RecordFailover`] it proposes once the new master has acknowledged its first
//! produce (or [`FIRST_ACK_WAIT_MS`] after its promotion without one).
//!
//! Soft state, like [`Liveness`]: a leader keeps it only for the switches it saw start, and a
//! new leader starts with none, so a switch that spans a controller failover has no timeline
//! (its epoch entry says nothing rather than something wrong). Phases, in ms from the start
//! (the old master's last heartbeat received, or a resignation's arrival):
//!
//! 1. *detected*: a tick found the master silent for `broker_silent_ms`;
//! 2. *decided*: the election was proposed;
//! 3. *committed*: it was applied here;
//! 4. *role sent*: the new master's next heartbeat arrived (it is answered with its role);
//! 5. *promoted* and 6. *first ack*: the new master's own measures from that answer, which its
//!    later heartbeats carry (`promoted_in_ms`, `first_ack_in_ms`), added to phase 4.

use crate::state::{Command, ElectionConfig, FailoverTimeline, GroupRecord, Liveness};
use crate::state::{ControllerState, FIRST_ACK_WAIT_MS};
use ringmq_protocol::controller::{BrokerHeartbeat, NOT_YET};
use std::collections::BTreeMap;

/// A committed switch whose new master never reports a promotion is given up this long after
/// it committed (the new master died at once; the next switch has its own timeline).
pub const SWITCH_GIVEN_UP_MS: u64 = FIRST_ACK_WAIT_MS + 30_000;

/// The switches under way, by (cluster, group).
#[derive(Debug, Default)]
pub struct Switches {
    by_group: BTreeMap<(String, String), Switch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Switch {
    kind: &'static str,
    /// The master epoch being replaced.
    from_epoch: u32,
    start_ms: u64,
    detected_ms: u64,
    decided_ms: Option<u64>,
    committed: Option<Committed>,
    role_sent_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Committed {
    to_epoch: u32,
    new_master: u64,
    at_ms: u64,
}

fn key(cluster: &str, group: &str) -> (String, String) {
    (cluster.to_string(), group.to_string())
}

impl Switches {
    /// This controller stopped leading: what it noted is no longer its to finish.
    pub fn clear(&mut self) {
        self.by_group.clear();
    }

    /// A tick's look at a group before elections are decided: a master silent past
    /// `broker_silent_ms` starts a failover (timed from its last heartbeat here; one this
    /// leader never heard has no start to time from, so no timeline), one heard again before
    /// an election was proposed ends it.
    pub fn observe(
        &mut self,
        cluster: &str,
        group: &str,
        record: &GroupRecord,
        liveness: &Liveness,
        now_ms: u64,
        config: &ElectionConfig,
    ) {
        let master = record.master_broker_id;
        if master == 0 {
            return;
        }
        let key = key(cluster, group);
        if liveness.is_alive(master, now_ms, config) {
            let undecided = self.by_group.get(&key).is_some_and(|s| {
                s.kind == "failover"
                    && s.from_epoch == record.master_epoch
                    && s.decided_ms.is_none()
            });
            if undecided {
                self.by_group.remove(&key);
            }
            return;
        }
        if !liveness.settled(now_ms, config) || self.by_group.contains_key(&key) {
            return;
        }
        let Some(last_heard) = liveness.reports.get(&master).map(|r| r.received_at_ms) else {
            return;
        };
        self.by_group.insert(
            key,
            Switch {
                kind: "failover",
                from_epoch: record.master_epoch,
                start_ms: last_heard,
                detected_ms: now_ms,
                decided_ms: None,
                committed: None,
                role_sent_ms: None,
            },
        );
    }

    /// The election replacing `from_epoch` was proposed.
    pub fn decided(&mut self, cluster: &str, group: &str, from_epoch: u32, now_ms: u64) {
        if let Some(s) = self
            .by_group
            .get_mut(&key(cluster, group))
            .filter(|s| s.from_epoch == from_epoch && s.decided_ms.is_none())
        {
            s.decided_ms = Some(now_ms);
        }
    }

    /// The master of `from_epoch` resigned and its successor's election was proposed: a
    /// hand-over starts, detected and decided at once.
    pub fn resigned(&mut self, cluster: &str, group: &str, from_epoch: u32, now_ms: u64) {
        self.by_group.insert(
            key(cluster, group),
            Switch {
                kind: "handover",
                from_epoch,
                start_ms: now_ms,
                detected_ms: now_ms,
                decided_ms: Some(now_ms),
                committed: None,
                role_sent_ms: None,
            },
        );
    }

    /// An election replacing `from_epoch` was applied: `new_master` leads `to_epoch`.
    pub fn committed(
        &mut self,
        cluster: &str,
        group: &str,
        from_epoch: u32,
        to_epoch: u32,
        new_master: u64,
        now_ms: u64,
    ) {
        if let Some(s) = self
            .by_group
            .get_mut(&key(cluster, group))
            .filter(|s| s.from_epoch == from_epoch && s.committed.is_none())
        {
            s.decided_ms.get_or_insert(now_ms);
            s.committed = Some(Committed {
                to_epoch,
                new_master,
                at_ms: now_ms,
            });
        }
    }

    /// A heartbeat the leader recorded, `record` its group now: the new master's first one
    /// after the commit is the one answered with its role; a later one reporting its
    /// promotion (and first acknowledgement, or none for [`FIRST_ACK_WAIT_MS`]) completes
    /// the timeline, returned as the command that records it.
    pub fn heartbeat(
        &mut self,
        h: &BrokerHeartbeat,
        record: &GroupRecord,
        now_ms: u64,
    ) -> Option<Command> {
        let key = key(&h.cluster_name, &h.broker_name);
        let s = self.by_group.get_mut(&key)?;
        let committed = s.committed?;
        if h.broker_id != committed.new_master {
            return None;
        }
        let Some(role_sent) = s.role_sent_ms else {
            if record.master_broker_id == committed.new_master
                && record.master_epoch == committed.to_epoch
            {
                s.role_sent_ms = Some(now_ms);
            }
            return None;
        };
        if h.promoted_epoch != committed.to_epoch || h.promoted_in_ms == NOT_YET {
            return None;
        }
        let promoted = role_sent + u64::from(h.promoted_in_ms);
        let first_ack =
            (h.first_ack_in_ms != NOT_YET).then(|| role_sent + u64::from(h.first_ack_in_ms));
        if first_ack.is_none() && now_ms < promoted + FIRST_ACK_WAIT_MS {
            return None;
        }
        let s = self.by_group.remove(&key)?;
        let since = |at: u64| at.saturating_sub(s.start_ms);
        Some(Command::RecordFailover {
            cluster: h.cluster_name.clone(),
            group: h.broker_name.clone(),
            epoch: committed.to_epoch,
            timeline: FailoverTimeline {
                kind: s.kind.to_string(),
                detected_ms: since(s.detected_ms),
                decided_ms: since(s.decided_ms.unwrap_or(committed.at_ms)),
                committed_ms: since(committed.at_ms),
                role_sent_ms: since(role_sent),
                promoted_ms: since(promoted),
                first_ack_ms: first_ack.map(since),
            },
        })
    }

    /// Drops switches the group moved past without this leader (another election, a group
    /// gone) and committed ones whose new master never reported a promotion.
    pub fn expire(&mut self, state: &ControllerState, now_ms: u64) {
        self.by_group.retain(|(cluster, group), s| {
            let Some(record) = state.group(cluster, group) else {
                return false;
            };
            match s.committed {
                None => record.master_epoch == s.from_epoch,
                Some(c) => {
                    record.master_epoch == c.to_epoch
                        && now_ms.saturating_sub(c.at_ms) < SWITCH_GIVEN_UP_MS
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BrokerAddress, BrokerReport};

    fn group(master: u64, epoch: u32) -> GroupRecord {
        let mut record = GroupRecord {
            master_broker_id: master,
            master_epoch: epoch,
            ..GroupRecord::default()
        };
        for id in [1, 2] {
            record.brokers.insert(
                id,
                BrokerAddress {
                    listen: format!("b{id}"),
                    ha_listen: format!("h{id}"),
                },
            );
        }
        record
    }

    fn heard(liveness: &mut Liveness, id: u64, at: u64) {
        liveness.record(
            id,
            BrokerReport {
                received_at_ms: at,
                end_offsets: vec![0],
                ..BrokerReport::default()
            },
        );
    }

    fn from(id: u64, promoted_epoch: u32, promoted_in: u32, first_ack_in: u32) -> BrokerHeartbeat {
        BrokerHeartbeat {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: id,
            promoted_epoch,
            promoted_in_ms: promoted_in,
            first_ack_in_ms: first_ack_in,
            ..BrokerHeartbeat::default()
        }
    }

    #[test]
    fn a_failover_is_timed_from_the_last_heartbeat_through_the_first_ack() {
        let config = ElectionConfig::default();
        let mut liveness = Liveness::new(0);
        heard(&mut liveness, 1, 5_000);
        heard(&mut liveness, 2, 6_900);
        let mut switches = Switches::default();
        let before = group(1, 1);
        switches.observe("c", "g", &before, &liveness, 6_999, &config);
        assert!(switches.by_group.is_empty(), "not silent long enough yet");
        switches.observe("c", "g", &before, &liveness, 7_000, &config);
        switches.decided("c", "g", 1, 7_000);
        switches.committed("c", "g", 1, 2, 2, 7_004);
        let after = group(2, 2);
        // The old master's heartbeat, or one before the new master was elected, times nothing.
        assert_eq!(
            switches.heartbeat(&from(1, 0, NOT_YET, NOT_YET), &after, 7_010),
            None
        );
        assert_eq!(
            switches.heartbeat(&from(2, 0, NOT_YET, NOT_YET), &after, 7_100),
            None
        );
        // Promoted, no acknowledgement yet: it waits for one.
        assert_eq!(
            switches.heartbeat(&from(2, 2, 30, NOT_YET), &after, 7_350),
            None
        );
        let Some(Command::RecordFailover {
            epoch, timeline, ..
        }) = switches.heartbeat(&from(2, 2, 30, 41), &after, 7_600)
        else {
            panic!("the timeline completes with the first ack");
        };
        assert_eq!(epoch, 2);
        assert_eq!(
            timeline,
            FailoverTimeline {
                kind: "failover".into(),
                detected_ms: 2_000,
                decided_ms: 2_000,
                committed_ms: 2_004,
                role_sent_ms: 2_100,
                promoted_ms: 2_130,
                first_ack_ms: Some(2_141),
            }
        );
        assert!(switches.by_group.is_empty(), "recorded once");
    }

    #[test]
    fn a_master_heard_again_or_a_group_moved_on_drops_the_switch() {
        let config = ElectionConfig::default();
        let mut liveness = Liveness::new(0);
        heard(&mut liveness, 1, 1_000);
        let mut switches = Switches::default();
        let record = group(1, 1);
        switches.observe("c", "g", &record, &liveness, 3_500, &config);
        assert_eq!(switches.by_group.len(), 1);
        heard(&mut liveness, 1, 3_600);
        switches.observe("c", "g", &record, &liveness, 3_600, &config);
        assert!(
            switches.by_group.is_empty(),
            "a late heartbeat is no failover"
        );

        // Committed, but another election followed before the promotion was reported.
        switches.resigned("c", "g", 1, 4_000);
        switches.committed("c", "g", 1, 2, 2, 4_003);
        let mut state = ControllerState::default();
        state
            .clusters
            .entry("c".into())
            .or_default()
            .insert("g".into(), group(1, 3));
        switches.expire(&state, 4_100);
        assert!(switches.by_group.is_empty());

        // A new master that never reports its promotion is given up.
        switches.resigned("c", "g", 3, 5_000);
        switches.committed("c", "g", 3, 4, 2, 5_002);
        state
            .clusters
            .get_mut("c")
            .unwrap()
            .insert("g".into(), group(2, 4));
        switches.expire(&state, 5_002 + SWITCH_GIVEN_UP_MS - 1);
        assert_eq!(switches.by_group.len(), 1);
        switches.expire(&state, 5_002 + SWITCH_GIVEN_UP_MS);
        assert!(switches.by_group.is_empty());
    }

    #[test]
    fn a_quiet_group_records_its_timeline_without_a_first_ack() {
        let mut switches = Switches::default();
        switches.resigned("c", "g", 1, 100);
        switches.committed("c", "g", 1, 2, 2, 103);
        let after = group(2, 2);
        assert_eq!(
            switches.heartbeat(&from(2, 2, NOT_YET, NOT_YET), &after, 150),
            None
        );
        assert_eq!(
            switches.heartbeat(&from(2, 2, 20, NOT_YET), &after, 400),
            None
        );
        let late = 150 + 20 + FIRST_ACK_WAIT_MS;
        let Some(Command::RecordFailover { timeline, .. }) =
            switches.heartbeat(&from(2, 2, 20, NOT_YET), &after, late)
        else {
            panic!("recorded without a first ack once the wait is over");
        };
        assert_eq!(timeline.kind, "handover");
        assert_eq!((timeline.detected_ms, timeline.decided_ms), (0, 0));
        assert_eq!(timeline.promoted_ms, 70);
        assert_eq!(timeline.first_ack_ms, None);
    }
}
