//! The state machine's rules, one test per rule, and property tests over random command
//! sequences (determinism, fencing, ids never reused).

use super::*;
use proptest::prelude::*;

const C: &str = "cluster";
const G: &str = "group-a";

fn address(n: u64) -> BrokerAddress {
    BrokerAddress {
        listen: format!("127.0.0.1:{}", 10_000 + n),
        ha_listen: format!("127.0.0.1:{}", 20_000 + n),
    }
}

fn register(state: &mut ControllerState, store: &str) -> u64 {
    match state
        .apply(&Command::RegisterBroker {
            cluster: C.into(),
            group: G.into(),
            store_identity: store.into(),
            address: address(store.len() as u64),
        })
        .unwrap()
    {
        Applied::BrokerId(id) => id,
        other => panic!("{other:?}"),
    }
}

fn report(now: u64, epoch: u32, end: u64) -> BrokerReport {
    BrokerReport {
        received_at_ms: now,
        epoch,
        end_offsets: vec![end],
        unclean_restart: false,
        async_flush: false,
        learner: false,
        election_priority: 0,
        links: Vec::new(),
    }
}

/// Three registered brokers, broker 1 elected master with all three in the set.
fn three_in_sync() -> (ControllerState, [u64; 3]) {
    let mut state = ControllerState::default();
    let ids = [
        register(&mut state, "s1"),
        register(&mut state, "s2"),
        register(&mut state, "s3"),
    ];
    state
        .apply(&Command::ElectMaster {
            cluster: C.into(),
            group: G.into(),
            expected_master_epoch: 0,
            expected_sync_state_set_epoch: 0,
            new_master_broker_id: ids[0],
            new_sync_state_set: ids.iter().copied().collect(),
            unclean: false,
            lost: vec![],
            min_master_epoch: 0,
        })
        .unwrap();
    (state, ids)
}

fn elect(
    state: &ControllerState,
    liveness: &Liveness,
    now: u64,
    config: &ElectionConfig,
) -> Option<Command> {
    decide_election(
        C,
        G,
        state.group(C, G).unwrap(),
        liveness,
        now,
        config,
        None,
    )
}

fn winner(command: &Option<Command>) -> Option<(u64, BTreeSet<u64>, bool)> {
    match command {
        Some(Command::ElectMaster {
            new_master_broker_id,
            new_sync_state_set,
            unclean,
            ..
        }) => Some((*new_master_broker_id, new_sync_state_set.clone(), *unclean)),
        _ => None,
    }
}

#[test]
fn a_store_keeps_its_broker_id_and_ids_are_never_reused() {
    let mut state = ControllerState::default();
    let a = register(&mut state, "store-a");
    let b = register(&mut state, "store-b");
    assert_ne!(a, b);
    assert!(a != 0 && b != 0);
    assert_eq!(
        register(&mut state, "store-a"),
        a,
        "the compare-and-set keeps the first id"
    );
    let other_group = state
        .apply(&Command::RegisterBroker {
            cluster: C.into(),
            group: "group-b".into(),
            store_identity: "store-a".into(),
            address: address(9),
        })
        .unwrap();
    assert_eq!(other_group, Applied::BrokerId(b + 1));
}

#[test]
fn sync_state_set_changes_are_fenced_by_both_epochs_and_the_master() {
    let (mut state, ids) = three_in_sync();
    let group = state.group(C, G).unwrap().clone();
    let alter = |master, master_epoch, set_epoch, set: &[u64]| Command::AlterSyncStateSet {
        cluster: C.into(),
        group: G.into(),
        master_broker_id: master,
        master_epoch,
        sync_state_set_epoch: set_epoch,
        new_sync_state_set: set.iter().copied().collect(),
    };
    let (me, se) = (group.master_epoch, group.sync_state_set_epoch);
    for stale in [
        alter(ids[0], me - 1, se, &ids[..2]),
        alter(ids[0], me, se - 1, &ids[..2]),
        alter(ids[1], me, se, &ids[..2]),
    ] {
        assert!(
            matches!(state.apply(&stale), Err(Refusal::StaleEpoch { .. })),
            "{stale:?}"
        );
    }
    assert!(matches!(
        state.apply(&alter(ids[0], me, se, &ids[1..])),
        Err(Refusal::InvalidSet(_))
    ));
    assert!(matches!(
        state.apply(&alter(ids[0], me, se, &[ids[0], 99])),
        Err(Refusal::InvalidSet(_))
    ));
    assert_eq!(
        state.group(C, G).unwrap(),
        &group,
        "refusals change nothing"
    );
    state.apply(&alter(ids[0], me, se, &ids[..2])).unwrap();
    let after = state.group(C, G).unwrap();
    assert_eq!(after.sync_state_set_epoch, se + 1);
    assert_eq!(after.sync_state_set, ids[..2].iter().copied().collect());
    assert!(
        matches!(
            state.apply(&alter(ids[0], me, se, &ids)),
            Err(Refusal::StaleEpoch { .. })
        ),
        "the same proposal again is built on the old set"
    );
}

