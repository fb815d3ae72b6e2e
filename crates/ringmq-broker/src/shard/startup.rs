//! Starting and stopping one shard inside its executor.

use super::mesh::{Mesh, MeshEnds, ShardRequest};
use super::topics::TopicTable;
use super::{groups::GroupOffsets, handlers, owned_queues, Shard, ShardError, ShardParts};
use crate::clock::RealClock;
use crate::config::{BrokerConfig, BrokerRole};
use crate::net;
use crate::replication::identity::{describe_epoch, LogIdentity};
use crate::store::glommio_disk::{prime_iopoll_probe, GlommioDisk};
use crate::store::io::Disk;
use crate::store::{RecoveryReport, ShardStore, StoreConfig};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::io::BufferedFile;
use glommio::{spawn_local, Task};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use tracing::{info, warn};

/// Everything the main thread hands to a shard's executor.
pub struct ShardStartup {
    pub id: usize,
    pub shard_count: usize,
    pub config: Arc<BrokerConfig>,
    pub topics: Arc<TopicTable>,
    pub acls: Arc<crate::security::acl::AclTable>,
    /// The SCRAM users loaded from `<store>/users.json`, shared by every shard.
    pub users: Arc<crate::security::users::UserTable>,
    pub mesh: MeshEnds,
    /// Listening sockets: the shared client port and this shard's own port.
    pub listener_fds: Vec<RawFd>,
    pub shard_ports: Arc<Vec<u16>>,
    /// Tells the main thread each start-up stage as it begins, then success (with the recovery
    /// report) or failure.
    pub ready: mpsc::Sender<StartupEvent>,
    /// This shard's socket on the shared replication port.
    pub ha_fd: RawFd,
    /// The Prometheus endpoint's listening socket (shard 0 only).
    pub metrics_fd: Option<RawFd>,
    /// Blocking eventfd the main thread writes to ask for a clean shutdown.
    pub stop_fd: RawFd,
    /// The broker-wide client connection limits, shared by every shard.
    pub admission: Arc<net::admission::Admission>,
    /// TLS on the client and shard ports when configured, shared by every shard (SIGHUP
    /// swaps the certificates inside it).
    pub tls: Option<Arc<crate::security::tls::ServerTls>>,
    /// Shard 0 with `namesrv` set: what to register with the name servers as.
    pub cluster: Option<super::registration::ClusterIdentity>,
    /// Shard 0 in controller mode: what to register with the controllers as.
    pub controller: Option<super::controller_agent::ControllerIdentity>,
    /// With `kafka_listen`: this shard's descriptor of the Kafka socket, and what the Kafka
    /// connections of every shard share.
    pub kafka: Option<(RawFd, Arc<crate::kafka::KafkaNode>)>,
}

/// What a shard tells the main thread while it starts.
pub enum StartupEvent {
    /// The shard began this stage; the main thread gives each stage a deadline.
    Stage {
        id: usize,
        stage: String,
    },
    Ready {
        id: usize,
        report: RecoveryReport,
    },
    Failed {
        id: usize,
        error: String,
    },
}

pub fn shard_dir(store_dir: &std::path::Path, id: usize) -> PathBuf {
    store_dir.join(format!("shard-{id}"))
}

/// The body of a shard's executor: open and recover the store, serve until told to stop, then
/// shut down cleanly (final flush, checkpoint, abort marker removed).
pub async fn run_shard(start: ShardStartup) {
    let ready = start.ready.clone();
    let id = start.id;
    let metrics_fd = start.metrics_fd;
    let ha_fd = start.ha_fd;
    let admission = start.admission.clone();
    let tls = start.tls.clone();
    let cluster = start.cluster.clone().map(Rc::new);
    let controller = start.controller.clone();
    let kafka = start.kafka.clone();
    match open_shard(start).await {
        Ok((shard, receivers, listener_fds, stop_fd, report)) => {
            shard
                .controller()
                .set_unclean_restart(report.unclean_shutdown);
            let _ = ready.send(StartupEvent::Ready { id, report });
            inject_test_panic(id);
            let listeners = Listeners {
                client_fds: listener_fds,
                metrics_fd,
                ha_fd,
                admission,
                tls,
                kafka,
                controller,
            };
            serve_until_stopped(shard, receivers, listeners, stop_fd, cluster).await;
        }
        Err(e) => {
            let _ = ready.send(StartupEvent::Failed {
                id,
                error: format!("shard {id}: {e}"),
            });
        }
    }
}

