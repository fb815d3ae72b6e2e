//! Starting the broker: the main thread prepares everything shared-nothing shards need
//! (configuration, topic table, listening sockets, the channel mesh, stop signals), starts one
//! pinned glommio executor per shard, waits until every shard has recovered its store, prints
//! the ready line, and on SIGINT or SIGTERM asks every shard to shut down cleanly.

use crate::config::BrokerConfig;
use crate::net::admission::Admission;
use crate::net::{bind_listeners, raise_descriptor_limit};
use crate::security::tls::ServerTls;
use crate::shard::mesh::build_mesh;
use crate::shard::startup::{run_shard, ShardStartup, StartupEvent};
use crate::shard::topics::TopicTable;
use crate::store::lock::StoreLock;
use crate::store::RecoveryReport;
use glommio::{LocalExecutorBuilder, Placement};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// `<store>/store.json`: facts about the store that must not change between runs.
#[derive(Serialize, Deserialize)]
struct StoreIdentity {
    format_version: u32,
    shards: usize,
    /// Entries per consume-queue file: a queue offset's file and index follow from it, so a
    /// store read with another value would read every entry from the wrong place. Absent in
    /// a store.json written before the key existed: this run's value is recorded then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consume_queue_file_entries: Option<u64>,
}

const STORE_FORMAT_VERSION: u32 = 1;

/// Why the broker did not start, or stopped. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid (the message names the key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `store_dir` cannot be created.
    #[error("{0}")]
    StoreDir(String),
    /// Another broker holds the store (the message names the store and the holder).
    #[error(transparent)]
    Locked(#[from] crate::store::lock::LockError),
    /// `<store>/store.json` is unreadable or does not match this run.
    #[error("{0}")]
    StoreIdentity(String),
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A shard or a thread of the main process failed to start (the message names which).
    #[error("{0}")]
    Startup(String),
    /// A shard ended while serving (fail-stop), or the watchers were lost.
    #[error("{0}")]
    Stopped(String),
}

fn check_store_identity(
    store_dir: &Path,
    shards: usize,
    cq_file_entries: u64,
) -> Result<(), ServerError> {
    let path = store_dir.join("store.json");
    let write = |identity: &StoreIdentity| {
        crate::store::glommio_disk::write_atomic_blocking(
            &path,
            &serde_json::to_vec_pretty(identity).expect("serializes"),
        )
        .map_err(|e| ServerError::StoreIdentity(format!("{}: {e}", path.display())))
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut identity: StoreIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                ServerError::StoreIdentity(format!(
                    "{}: unreadable store identity: {e}",
                    path.display()
                ))
            })?;
            if identity.format_version != STORE_FORMAT_VERSION {
                return Err(ServerError::StoreIdentity(format!(
                    "{}: store format {} is not supported (this build reads {STORE_FORMAT_VERSION})",
                    path.display(),
                    identity.format_version
                )));
            }
            if identity.shards != shards {
                return Err(ServerError::StoreIdentity(format!(
                    "store {} was created with {} shards; start with --shards {} (changing the shard count of a store is not supported)",
                    store_dir.display(),
                    identity.shards,
                    identity.shards
                )));
            }
            match identity.consume_queue_file_entries {
                Some(recorded) if recorded != cq_file_entries => {
                    Err(ServerError::StoreIdentity(format!(
                        "store {} was created with consume_queue_file_entries = {recorded}; set it \
                         back to {recorded} (a store keeps its consume-queue file size)",
                        store_dir.display()
                    )))
                }
                Some(_) => Ok(()),
                None => {
                    identity.consume_queue_file_entries = Some(cq_file_entries);
                    write(&identity)
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write(&StoreIdentity {
            format_version: STORE_FORMAT_VERSION,
            shards,
            consume_queue_file_entries: Some(cq_file_entries),
        }),
        Err(e) => Err(ServerError::StoreIdentity(format!(
            "{}: {e}",
            path.display()
        ))),
    }
}

