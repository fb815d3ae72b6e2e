//! `machine.json`: what the numbers were measured on (kernel, the store's filesystem and disk
//! queue settings, cores, memory, git commit), so results can be compared across machines.

use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::Command;

/// Files under `/sys/block/<dev>/queue/` that change how a flush or an O_DIRECT write behaves.
const QUEUE_SETTINGS: [&str; 9] = [
    "rotational",
    "logical_block_size",
    "physical_block_size",
    "write_cache",
    "fua",
    "io_poll",
    "scheduler",
    "nr_requests",
    "max_sectors_kb",
];

/// Describes this machine and the storage under `store_path`.
pub fn describe(store_path: &Path, broker_config: Value) -> Value {
    let mount = mount_of(store_path);
    let disk = mount
        .as_ref()
        .and_then(|(device, _, _)| block_device(device))
        .map(|name| {
            let mut queue = Map::new();
            for key in QUEUE_SETTINGS {
                let path = format!("/sys/block/{name}/queue/{key}");
                if let Ok(text) = std::fs::read_to_string(path) {
                    queue.insert(key.to_string(), Value::String(text.trim().to_string()));
                }
            }
            json!({ "name": name, "queue": queue })
        });
    json!({
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "hostname": read_trimmed("/proc/sys/kernel/hostname"),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model(),
        "memory_total_kib": mem_total_kib(),
        "store": {
            "path": store_path.display().to_string(),
            "device": mount.as_ref().map(|m| m.0.clone()),
            "mount_point": mount.as_ref().map(|m| m.1.clone()),
            "filesystem": mount.as_ref().map(|m| m.2.clone()),
            "disk": disk,
        },
        "git_commit": git_commit(),
        "ringmq_version": env!("CARGO_PKG_VERSION"),
        "broker_config": broker_config,
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn mem_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// (device, mount point, filesystem type) of the longest mount point containing `path`.
fn mount_of(path: &Path) -> Option<(String, String, String)> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (device.to_string(), point.to_string(), fs.to_string()))
        })
        .max_by_key(|(_, point, _)| point.len())
}

/// The `/sys/block` name holding `device` (a partition maps to its disk).
fn block_device(device: &str) -> Option<String> {
    let resolved = std::fs::canonicalize(device).ok()?;
    let name = resolved.file_name()?.to_str()?.to_string();
    let blocks = std::fs::read_dir("/sys/block").ok()?;
    blocks
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|disk| name.starts_with(disk.as_str()))
        .max_by_key(|disk| disk.len())
}

fn git_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
