//! What `cluster status --controller` and the controller's `/metrics` explain beyond the
//! replicated state: why each broker is in or out of its group's SyncStateSet (from the
//! leader's heartbeats, the master's view of its slaves' links included), and the status
//! document rendered as Prometheus gauges.

use crate::state::{ElectionConfig, GroupRecord, Liveness, FAILOVER_PHASES};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why `broker_id` is or is not in `record`'s SyncStateSet, as the leader sees it; `None` on
/// a follower (it hears no heartbeats: ask the leader).
pub fn sync_state_reason(
    record: &GroupRecord,
    broker_id: u64,
    liveness: Option<&Liveness>,
    now_ms: u64,
    config: &ElectionConfig,
) -> Option<String> {
    let liveness = liveness?;
    let member = record.sync_state_set.contains(&broker_id);
    if broker_id == record.master_broker_id {
        return Some(if liveness.is_alive(broker_id, now_ms, config) {
            "master".to_string()
        } else {
            "master, silent: replaced once an electable member is found".to_string()
        });
    }
    let Some(report) = liveness.reports.get(&broker_id) else {
        return Some("not heard since this controller leads".to_string());
    };
    if report.learner {
        return Some("learner: replicates, never in the set, never elected".to_string());
    }
    let silent = now_ms.saturating_sub(report.received_at_ms);
    if !liveness.is_alive(broker_id, now_ms, config) {
        return Some(format!(
            "silent for {silent} ms: {}",
            if member {
                "the master shrinks it out of the set"
            } else {
                "out until it is back and caught up"
            }
        ));
    }
    let unclean = if report.unclean_restart {
        " (restarted uncleanly since it was last in sync)"
    } else {
        ""
    };
    let master = liveness
        .reports
        .get(&record.master_broker_id)
        .filter(|_| liveness.is_alive(record.master_broker_id, now_ms, config));
    let Some(master) = master else {
        return Some(format!(
            "{}: no master heard, so no view of its links{unclean}",
            if member { "in" } else { "out" }
        ));
    };
    let shards = master.end_offsets.len();
    let links = master.links.iter().find(|l| l.broker_id == broker_id);
    let (linked, in_sync) = links.map_or((0, 0), |l| {
        (usize::from(l.linked_shards), usize::from(l.in_sync_shards))
    });
    let why = match (member, linked, in_sync) {
        (true, _, _) if linked < shards => format!(
            "in, linked on {linked} of {shards} shards: shrunk if it stays so for ha_max_time_slave_not_catchup_ms"
        ),
        (true, _, _) if in_sync < shards => format!(
            "in, behind on {} of {shards} shards: shrunk if it stays behind for ha_max_time_slave_not_catchup_ms",
            shards - in_sync
        ),
        (true, _, _) => "in: in sync on every shard".to_string(),
        (false, 0, _) => "out: no replication link to the master".to_string(),
        (false, _, _) if linked < shards => {
            format!("out: linked on {linked} of {shards} shards")
        }
        (false, _, _) if in_sync < shards => format!(
            "out: catching up on {} of {shards} shards",
            shards - in_sync
        ),
        (false, _, _) => {
            "out: caught up on every shard lately, admitted once it holds every shard's end as of the master's proposal"
                .to_string()
        }
    };
    Some(format!("{why}{unclean}"))
}

type Labels = Vec<(String, String)>;