#[test]
fn an_election_decided_before_a_set_change_that_committed_first_changes_nothing() {
    let (mut state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    // The master is silent; the leader decides on the set {1, 2, 3} and picks broker 3 (the
    // highest end offset)...
    let now = 9_000;
    let mut liveness = Liveness::new(0);
    liveness.record(ids[1], report(now, 1, 100));
    liveness.record(ids[2], report(now, 1, 200));
    let decided = elect(&state, &liveness, now, &config).expect("the master is lost");
    assert!(
        matches!(decided, Command::ElectMaster { new_master_broker_id, .. } if new_master_broker_id == ids[2])
    );
    // ...but the old master's change dropping broker 3 commits first.
    let group = state.group(C, G).unwrap().clone();
    state
        .apply(&Command::AlterSyncStateSet {
            cluster: C.into(),
            group: G.into(),
            master_broker_id: ids[0],
            master_epoch: group.master_epoch,
            sync_state_set_epoch: group.sync_state_set_epoch,
            new_sync_state_set: ids[..2].iter().copied().collect(),
        })
        .unwrap();
    assert!(matches!(
        state.apply(&decided),
        Err(Refusal::StaleEpoch { .. })
    ));
    let group = state.group(C, G).unwrap();
    assert_eq!(group.master_broker_id, ids[0], "nothing changed");
    // The next decision is made on the committed set.
    let again = elect(&state, &liveness, now, &config).unwrap();
    assert!(
        matches!(again, Command::ElectMaster { new_master_broker_id, .. } if new_master_broker_id == ids[1])
    );
    state.apply(&again).unwrap();
}

#[test]
fn a_failover_timeline_is_kept_once_by_its_epoch_only() {
    let (mut state, _) = three_in_sync();
    let timeline = FailoverTimeline {
        kind: "failover".into(),
        detected_ms: 2_000,
        decided_ms: 2_001,
        committed_ms: 2_004,
        role_sent_ms: 2_100,
        promoted_ms: 2_130,
        first_ack_ms: Some(2_150),
    };
    let record = |epoch: u32, timeline: &FailoverTimeline| Command::RecordFailover {
        cluster: C.into(),
        group: G.into(),
        epoch,
        timeline: timeline.clone(),
    };
    assert_eq!(
        state.apply(&record(9, &timeline)),
        Err(Refusal::NoSuchEpoch(9)),
        "an epoch the history does not hold"
    );
    state.apply(&record(1, &timeline)).unwrap();
    let later = FailoverTimeline {
        detected_ms: 1,
        ..timeline.clone()
    };
    assert_eq!(
        state.apply(&record(1, &later)),
        Err(Refusal::NoSuchEpoch(1)),
        "recorded once"
    );
    let history = &state.group(C, G).unwrap().epoch_history;
    assert_eq!(history[0].timeline.as_ref(), Some(&timeline));
    // Snapshots from before the field decode (no timeline).
    let old: EpochEntry =
        serde_json::from_str(r#"{"epoch":1,"master_broker_id":1,"unclean":false,"lost":[]}"#)
            .unwrap();
    assert_eq!(old.timeline, None);
}

#[test]
fn of_two_elections_decided_at_one_epoch_only_the_first_applies() {
    let (mut state, ids) = three_in_sync();
    let epoch = state.group(C, G).unwrap().master_epoch;
    let set_epoch = state.group(C, G).unwrap().sync_state_set_epoch;
    let elect = |id: u64| Command::ElectMaster {
        cluster: C.into(),
        group: G.into(),
        expected_master_epoch: epoch,
        expected_sync_state_set_epoch: set_epoch,
        new_master_broker_id: id,
        new_sync_state_set: [id].into_iter().collect(),
        unclean: false,
        lost: vec![],
        min_master_epoch: 0,
    };
    state.apply(&elect(ids[1])).unwrap();
    assert!(state.apply(&elect(ids[2])).is_err());
    let group = state.group(C, G).unwrap();
    assert_eq!(
        (group.master_broker_id, group.master_epoch),
        (ids[1], epoch + 1)
    );
    assert_eq!(group.epoch_history.last().unwrap().master_broker_id, ids[1]);
}

#[test]
fn nothing_is_decided_before_the_new_leader_has_listened_one_silence_period() {
    let (state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let mut liveness = Liveness::new(10_000);
    liveness.record(ids[1], report(10_100, 1, 5));
    assert_eq!(
        elect(&state, &liveness, 10_500, &config),
        None,
        "master unheard, but too early"
    );
    let now = 10_000 + config.broker_silent_ms;
    liveness.record(ids[1], report(now, 1, 5));
    assert_eq!(
        winner(&elect(&state, &liveness, now, &config)).unwrap().0,
        ids[1]
    );
}

#[test]
fn a_live_master_is_kept_and_a_silent_one_is_replaced_from_the_set() {
    let (state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let mut liveness = Liveness::new(0);
    let now = 5_000;
    for (i, id) in ids.iter().enumerate() {
        liveness.record(*id, report(now - 100, 1, 100 + i as u64));
    }
    assert_eq!(elect(&state, &liveness, now, &config), None);
    liveness.record(ids[0], report(now - config.broker_silent_ms, 1, 500));
    let (new, set, unclean) = winner(&elect(&state, &liveness, now, &config)).unwrap();
    assert_eq!(new, ids[2], "the highest end offset wins");
    assert_eq!(
        set,
        ids[1..].iter().copied().collect(),
        "the surviving member stays in the set"
    );
    assert!(!unclean);
}

#[test]
fn ranking_is_epoch_then_offsets_then_priority_and_the_preferred_broker_wins() {
    let (state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let now = 5_000;
    let mut liveness = Liveness::new(0);
    liveness.record(ids[1], report(now, 2, 10));
    liveness.record(ids[2], report(now, 1, 1_000));
    assert_eq!(
        winner(&elect(&state, &liveness, now, &config)).unwrap().0,
        ids[1],
        "epoch first"
    );
    liveness.record(
        ids[1],
        BrokerReport {
            election_priority: 1,
            ..report(now, 1, 1_000)
        },
    );
    assert_eq!(
        winner(&elect(&state, &liveness, now, &config)).unwrap().0,
        ids[1],
        "priority breaks a tie"
    );
    let group = state.group(C, G).unwrap();
    let preferred = decide_election(C, G, group, &liveness, now, &config, Some(ids[2]));
    assert_eq!(winner(&preferred).unwrap().0, ids[2]);
}

#[test]
fn learners_and_unclean_async_flush_members_are_not_elected() {
    let (state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let now = 5_000;
    let mut liveness = Liveness::new(0);
    liveness.record(
        ids[1],
        BrokerReport {
            learner: true,
            ..report(now, 1, 900)
        },
    );
    liveness.record(
        ids[2],
        BrokerReport {
            unclean_restart: true,
            async_flush: true,
            ..report(now, 1, 900)
        },
    );
    liveness.record(ids[0], report(0, 1, 900));
    assert_eq!(
        elect(&state, &liveness, now, &config),
        None,
        "nobody eligible, unclean off"
    );
    liveness.record(
        ids[2],
        BrokerReport {
            unclean_restart: true,
            async_flush: false,
            ..report(now, 1, 900)
        },
    );
    assert_eq!(
        winner(&elect(&state, &liveness, now, &config)).unwrap().0,
        ids[2],
        "a SYNC_FLUSH member lost nothing it acknowledged"
    );
}

#[test]
fn after_a_total_crash_the_best_of_the_last_set_is_elected_once_all_reported() {
    let (state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let now = 50_000;
    let mut liveness = Liveness::new(0);
    let crashed = |end| BrokerReport {
        unclean_restart: true,
        async_flush: true,
        ..report(now, 1, end)
    };
    liveness.record(ids[1], crashed(70));
    liveness.record(ids[2], crashed(90));
    assert_eq!(
        elect(&state, &liveness, now, &config),
        None,
        "the old master has not reported"
    );
    liveness.record(ids[0], crashed(80));
    let (new, set, unclean) = winner(&elect(&state, &liveness, now, &config)).unwrap();
    assert_eq!(new, ids[2], "the highest end offset among the last set");
    assert!(!unclean, "it was in the last set");
    assert_eq!(
        set,
        [ids[2]].into_iter().collect(),
        "the others rejoin once in sync"
    );
    liveness.record(ids[0], report(now, 1, 80));
    assert_eq!(
        elect(&state, &liveness, now, &config),
        None,
        "a SYNC_FLUSH master restart keeps it"
    );
}

#[test]
fn unclean_election_is_off_by_default_and_records_the_lost_range_when_on() {
    let mut state = ControllerState::default();
    let ids = [
        register(&mut state, "s1"),
        register(&mut state, "s2"),
        register(&mut state, "s3"),
    ];
    state
        .apply(&Command::ElectMaster {
            cluster: C.into(),
            group: G.into(),
            expected_master_epoch: 0,
            expected_sync_state_set_epoch: 0,
            new_master_broker_id: ids[0],
            new_sync_state_set: ids[..2].iter().copied().collect(),
            unclean: false,
            lost: vec![],
            min_master_epoch: 0,
        })
        .unwrap();
    let now = 9_000;
    let mut liveness = Liveness::new(0);
    liveness.record(ids[0], report(1_000, 1, 500));
    liveness.record(ids[1], report(1_000, 1, 480));
    liveness.record(ids[2], report(now, 1, 300));
    let mut config = ElectionConfig::default();
    assert_eq!(
        elect(&state, &liveness, now, &config),
        None,
        "the out-of-set broker waits"
    );
    config.enable_elect_unclean_master = true;
    let command = elect(&state, &liveness, now, &config).unwrap();
    let Command::ElectMaster {
        new_master_broker_id,
        unclean,
        lost,
        ..
    } = &command
    else {
        panic!()
    };
    assert_eq!((*new_master_broker_id, *unclean), (ids[2], true));
    assert_eq!(
        lost,
        &vec![LostRange {
            shard: 0,
            from_offset: 300,
            to_offset: 500
        }]
    );
    state.apply(&command).unwrap();
    let history = &state.group(C, G).unwrap().epoch_history;
    assert!(history.last().unwrap().unclean);
    assert_eq!(history.last().unwrap().lost, *lost);
}

#[test]
fn roles_follow_the_record() {
    let (state, ids) = three_in_sync();
    let group = state.group(C, G).unwrap();
    assert_eq!(assigned_role(group, ids[0]), Role::Master);
    assert_eq!(assigned_role(group, ids[1]), Role::Slave);
    assert_eq!(assigned_role(group, 77), Role::Fenced);
    assert_eq!(assigned_role(&GroupRecord::default(), 1), Role::Fenced);
}

fn arbitrary_command() -> impl Strategy<Value = Command> {
    let ids = proptest::collection::btree_set(1u64..6, 0..4);
    prop_oneof![
        (0u8..2, 0u8..5).prop_map(|(g, s)| Command::RegisterBroker {
            cluster: C.into(),
            group: format!("g{g}"),
            store_identity: format!("s{s}"),
            address: address(s as u64),
        }),
        (0u8..2, 0u64..6, 0u32..4, 0u32..6, ids.clone()).prop_map(|(g, m, me, se, set)| {
            Command::AlterSyncStateSet {
                cluster: C.into(),
                group: format!("g{g}"),
                master_broker_id: m,
                master_epoch: me,
                sync_state_set_epoch: se,
                new_sync_state_set: set,
            }
        }),
        (0u8..2, 0u32..4, 0u32..4, 1u64..6, ids).prop_map(|(g, e, se, m, set)| {
            Command::ElectMaster {
                cluster: C.into(),
                group: format!("g{g}"),
                expected_master_epoch: e,
                expected_sync_state_set_epoch: se,
                new_master_broker_id: m,
                new_sync_state_set: set,
                unclean: false,
                lost: vec![],
                min_master_epoch: 0,
            }
        }),
    ]
}

proptest! {
    /// Replaying a log gives the same state (the determinism Raft relies on), a snapshot
    /// round-trips through JSON, epochs only grow, each epoch has one master, and a set always
    /// holds its master.
    #[test]
    fn applying_any_log_is_deterministic_and_keeps_the_invariants(
        log in proptest::collection::vec(arbitrary_command(), 0..60)
    ) {
        let mut a = ControllerState::default();
        let mut b = ControllerState::default();
        let mut masters: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for command in &log {
            let before = a.clone();
            let ra = a.apply(command);
            let rb = b.apply(command);
            prop_assert_eq!(&ra, &rb);
            if ra.is_err() {
                prop_assert_eq!(&a, &before);
            }
            for (name, group) in a.clusters.get(C).into_iter().flatten() {
                let old = before.group(C, name).cloned().unwrap_or_default();
                prop_assert!(group.master_epoch >= old.master_epoch);
                prop_assert!(group.sync_state_set_epoch >= old.sync_state_set_epoch);
                if group.master_broker_id != 0 {
                    prop_assert!(group.sync_state_set.contains(&group.master_broker_id));
                    let seen = masters.entry((name.clone(), group.master_epoch)).or_insert(group.master_broker_id);
                    prop_assert_eq!(*seen, group.master_broker_id);
                }
                for (store, id) in &old.stores {
                    prop_assert_eq!(group.stores.get(store), Some(id));
                }
            }
        }
        prop_assert_eq!(&a, &b);
        let json = serde_json::to_vec(&a).unwrap();
        prop_assert_eq!(serde_json::from_slice::<ControllerState>(&json).unwrap(), a);
    }

    /// Whatever the leader heard, an election it proposes applies and names a live,
    /// non-learner broker; with unclean elections off it comes from the last set.
    #[test]
    fn a_proposed_election_is_valid_and_clean_when_unclean_is_off(
        heard in proptest::collection::vec((any::<bool>(), 0u32..3, 0u64..1000, any::<bool>(), any::<bool>(), any::<bool>()), 3),
        unclean_on in any::<bool>(),
    ) {
        let (state, ids) = three_in_sync();
        let now = 10_000;
        let mut liveness = Liveness::new(0);
        for (id, (alive, epoch, end, restart, async_flush, learner)) in ids.iter().zip(&heard) {
            liveness.record(*id, BrokerReport {
                received_at_ms: if *alive { now } else { 0 },
                epoch: *epoch, end_offsets: vec![*end], unclean_restart: *restart,
                async_flush: *async_flush, learner: *learner, election_priority: 0,
                links: Vec::new(),
            });
        }
        let config = ElectionConfig { enable_elect_unclean_master: unclean_on, ..Default::default() };
        if let Some(command) = elect(&state, &liveness, now, &config) {
            let (new, _, unclean) = winner(&Some(command.clone())).unwrap();
            prop_assert!(liveness.is_alive(new, now, &config));
            prop_assert!(!liveness.reports[&new].learner);
            prop_assert!(unclean_on || !unclean);
            let mut applied = state.clone();
            prop_assert!(applied.apply(&command).is_ok());
        } else {
            prop_assert!(!liveness.is_alive(ids[0], now, &config) || heard[0].0);
        }
    }
}

#[test]
fn a_lease_must_leave_a_margin_under_the_silence_that_elects_a_successor() {
    let config = ElectionConfig::default();
    assert_eq!(config.lease_ms, 1_600);
    config.validate().unwrap();
    let long = ElectionConfig {
        lease_ms: 1_700,
        ..config.clone()
    };
    assert!(long.validate().unwrap_err().contains("longer than 1600 ms"));
    let equal = ElectionConfig {
        lease_ms: config.broker_silent_ms,
        ..config
    };
    assert!(equal.validate().is_err(), "the old rule allowed this");
}

/// An election opens a master epoch past every term a broker reported, so a new master's
/// term is never one a broker already opened (a restarted master that opened its own).
#[test]
fn an_election_opens_an_epoch_past_every_reported_term() {
    let (mut state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let mut liveness = Liveness::new(0);
    let now = 5_000;
    // The master (epoch 1) is silent; a member reports term 3 (generation 2).
    liveness.record(ids[0], report(now - config.broker_silent_ms, 1 << 16, 500));
    liveness.record(ids[1], report(now - 100, (3 << 16) | 2, 100));
    liveness.record(ids[2], report(now - 100, 1 << 16, 100));
    let decided = elect(&state, &liveness, now, &config).unwrap();
    assert!(matches!(
        decided,
        Command::ElectMaster {
            min_master_epoch: 4,
            ..
        }
    ));
    state.apply(&decided).unwrap();
    assert_eq!(state.group(C, G).unwrap().master_epoch, 4);
    // Below the record's next epoch it changes nothing (epochs only grow by one then).
    let (mut state, ids) = three_in_sync();
    liveness.record(ids[1], report(now - 100, 0, 100));
    let decided = elect(&state, &liveness, now, &config).unwrap();
    state.apply(&decided).unwrap();
    assert_eq!(state.group(C, G).unwrap().master_epoch, 2);
}

#[test]
fn a_clean_stop_hands_the_group_to_a_named_member_and_nothing_else() {
    let (mut state, ids) = three_in_sync();
    let config = ElectionConfig::default();
    let now = 10_000;
    let mut liveness = Liveness::new(0);
    for id in ids {
        liveness.record(id, report(now, 1 << BROKER_GENERATION_BITS, 100));
    }
    let record = state.group(C, G).unwrap().clone();
    let resign = |broker_id, master_epoch, successor| ringmq_protocol::controller::ResignMaster {
        cluster_name: C.into(),
        broker_name: G.into(),
        broker_id,
        master_epoch,
        successor_broker_id: successor,
    };
    let decide = |liveness: &Liveness, r| decide_handover(&record, liveness, now, &config, &r);
    let epoch = record.master_epoch;

    assert!(
        matches!(
            decide(&liveness, resign(ids[1], epoch, ids[2])),
            Err(HandoverRefused::Stale(_))
        ),
        "only the master hands over"
    );
    assert!(
        matches!(
            decide(&liveness, resign(ids[0], epoch + 1, ids[2])),
            Err(HandoverRefused::Stale(_))
        ),
        "at its own epoch"
    );
    assert!(
        matches!(
            decide(&liveness, resign(ids[0], epoch, ids[0])),
            Err(HandoverRefused::Ineligible(_))
        ),
        "to another broker"
    );
    assert!(
        matches!(
            decide(&liveness, resign(ids[0], epoch, 99)),
            Err(HandoverRefused::Ineligible(_))
        ),
        "to a member of the set"
    );
    let mut silent = liveness.clone();
    silent.record(
        ids[2],
        report(
            now - config.broker_silent_ms,
            1 << BROKER_GENERATION_BITS,
            100,
        ),
    );
    assert!(
        matches!(
            decide(&silent, resign(ids[0], epoch, ids[2])),
            Err(HandoverRefused::Ineligible(_))
        ),
        "to one the controllers hear from"
    );
    let mut learner = liveness.clone();
    learner.reports.get_mut(&ids[2]).unwrap().learner = true;
    assert!(matches!(
        decide(&learner, resign(ids[0], epoch, ids[2])),
        Err(HandoverRefused::Ineligible(_))
    ));
    let mut unclean = liveness.clone();
    let r = unclean.reports.get_mut(&ids[2]).unwrap();
    r.unclean_restart = true;
    r.async_flush = true;
    assert!(matches!(
        decide(&unclean, resign(ids[0], epoch, ids[2])),
        Err(HandoverRefused::Ineligible(_))
    ));

    // Broker 3 is chosen though broker 2 ranks equal: the master named it.
    let command = decide(&liveness, resign(ids[0], epoch, ids[2])).unwrap();
    assert_eq!(
        winner(&Some(command.clone())),
        Some((ids[2], [ids[1], ids[2]].into_iter().collect(), false))
    );
    state.apply(&command).unwrap();
    let after = state.group(C, G).unwrap();
    assert_eq!(after.master_broker_id, ids[2]);
    assert!(after.master_epoch > epoch, "a new epoch");
    // Sent again (an answer lost), it is stale: the group has moved on.
    assert!(matches!(
        decide_handover(
            after,
            &liveness,
            now,
            &config,
            &resign(ids[0], epoch, ids[2])
        ),
        Err(HandoverRefused::Stale(_))
    ));
}
