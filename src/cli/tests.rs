//! Argument parsing and output formatting of the client subcommands.

use super::app::{Cli, Command, Format};
use super::consume::{format_message, StartFrom};
use super::output::{table, to_json_line, ConsumeLine, ProduceLine};
use super::produce::synthetic_body;
use super::topic::TopicCommand;
use crate::client::ProduceResult;
use crate::protocol::message::{ProduceResponse, PulledMessage};
use crate::protocol::Status;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))
}

#[test]
fn from_accepts_earliest_latest_and_offsets() {
    assert_eq!("earliest".parse(), Ok(StartFrom::Earliest));
    assert_eq!("latest".parse(), Ok(StartFrom::Latest));
    assert_eq!("42".parse(), Ok(StartFrom::Offset(42)));
    assert!("-1".parse::<StartFrom>().is_err());
    assert!("newest".parse::<StartFrom>().is_err());
    assert!(parse(&["consume", "t", "--from", "yesterday"]).is_err());
}

#[test]
fn consume_flags_parse_with_defaults() {
    let Command::Consume(args) = parse(&["consume", "orders", "--group", "g", "--follow"])
        .unwrap()
        .command
    else {
        panic!("not consume")
    };
    assert_eq!(args.topic, "orders");
    assert_eq!(args.broker.broker, "127.0.0.1:10911");
    assert_eq!(args.broker.format, Format::Text);
    assert_eq!(args.max_wait_ms, 1000);
    assert_eq!(args.group.as_deref(), Some("g"));
    assert!(args.follow && args.from.is_none() && args.queue.is_none());

    let Command::Consume(args) = parse(&[
        "consume", "t", "--from", "7", "--queue", "2", "--count", "5", "--format", "json",
    ])
    .unwrap()
    .command
    else {
        panic!("not consume")
    };
    assert_eq!(args.from, Some(StartFrom::Offset(7)));
    assert_eq!((args.queue, args.count), (Some(2), Some(5)));
    assert_eq!(args.broker.format, Format::Json);
}

#[test]
fn topic_and_produce_flags_parse() {
    let Command::Topic(args) = parse(&[
        "topic",
        "create",
        "orders",
        "--queues",
        "8",
        "--broker",
        "10.0.0.1:9000",
    ])
    .unwrap()
    .command
    else {
        panic!("not topic")
    };
    assert_eq!(args.broker.broker, "10.0.0.1:9000");
    assert!(
        matches!(args.command, TopicCommand::Create { ref name, queues: 8, .. } if name == "orders")
    );

    let Command::Produce(args) =
        parse(&["produce", "t", "--count", "10", "--size", "3", "--key", "k"])
            .unwrap()
            .command
    else {
        panic!("not produce")
    };
    assert_eq!((args.count, args.size, args.window), (Some(10), 3, 64));
    assert_eq!(args.key.as_deref(), Some("k"));
    assert_eq!(args.acks, None, "the broker's default unless named");
    let Command::Produce(args) = parse(&["produce", "t", "--acks", "all"]).unwrap().command else {
        panic!("not produce")
    };
    assert_eq!(args.acks, Some(crate::protocol::Acks::All));
    assert!(parse(&["produce", "t", "--acks", "1"]).is_err());
    assert!(parse(&["produce", "t", "--window", "0"]).is_err());
    assert!(parse(&["produce", "t", "--format", "yaml"]).is_err());
    assert!(parse(&["serve", "--shards", "2"]).is_ok());
}

#[test]
fn produce_json_lines() {
    let ok = Ok(ProduceResult {
        status: Status::Ok,
        response: ProduceResponse {
            queue: 3,
            base_offset: 41,
            count: 1,
            commitlog_offset: 9,
        },
    });
    assert_eq!(
        to_json_line(&ProduceLine::new(1, &ok)),
        r#"{"line":1,"status":"OK","queue":3,"offset":41}"#
    );
    let stored = ok.map(|r| ProduceResult {
        status: Status::FlushDiskTimeout,
        ..r
    });
    assert_eq!(
        to_json_line(&ProduceLine::new(2, &stored)),
        r#"{"line":2,"status":"FLUSH_DISK_TIMEOUT","queue":3,"offset":41}"#
    );
    let failed = Err("TOPIC_NOT_FOUND: no \"t\"".to_string());
    assert_eq!(
        to_json_line(&ProduceLine::new(3, &failed)),
        r#"{"line":3,"status":"ERROR","error":"TOPIC_NOT_FOUND: no \"t\""}"#
    );
}

fn pulled(key: &[u8], body: &[u8]) -> PulledMessage {
    PulledMessage {
        queue_offset: 5,
        born_timestamp_ms: 1,
        store_timestamp_ms: 1700000000123,
        key: key.to_vec(),
        properties: vec![],
        body: body.to_vec(),
    }
}

