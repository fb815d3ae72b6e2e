#!/usr/bin/env bash
# This machine's limits, so bench results can be read as a fraction of them:
#   1. O_DIRECT 4 KiB write + fdatasync, one at a time: latency p50/p99 (the floor of a
#      SYNC_FLUSH ack with no group commit) and IOPS;
#   2. sequential O_DIRECT 1 MiB writes: bandwidth (the ceiling of commitlog throughput), and
#      sequential O_DIRECT 1 MiB reads of the same file: bandwidth (what a master's disk can feed
#      a catching-up slave from a cold cache);
#   3. each 4 KiB O_DIRECT write + fdatasync pair timed as one (a Python probe, PROBE_SECONDS,
#      default 5): p50/p99 of the sum, the floor of one SYNC_FLUSH ack. fio reports the write
#      and the sync latency separately, and p99(write) + p99(sync) only bounds p99(write + sync)
#      from above;
#   4. loopback TCP round trip of a 1 KiB message with TCP_NODELAY: p50/p99 (the floor of any
#      produce ack).
# Runs on the filesystem of DIR (default: the system temp dir, where embedded brokers put their
# stores). Output: a short table on stdout and limits.json in OUT (default results/limits).
set -euo pipefail
dir="${1:-${TMPDIR:-/tmp}}"
out="${2:-results/limits}"
mkdir -p "$out"
work="$(mktemp -d "$dir/ringmq-limits-XXXXXX")"
trap 'rm -rf "$work"' EXIT

if ! command -v fio >/dev/null; then
  echo "fio not found; installing it (apt-get install -y fio)" >&2
  if command -v apt-get >/dev/null; then
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y fio >/dev/null 2>&1; } || true
  fi
fi
if ! command -v fio >/dev/null; then
  echo "fio is unavailable: disk limits skipped (see perf/README.md for the glommio probe numbers)" >&2
else
  # Each 4 KiB write is followed by fdatasync; files are laid out first (fio writes them), so
  # this measures overwrite of written extents like the broker's zero-filled segments.
  fio --name=sync4k --filename="$work/sync4k" --size=64M --bs=4k --rw=write \
      --direct=1 --fdatasync=1 --ioengine=psync --runtime=10 --time_based \
      --output-format=json --output="$out/fio-sync4k.json" >/dev/null
  fio --name=seq1m --filename="$work/seq1m" --size=1G --bs=1m --rw=write \
      --direct=1 --ioengine=libaio --iodepth=4 --end_fsync=1 \
      --output-format=json --output="$out/fio-seq1m.json" >/dev/null
  # O_DIRECT bypasses the page cache, so this reads the disk even right after the write.
  fio --name=seqread1m --filename="$work/seq1m" --size=1G --bs=1m --rw=read \
      --direct=1 --ioengine=libaio --iodepth=4 \
      --output-format=json --output="$out/fio-seqread1m.json" >/dev/null
  rm -f "$work/seq1m"
fi

python3 - "$out" "$work" "${PROBE_SECONDS:-5}" <<'PY'
import json, mmap, os, socket, sys, threading, time
out, work, probe_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
result = {}

def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None

sync = load("fio-sync4k.json")
if sync:
    job = sync["jobs"][0]
    write = job["write"]
    # fio reports the fdatasync latency separately ("sync"); a SYNC_FLUSH ack costs write + sync.
    clat = write["clat_ns"]["percentile"]
    sync_lat = job.get("sync", {}).get("lat_ns", {}).get("percentile", {})
    result["o_direct_4k_write_us"] = {"p50": clat["50.000000"] / 1e3, "p99": clat["99.000000"] / 1e3}
    if sync_lat:
        result["fdatasync_after_4k_write_us"] = {"p50": sync_lat["50.000000"] / 1e3, "p99": sync_lat["99.000000"] / 1e3}
    result["write_plus_fdatasync_per_sec"] = write["iops"]
seq = load("fio-seq1m.json")
if seq:
    result["sequential_o_direct_write_mib_per_sec"] = seq["jobs"][0]["write"]["bw"] / 1024
seq_read = load("fio-seqread1m.json")
if seq_read:
    result["sequential_o_direct_read_mib_per_sec"] = seq_read["jobs"][0]["read"]["bw"] / 1024

def write_sync_pairs():
    """p50/p99 of one 4 KiB O_DIRECT pwrite plus its fdatasync, timed together, over a file
    laid out first (overwrites of written extents, as the broker's zero-filled segments)."""
    path, size = os.path.join(work, "pairs"), 64 << 20
    with open(path, "wb") as f:
        f.write(bytes(size))
        os.fsync(f.fileno())
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * 4096)
    sums, offset = [], 0
    end = time.perf_counter() + probe_seconds
    try:
        while time.perf_counter() < end:
            started = time.perf_counter_ns()
            os.pwrite(fd, buf, offset)
            os.fdatasync(fd)
            sums.append((time.perf_counter_ns() - started) / 1e3)
            offset = (offset + 4096) % size
    finally:
        os.close(fd)
        os.unlink(path)
    sums.sort()
    return {"p50": sums[len(sums) // 2], "p99": sums[int(len(sums) * 0.99)], "samples": len(sums),
            "note": "python probe: includes a few us of interpreter time per pair"}

try:
    result["o_direct_4k_write_plus_fdatasync_us"] = write_sync_pairs()
except OSError as e:  # e.g. a filesystem without O_DIRECT (tmpfs)
    print(f"write+fdatasync probe skipped: {e}", file=sys.stderr)

def echo_server(listener):
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
threading.Thread(target=echo_server, args=(listener,), daemon=True).start()
client = socket.create_connection(listener.getsockname())
client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
payload = b"x" * 1024
rtts = []
for _ in range(20000):
    started = time.perf_counter_ns()
    client.sendall(payload)
    got = 0
    while got < len(payload):
        got += len(client.recv(65536))
    rtts.append((time.perf_counter_ns() - started) / 1e3)
rtts.sort()
result["loopback_tcp_rtt_1k_us"] = {"p50": rtts[len(rtts) // 2], "p99": rtts[int(len(rtts) * 0.99)],
                                    "note": "python client and server threads: an upper bound"}
json.dump(result, open(os.path.join(out, "limits.json"), "w"), indent=2)
for key, value in result.items():
    print(f"{key:40} {value}")
PY
