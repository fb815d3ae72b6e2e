//! The Kafka listener with the broker's security on (docs/kafka.md, "Security"): SASL/SCRAM
//! (`authentication = "scram"`) and TLS (`tls_cert_file`) on the Kafka port, the same users
//! and ACLs as the native ports. By hand on the wire: ApiVersions offers the SASL APIs, a
//! request before authentication closes the connection, a wrong password and an unknown user
//! get SASL_AUTHENTICATION_FAILED (58) alike and the connection closes, an oversized request
//! before authentication closes it, and an authenticated user without rights gets Kafka's
//! authorization errors. With real clients over TLS and SCRAM: kcat produces and consumes as
//! a user with rights (SCRAM-SHA-256 and -512), fails to log in with a wrong password, is
//! refused a topic it has no rights on, and cannot connect in plaintext; kafka-python's
//! producer and group consumer commit and resume over SASL_SSL.
//!
//! Users and rules are made offline in the store before the broker starts, as an operator
//! bootstraps them. Certificates are made here (rcgen).

mod common;

use common::kafka::{
    batch_with_headers, fetch_from_start, kafka_clients, kcat, produce_request, produced, python,
    run_client, Wire,
};
use common::tls::Ca;
use common::{http_get, run_binary, temp_store, wait_until, Broker};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq::protocol::scram::{ClientExchange, Mechanism};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ADMIN_PASSWORD: &str = "admin-kafka-canary-4Tq";
const ALICE_PASSWORD: &str = "alice-kafka-canary-8Wm";
const BOB_PASSWORD: &str = "bob-kafka-canary-2Kz";
const HA_SECRET: &str = "kafka-security-tests-ha-link-secret-0123456789";