#[test]
fn consume_json_lines_use_text_or_base64() {
    assert_eq!(
        format_message(Format::Json, 2, &pulled(b"k1", b"hello \"world\"")),
        r#"{"queue":2,"offset":5,"key":"k1","timestamp":1700000000123,"body":"hello \"world\""}"#
    );
    assert_eq!(
        format_message(Format::Json, 0, &pulled(b"", &[0xff, 0x00, 0x41])),
        r#"{"queue":0,"offset":5,"key":null,"timestamp":1700000000123,"body_base64":"/wBB"}"#
    );
    let odd_key = ConsumeLine::new(0, &pulled(&[0xc3], b""));
    assert_eq!(odd_key.key, None);
    assert_eq!(odd_key.key_base64.as_deref(), Some("ww=="));
    assert_eq!(odd_key.body.as_deref(), Some(""));
    assert_eq!(
        format_message(Format::Text, 1, &pulled(b"", b"hi")),
        "1\t5\t-\thi"
    );
}

#[test]
fn tables_align_and_synthetic_bodies_have_the_requested_size() {
    let text = table(
        &["QUEUE", "SHARD"],
        &[vec!["0".into(), "1".into()], vec!["10".into(), "0".into()]],
    );
    assert_eq!(text, "QUEUE  SHARD\n0      1\n10     0\n");
    assert_eq!(synthetic_body(7, 12), b"0000000007xx");
    assert_eq!(synthetic_body(7, 3).len(), 3);
}

#[test]
fn group_member_flags_parse_and_need_a_group() {
    use super::consume::StrategyArg;
    let Command::Consume(args) = parse(&[
        "consume",
        "orders",
        "--group",
        "g",
        "--broadcast",
        "--orderly",
        "--strategy",
        "consistent-hash",
        "--session-timeout-ms",
        "6000",
        "--client-id",
        "worker-1",
        "--exec",
        "cat >/dev/null",
    ])
    .unwrap()
    .command
    else {
        panic!("not consume")
    };
    assert!(args.broadcast && args.orderly);
    assert_eq!(args.strategy, StrategyArg::ConsistentHash);
    assert_eq!(args.session_timeout_ms, Some(6000));
    assert_eq!(args.client_id.as_deref(), Some("worker-1"));
    assert_eq!(args.exec.as_deref(), Some("cat >/dev/null"));
    let Command::Consume(args) = parse(&["consume", "orders", "--group", "g"])
        .unwrap()
        .command
    else {
        panic!("not consume")
    };
    assert_eq!(args.strategy, StrategyArg::Averagely);
    assert!(!args.broadcast && !args.orderly && args.exec.is_none());
    for flag in [&["--broadcast"][..], &["--orderly"], &["--exec", "true"]] {
        let mut argv = vec!["consume", "orders"];
        argv.extend_from_slice(flag);
        assert!(
            parse(&argv).is_err(),
            "{flag:?} without --group was accepted"
        );
    }
}

/// `--queue` and `--from` read a group's offsets without membership, so a member's flags
/// with them refuse instead of being ignored (`--exec` would commit past messages it never ran).
#[test]
fn member_flags_refuse_queue_and_from() {
    let member_flags: [&[&str]; 6] = [
        &["--exec", "true"],
        &["--broadcast"],
        &["--orderly"],
        &["--strategy", "by-circle"],
        &["--session-timeout-ms", "5000"],
        &["--client-id", "w"],
    ];
    for flag in member_flags {
        for plain in [&["--queue", "0"][..], &["--from", "earliest"]] {
            let mut argv = vec!["consume", "orders", "--group", "billing"];
            argv.extend_from_slice(plain);
            argv.extend_from_slice(flag);
            assert!(parse(&argv).is_err(), "{argv:?} was accepted");
        }
    }
    assert!(parse(&["consume", "orders", "--group", "billing", "--queue", "0"]).is_ok());
}

