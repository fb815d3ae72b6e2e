//! [`SpliceSender`]: zero-copy send of a commitlog byte range to a replica's TCP socket.
//!
//! Data enters as (segment fd, offset, length) from the replication master and leaves on the
//! replica's socket. The bytes go page cache → pipe → socket buffers inside the kernel: a
//! linked pair of io_uring `Splice` operations (file → pipe, pipe → socket) per chunk, on a
//! small ring this sender owns. They never enter user space.
//!
//! The kernel always runs splices on io_uring's worker threads (io-wq), so a cold page-cache
//! read or a socket with a full send buffer blocks a kernel worker, never the core. The glommio
//! task waits for completions by reading the ring's registered eventfd through glommio:
//! `BufferedFile::read_at` on a *blocking* eventfd parks the task until the kernel posts a
//! completion (a non-blocking one would return EAGAIN instead of parking). See
//! `notes/glommio-probe.md` §3 for the measurements behind this design.
//!
//! Invariants between calls: no operation is in flight and the pipe is empty. A transfer that
//! fails, or whose future is dropped, cancels what it submitted (waiting for the kernel to
//! finish cancelling) and discards the bytes left in the pipe before control returns, so the
//! next transfer never sends stale bytes and no operation outlives the fds it names.

use crate::constants::{
    SPLICE_CANCEL_ROUNDS_MAX, SPLICE_CANCEL_ROUND_WAIT_MS, SPLICE_PIPE_CAPACITY_BYTES,
    SPLICE_PIPE_MIN_CAPACITY_BYTES, SPLICE_RING_ENTRIES,
};
use glommio::io::BufferedFile;
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// `user_data` of the file → pipe splice.
const TAG_FILE_TO_PIPE: u64 = 1;
/// `user_data` of the pipe → socket splice.
const TAG_PIPE_TO_SOCKET: u64 = 2;
/// `user_data` of the POLLOUT poll that precedes a retry after a short or refused send.
const TAG_SOCKET_WRITABLE: u64 = 3;
/// `user_data` of cancellation requests.
const TAG_CANCEL: u64 = 4;
/// Tags a transfer step may have in flight, all of which cancellation targets.
const TRANSFER_TAGS: [u64; 3] = [TAG_FILE_TO_PIPE, TAG_PIPE_TO_SOCKET, TAG_SOCKET_WRITABLE];

/// Sends file ranges to sockets with io_uring splice. Owned by one executor (not `Send`): the
/// completion eventfd is awaited through that executor's glommio reactor.
pub struct SpliceSender {
    /// A ring of our own, because glommio 0.9 exposes no way to submit a splice on its rings.
    /// Sized for one transfer step plus cancellation ([`SPLICE_RING_ENTRIES`]).
    ring: IoUring,
    /// Read end of the staging pipe: page references leave here for the socket.
    pipe_read: OwnedFd,
    /// Write end of the staging pipe: page references from the file arrive here.
    pipe_write: OwnedFd,
    /// What `F_SETPIPE_SZ` granted; a chunk never exceeds it, so one file → pipe splice fits.
    pipe_capacity_bytes: usize,
    /// Bytes in the pipe not yet sent. Zero between transfers.
    pipe_pending_bytes: usize,
    /// Blocking eventfd registered with `ring`, owned by glommio so a task can await it.
    /// Dropping it hands the fd to glommio's asynchronous close (next reactor cycle).
    completion_event: BufferedFile,
    /// Operations submitted to `ring` and not yet reaped (cancellation requests excluded).
    in_flight: usize,
    /// Page size, to keep chunks page-aligned: a pipe slot holds at most one page.
    page_bytes: usize,
    bytes_spliced_total: u64,
    bytes_copied_total: u64,
    submissions_total: u64,
    short_sends_total: u64,
}

/// Results of one transfer step, by operation; `None` if the step did not include it.
#[derive(Debug, Default)]
struct StepResults {
    file_to_pipe: Option<i32>,
    pipe_to_socket: Option<i32>,
    socket_writable: Option<i32>,
}

impl StepResults {
    fn record(&mut self, tag: u64, result: i32) {
        match tag {
            TAG_FILE_TO_PIPE => self.file_to_pipe = Some(result),
            TAG_PIPE_TO_SOCKET => self.pipe_to_socket = Some(result),
            TAG_SOCKET_WRITABLE => self.socket_writable = Some(result),
            other => unreachable!("unknown splice ring tag {other}"),
        }
    }
}

