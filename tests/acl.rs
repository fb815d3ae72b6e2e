//! ACLs and the audit log against the real binary on loopback: a table over principal ×
//! operation × {allow rule, deny rule, no rule} on the shared port and on a shard port, with
//! ANONYMOUS (plaintext) and with mTLS principals (certificates made here with rcgen); deny
//! wins; prefix patterns; cluster promote refused without the cluster permission; the same
//! decision on a slave once the rules replicated; audit lines for allowed and refused admin
//! calls; `authorization = "off"` warns once. Rules are bootstrapped with `ringmq acl add
//! --store` on the stopped store, as an operator does.

mod common;

use common::{run_binary, temp_store, wait_until, Broker, PortBlock};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use ringmq::client::{ClientOptions, ClientTls, Connection, ConnectionOptions};
use ringmq::protocol::admin::AclList;
use ringmq::protocol::message::*;
use ringmq::protocol::{Opcode, Status};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(30);

/// Adds a rule to a stopped broker's store (`ringmq acl add --store`).
fn bootstrap(store: &Path, principal: &str, operation: &str, resource: &[&str], effect: &str) {
    std::fs::create_dir_all(store).unwrap();
    let mut args = vec![
        "acl",
        "add",
        "--store",
        store.to_str().unwrap(),
        "--principal",
        principal,
        "--operation",
        operation,
        effect,
    ];
    args.extend(resource);
    let out = run_binary(&args, b"");
    assert!(
        out.status.success(),
        "acl add --store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    write(&mut body);
    body
}

fn produce_body(topic: &str) -> Vec<u8> {
    encode(|b| {
        ProduceRequest {
            topic,
            queue: 0,
            messages: vec![MessageRef {
                born_timestamp_ms: 0,
                key: b"",
                properties: b"",
                body: b"x",
            }],
        }
        .encode(b)
    })
}

fn pull_body(topic: &str) -> Vec<u8> {
    encode(|b| {
        PullRequest {
            topic: topic.to_string(),
            queue: 0,
            offset: 0,
            max_messages: 1,
            max_bytes: 1 << 16,
            max_wait_ms: 0,
        }
        .encode(b)
    })
}

fn stats_body(topic: &str) -> Vec<u8> {
    encode(|b| {
        QueueRef {
            topic: topic.to_string(),
            queue: 0,
        }
        .encode(b)
    })
}

/// The status `opcode` with `body` is answered with on `addr`.
fn status_of(addr: &str, options: &ConnectionOptions, opcode: Opcode, body: &[u8]) -> Status {
    let mut connection = Connection::connect(addr, *options).expect("connect");
    let response = connection.call(opcode, body).expect("an answer");
    response.status(addr).expect("a known status")
}

fn acl_change(addr: &str, options: &ConnectionOptions, add: bool, rule: [&str; 4]) -> Status {
    let [principal, operation, resource, effect] = rule.map(str::to_string);
    let body = if add {
        encode(|b| {
            AclAdd {
                principal,
                operation,
                resource,
                effect,
            }
            .encode(b)
        })
    } else {
        encode(|b| {
            AclRemove {
                principal,
                operation,
                resource,
                effect,
            }
            .encode(b)
        })
    };
    let opcode = if add {
        Opcode::AclAdd
    } else {
        Opcode::AclRemove
    };
    status_of(addr, options, opcode, &body)
}

fn acl_list(addr: &str, options: &ConnectionOptions) -> Option<AclList> {
    let mut connection = Connection::connect(addr, *options).ok()?;
    let response = connection.call(Opcode::AclList, &[]).ok()?;
    serde_json::from_slice(&response.body).ok()
}

fn audit_lines(store: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(store.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

/// Waits for an audit line with these fields (the writer thread appends it just after the
/// answer).
fn wait_audit(store: &Path, principal: &str, operation: &str, status: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(10), "the audit line", || {
        audit_lines(store).into_iter().find(|l| {
            l["principal"] == principal && l["operation"] == operation && l["status"] == status
        })
    })
}

/// What each operation of the table sends for `topic`: (name, opcode, body).
fn operations(topic: &str) -> Vec<(&'static str, Opcode, Vec<u8>)> {
    vec![
        ("produce", Opcode::Produce, produce_body(topic)),
        ("consume", Opcode::Pull, pull_body(topic)),
        ("describe", Opcode::QueueStats, stats_body(topic)),
    ]
}

/// principal × operation × {allow, deny, none}, as ANONYMOUS on plaintext, on the shared
/// port and on shard 1's port (whose queue 0 may live on the other shard: the request is
/// decided where it arrives, then forwarded); prefixes; deny wins.
#[test]
fn anonymous_table_on_the_shared_and_a_shard_port() {
    let dir = temp_store();
    let store = dir.path().join("data");
    bootstrap(
        &store,
        "ANONYMOUS",
        "alter_acls",
        &["--cluster-resource"],
        "--allow",
    );
    bootstrap(
        &store,
        "ANONYMOUS",
        "create",
        &["--topic-prefix", ""],
        "--allow",
    );
    let broker =
        Broker::start_with_config(dir.path(), "authorization = \"acl\"\n", &["--shards", "2"]);
    let plain = ConnectionOptions::default();
    let ports = [
        broker.addr.clone(),
        format!("127.0.0.1:{}", broker.shard_ports[1]),
    ];
    for topic in ["t-allow", "t-deny", "t-none"] {
        let body = encode(|b| {
            TopicCreate {
                name: topic.to_string(),
                queue_count: 2,
            }
            .encode(b)
        });
        assert_eq!(
            status_of(&broker.addr, &plain, Opcode::TopicCreate, &body),
            Status::Ok
        );
    }
    for op in ["produce", "consume", "describe"] {
        for (topic, effects) in [("t-allow", &["allow"][..]), ("t-deny", &["allow", "deny"])] {
            for effect in effects {
                let resource = format!("topic:{topic}");
                let rule = ["ANONYMOUS", op, resource.as_str(), effect];
                assert_eq!(acl_change(&broker.addr, &plain, true, rule), Status::Ok);
            }
        }
    }
    for addr in &ports {
        for (topic, allowed) in [("t-allow", true), ("t-deny", false), ("t-none", false)] {
            for (name, opcode, body) in operations(topic) {
                let status = status_of(addr, &plain, opcode, &body);
                if allowed {
                    assert!(served(status), "{name} {topic} on {addr}: {status:?}");
                } else {
                    assert_eq!(status, Status::NotAuthorized, "{name} {topic} on {addr}");
                }
            }
        }
    }
    // A prefix allows every topic it starts; a literal deny inside it wins.
    assert_eq!(
        acl_change(
            &broker.addr,
            &plain,
            true,
            ["*", "produce", "topic-prefix:t-", "allow"]
        ),
        Status::Ok
    );
    assert_eq!(
        status_of(&ports[1], &plain, Opcode::Produce, &produce_body("t-none")),
        Status::Ok
    );
    // Produce allowed implies describe (Kafka's rule: a producer reads the offsets it wrote).
    assert_eq!(
        status_of(&ports[1], &plain, Opcode::QueueStats, &stats_body("t-none")),
        Status::Ok
    );
    assert_eq!(
        status_of(&ports[1], &plain, Opcode::Produce, &produce_body("t-deny")),
        Status::NotAuthorized,
        "deny wins over a matching prefix allow"
    );
    // The refusal names the operation and the resource.
    let mut connection = Connection::connect(&broker.addr, plain).unwrap();
    let refused = connection
        .call(Opcode::Produce, &produce_body("t-deny"))
        .unwrap();
    let message = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(
        message.contains("produce") && message.contains("t-deny") && message.contains("ANONYMOUS"),
        "{message}"
    );
    // Cluster promote without the cluster permission: refused, audited as refused.
    let promote = encode(|b| {
        ClusterPromote {
            role: String::new(),
        }
        .encode(b)
    });
    assert_eq!(
        status_of(&ports[1], &plain, Opcode::ClusterPromote, &promote),
        Status::NotAuthorized
    );
    let line = wait_audit(
        &broker.store,
        "ANONYMOUS",
        "ClusterPromote",
        "NOT_AUTHORIZED",
    );
    assert_eq!(line["result"], "refused");
    assert_eq!(line["target"], "cluster (promote to role default)");
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let created = wait_audit(&broker.store, "ANONYMOUS", "TopicCreate", "OK");
    assert_eq!(created["target"], "topic:t-allow");
    assert_eq!(created["result"], "ok");
    let added = wait_audit(&broker.store, "ANONYMOUS", "AclAdd", "OK");
    assert_eq!(
        added["target"], "acl:allow ANONYMOUS produce on topic:t-allow",
        "the audit line names the rule added"
    );
    assert!(
        broker
            .log()
            .contains("ACL rules changed (AclAdd: allow ANONYMOUS produce on topic:t-allow)"),
        "the info log names the rule"
    );
    // Removing the allow closes it again.
    assert_eq!(
        acl_change(
            &broker.addr,
            &plain,
            false,
            ["ANONYMOUS", "consume", "topic:t-allow", "allow"]
        ),
        Status::Ok
    );
    assert_eq!(
        status_of(&ports[1], &plain, Opcode::Pull, &pull_body("t-allow")),
        Status::NotAuthorized
    );
}

/// A CA, a broker certificate and client certificates with URI SANs (the principals).
struct Pki {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "acl-ca");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        Pki {
            cert,
            key,
            pem,
            dir: dir.to_path_buf(),
        }
    }

    fn issue(&self, name: &str, san: SanType) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let paths = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        paths
    }

    fn client(&self, name: &str) -> ConnectionOptions {
        let (cert, key) = self.issue(
            name,
            SanType::URI(format!("spiffe://t/{name}").try_into().unwrap()),
        );
        let tls = ClientTls::from_files(&self.pem, Some((&cert, &key)))
            .expect("client TLS")
            .leak();
        ConnectionOptions {
            tls: Some(tls),
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::default().connection
        }
    }
}