#[test]
fn namesrv_replaces_broker_on_every_client_command_and_refuses_both() {
    for command in [
        &["topic", "list"][..],
        &["produce", "t"],
        &["consume", "t"],
        &["group", "describe", "g"],
        &["stats"],
        &["admin", "retention"],
        &["cluster", "status"],
    ] {
        let with_namesrv: Vec<&str> = command
            .iter()
            .copied()
            .chain(["--namesrv", "127.0.0.1:9876,127.0.0.1:9877"])
            .collect();
        // Some of these subcommands need more arguments; none refuses --namesrv itself.
        if let Err(e) = parse(&with_namesrv) {
            assert!(!e.to_string().contains("namesrv"), "{command:?}: {e}");
        }
        let both: Vec<&str> = with_namesrv
            .iter()
            .copied()
            .chain(["--broker", "127.0.0.1:10911"])
            .collect();
        let error = parse(&both).expect_err("--broker with --namesrv");
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{command:?}"
        );
        assert!(error.to_string().contains("--namesrv"), "{error}");
    }
    let Command::Topic(args) = parse(&[
        "topic",
        "create",
        "t",
        "--queues",
        "2",
        "--groups",
        "a,b",
        "--namesrv",
        "n:1",
        "--cluster",
        "c1",
    ])
    .unwrap()
    .command
    else {
        panic!("not topic")
    };
    assert_eq!(args.broker.namesrv.as_deref(), Some("n:1"));
    assert_eq!(args.broker.cluster_name, "c1");
    assert!(
        matches!(args.command, TopicCommand::Create { ref groups, .. } if groups == &["a", "b"])
    );
    // --cluster only means something with name servers.
    assert!(parse(&["topic", "list", "--cluster", "c1"]).is_err());
}

/// RINGMQ_NAMESRV is a default, not a second flag: with --broker typed it is ignored (no
/// conflict), without it the name servers come from it, and --namesrv beats it.
#[test]
fn the_namesrv_variable_yields_to_an_explicit_broker() {
    let with_env = |args: &[&str]| {
        Cli::parse_with_env(
            std::iter::once("ringmq").chain(args.iter().copied()),
            Some("env:1".to_string()),
        )
    };
    let Command::Topic(args) = with_env(&["topic", "list", "--broker", "b:1"])
        .unwrap()
        .command
    else {
        panic!("not topic")
    };
    assert_eq!(args.broker.namesrv, None);
    assert_eq!(args.broker.broker, "b:1");
    let Command::Topic(args) = with_env(&["topic", "list"]).unwrap().command else {
        panic!("not topic")
    };
    assert_eq!(args.broker.namesrv.as_deref(), Some("env:1"));
    let Command::Topic(args) = with_env(&["topic", "list", "--namesrv", "n:1"])
        .unwrap()
        .command
    else {
        panic!("not topic")
    };
    assert_eq!(args.broker.namesrv.as_deref(), Some("n:1"));
    assert!(with_env(&["topic", "list", "--namesrv", "n:1", "--broker", "b:1"]).is_err());
    // Flags that need name servers take the variable's.
    let Command::Produce(args) = with_env(&["produce", "t", "--retry-another-group"])
        .unwrap()
        .command
    else {
        panic!("not produce")
    };
    assert!(args.retry_another_group);
    assert_eq!(args.broker.namesrv.as_deref(), Some("env:1"));
    // serve's own --namesrv never comes from it.
    let Command::Serve(args) = with_env(&["serve"]).unwrap().command else {
        panic!("not serve")
    };
    assert!(args.namesrv.is_none());
}