/// Debug builds only: whether the test fault `variable` (e.g. `RINGMQ_TEST_PANIC_SHARD`)
/// names shard `id`. The end-to-end tests use these to check fail-stop and start-up deadlines.
fn test_fault(variable: &str, id: usize) -> bool {
    cfg!(debug_assertions) && std::env::var(variable).ok() == Some(id.to_string())
}

/// `RINGMQ_TEST_PANIC_SHARD=N`: shard N panics in a task right after it is ready.
fn inject_test_panic(id: usize) {
    if test_fault("RINGMQ_TEST_PANIC_SHARD", id) {
        spawn_local(async move { panic!("injected test panic in shard {id}") }).detach();
    }
}

type Opened = (
    Rc<Shard>,
    Vec<(usize, ConnectedReceiver<ShardRequest>)>,
    Vec<RawFd>,
    RawFd,
    RecoveryReport,
);

async fn open_shard(start: ShardStartup) -> Result<Opened, ShardError> {
    let config = start.config.clone();
    let dir = shard_dir(&config.store_dir, start.id);
    let disk = GlommioDisk::new();
    let ready = start.ready.clone();
    let id = start.id;
    let stage = move |stage: String| {
        let _ = ready.send(StartupEvent::Stage { id, stage });
    };
    stage(format!(
        "priming the io_uring poll probe in {}",
        dir.display()
    ));
    if test_fault("RINGMQ_TEST_STALL_SHARD", id) {
        // `RINGMQ_TEST_STALL_SHARD=N`: this stage never finishes, as a hung device would.
        futures_lite::future::pending::<()>().await;
    }
    disk.create_dir_all(&dir)
        .await
        .map_err(|e| ShardError::Metadata(format!("{}: {e}", dir.display())))?;
    // Must precede every other O_DIRECT open on this thread (see DESIGN.md section 6).
    prime_iopoll_probe(&dir).await.map_err(|e| {
        ShardError::Metadata(format!(
            "{}: priming the io_uring poll probe: {e}",
            dir.display()
        ))
    })?;
    stage(format!("loading the log identity in {}", dir.display()));
    let mut identity = LogIdentity::load_or_create(&disk, &dir).await?;
    let role = match identity.promoted_role {
        // Controller mode: fenced (a slave of no master) until the controllers say otherwise,
        // whatever role the store ran in before.
        _ if config.controller_mode() => BrokerRole::Slave,
        Some(promoted) if promoted != config.broker_role => {
            warn!(
                shard = start.id,
                configured = %config.broker_role,
                "this shard's role was set to {promoted} at runtime (epoch {}); running as {promoted}: update the configuration",
                identity.last_epoch()
            );
            promoted
        }
        _ => config.broker_role,
    };
    let store_config = StoreConfig {
        dir: dir.clone(),
        segment_size_bytes: config.segment_size_bytes,
        write_buffer_bytes: config.write_buffer_bytes as usize,
        max_record_bytes: max_record_bytes(&config),
        adopt_unknown_queues: role == BrokerRole::Slave,
        cq_file_entries: config.consume_queue_file_entries,
        cq_cache_entries: config.consume_queue_cache_entries,
    };
    let queues = owned_queues(start.id, &start.topics);
    let (store, report) = ShardStore::open_reporting(disk, store_config, &queues, &stage).await?;
    stage(format!(
        "loading group offsets from {}",
        dir.join("groups.json").display()
    ));
    let groups = GroupOffsets::load(disk, dir.join("groups.json")).await?;
    // A master that crashed may have lost bytes a slave already received (the unflushed tail
    // is shipped from memory). A new epoch at the recovered end makes a returning slave cut
    // its log back there instead of keeping bytes this log no longer has. It is the next
    // generation of the same term, not a new term: a slave promoted while this master was
    // down opened a new term, and this master must stay below it (see
    // `replication::identity`), however often it restarts.
    let recovered_end = store.max_offset();
    let epoch_start = identity.epochs.last().map(|(_, start)| *start);
    if role.is_master() && report.unclean_shutdown && epoch_start != Some(recovered_end) {
        identity = identity.next_generation(recovered_end)?;
        identity.save(&disk, &dir).await?;
        info!(
            shard = start.id,
            epoch = identity.last_epoch(),
            term_generation = %describe_epoch(identity.last_epoch()),
            epoch_start_offset = recovered_end,
            "unclean restart as master: the next generation of its term"
        );
    }
    stage("connecting to the other shards".to_string());
    let (mesh, receivers) = Mesh::connect(start.mesh).await;
    let shard = Rc::new(Shard::assemble(ShardParts {
        id: start.id,
        shard_count: start.shard_count,
        config,
        shard_ports: start.shard_ports,
        dir,
        disk,
        clock: Rc::new(RealClock),
        store,
        groups,
        topics: start.topics,
        acls: start.acls,
        mesh,
        role,
        identity,
    }));
    shard.metadata().install_users(start.users);
    Ok((shard, receivers, start.listener_fds, start.stop_fd, report))
}