/// Where a transfer stands; `next_file_offset - start_offset` bytes have entered the pipe.
#[derive(Debug)]
struct RangeCursor {
    file: RawFd,
    socket: RawFd,
    start_offset: u64,
    len: usize,
    next_file_offset: u64,
    sent: usize,
}

impl RangeCursor {
    fn remaining_to_read(&self) -> usize {
        self.len - (self.next_file_offset - self.start_offset) as usize
    }
}

impl SpliceSender {
    /// Creates the ring, the pipe and the completion eventfd.
    ///
    /// Must be called on a glommio executor thread; panics otherwise (glommio needs its
    /// reactor to wrap the eventfd).
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(SPLICE_RING_ENTRIES)
            .map_err(|e| with_context(e, "creating the splice io_uring"))?;
        let (pipe_read, pipe_write) = new_pipe()?;
        let pipe_capacity_bytes = grow_pipe(&pipe_write)?;
        // Blocking on purpose: glommio's read then parks on it instead of returning EAGAIN.
        // SAFETY: plain syscall; the result is checked before use.
        let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if event < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "creating the eventfd",
            ));
        }
        // SAFETY: `event` is a fresh fd that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(event) };
        ring.submitter()
            .register_eventfd(event.as_raw_fd())
            .map_err(|e| with_context(e, "registering the eventfd with the splice ring"))?;
        // SAFETY: ownership of the fd moves to the BufferedFile, which closes it on drop.
        let completion_event = unsafe { BufferedFile::from_raw_fd(event.into_raw_fd()) };
        // SAFETY: sysconf has no preconditions.
        let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert!(page_bytes > 0, "sysconf(_SC_PAGESIZE) failed");
        Ok(Self {
            ring,
            pipe_read,
            pipe_write,
            pipe_capacity_bytes,
            pipe_pending_bytes: 0,
            completion_event,
            in_flight: 0,
            page_bytes: page_bytes as usize,
            bytes_spliced_total: 0,
            bytes_copied_total: 0,
            submissions_total: 0,
            short_sends_total: 0,
        })
    }

    /// Sends exactly `len` bytes of `file` from `offset` to `socket`; returns `len`.
    ///
    /// `file` is a plain buffered read-only fd (O_DIRECT writes are visible through it);
    /// `socket` is a connected stream socket, blocking or not. Both must stay open until the
    /// returned future completes or is dropped. A range reaching past the end of the file is
    /// refused with `UnexpectedEof` before anything is sent. On any error the socket may have
    /// received part of the range, so the caller should drop the connection.
    pub async fn send_file_range(
        &mut self,
        file: RawFd,
        offset: u64,
        len: usize,
        socket: RawFd,
    ) -> io::Result<usize> {
        ensure_range_in_file(file, offset, len)?;
        self.transfer(file, offset, len, socket).await
    }

    /// Bytes the splice path has put on sockets.
    pub fn bytes_spliced_total(&self) -> u64 {
        self.bytes_spliced_total
    }

    /// Bytes copied through user space on the way to a socket. The splice path never adds to
    /// it; callers that fall back to copying report those bytes with [`Self::add_bytes_copied`].
    pub fn bytes_copied_total(&self) -> u64 {
        self.bytes_copied_total
    }

    /// Records `bytes` copied through user space by a caller's non-splice path.
    pub fn add_bytes_copied(&mut self, bytes: u64) {
        self.bytes_copied_total += bytes;
    }

    /// `io_uring_enter` calls that submitted work (one per transfer step).
    pub fn submissions_total(&self) -> u64 {
        self.submissions_total
    }

    /// Times the socket accepted less than offered (full send buffer): a slow replica.
    pub fn short_sends_total(&self) -> u64 {
        self.short_sends_total
    }

    /// Pipe capacity the kernel granted, which is the largest chunk one step moves.
    pub fn pipe_capacity_bytes(&self) -> usize {
        self.pipe_capacity_bytes
    }

    /// The transfer loop without the up-front size check, so a file shorter than the range
    /// exercises the end-of-file path.
    async fn transfer(
        &mut self,
        file: RawFd,
        offset: u64,
        len: usize,
        socket: RawFd,
    ) -> io::Result<usize> {
        debug_assert_eq!(self.in_flight, 0);
        debug_assert_eq!(self.pipe_pending_bytes, 0);
        let mut cursor = RangeCursor {
            file,
            socket,
            start_offset: offset,
            len,
            next_file_offset: offset,
            sent: 0,
        };
        let guard = SettleOnExit { sender: self };
        while cursor.sent < cursor.len {
            let step = guard.sender.next_step(&cursor);
            let results = guard.sender.run_step(&step).await?;
            guard.sender.account(results, &mut cursor)?;
        }
        debug_assert_eq!(guard.sender.pipe_pending_bytes, 0);
        Ok(cursor.sent)
    }

    /// With an empty pipe: fill it from the file and send, linked. Otherwise: wait until the
    /// socket is writable and send what the pipe holds (a poll on a writable socket completes
    /// at once, so it costs nothing when the previous send was short for another reason).
    fn next_step(&self, cursor: &RangeCursor) -> [squeue::Entry; 2] {
        let socket = types::Fd(cursor.socket);
        if self.pipe_pending_bytes == 0 {
            // Only the first chunk can start mid-page; trimming it keeps later chunks
            // page-aligned so a full chunk fills exactly the pipe's page slots.
            let page_offset = (cursor.next_file_offset % self.page_bytes as u64) as usize;
            let chunk = cursor
                .remaining_to_read()
                .min(self.pipe_capacity_bytes - page_offset);
            let read = opcode::Splice::new(
                types::Fd(cursor.file),
                cursor.next_file_offset as i64,
                types::Fd(self.pipe_write.as_raw_fd()),
                -1,
                chunk as u32,
            )
            .build()
            .user_data(TAG_FILE_TO_PIPE)
            .flags(squeue::Flags::IO_LINK);
            [read, self.pipe_to_socket(socket, chunk)]
        } else {
            let writable = opcode::PollAdd::new(socket, libc::POLLOUT as u32)
                .build()
                .user_data(TAG_SOCKET_WRITABLE)
                .flags(squeue::Flags::IO_LINK);
            [
                writable,
                self.pipe_to_socket(socket, self.pipe_pending_bytes),
            ]
        }
    }

    fn pipe_to_socket(&self, socket: types::Fd, len: usize) -> squeue::Entry {
        opcode::Splice::new(
            types::Fd(self.pipe_read.as_raw_fd()),
            -1,
            socket,
            -1,
            len as u32,
        )
        .build()
        .user_data(TAG_PIPE_TO_SOCKET)
    }

    /// Submits one step and waits, without blocking the thread, until all of it completed.
    async fn run_step(&mut self, entries: &[squeue::Entry]) -> io::Result<StepResults> {
        assert_eq!(self.in_flight, 0, "a splice step started over another one");
        // SAFETY: splice and poll entries name fds and lengths only, no user memory. The
        // fds stay open while the entries are in flight: the caller's until the future ends,
        // ours until Drop, and both the end of a transfer and Drop reap everything first.
        unsafe { self.ring.submission().push_multiple(entries) }
            .expect("the splice ring is empty between steps and holds a whole step");
        self.in_flight += entries.len();
        self.submit()?;
        let mut results = StepResults::default();
        loop {
            for cqe in self.ring.completion() {
                self.in_flight -= 1;
                results.record(cqe.user_data(), cqe.result());
            }
            if self.in_flight == 0 {
                return Ok(results);
            }
            // Wakes when the kernel posts a completion; a wake-up left over from completions
            // already reaped only costs one more look at the queue.
            self.completion_event
                .read_at(0, 8)
                .await
                .map_err(|e| with_context(io::Error::from(e), "awaiting the splice eventfd"))?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.submissions_total += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(with_context(e, "submitting to the splice ring")),
            }
        }
    }

    /// Applies a step's results to the cursor and counters; operating errors end the transfer.
    fn account(&mut self, results: StepResults, cursor: &mut RangeCursor) -> io::Result<()> {
        if let Some(result) = results.socket_writable {
            if result < 0 && result != -libc::ECANCELED && result != -libc::EINTR {
                let error = io::Error::from_raw_os_error(-result);
                return Err(socket_error(error, "waiting for writability", cursor));
            }
        }
        if let Some(result) = results.file_to_pipe {
            self.account_read(result, cursor)?;
        }
        if let Some(result) = results.pipe_to_socket {
            self.account_send(result, cursor)?;
        }
        Ok(())
    }

    fn account_send(&mut self, result: i32, cursor: &mut RangeCursor) -> io::Result<()> {
        match result {
            sent if sent > 0 => {
                let sent = sent as usize;
                if sent < self.pipe_pending_bytes {
                    self.short_sends_total += 1;
                }
                self.pipe_pending_bytes -= sent;
                cursor.sent += sent;
                self.bytes_spliced_total += sent as u64;
                Ok(())
            }
            0 => Err(socket_error(
                io::ErrorKind::WriteZero.into(),
                "sending (the socket took 0 bytes)",
                cursor,
            )),
            error if error == -libc::EAGAIN => {
                self.short_sends_total += 1;
                Ok(())
            }
            // ECANCELED: the linked read was short, its bytes wait in the pipe for the next
            // step. EINTR: interrupted before sending anything; the next step retries.
            error if error == -libc::ECANCELED || error == -libc::EINTR => Ok(()),
            error => Err(socket_error(
                io::Error::from_raw_os_error(-error),
                "sending",
                cursor,
            )),
        }
    }

    fn account_read(&mut self, result: i32, cursor: &mut RangeCursor) -> io::Result<()> {
        match result {
            read if read > 0 => {
                cursor.next_file_offset += read as u64;
                self.pipe_pending_bytes += read as usize;
                Ok(())
            }
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file fd {} ends at offset {}, {} bytes short of the range [{}, {})",
                    cursor.file,
                    cursor.next_file_offset,
                    cursor.remaining_to_read(),
                    cursor.start_offset,
                    cursor.start_offset + cursor.len as u64
                ),
            )),
            error if error == -libc::EINTR => Ok(()),
            error => Err(io::Error::new(
                io::Error::from_raw_os_error(-error).kind(),
                format!(
                    "splicing file fd {} at offset {} into the pipe: {}",
                    cursor.file,
                    cursor.next_file_offset,
                    io::Error::from_raw_os_error(-error)
                ),
            )),
        }
    }

    /// Cancels every operation in flight and waits for the kernel to finish them. Blocks the
    /// thread, so it runs only when a transfer is abandoned or the sender dropped: cancelled
    /// polls end at once, a splice blocked on a socket or pipe is interrupted, and a splice
    /// reading the disk finishes its read (milliseconds). Bounded by
    /// [`SPLICE_CANCEL_ROUNDS_MAX`] rounds of [`SPLICE_CANCEL_ROUND_WAIT_MS`].
    fn cancel_in_flight_blocking(&mut self) {
        let wait = types::Timespec::new().nsec(SPLICE_CANCEL_ROUND_WAIT_MS * 1_000_000);
        let args = types::SubmitArgs::new().timespec(&wait);
        let mut cancels_in_flight = 0usize;
        for _ in 0..SPLICE_CANCEL_ROUNDS_MAX {
            if self.in_flight == 0 && cancels_in_flight == 0 {
                return;
            }
            // Asked again every round: a linked operation not yet started when the previous
            // round ran is not found by its cancellation.
            if self.in_flight > 0 {
                for tag in TRANSFER_TAGS {
                    let cancel = opcode::AsyncCancel::new(tag).build().user_data(TAG_CANCEL);
                    // SAFETY: a cancellation names a user_data, no memory or fd.
                    if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
                        cancels_in_flight += 1;
                    }
                }
            }
            let want = cancels_in_flight + usize::from(self.in_flight > 0);
            // ETIME (the round's wait ran out) and EINTR just start the next round.
            let _ = self.ring.submitter().submit_with_args(want, &args);
            for cqe in self.ring.completion() {
                if cqe.user_data() == TAG_CANCEL {
                    cancels_in_flight -= 1;
                    continue;
                }
                self.in_flight -= 1;
                if cqe.user_data() == TAG_PIPE_TO_SOCKET && cqe.result() > 0 {
                    self.bytes_spliced_total += cqe.result() as u64;
                }
            }
        }
        tracing::warn!(
            in_flight = self.in_flight,
            "splice operations still running after cancellation; the ring's teardown ends them"
        );
    }

    /// Empties the pipe after an abandoned transfer, so its bytes never reach another socket.
    /// Reads the bytes into a scratch buffer and drops them; they are not sent, so they do
    /// not count as copied. Only called with nothing in flight.
    fn discard_pipe_contents(&mut self) {
        let mut scratch = [0u8; 4096];
        for _ in 0..=(self.pipe_capacity_bytes / scratch.len() + 1) {
            let mut available: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int to the pointer given.
            let status =
                unsafe { libc::ioctl(self.pipe_read.as_raw_fd(), libc::FIONREAD, &mut available) };
            if status < 0 || available <= 0 {
                break;
            }
            let want = (available as usize).min(scratch.len());
            // SAFETY: reads at most `want` bytes into `scratch`; the pipe holds at least
            // `want`, so the blocking read returns at once.
            let read = unsafe {
                libc::read(
                    self.pipe_read.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    want,
                )
            };
            if read < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.pipe_pending_bytes = 0;
    }

    /// Restores the between-calls invariants after a transfer ends early.
    fn settle(&mut self) {
        let cancelled = self.in_flight > 0;
        if cancelled {
            self.cancel_in_flight_blocking();
        }
        if cancelled || self.pipe_pending_bytes > 0 {
            self.discard_pipe_contents();
        }
    }
}

