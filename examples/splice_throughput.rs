//! Throughput of `SpliceSender`: one file (256 MiB by default) sent whole to a reader thread
//! over loopback, cold (page cache dropped with `posix_fadvise(DONTNEED)`) and warm (file read
//! into the page cache first). Prints MB/s; asserts nothing.
//!
//! The sender's executor is pinned to core 0 and the reader thread to core 1, as in
//! `notes/glommio-probe.md` §3. The clock runs from the first splice until the reader has
//! seen the last byte.
//!
//! `cargo run --release --example splice_throughput -- [size_mib] [runs]`

use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use ringmq::replication::splice::SpliceSender;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread;
use std::time::Instant;

/// Write and read unit for building the file and for the reader thread.
const BLOCK_BYTES: usize = 1024 * 1024;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let size_mib: usize = args.next().map_or(256, |a| a.parse().expect("size_mib"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("runs"));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("segment");
    write_file(&path, size_mib)?;
    let handle = LocalExecutorBuilder::new(Placement::Fixed(0))
        .name("splice-throughput")
        .spawn(move || async move { measure(&path, size_mib * BLOCK_BYTES, runs).await })
        .map_err(io::Error::from)?;
    handle.join().map_err(io::Error::from)?
}

/// A file of pseudo-random blocks, synced so `DONTNEED` can drop every page.
fn write_file(path: &Path, size_mib: usize) -> io::Result<()> {
    let mut block: Vec<u8> = (0..BLOCK_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let mut file = File::create(path)?;
    for index in 0..size_mib {
        block[0] = index as u8;
        file.write_all(&block)?;
    }
    file.sync_all()
}

async fn measure(path: &Path, bytes: usize, runs: usize) -> io::Result<()> {
    let file = File::open(path)?;
    let mut sender = SpliceSender::new()?;
    println!(
        "file {} MiB, pipe {} KiB, {runs} runs",
        bytes >> 20,
        sender.pipe_capacity_bytes() >> 10
    );
    for run in 1..=runs {
        for cold in [true, false] {
            if cold {
                // SAFETY: advisory call on an open fd; touches no memory.
                let status = unsafe {
                    libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                assert_eq!(status, 0, "posix_fadvise(DONTNEED)");
            } else {
                io::copy(&mut File::open(path)?, &mut io::sink())?;
            }
            let submissions_before = sender.submissions_total();
            let seconds = send_once(&mut sender, &file, bytes).await?;
            println!(
                "run {run} {:<4}: {:>7.0} MB/s  ({:.3} s, {} submissions, {} short sends so far)",
                if cold { "cold" } else { "warm" },
                bytes as f64 / seconds / 1e6,
                seconds,
                sender.submissions_total() - submissions_before,
                sender.short_sends_total()
            );
        }
    }
    println!(
        "spliced {} bytes, copied {} bytes",
        sender.bytes_spliced_total(),
        sender.bytes_copied_total()
    );
    Ok(())
}

/// Sends the whole file to a fresh reader thread on core 1; returns seconds until it has all.
async fn send_once(sender: &mut SpliceSender, file: &File, bytes: usize) -> io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = thread::spawn(move || -> io::Result<usize> {
        core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; BLOCK_BYTES];
        let mut received = 0;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(received),
                n => received += n,
            }
        }
    });
    let stream = TcpStream::connect(address).await.map_err(io::Error::from)?;
    let start = Instant::now();
    sender
        .send_file_range(file.as_raw_fd(), 0, bytes, stream.as_raw_fd())
        .await?;
    // SAFETY: shutdown on an open socket; touches no memory.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    let received = reader.join().expect("reader thread panicked")?;
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(received, bytes, "the reader got a different byte count");
    Ok(seconds)
}