/// Largest encoded record: the largest body plus the largest key and properties and the
/// header with the longest topic name.
pub fn max_record_bytes(config: &BrokerConfig) -> usize {
    config.max_message_bytes as usize
        + 2 * u16::MAX as usize
        + crate::store::record::RECORD_HEADER_BYTES
        + crate::constants::MAX_NAME_BYTES
}

/// The sockets a shard accepts on, and the limits its client connections are admitted by.
struct Listeners {
    client_fds: Vec<RawFd>,
    metrics_fd: Option<RawFd>,
    ha_fd: RawFd,
    admission: Arc<net::admission::Admission>,
    tls: Option<Arc<crate::security::tls::ServerTls>>,
    kafka: Option<(RawFd, Arc<crate::kafka::KafkaNode>)>,
    controller: Option<super::controller_agent::ControllerIdentity>,
}

async fn serve_until_stopped(
    shard: Rc<Shard>,
    receivers: Vec<(usize, ConnectedReceiver<ShardRequest>)>,
    listeners: Listeners,
    stop_fd: RawFd,
    cluster: Option<Rc<super::registration::ClusterIdentity>>,
) {
    let Listeners {
        client_fds,
        metrics_fd,
        ha_fd,
        admission,
        tls,
        kafka,
        controller,
    } = listeners;
    for (_, receiver) in receivers {
        let shard = shard.clone();
        spawn_local(async move {
            while let Some(request) = receiver.recv().await {
                let shard = shard.clone();
                spawn_local(handlers::handle_shard_request(shard, request)).detach();
            }
        })
        .detach();
    }
    let background = shard.spawn_background();
    let shard_net = net::ShardNet::new(shard.config(), admission, tls);
    let mut accept_loops: Vec<Task<()>> = client_fds
        .into_iter()
        .map(|fd| spawn_local(net::accept_loop(shard.clone(), shard_net.clone(), fd)))
        .collect();
    accept_loops.push(spawn_local(crate::replication::master::accept_loop(
        shard.clone(),
        ha_fd,
    )));
    if let Some(link) = shard.role_state().slave_link() {
        if link.master().is_some() {
            // Held in the role stage, like a link started at runtime: the stop ends it.
            shard.start_slave_link(link);
        } else if !shard.config().controller_mode() {
            warn!(
                shard = shard.id(),
                "a SLAVE without a valid master address does not replicate"
            );
        }
    }
    if let Some((fd, node)) = kafka {
        accept_loops.push(spawn_local(crate::kafka::accept_loop(
            shard.clone(),
            shard_net.clone(),
            node,
            fd,
        )));
    }
    if let Some(fd) = metrics_fd {
        accept_loops.push(spawn_local(crate::metrics::http::serve(shard.clone(), fd)));
    }
    if let Some(identity) = controller {
        // Ends with the shard: it checks the stop flag every round.
        spawn_local(super::controller_agent::run(shard.clone(), identity)).detach();
    }
    let registering = cluster
        .as_ref()
        .map(|identity| super::registration::start(&shard, identity.clone()))
        .unwrap_or_default();

    // The eventfd is blocking on purpose: io_uring arms an internal poll on it, and this task
    // parks until the main thread writes to it.
    let stop = unsafe { BufferedFile::from_raw_fd(stop_fd) };
    if let Err(e) = stop.read_at(0, 8).await {
        warn!(
            shard = shard.id(),
            "waiting for the stop signal failed: {e}"
        );
    }
    drop(accept_loops);
    // Before the final flush: clients stop being sent here while the broker stops.
    super::registration::stop(&shard, registering).await;
    info!(shard = shard.id(), "stopping: final flush and checkpoint");
    if let Err(e) = shard.stop(background).await {
        warn!(shard = shard.id(), "clean shutdown failed: {e}");
    }
    let _ = stop.close().await;
}
