//! One client connection: read frames, run each request as its own task (pipelining: many in
//! flight, answered as they complete, matched by request id), write responses in batches.
//!
//! The socket is duplicated so a reader and a writer task can each own a glommio stream. A
//! frame that breaks framing (oversized, bad magic, bad crc, unknown version or opcode) is
//! answered with an error where the request id is known, and then only this connection closes.

use crate::constants::{
    CONNECTION_READ_BUFFER_BYTES, MAX_INFLIGHT_BYTES_PER_CONNECTION,
    MAX_INFLIGHT_REQUESTS_PER_CONNECTION,
};
use crate::metrics::Counter;
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameError, FrameHeader};
use crate::protocol::{Opcode, Status};
use crate::shard::handlers;
use crate::shard::mesh::Reply;
use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use glommio::spawn_local;
use glommio::sync::Semaphore;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use tracing::debug;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // SAFETY: dup returns a new descriptor for the same socket, owned by the writer stream.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        debug!(
            "dup of a client socket failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let writer = unsafe { TcpStream::from_raw_fd(write_fd) };
    let (tx, rx) = local_channel::new_bounded::<Vec<u8>>(MAX_INFLIGHT_REQUESTS_PER_CONNECTION);
    let writer_shard = shard.clone();
    let writer_task = spawn_local(async move {
        let mut writer = writer;
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            writer_shard
                .probe
                .add(Counter::BytesOut, frame.len() as u64);
        }
        let _ = writer.close().await;
    });
    read_requests(shard, stream, Rc::new(tx)).await;
    writer_task.await;
}

async fn read_requests(shard: Rc<Shard>, mut stream: TcpStream, tx: Rc<LocalSender<Vec<u8>>>) {
    let decoder = FrameDecoder::new(shard.config.max_frame_bytes as usize);
    let inflight = Rc::new(Semaphore::new(MAX_INFLIGHT_REQUESTS_PER_CONNECTION as u64));
    let inflight_bytes = Rc::new(Semaphore::new(MAX_INFLIGHT_BYTES_PER_CONNECTION as u64));
    let mut buf = vec![0u8; CONNECTION_READ_BUFFER_BYTES];
    let mut filled = 0;
    loop {
        let mut consumed = 0;
        loop {
            match decoder.decode(&buf[consumed..filled]) {
                Ok(Some(frame)) => {
                    consumed += frame.wire_len();
                    let Some(opcode) = Opcode::from_u16(frame.header.opcode) else {
                        let reply = Reply::error(
                            Status::UnknownOpcode,
                            format!("unknown opcode {}", frame.header.opcode),
                        );
                        send_reply(&tx, frame.header, reply).await;
                        return;
                    };
                    let Ok(permit) = inflight.clone().acquire_static_permit(1).await else {
                        return;
                    };
                    let cost = frame.wire_len().min(MAX_INFLIGHT_BYTES_PER_CONNECTION) as u64;
                    let Ok(bytes_permit) = inflight_bytes.clone().acquire_static_permit(cost).await
                    else {
                        return;
                    };
                    let (shard, tx, header) = (shard.clone(), tx.clone(), frame.header);
                    let body = frame.body.to_vec();
                    spawn_local(async move {
                        let reply = handlers::handle(&shard, opcode, &body).await;
                        send_reply(&tx, header, reply).await;
                        drop((permit, bytes_permit));
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(e) => {
                    reject(&tx, &e).await;
                    return;
                }
            }
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if filled == buf.len() {
            // The frame is larger than the buffer but within the maximum (checked by the
            // decoder as soon as its header arrived): grow to hold it.
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                shard.probe.add(Counter::BytesIn, n as u64);
                filled += n;
            }
        }
    }
}

async fn send_reply(tx: &LocalSender<Vec<u8>>, request: FrameHeader, reply: Reply) {
    let mut frame =
        Vec::with_capacity(crate::protocol::frame::FRAME_HEADER_BYTES + reply.body.len());
    encode_frame(
        &mut frame,
        FrameHeader::response(request.opcode, reply.status, request.request_id),
        &reply.body,
    );
    let _ = tx.send(frame).await;
}

async fn reject(tx: &LocalSender<Vec<u8>>, error: &FrameError) {
    debug!("closing a connection: {error}");
    let header = FrameHeader::request(Opcode::Ping, error.request_id());
    let header = FrameHeader {
        opcode: 0,
        ..header
    };
    send_reply(tx, header, Reply::error(error.status(), error.to_string())).await;
}
