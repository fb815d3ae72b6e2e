//! A fake broker for client and CLI tests: a `std::net::TcpListener` on loopback whose
//! connections each run a test-supplied handler on their own thread. It decodes requests with
//! the real protocol module, so the client is tested against the documented wire format.

use crate::protocol::frame::{encode_frame, FrameHeader};
use crate::protocol::message::{Metadata, TopicInfo};
use crate::protocol::{FrameDecoder, Status};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

pub(crate) struct FakeConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl FakeConn {
    /// The next request, or `None` when the client closed the connection.
    pub(crate) fn read_request(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        let decoder = FrameDecoder::new(1 << 20);
        loop {
            if let Some(frame) = decoder.decode(&self.buf).expect("client sent a bad frame") {
                let request = (frame.header, frame.body.to_vec());
                let used = frame.wire_len();
                self.buf.drain(..used);
                return Some(request);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub(crate) fn reply(&mut self, request: &FrameHeader, status: Status, body: &[u8]) {
        self.reply_raw(request.opcode, request.request_id, status, body);
    }

    pub(crate) fn reply_raw(&mut self, opcode: u16, request_id: u64, status: Status, body: &[u8]) {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            FrameHeader::response(opcode, status, request_id),
            body,
        );
        let _ = self.stream.write_all(&out);
    }
}

/// Starts the fake broker and returns its port; `handler` runs once per accepted connection.
pub(crate) fn spawn(handler: impl Fn(FakeConn) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || {
                handler(FakeConn {
                    stream,
                    buf: Vec::new(),
                })
            });
        }
    });
    port
}

/// Like [`spawn`], for one connection only: the listener closes once it is accepted, so a
/// later connect is refused (a broker that died after answering).
pub(crate) fn spawn_once(handler: impl FnOnce(FakeConn) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        handler(FakeConn {
            stream,
            buf: Vec::new(),
        })
    });
    port
}

pub(crate) fn metadata(shard_ports: Vec<u16>, topics: Vec<TopicInfo>) -> Vec<u8> {
    let mut out = Vec::new();
    Metadata {
        broker_name: "fake".to_string(),
        role: "ASYNC_MASTER".to_string(),
        flush_disk_type: "ASYNC_FLUSH".to_string(),
        shard_ports,
        topics,
    }
    .encode(&mut out);
    out
}

pub(crate) fn topic(name: &str, queue_shards: Vec<u16>) -> TopicInfo {
    TopicInfo {
        name: name.to_string(),
        topic_id: 1,
        queue_shards,
    }
}