fn ok(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The store's users and rules, made offline: `admin` a superuser, `alice` with every topic
/// right on `secure*` topics and both group rights on `secure*` groups, `bob` with none.
fn bootstrap(store: &Path) {
    for (name, password) in [
        ("admin", ADMIN_PASSWORD),
        ("alice", ALICE_PASSWORD),
        ("bob", BOB_PASSWORD),
    ] {
        common::create_user_offline(store, name, password);
    }
    let rules: &[(&str, &str)] = &[
        ("produce", "--topic-prefix"),
        ("consume", "--topic-prefix"),
        ("describe", "--topic-prefix"),
        ("create", "--topic-prefix"),
        ("fetch", "--group-prefix"),
        ("commit", "--group-prefix"),
    ];
    for (operation, resource) in rules {
        let out = run_binary(
            &[
                "acl",
                "add",
                "--store",
                store.to_str().unwrap(),
                "--principal",
                "alice",
                "--operation",
                operation,
                resource,
                "secure",
                "--allow",
            ],
            b"",
        );
        ok(&out, "offline acl add");
    }
}

/// A broker with SCRAM and ACLs on its every port, the Kafka listener included, and TLS
/// when `tls` names its certificate and key. Returns it and the Kafka address.
fn start(root: &Path, tls: Option<&(PathBuf, PathBuf)>) -> (Broker, String) {
    bootstrap(&root.join("data"));
    let secret = root.join("ha.secret");
    std::fs::write(&secret, HA_SECRET).unwrap();
    let mut config = format!(
        "authentication = \"scram\"\nsuperusers = [\"admin\"]\nauthorization = \"acl\"\n\
         metrics_listen = \"127.0.0.1:0\"\nha_security = \"auth\"\nha_secret_file = \"{}\"\n",
        secret.display()
    );
    if let Some((cert, key)) = tls {
        config.push_str(&format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    let broker = Broker::start_with_config(
        root,
        &config,
        &["--shards", "2", "--kafka-listen", "127.0.0.1:0"],
    );
    let kafka = broker.ready_field("kafka").expect("the Kafka listener");
    (broker, kafka)
}

fn handshake(wire: &mut Wire, mechanism: &'static str) -> i16 {
    let answer: SaslHandshakeResponse = wire.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
    );
    answer.error_code
}

fn authenticate(wire: &mut Wire, message: String) -> Option<SaslAuthenticateResponse> {
    let correlation = wire.send(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(message.into_bytes().into()),
    );
    let mut body = wire.answer(
        correlation,
        ApiKey::SaslAuthenticate.response_header_version(2),
    )?;
    use kafka_protocol::protocol::Decodable;
    Some(SaslAuthenticateResponse::decode(&mut body, 2).expect("decodes"))
}

/// A whole SCRAM-SHA-256 exchange on a new connection: the connection and the last step's
/// answer (error code, message).
fn log_in(kafka: &str, user: &str, password: &str) -> (Wire, i16, Option<String>) {
    let mut wire = Wire::connect(kafka);
    assert_eq!(handshake(&mut wire, "SCRAM-SHA-256"), 0);
    let (mut client, first) =
        ClientExchange::start(Mechanism::ScramSha256, user, "kafka-test-nonce-0123");
    let server_first = authenticate(&mut wire, first).expect("server-first");
    assert_eq!(server_first.error_code, 0, "server-first for any name");
    let server_first = String::from_utf8(server_first.auth_bytes.to_vec()).unwrap();
    let last = client
        .respond(&server_first, password.as_bytes())
        .expect("client-final");
    let answer = authenticate(&mut wire, last).expect("an answer to client-final");
    let message = answer.error_message.map(|m| m.to_string());
    (wire, answer.error_code, message)
}

/// Whether the broker closed `wire` (a read gets end of file, not an answer).
fn closed(wire: &mut Wire) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    matches!(wire.stream.read(&mut byte), Ok(0) | Err(_))
}

fn metadata(wire: &mut Wire) -> MetadataResponse {
    wire.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
}

#[test]
fn sasl_scram_gates_the_kafka_listener_and_acls_apply_to_its_requests() {
    let dir = temp_store();
    let (broker, kafka) = start(dir.path(), None);
    let as_admin = [
        "--user",
        "admin",
        "--password-file",
        "-",
        "--scram-mechanism",
        "SCRAM-SHA-512",
    ];
    let out = broker.cli(
        &[
            &["topic", "create", "secure-orders", "--queues", "2"][..],
            &as_admin,
        ]
        .concat(),
        format!("{ADMIN_PASSWORD}\n").as_bytes(),
    );
    ok(&out, "topic create as admin");

    // ApiVersions is served before authentication and offers the two SASL APIs.
    let mut wire = Wire::connect(&kafka);
    let versions: ApiVersionsResponse = wire.call(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ringmq-test"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    );
    let offered = |key: ApiKey| {
        versions
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(offered(ApiKey::SaslHandshake), Some((0, 1)));
    assert_eq!(offered(ApiKey::SaslAuthenticate), Some((0, 2)));
    // Anything else before authentication closes the connection, unanswered.
    let correlation = wire.send(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    assert!(
        wire.answer(correlation, 1).is_none(),
        "Metadata before authentication is not answered"
    );

    // A wrong password and an unknown user: 58 with the same message, then closed.
    let (mut wrong, wrong_code, wrong_message) = log_in(&kafka, "alice", "not-her-password");
    let (mut unknown, unknown_code, unknown_message) = log_in(&kafka, "mallory", ALICE_PASSWORD);
    assert_eq!((wrong_code, unknown_code), (58, 58));
    assert!(wrong_message.is_some());
    assert_eq!(wrong_message, unknown_message, "the failures do not tell");
    assert!(closed(&mut wrong) && closed(&mut unknown));

    // A mechanism the broker does not offer: 33 and closed.
    let mut plain = Wire::connect(&kafka);
    let code = handshake(&mut plain, "PLAIN");
    assert_eq!(code, 33, "PLAIN is not offered");
    assert!(closed(&mut plain));

    // A request larger than the exchange needs, before authentication: closed.
    let mut big = Wire::connect(&kafka);
    big.raw(&vec![0u8; 8 << 10]);
    assert!(closed(&mut big), "an 8 KiB request before authentication");

    // alice: authenticated, sees and writes her topic.
    let (mut alice, code, _) = log_in(&kafka, "alice", ALICE_PASSWORD);
    assert_eq!(code, 0, "alice logs in");
    let listed = metadata(&mut alice);
    assert!(
        listed.topics.iter().any(|t| t
            .name
            .as_ref()
            .is_some_and(|n| n.as_str() == "secure-orders")),
        "{listed:?}"
    );
    let answer: ProduceResponse = alice.call(
        ApiKey::Produce,
        9,
        &produce_request(
            "secure-orders",
            batch_with_headers(-1, -1, &["from-alice"], &[]),
        ),
    );
    assert_eq!(produced(&answer), (0, 0), "alice's produce");
    // bob: authenticated, but no rule names him.
    let (mut bob, code, _) = log_in(&kafka, "bob", BOB_PASSWORD);
    assert_eq!(code, 0, "bob logs in");
    let answer: ProduceResponse = bob.call(
        ApiKey::Produce,
        9,
        &produce_request(
            "secure-orders",
            batch_with_headers(-1, -1, &["from-bob"], &[]),
        ),
    );
    assert_eq!(produced(&answer).0, 29, "TOPIC_AUTHORIZATION_FAILED");
    let (fetched, _) = fetch_from_start(&mut bob, "secure-orders", 0);
    assert_eq!(fetched.error_code, 29, "bob may not read it either");
    let join: JoinGroupResponse = bob.call(
        ApiKey::JoinGroup,
        4,
        &JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("secure-readers")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(StrBytes::from_static_str("range"))]),
    );
    assert_eq!(join.error_code, 30, "GROUP_AUTHORIZATION_FAILED");
    // alice reads what she wrote, and bob's record is not there.
    let (fetched, records) = fetch_from_start(&mut alice, "secure-orders", 0);
    assert_eq!(fetched.error_code, 0);
    let values: Vec<_> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values, ["from-alice"]);
    // The two failed logins are counted where the native ones are.
    let metrics = broker.ready_field("metrics").expect("the metrics listener");
    let failures = || -> u64 {
        // One line per shard.
        http_get(&metrics, "/metrics")
            .lines()
            .filter(|l| l.starts_with("ringmq_authentication_failures_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    wait_until(Duration::from_secs(10), "two failed logins counted", || {
        (failures() >= 2).then_some(())
    });
}

/// A CLI command against `broker` over TLS (its CA in `ca`), logged in as `admin`.
fn as_admin_over_tls(broker: &Broker, ca: &Path, args: &[&str]) -> std::process::Output {
    let login = [
        "--tls-ca",
        ca.to_str().unwrap(),
        "--user",
        "admin",
        "--password-file",
        "-",
    ];
    broker.cli(
        &[args, &login[..]].concat(),
        format!("{ADMIN_PASSWORD}\n").as_bytes(),
    )
}

/// kcat with `args` and the SASL settings of `user`, over TLS to `kafka`; its output.
fn kcat_as(
    kafka: &str,
    ca: &Path,
    user: Option<(&str, &str, &str)>,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    let mut command = Command::new("kcat");
    command.args(["-b", kafka, "-m", "15", "-X", "socket.timeout.ms=8000"]);
    match user {
        Some((mechanism, name, password)) => {
            command.args([
                "-X",
                "security.protocol=SASL_SSL",
                "-X",
                &format!("sasl.mechanisms={mechanism}"),
                "-X",
                &format!("sasl.username={name}"),
                "-X",
                &format!("sasl.password={password}"),
            ]);
        }
        None => {
            command.args(["-X", "security.protocol=PLAINTEXT"]);
        }
    }
    command.args(["-X", &format!("ssl.ca.location={}", ca.display())]);
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kcat");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("kcat runs")
}

#[test]
fn kcat_over_tls_and_scram_produces_consumes_and_is_refused_what_it_may_not_do() {
    if kcat().is_none() {
        return;
    }
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "kafka-ca");
    let server = ca.server(dir.path(), "broker");
    let (broker, kafka) = start(dir.path(), Some(&server));
    let alice_256 = Some(("SCRAM-SHA-256", "alice", ALICE_PASSWORD));
    let alice_512 = Some(("SCRAM-SHA-512", "alice", ALICE_PASSWORD));
    let values: Vec<String> = (0..200).map(|i| format!("sealed-{i}")).collect();
    let input = values.join("\n") + "\n";
    // `kafka_auto_create_topics` is off: the topic comes from CreateTopics-equivalent CLI.
    let out = as_admin_over_tls(
        &broker,
        &ca.pem,
        &["topic", "create", "secure-kcat", "--queues", "2"],
    );
    ok(&out, "topic create as admin over TLS");
    let out = kcat_as(
        &kafka,
        &ca.pem,
        alice_256,
        &[
            "-P",
            "-t",
            "secure-kcat",
            "-X",
            "acks=all",
            "-X",
            "enable.idempotence=true",
        ],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "kcat -P as alice: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log_tail()
    );
    let out = kcat_as(
        &kafka,
        &ca.pem,
        alice_512,
        &["-C", "-t", "secure-kcat", "-o", "beginning", "-e", "-q"],
        b"",
    );
    assert!(
        out.status.success(),
        "kcat -C: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    let mut want = values.clone();
    want.sort();
    assert_eq!(got, want, "every record once, over TLS and SCRAM-SHA-512");

    // A wrong password: kcat cannot get in and says why.
    let out = kcat_as(
        &kafka,
        &ca.pem,
        Some(("SCRAM-SHA-256", "alice", "wrong")),
        &["-L"],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong password lists nothing");
    assert!(
        stderr.contains("Authentication failed") || stderr.contains("SASL"),
        "{stderr}"
    );
    // bob logs in but may not write to the topic.
    let out = kcat_as(
        &kafka,
        &ca.pem,
        Some(("SCRAM-SHA-256", "bob", BOB_PASSWORD)),
        &["-P", "-t", "secure-kcat"],
        b"from-bob\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authorization failed") || stderr.contains("Authorization failed"),
        "bob's produce: {stderr}"
    );
    // Plaintext to the TLS listener: no metadata.
    let out = kcat_as(&kafka, &ca.pem, None, &["-L", "-m", "4"], b"");
    assert!(!out.status.success(), "plaintext lists nothing");
    let out = kcat_as(
        &kafka,
        &ca.pem,
        alice_256,
        &["-C", "-t", "secure-kcat", "-o", "beginning", "-e", "-q"],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        values.len(),
        "bob's record was not stored"
    );
}

#[test]
fn kafka_python_produces_and_a_group_commits_and_resumes_over_sasl_ssl() {
    let Some(clients) = kafka_clients() else {
        return;
    };
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "kafka-ca");
    let server = ca.server(dir.path(), "broker");
    let (broker, kafka) = start(dir.path(), Some(&server));
    let security = serde_json::json!({
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": ALICE_PASSWORD,
        "ssl_cafile": ca.pem,
    });
    let mut command = python(
        &clients,
        "kafka_python_group.py",
        &[&kafka, "secure-kp-orders", "secure-kp-readers"],
    );
    command.env("KAFKA_SECURITY", security.to_string());
    let out = run_client(&broker, command, Duration::from_secs(120));
    assert!(out.contains("\"second\": [\"second-0\""), "{out}");
    let described = as_admin_over_tls(
        &broker,
        &ca.pem,
        &["group", "describe", "secure-kp-readers"],
    );
    ok(&described, "group describe as admin");
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(described.contains("(total lag 0)"), "{described}");
}
