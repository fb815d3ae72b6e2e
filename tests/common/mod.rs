//! Shared harness for end-to-end tests: runs the real `ringmq serve` binary on loopback in a
//! temporary store, waits for its ready line (an event, not a sleep), and can SIGKILL and
//! restart it on the same store.
#![allow(dead_code)]

pub mod controlled;
pub mod kafka;
pub mod netns;
pub mod tls;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a broker may take to recover and print its ready line. Generous: a debug build on
/// a loaded 2-core machine zero-fills its first segments (1 GiB each at the default
/// configuration) before it is ready. Past it the test fails with the tail of the broker's log:
/// a recovery that hangs never hangs the suite.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a broker may take to exit after SIGTERM before the test kills it and fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the broker's log a failure message quotes.
const LOG_TAIL_LINES: usize = 40;

/// The configuration a test broker runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// 1 MiB segments, 4 MiB write buffers, 256 KiB messages, checkpoints every 200 ms: a
    /// short test rolls many segments and crosses many checkpoints. Disk-pressure retention
    /// waits for 97% of the filesystem in use (DISK_FULL at 99%), so a test's segments are not
    /// deleted because the machine running it happens to be fuller than 75%; the retention
    /// tests set their own ratios.
    Small,
    /// Nothing set: 1 GiB segments, one shard per core, the default buffers, intervals and
    /// timeouts, as a user who installs the broker runs it.
    Default,
}

impl Sizes {
    fn config(self) -> &'static str {
        match self {
            Sizes::Small => {
                "segment_size_bytes = 1048576\nwrite_buffer_bytes = 4194304\n\
                 max_message_bytes = 262144\nmax_frame_bytes = 4194304\n\
                 checkpoint_interval_ms = 200\nsync_flush_timeout_ms = 10000\n\
                 disk_max_used_space_ratio = 0.97\ndisk_space_warning_ratio = 0.99\n"
            }
            Sizes::Default => "",
        }
    }
}

/// One shard's "recovered" log line: what its start-up recovery scanned and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    pub shard: u32,
    pub unclean_shutdown: bool,
    pub scanned_bytes: u64,
    pub truncated_bytes: u64,
    pub duration_ms: f64,
}

impl Recovery {
    /// Parses a `recovered` line of the broker's log (tracing's `key=value` fields).
    fn parse(line: &str) -> Option<Recovery> {
        let field = |name: &str| {
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(prefix.as_str()).map(str::to_string))
        };
        Some(Recovery {
            shard: field("shard")?.parse().ok()?,
            unclean_shutdown: field("unclean_shutdown")?.parse().ok()?,
            scanned_bytes: field("scanned_bytes")?.parse().ok()?,
            truncated_bytes: field("truncated_bytes")?.parse().ok()?,
            duration_ms: field("duration_ms")?.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shard {} unclean={} scanned_bytes={} truncated_bytes={} duration_ms={:.1}",
            self.shard,
            self.unclean_shutdown,
            self.scanned_bytes,
            self.truncated_bytes,
            self.duration_ms
        )
    }
}

pub struct Broker {
    child: Option<Child>,
    pub store: PathBuf,
    pub addr: String,
    pub shard_ports: Vec<u16>,
    /// The replication (HA) address from the ready line.
    pub ha: String,
    args: Vec<String>,
    stderr_log: PathBuf,
    /// The last ready line, for fields a test needs beyond the ones parsed here.
    pub ready_line: String,
    /// Where the current process's part of the log starts.
    log_start: usize,
    /// The network namespace it runs in (`ip netns exec`), for multi-host tests
    /// ([`netns::Lab`]); `None`: this one.
    netns: Option<String>,
}

impl Broker {
    /// Starts a broker in `root` (store in `root/data`, log in `root/broker.log`) with `extra`
    /// flags (e.g. `--flush SYNC_FLUSH`) and a small-segment configuration suitable for tests.
    pub fn start(root: &Path, extra: &[&str]) -> Broker {
        Broker::start_with_config(root, "", extra)
    }

    /// Like [`Broker::start`], with `config` (TOML lines) appended to the test configuration;
    /// a line of `config` replaces the test configuration's line with the same key.
    /// `--listen` and `--ha-listen` default to `127.0.0.1:0` unless `extra` names them.
    pub fn start_with_config(root: &Path, config_extra: &str, extra: &[&str]) -> Broker {
        Broker::start_sized(root, Sizes::Small, config_extra, extra)
    }

    /// Like [`Broker::start_with_config`], at the configuration `sizes` names.
    pub fn start_sized(root: &Path, sizes: Sizes, config_extra: &str, extra: &[&str]) -> Broker {
        Broker::launch(root, sizes, config_extra, extra, None)
    }