#[test]
fn tls_flags_parse_on_every_client_command_and_need_their_pair() {
    for command in [
        &["topic", "list"][..],
        &["produce", "t", "--count", "1"],
        &["stats"],
        &["cluster", "status"],
    ] {
        let mut args = command.to_vec();
        args.extend([
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        let cli = parse(&args).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let tls = cli.command.tls_args().expect("a client command");
        assert_eq!(tls.tls_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(tls.tls_key.as_deref(), Some(std::path::Path::new("k.pem")));
    }
    let flagless = parse(&["topic", "list"]).unwrap();
    let tls = flagless.command.tls_args().unwrap();
    assert_eq!(tls.ca_path(None), None);
    assert_eq!(tls.ca_path(Some("".into())), None);
    assert_eq!(tls.ca_path(Some("env.pem".into())), Some("env.pem".into()));
    let flagged = parse(&["topic", "list", "--tls-ca", "flag.pem"]).unwrap();
    let tls = flagged.command.tls_args().unwrap();
    assert_eq!(tls.ca_path(Some("env.pem".into())), Some("flag.pem".into()));
    assert!(parse(&["topic", "list", "--tls-cert", "c.pem"]).is_err());
    assert!(parse(&["topic", "list", "--tls-ca", "ca.pem", "--tls-cert", "c.pem"]).is_err());
    assert!(parse(&["topic", "list", "--tls-key", "k.pem"]).is_err());
}

/// clap's own consistency checks over every subcommand (unique argument ids, the ids that
/// `requires` names exist), which otherwise fire only when that subcommand is parsed.
#[test]
fn every_subcommand_passes_clap_checks() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let bench = parse(&["bench", "--broker", "127.0.0.1:1", "--tls-ca", "ca.pem"]).unwrap();
    assert!(bench
        .command
        .tls_args()
        .and_then(|t| t.tls_ca.as_ref())
        .is_some());
}

/// The bench refuses TLS with its embedded (plaintext) broker and with the event-loop
/// driver, whether the CA comes from the flag or from `RINGMQ_TLS_CA`.
#[test]
fn bench_refuses_tls_it_cannot_use() {
    let bench = |args: &[&str]| match parse(args).unwrap().command {
        Command::Bench(args) => args,
        _ => unreachable!(),
    };
    let check = super::bench::check_tls;
    let embedded = bench(&["bench", "--tls-ca", "ca.pem", "--driver", "threads"]);
    let error = check(&embedded, None).unwrap_err();
    assert!(error.contains("embedded broker"), "{error}");
    let env_only = bench(&["bench", "--broker", "127.0.0.1:1"]);
    assert!(check(&env_only, None).is_ok());
    let error = check(&env_only, Some("ca.pem".into())).unwrap_err();
    assert!(error.contains("event-loop driver"), "{error}");
    let threads = bench(&["bench", "--broker", "127.0.0.1:1", "--driver", "threads"]);
    assert!(check(&threads, Some("ca.pem".into())).is_ok());
}

/// Every client command, `bench` and `user` included, takes the SCRAM flags; a user without a
/// password file (or the other way round) is refused naming what is missing, and no flag takes
/// a password itself.
#[test]
fn scram_flags_reach_every_client_command() {
    for command in [
        &["topic", "list"][..],
        &["produce", "t"],
        &["consume", "t"],
        &["bench", "--broker", "127.0.0.1:1"],
        &["user", "list"],
        &["user", "create", "bob", "--new-password-file", "-"],
    ] {
        let mut args = command.to_vec();
        args.extend([
            "--user",
            "alice",
            "--password-file",
            "pw",
            "--scram-mechanism",
            "SCRAM-SHA-512",
        ]);
        let cli = parse(&args).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let scram = &cli.command.tls_args().expect("a client command").scram;
        assert_eq!(scram.user.as_deref(), Some("alice"));
        assert_eq!(scram.mechanism, "SCRAM-SHA-512");
    }
    assert!(parse(&["topic", "list", "--password", "secret"]).is_err());
    let only_user = parse(&["topic", "list", "--user", "alice"]).unwrap();
    let error = only_user
        .command
        .tls_args()
        .unwrap()
        .scram
        .install()
        .unwrap_err();
    assert!(error.contains("--password-file"), "{error}");
    let only_file = parse(&["topic", "list", "--password-file", "pw"]).unwrap();
    let error = only_file
        .command
        .tls_args()
        .unwrap()
        .scram
        .install()
        .unwrap_err();
    assert!(error.contains("--user"), "{error}");
    let bad = parse(&[
        "topic",
        "list",
        "--user",
        "a",
        "--password-file",
        "pw",
        "--scram-mechanism",
        "PLAIN",
    ])
    .unwrap();
    assert!(bad
        .command
        .tls_args()
        .unwrap()
        .scram
        .install()
        .unwrap_err()
        .contains("SCRAM-SHA-256"));
}

#[test]
fn controller_status_text_shows_each_brokers_reason_and_the_recorded_timelines() {
    let status = serde_json::json!({
        "id": 1, "leader_addr": "127.0.0.1:9877", "voters": [1], "commit_index": 9,
        "groups": [{
            "cluster": "c1", "group": "g", "master_broker_id": 2, "master_epoch": 2,
            "sync_state_set": [2], "sync_state_set_epoch": 4,
            "brokers": [
                {"broker_id": 1, "role": "SLAVE", "listen": "h:1", "alive": true,
                 "why": "out: catching up on 1 of 2 shards"},
                {"broker_id": 2, "role": "MASTER", "listen": "h:2", "alive": true, "why": null}
            ],
            "epoch_history": [
                {"epoch": 1, "master_broker_id": 1},
                {"epoch": 2, "master_broker_id": 2, "timeline": {"kind": "failover",
                 "detected_ms": 2003, "decided_ms": 2003, "committed_ms": 2005,
                 "role_sent_ms": 2036, "promoted_ms": 2040, "first_ack_ms": null}}
            ]
        }]
    });
    let text = super::cluster::controller_status_text(&status);
    assert!(text.contains("out: catching up on 1 of 2 shards"), "{text}");
    assert!(
        text.contains("(ask the leader)"),
        "a follower's null: {text}"
    );
    assert!(
        text.contains("epoch 2 (failover to broker 2): detected 2003, decided 2003, committed 2005, role sent 2036, promoted 2040, first ack none yet"),
        "{text}"
    );
    assert!(
        !text.contains("epoch 1 ("),
        "an epoch without a timeline: {text}"
    );
}