/// `<store>/broker_id`: the broker's id in its cluster, a random non-zero u64 in decimal.
const BROKER_ID_FILE: &str = "broker_id";

/// The store's broker id: read back on every start, created (durably: a temporary file, its
/// fsync, a rename and the directory's fsync) at the first. Name servers tell two brokers of a
/// group apart by it, so it belongs to the store, not to the process or its address.
fn load_or_create_broker_id(store_dir: &Path) -> Result<u64, ServerError> {
    let path = store_dir.join(BROKER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(id) if id != 0 => Ok(id),
            _ => Err(ServerError::StoreIdentity(format!(
                "{}: `{}` is not a broker id (a non-zero decimal u64)",
                path.display(),
                text.trim()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = random_broker_id();
            crate::store::glommio_disk::write_atomic_blocking(&path, format!("{id}\n").as_bytes())
                .map_err(|e| ServerError::StoreIdentity(format!("{}: {e}", path.display())))?;
            info!(broker_id = id, "new store: created its broker id");
            Ok(id)
        }
        Err(e) => Err(ServerError::StoreIdentity(format!(
            "{}: {e}",
            path.display()
        ))),
    }
}

fn random_broker_id() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        // getrandom(2) fills 8 bytes in one call once the pool is initialised; a short read
        // leaves zeros, which the loop below refuses as it refuses a zero id.
        unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// With `namesrv` set: the broker id and the addresses to register. The advertised addresses
/// default to the bound ones (the ports port 0 picked included).
fn cluster_identity(
    config: &BrokerConfig,
    listeners: &crate::net::BoundListeners,
) -> Result<Option<crate::shard::registration::ClusterIdentity>, ServerError> {
    if config.namesrv.is_empty() {
        for key in config.unused_cluster_keys() {
            tracing::warn!("`{key}` is set but `namesrv` is not: it is ignored (it is the address registered with the name servers)");
        }
        return Ok(None);
    }
    Ok(Some(crate::shard::registration::ClusterIdentity {
        broker_id: load_or_create_broker_id(&config.store_dir)?,
        listen: config
            .advertised_listen
            .clone()
            .unwrap_or_else(|| listeners.listen_addr.to_string()),
        ha_listen: config
            .advertised_ha_listen
            .clone()
            .unwrap_or_else(|| listeners.ha_addr.to_string()),
        namesrv: config.namesrv_addrs()?,
    }))
}

/// Controller mode: what the broker registers with the controllers as (the advertised
/// addresses default to the bound ones, as for the name servers).
fn controller_identity(
    config: &BrokerConfig,
    listeners: &crate::net::BoundListeners,
) -> Result<Option<crate::shard::controller_agent::ControllerIdentity>, ServerError> {
    if !config.controller_mode() {
        return Ok(None);
    }
    Ok(Some(crate::shard::controller_agent::ControllerIdentity {
        store_identity: load_or_create_broker_id(&config.store_dir)?.to_string(),
        listen: config
            .advertised_listen
            .clone()
            .unwrap_or_else(|| listeners.listen_addr.to_string()),
        ha_listen: config
            .advertised_ha_listen
            .clone()
            .unwrap_or_else(|| listeners.ha_addr.to_string()),
        handover: Default::default(),
    }))
}

/// Controller mode, a clean stop: a master hands its group to an in-sync slave before its
/// shards stop (`controller_handover_timeout_ms`), so the group's next master is elected at
/// once instead of after the controllers' silence limit.
fn hand_over(config: &BrokerConfig, identity: &crate::shard::controller_agent::ControllerIdentity) {
    use crate::shard::controller_agent::HandoverOutcome;
    let timeout = Duration::from_millis(config.controller_handover_timeout_ms);
    if timeout.is_zero() {
        return;
    }
    match identity.handover.run(timeout) {
        HandoverOutcome::NotMaster => {}
        HandoverOutcome::HandedOver { successor, took } => info!(
            successor,
            took_ms = took.as_millis() as u64,
            "handed the group over to broker {successor}"
        ),
        HandoverOutcome::Failed(why) => warn!(
            "stopping without a hand-over ({why}); the controllers elect once this broker's silence passes their limit"
        ),
    }
}

fn blocking_eventfd() -> Result<RawFd, ServerError> {
    // Blocking on purpose: glommio's io_uring read arms an internal poll on it.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(ServerError::Startup(format!(
            "eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

fn signal_stop(fds: &[RawFd]) {
    for fd in fds {
        let one: u64 = 1;
        unsafe { libc::write(*fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// One warning at start per port that anyone who reaches it can abuse (docs/security.md).
fn warn_unauthenticated(config: &BrokerConfig) {
    if config.ha_security == crate::config::HaSecurity::Off {
        tracing::warn!(
            ha_listen = %config.ha_listen,
            "ha_security is \"off\": anyone who reaches the HA port can follow this broker as a \
             slave, read the whole commitlog and move the acknowledged offset (release \
             SYNC_MASTER producers with fake acknowledgements); set ha_security = \"auth\" \
             and ha_secret_file on the master and its slaves"
        );
    }
    if config.authorization == crate::config::Authorization::Off {
        tracing::warn!(
            "authorization is \"off\": anyone who reaches a client, shard or Kafka port may do \
             everything: promote or demote this broker (cluster promote/demote), create and \
             delete topics, read every group's offsets (metadata snapshot), run retention \
             now (delete-expired), change ACLs, and produce to and consume from every topic; \
             set authorization = \"acl\" with superusers and ACL rules (ringmq acl)"
        );
    }
    if !config.namesrv.is_empty() && config.namesrv_secret.is_none() {
        tracing::warn!(
            "namesrv_secret_file is not set: this broker's registrations are unsigned, so a \
             name server that requires signatures refuses them, and one that does not accepts \
             forged registrations of this group from anyone"
        );
    }
}

/// `authentication = "scram"` with no user in the store: only client certificates can get in.
fn warn_without_users(config: &BrokerConfig, users: &crate::security::users::UserTable) {
    if config.authentication == crate::config::Authentication::Scram && users.users.is_empty() {
        tracing::warn!(
            store = %config.store_dir.display(),
            "authentication = \"scram\" and the store has no user: only clients with a \
             certificate principal can connect; make the first superuser with `ringmq user \
             create NAME --store DIR --new-password-file -` on the stopped broker"
        );
    }
}

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(mut config: BrokerConfig) -> Result<(), ServerError> {
    config.validate()?;
    config.load_secrets()?;
    crate::replication::tls::init(&config).map_err(ServerError::Startup)?;
    warn_unauthenticated(&config);
    install_fail_stop_panic_hook();
    let shard_count = config.shard_count();
    std::fs::create_dir_all(&config.store_dir).map_err(|e| {
        ServerError::StoreDir(format!("store_dir {}: {e}", config.store_dir.display()))
    })?;
    // Held until the process exits, on every path: an error return while some shard still
    // writes must not let another broker take the store.
    std::mem::forget(StoreLock::acquire_retrying(
        &config.store_dir,
        Duration::from_millis(crate::constants::RESTART_RETRY_MS),
        Duration::from_millis(crate::constants::RESTART_RETRY_INTERVAL_MS),
    )?);
    check_store_identity(
        &config.store_dir,
        shard_count,
        config.consume_queue_file_entries,
    )?;
    info!("effective configuration:\n{}", config.to_toml());
    let topics = Arc::new(TopicTable::load(&config.store_dir)?);
    let acls = Arc::new(
        crate::security::acl::AclTable::load(&config.store_dir).map_err(ServerError::Startup)?,
    );
    let audit_path =
        crate::security::audit::audit_path(config.audit_log_file.as_deref(), &config.store_dir);
    crate::security::audit::install(&audit_path).map_err(ServerError::Startup)?;
    let users = Arc::new(
        crate::security::users::UserTable::load(&config.store_dir).map_err(ServerError::Startup)?,
    );
    warn_without_users(&config, &users);
    raise_descriptor_limit(&config);
    let listeners = bind_listeners(&config, shard_count)?;
    let shard_ports = Arc::new(listeners.shard_ports.clone());
    let admission = Admission::new(&config);
    let tls = ServerTls::from_config(&config).map_err(|e| ServerError::Startup(e.to_string()))?;
    let cluster = cluster_identity(&config, &listeners)?;
    let controller = controller_identity(&config, &listeners)?;
    let kafka = match &listeners.kafka {
        Some((_, bound)) => {
            let broker_id = match &cluster {
                Some(identity) => identity.broker_id,
                None => load_or_create_broker_id(&config.store_dir)?,
            };
            Some(Arc::new(crate::kafka::KafkaNode::new(
                &config, *bound, broker_id,
            )))
        }
        None => None,
    };
    let config = Arc::new(config);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let stop_fds = (0..shard_count)
        .map(|_| blocking_eventfd())
        .collect::<Result<Vec<_>, _>>()?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut executors = Vec::with_capacity(shard_count);
    for ((id, mesh), listener_fds) in build_mesh(shard_count)
        .into_iter()
        .enumerate()
        .zip(listeners.per_shard)
    {
        let startup = ShardStartup {
            id,
            shard_count,
            config: config.clone(),
            topics: topics.clone(),
            acls: acls.clone(),
            users: users.clone(),
            mesh,
            listener_fds,
            shard_ports: shard_ports.clone(),
            ready: ready_tx.clone(),
            ha_fd: listeners.ha[id],
            metrics_fd: if id == 0 {
                listeners.metrics.map(|(fd, _)| fd)
            } else {
                None
            },
            stop_fd: stop_fds[id],
            admission: admission.clone(),
            tls: tls.clone(),
            cluster: if id == 0 { cluster.clone() } else { None },
            controller: if id == 0 { controller.clone() } else { None },
            kafka: listeners
                .kafka
                .as_ref()
                .zip(kafka.as_ref())
                .map(|((fds, _), node)| (fds[id], node.clone())),
        };
        let core = cores.get(id % cores.len().max(1)).copied();
        let builder = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes as usize)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us));
        let handle = builder
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_shard(startup)
            })
            .map_err(|e| {
                ServerError::Startup(format!("starting the executor of shard {id}: {e}"))
            })?;
        executors.push(handle);
    }
    drop(ready_tx);
    let stage_timeout = Duration::from_millis(config.startup_stage_timeout_ms);
    if let Err(e) = wait_until_ready(&ready_rx, shard_count, stage_timeout) {
        error!("{e}");
        signal_stop(&stop_fds);
        // A stuck shard never returns; the others are told to stop, and the process exits
        // without joining them (its caller exits with this error).
        return Err(e);
    }
    let ports: Vec<String> = shard_ports.iter().map(|p| p.to_string()).collect();
    let metrics = listeners
        .metrics
        .map(|(_, addr)| format!(" metrics={addr}"))
        .unwrap_or_default();
    let kafka = listeners
        .kafka
        .as_ref()
        .map(|(_, addr)| format!(" kafka={addr}"))
        .unwrap_or_default();
    println!(
        "ringmq ready listen={} shard_ports={} shards={} role={} flush={} ha={} store={}{metrics}{kafka}",
        listeners.listen_addr,
        ports.join(","),
        shard_count,
        if config.controller_mode() {
            "CONTROLLED".to_string()
        } else {
            config.broker_role.to_string()
        },
        config.flush_disk_type,
        listeners.ha_addr,
        config.store_dir.display()
    );
    let _ = std::io::stdout().flush();
    let events = watch_shards_and_signals(executors, tls)?;
    match events.recv() {
        Ok(Lifecycle::Terminate) => {}
        Ok(Lifecycle::ShardExited { id, cause }) => {
            return Err(fail_stop(id, &cause));
        }
        Err(_) => return Err(ServerError::Stopped("lost the shard watchers".to_string())),
    }
    info!("shutting down");
    if let Some(identity) = &controller {
        hand_over(&config, identity);
    }
    signal_stop(&stop_fds);
    // Only shard exits count: a repeated SIGTERM must not cut a shard's final flush short.
    let mut exited = 0;
    while exited < shard_count {
        match events.recv() {
            Ok(Lifecycle::ShardExited { id, cause }) => {
                exited += 1;
                if let Some(e) = cause {
                    error!(shard = id, "a shard executor failed while stopping: {e}");
                }
            }
            Ok(Lifecycle::Terminate) => info!("already shutting down"),
            Err(_) => break,
        }
    }
    // Every admin call answered before the stop is in the audit file.
    crate::security::audit::shutdown();
    info!("stopped cleanly");
    Ok(())
}

/// Waits for every shard to report ready, logging each one's recovery. Fails at the first
/// shard that fails, or whose current start-up stage has lasted longer than `stage_timeout`,
/// naming the shard and the stage (which names its file).
fn wait_until_ready(
    events: &mpsc::Receiver<StartupEvent>,
    shard_count: usize,
    stage_timeout: Duration,
) -> Result<(), ServerError> {
    let mut stages: Vec<Option<(String, Instant)>> = vec![None; shard_count];
    let mut ready = 0;
    while ready < shard_count {
        let oldest = stages
            .iter()
            .enumerate()
            .filter_map(|(id, s)| s.as_ref().map(|(stage, at)| (id, stage, *at)))
            .min_by_key(|(_, _, at)| *at);
        if let Some((id, stage, at)) = oldest {
            if at.elapsed() >= stage_timeout {
                return Err(ServerError::Startup(format!(
                    "shard {id} did not finish a start-up stage within {} ms \
                     (startup_stage_timeout_ms): {stage}",
                    stage_timeout.as_millis()
                )));
            }
        }
        let wait = oldest.map_or(stage_timeout, |(_, _, at)| {
            stage_timeout.saturating_sub(at.elapsed())
        });
        match events.recv_timeout(wait) {
            Ok(StartupEvent::Stage { id, stage }) => {
                info!(shard = id, "start-up: {stage}");
                stages[id] = Some((stage, Instant::now()));
            }
            Ok(StartupEvent::Ready { id, report }) => {
                log_recovery(id, &report);
                stages[id] = None;
                ready += 1;
            }
            Ok(StartupEvent::Failed { error, .. }) => return Err(ServerError::Startup(error)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ServerError::Startup(
                    "a shard stopped during start-up".to_string(),
                ))
            }
        }
    }
    Ok(())
}

fn log_recovery(id: usize, report: &RecoveryReport) {
    info!(
        shard = id,
        unclean_shutdown = report.unclean_shutdown,
        scan_start_offset = report.scan_start_offset,
        scanned_bytes = report.scanned_bytes,
        scanned_records = report.scanned_records,
        truncated_bytes = report.truncated_bytes,
        truncation_reason = report.truncation_reason.as_deref().unwrap_or("none"),
        max_offset = report.max_offset,
        consume_queue_entries_trimmed = report.consume_queue_entries_trimmed,
        consume_queue_entries_dispatched = report.consume_queue_entries_dispatched,
        duration_ms = report.duration.as_secs_f64() * 1000.0,
        "recovered"
    );
}

/// What the main thread waits for once the broker is ready.
enum Lifecycle {
    /// SIGINT or SIGTERM: stop cleanly.
    Terminate,
    /// A shard's executor ended, with the cause when it failed.
    ShardExited { id: usize, cause: Option<String> },
}

/// One thread per shard joins its executor and one forwards the stop signals, all into one
/// channel, so the main thread sees whichever comes first.
fn watch_shards_and_signals(
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    tls: Option<Arc<ServerTls>>,
) -> Result<mpsc::Receiver<Lifecycle>, ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| ServerError::Startup(format!("installing signal handlers: {e}")))?;
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    // Reloading reads files: done here, never on a shard thread. Its outcome
                    // is logged inside; a failed reload keeps the old certificates.
                    match &tls {
                        Some(tls) => {
                            let _ = tls.reload();
                        }
                        None => info!("SIGHUP: nothing to reload (TLS is off)"),
                    }
                    continue;
                }
                if signal_tx.send(Lifecycle::Terminate).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ServerError::Startup(format!("starting the signal thread: {e}")))?;
    for (id, handle) in executors.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("watch-shard-{id}"))
            .spawn(move || {
                let cause = handle.join().err().map(|e| e.to_string());
                let _ = tx.send(Lifecycle::ShardExited { id, cause });
            })
            .map_err(|e| {
                ServerError::Startup(format!("starting the watcher of shard {id}: {e}"))
            })?;
    }
    Ok(rx)
}