    /// Like [`Broker::start_sized`], inside the network namespace `netns` (a [`netns::Lab`]
    /// host); `extra` names `--listen` and `--ha-listen` on the host's address.
    pub fn start_in(
        netns: &str,
        root: &Path,
        sizes: Sizes,
        config_extra: &str,
        extra: &[&str],
    ) -> Broker {
        assert!(
            extra.contains(&"--listen") && extra.contains(&"--ha-listen"),
            "a broker in a namespace listens on its host's address"
        );
        Broker::launch(root, sizes, config_extra, extra, Some(netns))
    }

    /// Writes the configuration, builds the arguments and starts the broker (in `netns`, if
    /// given).
    fn launch(
        root: &Path,
        sizes: Sizes,
        config_extra: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Broker {
        let store = root.join("data");
        let config = root.join("broker.toml");
        std::fs::write(&config, merged_config(sizes.config(), config_extra))
            .expect("write test config");
        let mut args = vec![
            "serve".to_string(),
            "--config".to_string(),
            config.display().to_string(),
            "--store".to_string(),
            store.display().to_string(),
        ];
        // Free ports unless the test names its own, so tests can run side by side.
        for flag in ["--listen", "--ha-listen"] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut broker = Broker {
            child: None,
            store,
            addr: String::new(),
            shard_ports: Vec::new(),
            ha: String::new(),
            args,
            stderr_log: root.join("broker.log"),
            ready_line: String::new(),
            log_start: 0,
            netns: netns.map(str::to_string),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("open broker log");
        self.log_start = self.log().len();
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_ringmq")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ringmq")),
        };
        let mut child = command
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start ringmq serve");
        let rx = ready_lines(&mut child);
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not become ready within {READY_TIMEOUT:?} (or exited); \
                     the end of its log:\n{}",
                    self.log_tail()
                );
            }
        };
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("listen=") {
                self.addr = v.to_string();
            }
            if let Some(v) = field.strip_prefix("ha=") {
                self.ha = v.to_string();
            }
            if let Some(v) = field.strip_prefix("shard_ports=") {
                self.shard_ports = v.split(',').map(|p| p.parse().expect("port")).collect();
            }
        }
        self.ready_line = line;
        self.child = Some(child);
    }

    /// A `name=value` field of the ready line.
    pub fn ready_field(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.ready_line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(prefix.as_str()).map(str::to_string))
    }

    /// SIGKILL: no chance to flush, checkpoint or remove the abort marker.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether the exit status was success. A broker
    /// still running after [`STOP_TIMEOUT`] is killed and the test fails with its log.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "broker did not exit within {STOP_TIMEOUT:?} of SIGTERM; \
                         the end of its log:\n{}",
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// SIGKILL and start again at once, before the killed process is reaped (a supervisor
    /// that restarts on the signal, not on the exit): the new broker must wait out the dying
    /// one's store lock and ports.
    pub fn kill_and_restart_at_once(&mut self) {
        let mut killed = self.child.take().expect("broker running");
        let _ = killed.kill();
        self.spawn();
        let _ = killed.wait();
    }

    /// Starts the broker again on the same store (after `kill` or `stop`). Ports may change.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn();
    }

    /// Sets `flag`'s value for the next (re)start, e.g. `--role` or `--master`.
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(at) => self.args[at + 1] = value.to_string(),
            None => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the running broker.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("broker running") as i32;
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// SIGSTOP, and wait until every thread of the broker is stopped (delivery to a
    /// multi-threaded process is not instantaneous: a core could still answer meanwhile).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid().expect("broker running");
        wait_until(Duration::from_secs(10), "the broker stopped", || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks
                .filter_map(|t| t.ok())
                .all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .is_some_and(|state| state == "T" || state == "t")
                })
                .then_some(())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The last [`LOG_TAIL_LINES`] lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// The log written by the current (last started) process.
    pub fn current_log(&self) -> String {
        self.log()
            .get(self.log_start..)
            .unwrap_or_default()
            .to_string()
    }

    /// The per-shard recovery reports of the current process, one per shard.
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.current_log()
            .lines()
            .filter(|l| l.contains(" recovered "))
            .filter_map(Recovery::parse)
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the broker process is still running (has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A blocking client on the shared (bootstrap) port.
    pub fn client(&self) -> ringmq::client::Client {
        ringmq::client::Client::connect(&self.addr).expect("connect to broker")
    }

    pub fn client_with(&self, options: ringmq::client::ClientOptions) -> ringmq::client::Client {
        ringmq::client::Client::connect_with(&self.addr, options).expect("connect to broker")
    }

    /// Runs a client subcommand of the binary against this broker (`--broker` added), feeding
    /// `stdin`, and returns its output once it exits.
    pub fn cli(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        run_binary(
            &args
                .iter()
                .copied()
                .chain(["--broker", self.addr.as_str()])
                .collect::<Vec<_>>(),
            stdin,
        )
    }
}