/// mTLS principals: a superuser administers; an application gets produce on a prefix with a
/// deny inside it; another principal gets nothing; promote needs the cluster permission.
#[test]
fn mtls_principals_superusers_prefixes_and_deny() {
    let dir = temp_store();
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("broker", SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let config = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n\
         client_auth = \"required\"\nauthorization = \"acl\"\nsuperusers = [\"spiffe://t/admin\"]\n",
        cert.display(),
        key.display(),
        pki.pem.display()
    );
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "2"]);
    let (admin, app, other) = (pki.client("admin"), pki.client("app"), pki.client("other"));
    for topic in ["orders.eu", "orders.secret", "billing"] {
        let body = encode(|b| {
            TopicCreate {
                name: topic.to_string(),
                queue_count: 1,
            }
            .encode(b)
        });
        assert_eq!(
            status_of(&broker.addr, &app, Opcode::TopicCreate, &body),
            Status::NotAuthorized
        );
        assert_eq!(
            status_of(&broker.addr, &admin, Opcode::TopicCreate, &body),
            Status::Ok
        );
    }
    for rule in [
        ["spiffe://t/app", "produce", "topic-prefix:orders.", "allow"],
        ["spiffe://t/app", "produce", "topic:orders.secret", "deny"],
    ] {
        assert_eq!(
            acl_change(&broker.addr, &app, true, rule),
            Status::NotAuthorized
        );
        assert_eq!(acl_change(&broker.addr, &admin, true, rule), Status::Ok);
    }
    let shard_port = format!("127.0.0.1:{}", broker.shard_ports[1]);
    for addr in [&broker.addr, &shard_port] {
        for (who, options, topic, allowed) in [
            ("app", &app, "orders.eu", true),
            ("app", &app, "orders.secret", false),
            ("app", &app, "billing", false),
            ("other", &other, "orders.eu", false),
            ("admin", &admin, "billing", true),
        ] {
            let status = status_of(addr, options, Opcode::Produce, &produce_body(topic));
            assert_eq!(
                status == Status::Ok,
                allowed,
                "{who} produce {topic} on {addr}: {status}"
            );
            if !allowed {
                assert_eq!(status, Status::NotAuthorized);
            }
        }
    }
    let promote = encode(|b| {
        ClusterPromote {
            role: String::new(),
        }
        .encode(b)
    });
    assert_eq!(
        status_of(&broker.addr, &app, Opcode::ClusterPromote, &promote),
        Status::NotAuthorized
    );
    // The superuser passes the check (and is told the master is a master already).
    assert_eq!(
        status_of(&broker.addr, &admin, Opcode::ClusterPromote, &promote),
        Status::BadRequest
    );
    wait_audit(
        &broker.store,
        "spiffe://t/app",
        "ClusterPromote",
        "NOT_AUTHORIZED",
    );
    wait_audit(
        &broker.store,
        "spiffe://t/admin",
        "ClusterPromote",
        "BAD_REQUEST",
    );
    wait_audit(&broker.store, "spiffe://t/admin", "AclAdd", "OK");
    wait_audit(&broker.store, "spiffe://t/app", "AclAdd", "NOT_AUTHORIZED");
}

