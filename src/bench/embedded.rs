//! Embedded brokers: this same executable run as `ringmq serve` in a fresh store per run.
//!
//! The child's stdout is read for its `ringmq ready listen=…` line (an event, not a sleep); its
//! stderr goes to a log file in the results folder, whose tail is quoted when start fails. Stop
//! is SIGTERM, then SIGKILL after a grace period; the store is deleted afterwards.

use super::mode::BrokerProcess;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a broker may take to print its ready line: it zero-fills its first segment per
/// shard (1 GiB each with the default configuration) before it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a broker may take to exit after SIGTERM (a final flush and checkpoint) before it is
/// killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Lines of the broker's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

pub struct EmbeddedBroker {
    child: Option<Child>,
    store: PathBuf,
    log_path: PathBuf,
    pub addr: String,
    pub ready_line: String,
    /// Whether SIGTERM must end it with a clean exit (a broker's or name server's stop), or
    /// may simply end it (a controller, which keeps nothing in memory that its store lacks).
    clean_exit: bool,
}

/// Where and how to start one broker process.
pub struct StartSpec<'a> {
    pub process: &'a BrokerProcess,
    /// TOML given to `--config`, written next to the log.
    pub config_toml: &'a str,
    pub shards: Option<usize>,
    /// Parent of the fresh store directory.
    pub store_root: &'a Path,
    /// File name stem for the log and config in `out_dir`.
    pub name: &'a str,
    pub out_dir: &'a Path,
    /// For a slave: the master's replication address.
    pub master_ha: Option<&'a str>,
    /// In a multi-group mode: the name servers to register with and the broker group.
    pub group: Option<(&'a str, &'a str)>,
    /// In controller mode: the controller's address (the broker takes no `--role` or
    /// `--master`; the controller assigns its role) and the broker group.
    pub controller: Option<(&'a str, &'a str)>,
    /// The CPUs the process may run on (its affinity mask, which the broker pins its shards
    /// within); `None`: this process's own. Brokers on one machine each pin shard `n` to the
    /// `n`th CPU of their mask, so one-shard brokers left alone would all share the first CPU.
    pub cpus: Option<&'a [usize]>,
}

/// The cluster name embedded brokers of a multi-group mode register under.
pub const BENCH_CLUSTER: &str = "bench";

impl EmbeddedBroker {
    pub fn start(spec: &StartSpec<'_>) -> Result<EmbeddedBroker, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the ringmq executable to start a broker: {e}"))?;
        let store = fresh_dir(spec.store_root, spec.name)?;
        let config_path = spec.out_dir.join(format!("{}.broker.toml", spec.name));
        std::fs::write(&config_path, spec.config_toml)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log_path = spec.out_dir.join(format!("{}.broker.log", spec.name));
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--store")
            .arg(&store)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--ha-listen",
                "127.0.0.1:0",
                "--flush",
            ])
            .arg(spec.process.flush_disk_type.name());
        match spec.controller {
            Some((controller, group)) => {
                command
                    .args(["--controller", controller, "--cluster", BENCH_CLUSTER])
                    .args(["--broker-name", group]);
            }
            None => {
                command.arg("--role").arg(spec.process.broker_role.name());
            }
        }
        if let Some(master) = spec.master_ha.filter(|_| spec.controller.is_none()) {
            command.arg("--master").arg(master);
        }
        if let Some(shards) = spec.shards {
            command.arg("--shards").arg(shards.to_string());
        }
        if let Some((namesrv, group)) = spec.group {
            command
                .args(["--namesrv", namesrv, "--cluster", BENCH_CLUSTER])
                .args(["--broker-name", group]);
        }
        if let Some(cpus) = spec.cpus {
            restrict_to_cpus(&mut command, cpus);
        }
        EmbeddedBroker::spawn(
            command,
            store,
            log_path,
            &format!("{} broker", spec.process.flush_disk_type),
        )
    }

    /// Starts a one-replica `ringmq controller` on a free loopback port (its ready line has the
    /// broker's form), its store a fresh directory removed like a broker's.
    pub fn start_controller(
        store_root: &Path,
        name: &str,
        out_dir: &Path,
    ) -> Result<EmbeddedBroker, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the ringmq executable to start a controller: {e}"))?;
        let store = fresh_dir(store_root, name)?;
        let log_path = out_dir.join(format!("{name}.controller.log"));
        let mut command = Command::new(exe);
        command
            .args([
                "controller",
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:0",
                "--store",
            ])
            .arg(&store);
        let mut controller = EmbeddedBroker::spawn(command, store, log_path, "controller")?;
        controller.clean_exit = false;
        Ok(controller)
    }

    /// Starts `ringmq namesrv` on a free loopback port (its ready line has the broker's form);
    /// `store` is an empty directory it does not use, removed like a broker's.
    pub fn start_namesrv(
        store_root: &Path,
        name: &str,
        out_dir: &Path,
    ) -> Result<EmbeddedBroker, String> {
        let exe = std::env::current_exe().map_err(|e| {
            format!("cannot find the ringmq executable to start a name server: {e}")
        })?;
        let store = fresh_dir(store_root, name)?;
        let log_path = out_dir.join(format!("{name}.namesrv.log"));
        let mut command = Command::new(exe);
        command.args(["namesrv", "--listen", "127.0.0.1:0"]);
        EmbeddedBroker::spawn(command, store, log_path, "name server")
    }

    fn spawn(
        mut command: Command,
        store: PathBuf,
        log_path: PathBuf,
        what: &str,
    ) -> Result<EmbeddedBroker, String> {
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
        let ready = wait_ready(&mut child);
        let mut broker = EmbeddedBroker {
            child: Some(child),
            store,
            log_path,
            addr: String::new(),
            ready_line: String::new(),
            clean_exit: true,
        };
        match ready {
            Ok(line) => {
                broker.addr = parse_listen(&line).ok_or_else(|| {
                    format!("the embedded broker's ready line has no listen address: {line}")
                })?;
                broker.ready_line = line;
                Ok(broker)
            }
            Err(reason) => {
                broker.kill();
                Err(format!(
                    "embedded {what} failed to start: {reason}\n{}",
                    broker.log_tail()
                ))
            }
        }
    }

    /// The broker process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `name=value` field of the ready line (e.g. `ha`).
    pub fn ready_field(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.ready_line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(prefix.as_str()).map(str::to_string))
    }

    /// The last lines of the broker's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// SIGTERM, wait for a clean exit (killing it after the grace period), delete the store.
    pub fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let _ = std::fs::remove_dir_all(&self.store);
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s)
                if !self.clean_exit
                    && std::os::unix::process::ExitStatusExt::signal(&s) == Some(libc::SIGTERM) =>
            {
                Ok(())
            }
            Some(s) => Err(format!(
                "embedded broker exited with {s} on SIGTERM\n{}",
                self.log_tail()
            )),
            None => Err(format!(
                "embedded broker did not exit within {} s of SIGTERM and was killed\n{}",
                STOP_GRACE.as_secs(),
                self.log_tail()
            )),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the ready line on the child's stdout, or its exit, or the timeout. A thread keeps