/// Retention keys that delete nothing by themselves during a test (`delete_when` is an hour the
/// broker's local time is not in now) but make everything sealed deletable on request
/// (`file_reserved_time_ms = 1`), with a pass every 100 ms.
#[allow(dead_code)]
pub fn retention_on_request() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let other_hour = (ringmq::clock::local_hour_of(now_ms) + 12) % 24;
    format!(
        "file_reserved_time_ms = 1\ndelete_when = \"{other_hour:02}\"\n\
         clean_resource_interval_ms = 100\n"
    )
}

/// The small test configuration with the lines of `extra` added or replacing the line of the
/// same key.
pub fn test_config(extra: &str) -> String {
    merged_config(Sizes::Small.config(), extra)
}

/// `base` (TOML lines) with the lines of `extra` added, each replacing the line of `base` with
/// the same key (TOML refuses a key given twice).
fn merged_config(base: &str, extra: &str) -> String {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let replaced: Vec<String> = extra.lines().map(key).filter(|k| !k.is_empty()).collect();
    let mut toml: String = base
        .lines()
        .filter(|line| !replaced.contains(&key(line)))
        .map(|line| format!("{line}\n"))
        .collect();
    toml.push_str(extra);
    toml.push('\n');
    toml
}

/// Runs the `ringmq` binary with `args` and `stdin` to completion.
pub fn run_binary(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringmq");
    let mut input = child.stdin.take().expect("stdin piped");
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(output) => output.expect("wait for ringmq"),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!(
                "`ringmq {}` did not exit within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
    };
    writer.join().expect("stdin writer");
    output
}

/// How long a CLI invocation may run before the test gives up on it.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn temp_store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ringmq-test-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir")
}

/// Polls `probe` until it returns `Some`, at most `timeout`; panics naming `what` otherwise.
/// For conditions the tests cannot be told about (cluster status, a log line): the poll is
/// the event, the deadline the bound.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Fixed ports for a broker that must keep its addresses across restarts (replication: a
/// slave reconnects to its master's HA port; a failover consumer to its master's client port).
/// The client port `listen`, the shard-aware ports `listen + 100 + n` (n < 4), the HA port
/// `listen + 1` and a Kafka port `listen + 2`, all below the kernel's ephemeral range (32768+) so no outgoing connection can
/// take them while the broker is down, and spread by process id so that concurrent test
/// processes do not pick the same ones. Every port is checked free when allocated.
#[derive(Clone, Copy, Debug)]
pub struct PortBlock {
    pub listen: u16,
    pub ha: u16,
}

impl PortBlock {
    pub fn allocate() -> PortBlock {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let spread = (std::process::id() % 97) as u16;
        loop {
            let slot = NEXT.fetch_add(1, Ordering::SeqCst);
            assert!(slot < 60, "ran out of test port blocks");
            let listen = 20_000 + spread + slot * 200;
            let ports = [
                listen,
                listen + 1,
                listen + 2,
                listen + 100,
                listen + 101,
                listen + 102,
                listen + 103,
            ];
            let free = ports
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
            if free {
                return PortBlock {
                    listen,
                    ha: listen + 1,
                };
            }
        }
    }

    pub fn listen_addr(&self) -> String {
        format!("127.0.0.1:{}", self.listen)
    }

    pub fn ha_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ha)
    }

    /// A Kafka listener's address, `listen + 2`, for a Kafka client that reconnects across a
    /// restart.
    pub fn kafka_addr(&self) -> String {
        format!("127.0.0.1:{}", self.listen + 2)
    }
}

/// The whole HTTP/1.0 response (head and body) to `GET path` on `addr` (the broker's
/// `/metrics` listener), read until the server closes, at most 10 s between reads.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// The seed for a randomized test: from `var` to replay a failure, else from the clock. Tests
/// print it so a failing run can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{var} must be a u64")),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        }
    }
}

/// Produces `count` messages of `size` bytes of `b'x'` to `queue` in one batch: enough data
/// that pulls of it are large.
pub fn produce_filler(
    client: &mut ringmq::client::Client,
    topic: &str,
    queue: u32,
    count: usize,
    size: usize,
) {
    let body = vec![b'x'; size];
    let batch: Vec<ringmq::protocol::message::MessageRef<'_>> = (0..count)
        .map(|_| ringmq::protocol::message::MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: &body,
        })
        .collect();
    client
        .produce(topic, Some(queue), &batch)
        .expect("produce filler");
}

