//! CPU accounting from `/proc`: how much processor time the bench itself and the broker
//! processes used during a run's measured phase, so a reader sees which side was saturated.
//!
//! A process's time is `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15, clock ticks),
//! which the kernel keeps for the whole thread group, threads that already exited included; so
//! producer and consumer threads that end before the last sample still count. Embedded brokers
//! are child processes, known by pid; an external broker's pid is given (`--broker-pid`) or found
//! as the process holding the listening socket of its port (`/proc/net/tcp*` inode, then
//! `/proc/*/fd`), which works when it runs on this machine under a user whose `/proc` entries
//! this process may read. The search runs only when the broker's host is this machine
//! ([`is_local_host`]): for a remote broker a local process on the same port is someone else.

use serde::Serialize;
use std::net::{ToSocketAddrs, UdpSocket};
use std::time::Instant;

/// A process whose CPU a run reports.
#[derive(Clone, Debug)]
pub struct Watched {
    /// `broker` for a process the clients talk to (a group's master), `slave` for a replica.
    pub label: &'static str,
    pub pid: u32,
}

/// CPU time of the bench and the watched processes at one instant.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    driver_ticks: Option<u64>,
    watched_ticks: Vec<Option<u64>>,
    acked_messages: u64,
}

/// What a run used, as printed and stored in `results.json`. Percentages are of one core
/// (200 % = two cores busy); `None` where `/proc` could not be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CpuUse {
    /// Seconds between the two samples.
    pub seconds: f64,
    /// The whole bench process (producers, consumers, the progress display).
    pub driver_percent: Option<f64>,
    /// The broker the clients talk to (with several groups: every master together).
    pub broker_percent: Option<f64>,
    /// The slave of a replicated mode (with several groups: every slave together).
    pub slave_percent: Option<f64>,
    /// Broker CPU per acknowledged message in the sampled window, in µs.
    pub broker_us_per_message: Option<f64>,
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `utime + stime` of a `/proc/.../stat` text, in clock ticks. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields count from the last `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn process_ticks(pid: &str) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl Sample {
    pub fn take(watched: &[Watched], acked_messages: u64) -> Sample {
        Sample {
            at: Instant::now(),
            driver_ticks: process_ticks("self"),
            watched_ticks: watched
                .iter()
                .map(|w| process_ticks(&w.pid.to_string()))
                .collect(),
            acked_messages,
        }
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Sample, watched: &[Watched]) -> CpuUse {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        let tick = 1.0 / ticks_per_second();
        let percent = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if seconds > 0.0 => {
                Some(b.saturating_sub(a) as f64 * tick / seconds * 100.0)
            }
            _ => None,
        };
        let mut out = CpuUse {
            seconds,
            driver_percent: percent(self.driver_ticks, later.driver_ticks),
            ..CpuUse::default()
        };
        let messages = later.acked_messages.saturating_sub(self.acked_messages);
        // Every process of a label counts (the masters of all groups are `broker`, their
        // slaves `slave`); one unreadable process makes the label's total unknown.
        let total = |label: &str| -> Option<Option<(u64, u64)>> {
            let mut sum: Option<(u64, u64)> = None;
            for (index, w) in watched.iter().enumerate() {
                if (w.label == "broker") != (label == "broker") {
                    continue;
                }
                let (a, b) = (self.watched_ticks[index], later.watched_ticks[index]);
                let (a, b) = match (a, b) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Some(None),
                };
                let (sa, sb) = sum.unwrap_or((0, 0));
                sum = Some((sa + a, sb + b.max(a)));
            }
            sum.map(Some)
        };
        if let Some(broker) = total("broker") {
            let (a, b) = (broker.map(|t| t.0), broker.map(|t| t.1));
            out.broker_percent = percent(a, b);
            if let (Some(a), Some(b), true) = (a, b, messages > 0) {
                let us = b.saturating_sub(a) as f64 * tick * 1e6;
                out.broker_us_per_message = Some(us / messages as f64);
            }
        }
        if let Some(slave) = total("slave") {
            out.slave_percent = percent(slave.map(|t| t.0), slave.map(|t| t.1));
        }
        out
    }
}

/// Whether `host` (a name, an address, IPv6 in brackets or not) is this machine: it resolves to
/// a loopback or unspecified address, or to one a socket here can bind (only an address of a
/// local interface can be bound).
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(addrs) = (host, 0).to_socket_addrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        let ip = a.ip();
        ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
    })
}

/// The pid of the local process listening on TCP `port`, if it can be found.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Socket inodes in state LISTEN (`0A`) on `port` in `/proc/net/tcp` and `tcp6`.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        out.extend(listening_inodes_in(&text, port));
    }
    out
}

/// The LISTEN entries on `port` of one `/proc/net/tcp`-format table: their socket inodes.
pub fn listening_inodes_in(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|s| s.to_string()))?
        })
        .collect()
}