/// draining stdout afterwards so the broker never blocks on a full pipe.
fn wait_ready(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("broker stdout was not piped")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("ringmq ready") {
                let _ = sender.send(line.trim().to_string());
            }
            line.clear();
        }
        let _ = reader.read_to_end(&mut Vec::new());
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => return Ok(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!("it exited ({status}) before it was ready"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status}) before it was ready"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no ready line within {} s",
                READY_TIMEOUT.as_secs()
            ));
        }
    }
}

fn parse_listen(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .map(str::to_string)
}

fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = root.join(format!(
        "ringmq-bench-{}-{name}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("creating broker store {}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    format!(
        "last lines of {}:\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

/// How long a slave may take to connect every shard's link before the run is abandoned.
const SLAVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The client address of the master the controller at `controller` elected for the bench's
/// group `group`, once its SyncStateSet holds `members` brokers.
pub fn controlled_master(controller: &str, group: &str, members: usize) -> Result<String, String> {
    let deadline = Instant::now() + SLAVE_CONNECT_TIMEOUT;
    let mut client = crate::client::controller::ControllerClient::new(
        vec![controller.to_string()],
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    loop {
        if let Ok(state) = client.group_state(BENCH_CLUSTER, group) {
            let master = state
                .brokers
                .iter()
                .find(|b| b.broker_id == state.master_broker_id && b.broker_id != 0);
            if let (Some(master), true) = (master, state.sync_state_set.len() >= members) {
                return Ok(master.listen.clone());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the embedded controller at {controller} elected no master with {members} members within {} s",
                SLAVE_CONNECT_TIMEOUT.as_secs()
            ));
        }
        // Polling a state that has no event to wait on; the interval only bounds start-up.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every shard of the master at `addr` has `slaves` connected, caught-up slaves,
/// so a SYNC_MASTER run measures replication rather than SLAVE_NOT_AVAILABLE answers.
pub fn wait_for_slaves(addr: &str, slaves: usize) -> Result<(), String> {
    let deadline = Instant::now() + SLAVE_CONNECT_TIMEOUT;
    let mut client = crate::client::Client::connect(addr)
        .map_err(|e| format!("cannot reach the embedded master at {addr}: {e}"))?;
    loop {
        let status = client
            .call(&crate::protocol::message::ClusterStatusRequest {})
            .map_err(|e| format!("cluster status of {addr}: {e}"))?;
        let ready = status
            .shards
            .iter()
            .all(|s| s.slaves.iter().filter(|r| r.lag_bytes == 0).count() >= slaves);
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the embedded slave did not connect to {addr} within {} s",
                SLAVE_CONNECT_TIMEOUT.as_secs()
            ));
        }
        // Polling a status that has no event to wait on; the interval only bounds start-up.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPUs this process may run on, in order (its affinity mask); empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Splits `cpus` into `parts` contiguous, non-empty sets (parts beyond the CPU count reuse
/// them round robin), so co-located groups pin their shards to different CPUs.
pub fn split_cpus(cpus: &[usize], parts: usize) -> Vec<Vec<usize>> {
    if cpus.is_empty() || parts == 0 {
        return vec![Vec::new(); parts];
    }
    (0..parts)
        .map(|part| {
            if parts <= cpus.len() {
                let (start, end) = (part * cpus.len() / parts, (part + 1) * cpus.len() / parts);
                cpus[start..end].to_vec()
            } else {
                vec![cpus[part % cpus.len()]]
            }
        })
        .collect()
}

/// Starts the child with `cpus` as its affinity mask.
fn restrict_to_cpus(command: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    if cpus.is_empty() {
        return;
    }
    // SAFETY: `set` is built before the fork; the closure only makes the sched_setaffinity
    // system call, which is async-signal-safe, in the child before exec.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