/// A loop device with an ext4 file system mounted on a directory; undone on drop.
pub struct LoopMount {
    image: PathBuf,
    device: String,
    pub mount: PathBuf,
}

impl LoopMount {
    pub fn create(root: &Path, size_bytes: u64) -> LoopMount {
        let image = root.join("disk.img");
        let file = std::fs::File::create(&image).expect("create image");
        file.set_len(size_bytes).expect("size image");
        drop(file);
        let out = checked("losetup", &["--find", "--show", image.to_str().unwrap()]);
        let device = String::from_utf8(out).unwrap().trim().to_string();
        let mount = root.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        let guard = LoopMount {
            image,
            device,
            mount,
        };
        checked("mkfs.ext4", &["-q", "-F", &guard.device]);
        checked("mount", &[&guard.device, guard.mount.to_str().unwrap()]);
        guard
    }

    /// [`LoopMount::create`], or `None` (with nothing left behind) where a loop device cannot
    /// be set up or mounted (a container without loop devices, say).
    pub fn try_create(root: &Path, size_bytes: u64) -> Option<LoopMount> {
        let probe = root.join("probe.img");
        let file = std::fs::File::create(&probe).ok()?;
        file.set_len(size_bytes).ok()?;
        drop(file);
        let out = Command::new("losetup")
            .args(["--find", "--show", probe.to_str()?])
            .output()
            .ok();
        let _ = std::fs::remove_file(&probe);
        let device = out
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
        let _ = Command::new("losetup").args(["-d", &device]).status();
        let result = std::panic::catch_unwind(|| LoopMount::create(root, size_bytes));
        result.ok()
    }

    pub fn available_bytes(&self) -> u64 {
        let c_path = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        assert_eq!(
            unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) },
            0
        );
        let stats = unsafe { stats.assume_init() };
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // A killed broker's io_uring is torn down by the kernel after the process is reaped,
        // so its files can keep the mount busy for a moment: retry, then detach it lazily
        // rather than leave a mounted file system behind under a deleted image.
        let unmounted = (0..50).any(|attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(100));
            }
            Command::new("umount")
                .arg(&self.mount)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

pub fn checked(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A real `ringmq namesrv` on a free loopback port (its ready line names the port), SIGKILLed
/// when dropped unless stopped before.
pub struct NameServer {
    child: Option<Child>,
    pub addr: String,
}

impl NameServer {
    pub fn start(expiry_ms: u64) -> NameServer {
        Self::start_with(expiry_ms, &[])
    }

    /// With extra flags (the hidden limits among them).
    pub fn start_with(expiry_ms: u64, flags: &[&str]) -> NameServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["namesrv", "--listen", "127.0.0.1:0", "--broker-expiry-ms"])
            .arg(expiry_ms.to_string())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ringmq namesrv");
        let rx = ready_lines(&mut child);
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the name server prints its ready line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        assert_eq!(field("role="), "NAMESRV");
        assert_eq!(field("expiry_ms="), expiry_ms.to_string());
        NameServer {
            addr: field("listen="),
            child: Some(child),
        }
    }

    pub fn client(&self) -> ringmq::client::NameServerClient {
        ringmq::client::NameServerClient::connect_list(&self.addr)
            .expect("connect to the name server")
    }

    /// Every cluster's routes.
    pub fn routes(&self) -> ringmq::protocol::namesrv::Routes {
        self.client().routes("").expect("routes")
    }

    /// SIGTERM, and the exit it must answer with: a clean one, within a deadline.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("the name server runs");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait().expect("wait for the name server") {
                Some(status) => {
                    assert!(status.success(), "exit after SIGTERM: {status}");
                    return;
                }
                None if std::time::Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20))
                }
                None => panic!("the name server did not exit within 10 s of SIGTERM"),
            }
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ringmq ready` lines a broker or name server prints on its piped stdout, as they come;
/// the rest of the output is drained so the process never blocks on a full pipe.
fn ready_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("ringmq ready") {
                let _ = tx.send(line.clone());
            }
            line.clear();
        }
        let _ = lines.read_to_end(&mut Vec::new());
    });
    rx
}

/// Creates SCRAM user `name` with `password` in the stopped store `store` (`ringmq user
/// create --store`, the offline bootstrap an operator runs before turning authentication on).
pub fn create_user_offline(store: &Path, name: &str, password: &str) {
    std::fs::create_dir_all(store).unwrap();
    let out = run_binary(
        &[
            "user",
            "create",
            name,
            "--store",
            store.to_str().unwrap(),
            "--new-password-file",
            "-",
        ],
        format!("{password}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "offline user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