impl Drop for SpliceSender {
    /// No operation may outlive the fds it names: the caller's file and socket may be closed
    /// and their numbers reused as soon as we return. Normally nothing is in flight here
    /// (every transfer settles on exit); this covers a sender dropped in an unusual state.
    fn drop(&mut self) {
        if self.in_flight > 0 {
            self.cancel_in_flight_blocking();
        }
    }
}

/// Settles the sender when a transfer ends: nothing to do after success; after an error or
/// when the transfer's future is dropped mid-await, cancel what is in flight and empty the pipe.
struct SettleOnExit<'a> {
    sender: &'a mut SpliceSender,
}

impl Drop for SettleOnExit<'_> {
    fn drop(&mut self) {
        self.sender.settle();
    }
}

/// Refuses a range that is empty of meaning (overflowing) or reaches past the end of `file`,
/// before anything is sent.
fn ensure_range_in_file(file: RawFd, offset: u64, len: usize) -> io::Result<()> {
    // SAFETY: fstat writes one `stat` into the zeroed struct given.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file, &mut stat) } < 0 {
        let error = io::Error::last_os_error();
        return Err(with_context(error, &format!("fstat of file fd {file}")));
    }
    let size = stat.st_size as u64;
    let end = offset.checked_add(len as u64).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range at offset {offset} of {len} bytes overflows u64"),
        )
    })?;
    if end > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "range [{offset}, {end}) reaches past the end of file fd {file} ({size} bytes)"
            ),
        ));
    }
    Ok(())
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            "creating the splice pipe",
        ));
    }
    // SAFETY: both fds are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for [`SPLICE_PIPE_CAPACITY_BYTES`], halving down to [`SPLICE_PIPE_MIN_CAPACITY_BYTES`]