/// Whether a request was allowed and served: answered OK, or (for a pull of an empty queue)
/// NO_NEW_MESSAGE. Anything else, `NOT_AUTHORIZED` or an error, is not.
fn served(status: Status) -> bool {
    matches!(status, Status::Ok | Status::NoNewMessage)
}

/// A slave decides as its master does: with the rules its master replicated and with the
/// master's authorization, although the slave itself is configured `off` (and holds no rules
/// of its own); changes are refused on it; a revocation on the master reaches it.
#[test]
fn a_slave_at_off_decides_as_its_acl_master() {
    let master_dir = temp_store();
    let slave_dir = temp_store();
    let master_store = master_dir.path().join("data");
    for (operation, resource) in [
        ("alter_acls", "--cluster-resource"),
        ("describe", "--cluster-resource"),
    ] {
        bootstrap(
            &master_store,
            "ANONYMOUS",
            operation,
            &[resource],
            "--allow",
        );
    }
    bootstrap(
        &master_store,
        "ANONYMOUS",
        "create",
        &["--topic-prefix", ""],
        "--allow",
    );
    let ha = "ha_heartbeat_interval_ms = 100\nmetadata_sync_interval_ms = 200\n";
    let (master_ports, slave_ports) = (PortBlock::allocate(), PortBlock::allocate());
    let master = Broker::start_with_config(
        master_dir.path(),
        &format!("{ha}authorization = \"acl\"\nsuperusers = [\"root\"]\n"),
        &[
            "--listen",
            &master_ports.listen_addr(),
            "--ha-listen",
            &master_ports.ha_addr(),
        ],
    );
    let plain = ConnectionOptions::default();
    for topic in ["open", "closed"] {
        let body = encode(|b| {
            TopicCreate {
                name: topic.to_string(),
                queue_count: 1,
            }
            .encode(b)
        });
        assert_eq!(
            status_of(&master.addr, &plain, Opcode::TopicCreate, &body),
            Status::Ok
        );
    }
    let rule = ["ANONYMOUS", "consume", "topic:open", "allow"];
    assert_eq!(acl_change(&master.addr, &plain, true, rule), Status::Ok);
    // The slave's own configuration says "off".
    let slave = Broker::start_with_config(
        slave_dir.path(),
        &format!("{ha}authorization = \"off\"\n"),
        &[
            "--role",
            "SLAVE",
            "--master",
            &master_ports.ha_addr(),
            "--listen",
            &slave_ports.listen_addr(),
            "--ha-listen",
            &slave_ports.ha_addr(),
        ],
    );
    wait_until(CATCH_UP, "the rule on the slave", || {
        acl_list(&slave.addr, &plain).filter(|l| l.rules.iter().any(|r| r.resource == "topic:open"))
    });
    wait_until(CATCH_UP, "the topics on the slave", || {
        served(status_of(
            &slave.addr,
            &plain,
            Opcode::Pull,
            &pull_body("open"),
        ))
        .then_some(())
    });
    assert_eq!(
        status_of(&slave.addr, &plain, Opcode::Pull, &pull_body("closed")),
        Status::NotAuthorized,
        "a slave at \"off\" enforces its master's \"acl\""
    );
    assert_eq!(
        status_of(&slave.addr, &plain, Opcode::MetadataSnapshot, &[]),
        Status::NotAuthorized,
        "admin calls too"
    );
    assert_eq!(
        acl_change(
            &slave.addr,
            &plain,
            true,
            ["*", "consume", "topic:closed", "allow"]
        ),
        Status::NotMaster,
        "a slave copies its master's rules"
    );
    let log = slave.log();
    assert!(
        log.contains("differ from its master's") && log.contains("master_authorization=acl"),
        "the slave warns that its settings differ: {log}"
    );
    // The master's policy is kept with the rules in the slave's file.
    let file = std::fs::read_to_string(slave.store.join("acls.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(file["master"]["authorization"], "acl", "{file}");
    assert_eq!(file["master"]["superusers"][0], "root", "{file}");
    // A rule the master removes is gone on the slave too.
    assert_eq!(acl_change(&master.addr, &plain, false, rule), Status::Ok);
    wait_until(CATCH_UP, "the removal on the slave", || {
        (status_of(&slave.addr, &plain, Opcode::Pull, &pull_body("open")) == Status::NotAuthorized)
            .then_some(())
    });
}

/// A slave of replication protocol version 3 (before the ACL trailer) is welcomed in version
/// 3 and gets metadata frames that end right after the group offsets, the only frames its
/// decoder takes: an upgraded master keeps its old slaves replicating metadata.
#[test]
fn a_version_3_slave_gets_metadata_frames_without_the_acl_trailer() {
    use ringmq::replication::protocol::{
        AclTrailer, Hello, LinkSecurity, MetadataFrame, ACL_TRAILER_VERSION, DATA_HEADER_BYTES,
        HEARTBEAT_BYTES, KIND_DATA, KIND_HEARTBEAT, KIND_METADATA, MIN_HA_VERSION, NONCE_BYTES,
    };
    use std::io::{Read, Write};
    const { assert!(MIN_HA_VERSION < ACL_TRAILER_VERSION) };
    let dir = temp_store();
    let store = dir.path().join("data");
    bootstrap(
        &store,
        "ANONYMOUS",
        "create",
        &["--topic-prefix", ""],
        "--allow",
    );
    let ports = PortBlock::allocate();
    let master = Broker::start_with_config(
        dir.path(),
        "shards = 1\nha_heartbeat_interval_ms = 100\nmetadata_sync_interval_ms = 200\nauthorization = \"acl\"\n",
        &[
            "--listen",
            &ports.listen_addr(),
            "--ha-listen",
            &ports.ha_addr(),
        ],
    );
    let create = encode(|b| {
        TopicCreate {
            name: "t".to_string(),
            queue_count: 1,
        }
        .encode(b)
    });
    let plain = ConnectionOptions::default();
    assert_eq!(
        status_of(&master.addr, &plain, Opcode::TopicCreate, &create),
        Status::Ok
    );
    let mut link = std::net::TcpStream::connect(ports.ha_addr()).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hello = Vec::new();
    Hello {
        version: MIN_HA_VERSION,
        shard: 0,
        shard_count: 1,
        segment_size_bytes: 1 << 20,
        log_id: [0; 16],
        last_epoch: 0,
        max_offset: 0,
        broker_name: "broker-a".into(),
        security: LinkSecurity::Off,
        nonce: [0; NONCE_BYTES],
        controller_broker_id: 0,
    }
    .encode(&mut hello);
    link.write_all(&hello).unwrap();
    let read_body = |link: &mut std::net::TcpStream, len: usize| {
        let mut body = vec![0u8; len];
        link.read_exact(&mut body).unwrap();
        body
    };
    let mut len = [0u8; 4];
    link.read_exact(&mut len).unwrap();
    let welcome = read_body(&mut link, u32::from_le_bytes(len) as usize);
    // What a version-3 slave checks: accepted (0), empty reason, version 3.
    assert_eq!(
        welcome[..5],
        [0, 0, 0, 3, 0],
        "welcomed in version 3: {welcome:?}"
    );
    let deadline = std::time::Instant::now() + CATCH_UP;
    let frame = loop {
        assert!(std::time::Instant::now() < deadline, "no metadata frame");
        let mut kind = [0u8; 1];
        link.read_exact(&mut kind).unwrap();
        match kind[0] {
            KIND_DATA => {
                let header = read_body(&mut link, DATA_HEADER_BYTES - 1);
                let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
                read_body(&mut link, len);
            }
            KIND_HEARTBEAT => {
                read_body(&mut link, HEARTBEAT_BYTES - 1);
            }
            KIND_METADATA => {
                let header = read_body(&mut link, 4);
                let len = u32::from_le_bytes(header.try_into().unwrap()) as usize;
                break read_body(&mut link, len);
            }
            other => panic!("an unknown frame kind {other}"),
        }
    };
    let decoded = MetadataFrame::decode(&frame).expect("the frame decodes");
    assert_eq!(decoded.acls, AclTrailer::Absent);
    assert!(decoded.topics.is_some_and(|t| t.topics.contains_key("t")));
    // Byte for byte what the frame's fields encode to without a trailer: nothing follows
    // the offsets.
    let again = MetadataFrame {
        acls: AclTrailer::Absent,
        ..MetadataFrame::decode(&frame).unwrap()
    }
    .encode();
    assert_eq!(again[5..], frame[..], "bytes after the group offsets");
}

/// Authorization off: one warning at start naming what is exposed; admin calls are still
/// audited; the CLI lists and changes rules, and refuses --store on a running broker.
#[test]
fn authorization_off_warns_once_and_still_audits() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &[]);
    let log = broker.log();
    assert_eq!(
        log.matches("authorization is \"off\"").count(),
        1,
        "one warning: {log}"
    );
    assert!(
        log.contains("cluster promote/demote") && log.contains("metadata snapshot"),
        "{log}"
    );
    let out = broker.cli(
        &[
            "acl",
            "add",
            "--principal",
            "app",
            "--operation",
            "produce",
            "--topic",
            "t",
            "--allow",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = broker.cli(&["acl", "list"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("authorization off") && text.contains("topic:t"),
        "{text}"
    );
    let bad = broker.cli(
        &[
            "acl",
            "add",
            "--principal",
            "app",
            "--operation",
            "promote",
            "--topic",
            "t",
            "--allow",
        ],
        b"",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an operation on a topic"));
    let store = broker.store.to_str().unwrap().to_string();
    let locked = run_binary(
        &[
            "acl",
            "add",
            "--store",
            &store,
            "--principal",
            "a",
            "--operation",
            "stats",
            "--cluster-resource",
            "--allow",
        ],
        b"",
    );
    assert!(
        !locked.status.success(),
        "--store on a running broker is refused"
    );
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(
        stderr.contains("stop the broker first"),
        "refused for the store's lock: {stderr}"
    );
    assert_eq!(
        status_of(
            &broker.addr,
            &ConnectionOptions::default(),
            Opcode::MetadataSnapshot,
            &[]
        ),
        Status::Ok
    );
    wait_audit(&broker.store, "ANONYMOUS", "MetadataSnapshot", "OK");
    wait_audit(&broker.store, "ANONYMOUS", "AclAdd", "OK");
}