/// The controller status document (`Controller::status_document`) as Prometheus text: the
/// controller's own gauges, every group's master, epochs and set, each broker's liveness and
/// membership (the leader's view), and each group's last recorded failover timeline.
pub fn metrics_text(status: &serde_json::Value) -> String {
    let mut registry = Registry::with_prefix("ringmq_controller");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let plain = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    };
    let number = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    plain(
        &mut registry,
        "is_leader",
        "1 on the Raft leader",
        i64::from(status["is_leader"].as_bool() == Some(true)),
    );
    plain(
        &mut registry,
        "commit_index",
        "The Raft commit index",
        number(&status["commit_index"]),
    );
    plain(
        &mut registry,
        "voters",
        "Controllers in the Raft group",
        status["voters"].as_array().map_or(0, |v| v.len() as i64),
    );
    let master = gauge(
        &mut registry,
        "group_master_broker_id",
        "The group's master broker id (0: none)",
    );
    let master_epoch = gauge(
        &mut registry,
        "group_master_epoch",
        "The group's master epoch",
    );
    let set_size = gauge(
        &mut registry,
        "group_sync_state_set_size",
        "Members of the group's SyncStateSet, the master included",
    );
    let set_epoch = gauge(
        &mut registry,
        "group_sync_state_set_epoch",
        "The epoch of the group's SyncStateSet",
    );
    let alive = gauge(
        &mut registry,
        "broker_alive",
        "1 if the broker heartbeated within broker_silent_ms (the leader's view; 0 on a follower)",
    );
    let member = gauge(
        &mut registry,
        "broker_in_sync_state_set",
        "1 if the broker is in its group's SyncStateSet",
    );
    let last_epoch = gauge(
        &mut registry,
        "last_failover_epoch",
        "The master epoch of the group's last switch with a recorded timeline",
    );
    let phase = gauge(
        &mut registry,
        "last_failover_phase_ms",
        "The group's last recorded master switch: ms from its start (the old master's last heartbeat, or its resignation) to each phase",
    );
    for group in status["groups"].as_array().into_iter().flatten() {
        let labels: Labels = vec![
            (
                "cluster".into(),
                group["cluster"].as_str().unwrap_or("").into(),
            ),
            ("group".into(), group["group"].as_str().unwrap_or("").into()),
        ];
        master
            .get_or_create(&labels)
            .set(number(&group["master_broker_id"]));
        master_epoch
            .get_or_create(&labels)
            .set(number(&group["master_epoch"]));
        let set = group["sync_state_set"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        set_size.get_or_create(&labels).set(set.len() as i64);
        set_epoch
            .get_or_create(&labels)
            .set(number(&group["sync_state_set_epoch"]));
        for broker in group["brokers"].as_array().into_iter().flatten() {
            let mut broker_labels = labels.clone();
            broker_labels.push(("broker_id".into(), broker["broker_id"].to_string()));
            alive
                .get_or_create(&broker_labels)
                .set(i64::from(broker["alive"].as_bool() == Some(true)));
            member
                .get_or_create(&broker_labels)
                .set(i64::from(set.contains(&broker["broker_id"])));
        }
        let last = group["epoch_history"]
            .as_array()
            .into_iter()
            .flatten()
            .rfind(|e| e["timeline"].is_object());
        if let Some(entry) = last {
            last_epoch
                .get_or_create(&labels)
                .set(number(&entry["epoch"]));
            let timeline = &entry["timeline"];
            for name in FAILOVER_PHASES {
                let value = &timeline[format!("{name}_ms")];
                if value.is_null() {
                    continue;
                }
                let mut phase_labels = labels.clone();
                phase_labels.push((
                    "kind".into(),
                    timeline["kind"].as_str().unwrap_or("").into(),
                ));
                phase_labels.push(("phase".into(), name.into()));
                phase.get_or_create(&phase_labels).set(number(value));
            }
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BrokerAddress, BrokerReport, SlaveLinks};

    fn report(at: u64, shards: usize, links: Vec<SlaveLinks>) -> BrokerReport {
        BrokerReport {
            received_at_ms: at,
            end_offsets: vec![0; shards],
            links,
            ..BrokerReport::default()
        }
    }

    fn record() -> GroupRecord {
        let mut record = GroupRecord {
            master_broker_id: 1,
            master_epoch: 1,
            sync_state_set: [1, 2].into(),
            ..GroupRecord::default()
        };
        for id in [1, 2, 3, 4] {
            record.brokers.insert(
                id,
                BrokerAddress {
                    listen: String::new(),
                    ha_listen: String::new(),
                },
            );
        }
        record
    }

    fn link(broker_id: u64, linked: u16, in_sync: u16) -> SlaveLinks {
        SlaveLinks {
            broker_id,
            linked_shards: linked,
            in_sync_shards: in_sync,
        }
    }

    #[test]
    fn each_broker_is_told_why_it_is_in_or_out_from_the_masters_links() {
        let config = ElectionConfig::default();
        let record = record();
        let why = |liveness: &Liveness, id: u64| {
            sync_state_reason(&record, id, Some(liveness), 10_000, &config).unwrap()
        };
        let mut liveness = Liveness::new(0);
        liveness.record(1, report(9_900, 2, vec![link(2, 2, 1), link(3, 2, 2)]));
        liveness.record(2, report(9_900, 2, vec![]));
        liveness.record(3, report(9_900, 2, vec![]));
        liveness.record(4, report(7_000, 2, vec![]));
        assert_eq!(why(&liveness, 1), "master");
        assert!(why(&liveness, 2).starts_with("in, behind on 1 of 2 shards"));
        assert!(why(&liveness, 3).starts_with("out: caught up on every shard"));
        assert!(why(&liveness, 4).starts_with("silent for 3000 ms"));
        liveness.record(1, report(9_950, 2, vec![link(2, 2, 2), link(3, 1, 1)]));
        assert_eq!(why(&liveness, 2), "in: in sync on every shard");
        assert_eq!(why(&liveness, 3), "out: linked on 1 of 2 shards");
        liveness.record(1, report(9_960, 2, vec![]));
        assert_eq!(why(&liveness, 3), "out: no replication link to the master");
        let mut learner = report(9_960, 2, vec![]);
        learner.learner = true;
        liveness.record(3, learner);
        assert!(why(&liveness, 3).starts_with("learner"));
        assert_eq!(
            sync_state_reason(&record, 2, None, 10_000, &config),
            None,
            "a follower does not guess"
        );
    }

    #[test]
    fn the_status_document_renders_as_gauges_with_the_last_timeline() {
        let status = serde_json::json!({
            "is_leader": true,
            "commit_index": 42,
            "voters": [1, 2, 3],
            "groups": [{
                "cluster": "c", "group": "g",
                "master_broker_id": 2, "master_epoch": 3,
                "sync_state_set": [2, 3], "sync_state_set_epoch": 7,
                "brokers": [
                    {"broker_id": 1, "alive": false},
                    {"broker_id": 2, "alive": true},
                    {"broker_id": 3, "alive": true}
                ],
                "epoch_history": [
                    {"epoch": 2, "timeline": {"kind": "handover", "detected_ms": 0, "decided_ms": 0,
                        "committed_ms": 3, "role_sent_ms": 90, "promoted_ms": 120, "first_ack_ms": 125}},
                    {"epoch": 3, "timeline": {"kind": "failover", "detected_ms": 2001, "decided_ms": 2001,
                        "committed_ms": 2006, "role_sent_ms": 2100, "promoted_ms": 2150, "first_ack_ms": null}}
                ]
            }]
        });
        let text = metrics_text(&status);
        for line in [
            "ringmq_controller_is_leader 1",
            "ringmq_controller_commit_index 42",
            "ringmq_controller_voters 3",
            r#"ringmq_controller_group_master_epoch{cluster="c",group="g"} 3"#,
            r#"ringmq_controller_group_sync_state_set_size{cluster="c",group="g"} 2"#,
            r#"ringmq_controller_broker_alive{cluster="c",group="g",broker_id="1"} 0"#,
            r#"ringmq_controller_broker_in_sync_state_set{cluster="c",group="g",broker_id="3"} 1"#,
            r#"ringmq_controller_broker_in_sync_state_set{cluster="c",group="g",broker_id="1"} 0"#,
            r#"ringmq_controller_last_failover_epoch{cluster="c",group="g"} 3"#,
            r#"ringmq_controller_last_failover_phase_ms{cluster="c",group="g",kind="failover",phase="detected"} 2001"#,
            r#"ringmq_controller_last_failover_phase_ms{cluster="c",group="g",kind="failover",phase="promoted"} 2150"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"phase="first_ack""#),
            "a phase that did not happen is not invented"
        );
    }
}