/// when the kernel refuses (above `/proc/sys/fs/pipe-max-size` without CAP_SYS_RESOURCE, or
/// over the per-user pipe budget), then settles for the default. Returns the capacity granted.
fn grow_pipe(pipe: &OwnedFd) -> io::Result<usize> {
    let mut want = SPLICE_PIPE_CAPACITY_BYTES;
    while want >= SPLICE_PIPE_MIN_CAPACITY_BYTES {
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory.
        let granted = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, want as i32) };
        if granted > 0 {
            return Ok(granted as usize);
        }
        want /= 2;
    }
    // SAFETY: F_GETPIPE_SZ touches no memory.
    let granted = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if granted <= 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            "reading the pipe size",
        ));
    }
    Ok(granted as usize)
}

fn socket_error(error: io::Error, doing: &str, cursor: &RangeCursor) -> io::Error {
    io::Error::new(
        error.kind(),
        format!(
            "{doing} on socket fd {} after {} of {} bytes of file fd {} from offset {}: {error}",
            cursor.socket, cursor.sent, cursor.len, cursor.file, cursor.start_offset
        ),
    )
}

fn with_context(error: io::Error, doing: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{doing}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use glommio::net::TcpStream as GlommioTcpStream;
    use glommio::LocalExecutorBuilder;
    use std::future::Future;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    /// Large enough to span several pipe-sized chunks, small enough for debug builds.
    const FILE_BYTES: usize = 3 * 1024 * 1024 + 123;

    fn run_in_executor<F, T>(make: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: Future<Output = ()> + 'static,
    {
        LocalExecutorBuilder::default()
            .name("splice-test")
            .spawn(make)
            .expect("spawning the test executor")
            .join()
            .expect("test executor panicked");
    }

    /// Known pseudo-random bytes (xorshift64), so any misplaced byte shows.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn write_file(dir: &Path, bytes: &[u8]) -> std::fs::File {
        let path = dir.join("segment");
        std::fs::write(&path, bytes).unwrap();
        std::fs::File::open(&path).unwrap()
    }

    /// A listener whose single connection is read to the end, `read_bytes` at a time with
    /// `pause` between reads.
    fn spawn_receiver(
        read_bytes: usize,
        pause: Duration,
    ) -> (SocketAddr, JoinHandle<io::Result<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let receiver = thread::spawn(move || {
            let (mut stream, _) = listener.accept()?;
            let mut received = Vec::new();
            let mut buffer = vec![0u8; read_bytes];
            loop {
                let n = stream.read(&mut buffer)?;
                if n == 0 {
                    return Ok(received);
                }
                received.extend_from_slice(&buffer[..n]);
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
        });
        (address, receiver)
    }

    fn shutdown_write(socket: RawFd) {
        // SAFETY: shutdown on an fd we hold open; no memory involved.
        assert_eq!(unsafe { libc::shutdown(socket, libc::SHUT_WR) }, 0);
    }

    fn pipe_bytes_waiting(sender: &SpliceSender) -> libc::c_int {
        let mut available: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        let status =
            unsafe { libc::ioctl(sender.pipe_read.as_raw_fd(), libc::FIONREAD, &mut available) };
        assert_eq!(status, 0);
        available
    }

    #[test]
    fn ranges_arrive_byte_exact_without_copies() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let content = pattern(FILE_BYTES, 7);
            let file = write_file(dir.path(), &content);
            let (address, receiver) = spawn_receiver(64 * 1024, Duration::ZERO);
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let mut sender = SpliceSender::new().unwrap();
            let pipe = sender.pipe_capacity_bytes();
            assert!(pipe >= 4096);
            let ranges = [
                (1u64, 10usize),
                (4097, 2 * pipe + 777),
                (12_345, 1),
                ((FILE_BYTES - 5000) as u64, 5000),
                (0, FILE_BYTES),
            ];
            let mut expected = Vec::new();
            for (offset, len) in ranges {
                let sent = sender
                    .send_file_range(file.as_raw_fd(), offset, len, stream.as_raw_fd())
                    .await
                    .unwrap();
                assert_eq!(sent, len);
                expected.extend_from_slice(&content[offset as usize..offset as usize + len]);
                assert_eq!(pipe_bytes_waiting(&sender), 0);
            }
            shutdown_write(stream.as_raw_fd());
            let received = receiver.join().unwrap().unwrap();
            assert_eq!(received.len(), expected.len());
            assert!(
                received == expected,
                "received bytes differ from the ranges sent"
            );
            assert_eq!(sender.bytes_copied_total(), 0);
            assert_eq!(sender.bytes_spliced_total(), expected.len() as u64);
            assert!(sender.submissions_total() >= ranges.len() as u64);
        });
    }

    #[test]
    fn range_past_end_of_file_is_refused_and_short_file_ends_with_eof() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let content = pattern(FILE_BYTES, 11);
            let file = write_file(dir.path(), &content);
            let (address, receiver) = spawn_receiver(64 * 1024, Duration::ZERO);
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let (fd, socket) = (file.as_raw_fd(), stream.as_raw_fd());
            let mut sender = SpliceSender::new().unwrap();
            let tail = (FILE_BYTES - 10) as u64;
            let refused = sender.send_file_range(fd, tail, 100, socket).await;
            assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            let overflow = sender.send_file_range(fd, u64::MAX, 2, socket).await;
            assert_eq!(overflow.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            // Past the size check (as if the file shrank): the loop itself must see the end.
            let short = sender.transfer(fd, tail, 100, socket).await;
            assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!((sender.in_flight, sender.pipe_pending_bytes), (0, 0));
            assert_eq!(pipe_bytes_waiting(&sender), 0);
            // The sender stays usable after the error.
            sender.send_file_range(fd, 0, 3, socket).await.unwrap();
            shutdown_write(socket);
            let received = receiver.join().unwrap().unwrap();
            assert_eq!(received.len(), 13);
            assert_eq!(&received[..10], &content[FILE_BYTES - 10..]);
            assert_eq!(&received[10..], &content[..3]);
        });
    }

    #[test]
    fn receiver_closing_early_is_an_error() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let file = write_file(dir.path(), &pattern(FILE_BYTES, 13));
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let receiver = thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut first = [0u8; 1];
                stream.read_exact(&mut first).unwrap();
            });
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let mut sender = SpliceSender::new().unwrap();
            let mut outcome = Ok(0);
            for _ in 0..64 {
                outcome = sender
                    .send_file_range(file.as_raw_fd(), 0, FILE_BYTES, stream.as_raw_fd())
                    .await;
                if outcome.is_err() {
                    break;
                }
            }
            receiver.join().unwrap();
            let kind = outcome
                .expect_err("sending to a closed peer kept succeeding")
                .kind();
            assert!(
                matches!(
                    kind,
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ),
                "unexpected error kind {kind:?}"
            );
            assert_eq!(pipe_bytes_waiting(&sender), 0);
        });
    }

    /// Sends the whole file through `socket` to a receiver that reads 8 KiB per millisecond.
    async fn send_to_slow_receiver(socket: RawFd, file: &std::fs::File) -> SpliceSender {
        let mut sender = SpliceSender::new().unwrap();
        let sent = sender
            .send_file_range(file.as_raw_fd(), 5, FILE_BYTES - 5, socket)
            .await
            .unwrap();
        assert_eq!(sent, FILE_BYTES - 5);
        shutdown_write(socket);
        sender
    }

    #[test]
    fn slow_receiver_on_nonblocking_socket_gets_every_byte() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let content = pattern(FILE_BYTES, 17);
            let file = write_file(dir.path(), &content);
            let (address, receiver) = spawn_receiver(8 * 1024, Duration::from_millis(1));
            let stream = TcpStream::connect(address).unwrap();
            socket2::SockRef::from(&stream)
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            stream.set_nonblocking(true).unwrap();
            let sender = send_to_slow_receiver(stream.as_raw_fd(), &file).await;
            let received = receiver.join().unwrap().unwrap();
            assert!(received == content[5..], "received bytes differ");
            assert!(sender.short_sends_total() > 0, "the socket never filled up");
            assert_eq!(sender.bytes_copied_total(), 0);
        });
    }

    #[test]
    fn slow_receiver_on_blocking_socket_gets_every_byte() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let content = pattern(FILE_BYTES, 19);
            let file = write_file(dir.path(), &content);
            let (address, receiver) = spawn_receiver(8 * 1024, Duration::from_millis(1));
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let sender = send_to_slow_receiver(stream.as_raw_fd(), &file).await;
            let received = receiver.join().unwrap().unwrap();
            assert!(received == content[5..], "received bytes differ");
            assert_eq!(sender.bytes_spliced_total(), (FILE_BYTES - 5) as u64);
        });
    }

    #[test]
    fn dropped_transfer_leaves_nothing_in_flight() {
        run_in_executor(|| async {
            let dir = tempfile::tempdir().unwrap();
            let content = pattern(FILE_BYTES, 23);
            let file = write_file(dir.path(), &content);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let (release, released) = mpsc::channel::<()>();
            // Accepts and never reads until released, so the send blocks in the kernel.
            let receiver = thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                released.recv().unwrap();
                drop(stream);
            });
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let mut sender = SpliceSender::new().unwrap();
            // 8 copies of the file: far more than the socket buffers on both ends hold.
            let transfer = async {
                for _ in 0..8 {
                    sender
                        .send_file_range(file.as_raw_fd(), 0, FILE_BYTES, stream.as_raw_fd())
                        .await
                        .unwrap();
                }
                false
            };
            let timer = async {
                glommio::timer::sleep(Duration::from_millis(200)).await;
                true
            };
            assert!(
                future::or(transfer, timer).await,
                "the transfer was never stuck"
            );
            assert_eq!((sender.in_flight, sender.pipe_pending_bytes), (0, 0));
            assert_eq!(pipe_bytes_waiting(&sender), 0);
            release.send(()).unwrap();
            receiver.join().unwrap();
            // The sender recovers: a new connection gets exactly the next range.
            let (address, receiver) = spawn_receiver(64 * 1024, Duration::ZERO);
            let stream = GlommioTcpStream::connect(address).await.unwrap();
            let sent = sender
                .send_file_range(file.as_raw_fd(), 100, 1000, stream.as_raw_fd())
                .await
                .unwrap();
            assert_eq!(sent, 1000);
            shutdown_write(stream.as_raw_fd());
            assert!(receiver.join().unwrap().unwrap() == content[100..1100]);
        });
    }
}