/// A shard ended while the broker was serving: the process stops as a whole, so that its
/// supervisor restarts it and recovery repairs the shard, rather than serving on without it.
fn fail_stop(id: usize, cause: &Option<String>) -> ServerError {
    let cause = cause.as_deref().unwrap_or("its executor returned");
    let message = format!(
        "shard {id} stopped unexpectedly ({cause}); the broker exits so a restart recovers it"
    );
    error!("{message}");
    ServerError::Stopped(message)
}

/// Makes a panic on any thread, a shard's above all, end the process at once after one log
/// line naming the thread (`shard-N`) and the cause. A panicking shard task would otherwise
/// end only that executor, and a panic inside glommio's blocking pool hangs its caller
/// (glommio#37); either way the broker would keep serving with a dead shard. Abort (as
/// `panic = "abort"` does) skips destructors: nothing is flushed that recovery would not check.
pub fn install_fail_stop_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed thread");
        error!("{name} panicked: {info}; the broker aborts so a restart recovers it");
        default_hook(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::{check_store_identity, load_or_create_broker_id};

    /// The broker id is made once per store and read back on every later start; a file that
    /// does not hold one is refused, not silently replaced (the group would see a new broker).
    #[test]
    fn a_store_keeps_its_broker_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = load_or_create_broker_id(dir.path()).expect("new store");
        assert_ne!(id, 0);
        assert_eq!(load_or_create_broker_id(dir.path()).expect("again"), id);
        let other = tempfile::tempdir().expect("temp dir");
        assert_ne!(
            load_or_create_broker_id(other.path()).expect("other store"),
            id
        );
        std::fs::write(dir.path().join("broker_id"), "0\n").expect("write");
        assert!(load_or_create_broker_id(dir.path()).is_err());
        assert!(!dir.path().join("broker_id.tmp").exists());
    }

    /// Review finding 6: a store keeps its consume-queue file size; a restart with another
    /// value is refused, and a store.json from before the key records this run's value.
    #[test]
    fn a_store_keeps_its_consume_queue_file_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        check_store_identity(dir.path(), 2, 1024).expect("new store");
        check_store_identity(dir.path(), 2, 1024).expect("same value");
        let refused = check_store_identity(dir.path(), 2, 2048).expect_err("another value");
        assert!(
            refused
                .to_string()
                .contains("consume_queue_file_entries = 1024"),
            "{refused}"
        );
        let path = dir.path().join("store.json");
        std::fs::write(&path, br#"{"format_version": 1, "shards": 2}"#).expect("old identity");
        check_store_identity(dir.path(), 2, 4096).expect("an old store.json");
        let written = std::fs::read_to_string(&path).expect("read");
        assert!(
            written.contains("\"consume_queue_file_entries\": 4096"),
            "{written}"
        );
        assert!(check_store_identity(dir.path(), 2, 1024).is_err());
        assert!(
            check_store_identity(dir.path(), 3, 4096).is_err(),
            "shards still checked"
        );
    }
}
