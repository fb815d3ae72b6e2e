//! Targets for the replication link, on both sides: a hostile slave must not crash its master,
//! and a hostile master must not crash its slave.

use super::store::{append_from, append_waiting, log_bytes, open_store, recompute_crc};
use super::Input;
use crate::replication::master::SHIP_CHUNK_BYTES;
use crate::replication::protocol::{
    decode_proof, divergence_point, encode_data_header, encode_heartbeat, encode_proof,
    encode_refusal, next_shipped, Answer, Hello, MasterFrame, MetadataFrame, Shipped, Welcome,
    MAX_METADATA_BYTES, METADATA_HEADER_BYTES,
};
use crate::replication::replicas::Replicas;
use crate::replication::ReplicationError;
use crate::shard::groups::OffsetRow;
use crate::shard::topics::TopicTable;
use crate::store::ShardStore;
use crate::testing::disk::SimDisk;
use futures_lite::future::block_on;
use std::hint::black_box;

/// The handshake: the first byte picks the master's decoder of a slave's [`Hello`] (even), the
/// slave's decoder of the master's answer (a [`Welcome`], a refusal or a challenge; odd), or,
/// with bit 1 set as well, the master's decoder of a slave's proof; the rest is the body after
/// the length prefix.
pub fn ha_handshake(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if selector & 3 == 2 {
        if let Ok(proof) = black_box(decode_proof(body)) {
            let mut out = Vec::new();
            encode_proof(&proof, &mut out);
            assert_eq!(&out[4..], body, "proof encoding is not canonical");
        }
    } else if selector & 1 == 0 {
        black_box(Hello::version_of(body)).ok();
        if let Ok(hello) = black_box(Hello::decode(body)) {
            let mut out = Vec::new();
            hello.encode(&mut out);
            assert_eq!(length_prefix(&out), out.len() - 4);
            assert_eq!(Hello::decode(&out[4..]).as_ref(), Ok(&hello));
            assert_eq!(&out[4..], body, "hello encoding is not canonical");
        }
    } else {
        if let Ok(Answer::Challenge(challenge, proof)) = black_box(Answer::decode(body)) {
            let mut out = Vec::new();
            challenge.encode(&proof, &mut out);
            assert_eq!(length_prefix(&out), out.len() - 4);
            assert_eq!(&out[4..], body, "challenge encoding is not canonical");
        }
        match black_box(Welcome::decode(body)) {
            Ok(welcome) => {
                let mut out = Vec::new();
                welcome.encode(&mut out);
                assert_eq!(length_prefix(&out), out.len() - 4);
                assert_eq!(Welcome::decode(&out[4..]).ok().as_ref(), Some(&welcome));
                for (epoch, _) in &welcome.epochs {
                    black_box(divergence_point(&welcome.epochs, *epoch));
                }
            }
            Err(ReplicationError::Refused(reason)) => {
                let mut out = Vec::new();
                encode_refusal(&reason, &mut out);
                assert!(
                    matches!(Welcome::decode(&out[4..]), Err(ReplicationError::Refused(r)) if r == reason),
                    "a refusal does not decode back to its reason"
                );
            }
            Err(_) => {}
        }
    }
}

fn length_prefix(out: &[u8]) -> usize {
    u32::from_le_bytes(out[..4].try_into().expect("4 bytes")) as usize
}

/// The streams after the handshake. The first byte picks:
/// - bit 0 clear: the slave's receiver, on raw bytes from a hostile master (bit 1 clear; with
///   bit 2 set each record's crc32c is recomputed, so mutations reach the checks after it) or
///   on the log of a real master store built from the input and shipped in input-sized frames
///   with heartbeats and metadata frames between (bit 1 set), which the slave must reproduce
///   byte for byte;
/// - bit 0 set: the master's handling of slave reports.
pub fn ha_stream(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match (selector & 1 == 1, selector & 2 == 2) {
        (false, false) => {
            slave_receives(rest, selector & 4 == 4);
        }
        (false, true) => shipped_master_log(rest),
        (true, _) => master_reads_reports(rest),
    }
}

/// What the slave's receiver (`replication/slave.rs`) did with a stream.
struct Received {
    slave: ShardStore<SimDisk>,
    slave_disk: SimDisk,
    /// Log offset up to which the slave appended what it was sent.
    position: u64,
}

/// Runs the slave's receive loop over `stream` until it ends or the link would be dropped.
fn slave_receives(stream: &[u8], fix_crc: bool) -> Received {
    let slave_disk = SimDisk::new();
    let slave = open_store(&slave_disk).expect("a new store opens");
    let segment = slave.segment_size_bytes();
    let mut input = Input::new(stream);
    let mut pending = Vec::new();
    let mut position = slave.max_offset();
    let mut next_offset = position;
    'link: while !input.is_empty() {
        let kind = input.u8();
        let Some(header_len) = MasterFrame::header_bytes_after(kind) else {
            break;
        };
        let frame = match black_box(MasterFrame::decode(kind, input.bytes(header_len))) {
            Ok(frame) => frame,
            Err(_) => break,
        };
        let (offset, len) = match frame {
            MasterFrame::Heartbeat { .. } => continue,
            MasterFrame::Metadata { len } => {
                if len as usize > MAX_METADATA_BYTES {
                    break;
                }
                let body = input.bytes(len as usize);
                if body.len() < len as usize {
                    break;
                }
                match black_box(MetadataFrame::decode(body)) {
                    Ok(metadata) => {
                        let again = metadata.encode();
                        assert_eq!(
                            length_prefix(&again[1..]),
                            again.len() - METADATA_HEADER_BYTES
                        );
                        assert_eq!(
                            MetadataFrame::decode(&again[METADATA_HEADER_BYTES..]).as_ref(),
                            Ok(&metadata),
                            "a metadata frame does not decode back to itself"
                        );
                        continue;
                    }
                    Err(_) => break,
                }
            }
            MasterFrame::Data { offset, len, .. } => (offset, len),
        };
        if offset != next_offset || len as usize > SHIP_CHUNK_BYTES {
            break;
        }
        let bytes = input.bytes(len as usize);
        if bytes.len() < len as usize {
            break;
        }
        pending.extend_from_slice(bytes);
        next_offset += u64::from(len);
        let mut used = 0;
        loop {
            match next_shipped(&pending[used..], position, segment) {
                Err(_) => break 'link,
                Ok(Shipped::Incomplete) => break,
                Ok(Shipped::SegmentTail(skipped)) => {
                    used += skipped;
                    position += skipped as u64;
                }
                Ok(Shipped::Record(size)) => {
                    if fix_crc {
                        recompute_crc(&mut pending[used..used + size]);
                    }
                    let record = &pending[used..used + size];
                    if append_waiting(&slave, || slave.append_replicated(record)).is_err() {
                        break 'link;
                    }
                    used += size;
                    position += size as u64;
                    assert_eq!(
                        slave.max_offset(),
                        position,
                        "slave log is not where the master's is"
                    );
                }
            }
        }
        pending.drain(..used);
    }
    Received {
        slave,
        slave_disk,
        position,
    }
}

/// A master store built from the input, its log shipped in frames of input-chosen sizes with
/// heartbeats between them. The slave must end with the same log bytes. Then, where the input
/// asks, the slave cuts its log back to an input-chosen offset, as a master's [`Welcome`] can
/// tell it to. After a clean close the slave must recover to the same end.
fn shipped_master_log(data: &[u8]) {
    let mut input = Input::new(data);
    let (stream, log) = master_stream(&mut input);
    let end = log.len() as u64;
    let received = slave_receives(&stream, false);
    let slave = received.slave;
    block_on(slave.flush()).expect("a simulated disk does not fail");
    let copied = log_bytes(&received.slave_disk, slave.max_offset());
    assert_eq!(received.position, end);
    assert_eq!(
        slave.max_offset(),
        end,
        "the slave did not copy the whole log"
    );
    assert_eq!(copied, log, "the slave's log differs from the master's");
    let cut = input.u64();
    if cut & 1 == 1 {
        let truncate_to = (cut >> 1) % (end + 1);
        block_on(slave.truncate_to(truncate_to)).expect("a simulated disk does not fail");
        assert_eq!(slave.max_offset(), truncate_to);
    }
    let kept = slave.max_offset();
    block_on(slave.close()).expect("a simulated disk does not fail");
    drop(slave);
    let reopened = open_store(&received.slave_disk).expect("a closed slave store reopens");
    assert_eq!(reopened.max_offset(), kept);
}

/// The stream a master sends for the records `input` describes (see [`append_from`]), and the
/// log it ships.
pub(crate) fn master_stream(input: &mut Input<'_>) -> (Vec<u8>, Vec<u8>) {
    let master_disk = SimDisk::new();
    let master = open_store(&master_disk).expect("a new store opens");
    append_from(&master, input);
    block_on(master.flush()).expect("a simulated disk does not fail");
    let end = master.max_offset();
    let log = log_bytes(&master_disk, end);
    let mut stream = Vec::new();
    let mut offset = 0usize;
    while offset < log.len() {
        let chunk = (usize::from(input.u16()) % 8192 + 1).min(log.len() - offset);
        let between = input.u8();
        if between & 3 == 0 {
            stream.extend_from_slice(&encode_heartbeat(end, end));
        }
        if between & 12 == 4 {
            stream.extend_from_slice(&sample_metadata(u64::from(between)).encode());
        }
        stream.extend_from_slice(&encode_data_header(offset as u64, chunk as u32, end));
        stream.extend_from_slice(&log[offset..offset + chunk]);
        offset += chunk;
    }
    (stream, log)
}

/// Reports of two links (a link byte, then the 8-byte offset) against a master whose end moves
/// forward as the input says. A report past the master's end is refused and closes the link; no
/// report may release a producer past what the master holds.
fn master_reads_reports(data: &[u8]) {
    let mut input = Input::new(data);
    let min_in_sync_replicas = u32::from(input.u8() % 4);
    let mut master_max = u64::from(input.u32());
    let replicas = Replicas::new(
        min_in_sync_replicas,
        0,
        std::rc::Rc::new(crate::clock::RealClock),
    );
    let mut links = [
        Some(replicas.register("127.0.0.1:1".into(), 0, 0)),
        Some(replicas.register("127.0.0.1:2".into(), 0, 0)),
    ];
    while !input.is_empty() {
        let which = input.u8();
        if which & 0x80 != 0 {
            master_max = master_max.saturating_add(u64::from(input.u16()));
            continue;
        }
        let slot = usize::from(which & 1);
        let offset = input.u64();
        let Some(link) = links[slot] else {
            continue;
        };
        match black_box(replicas.report(link, offset, master_max)) {
            Ok(_) => {}
            Err(fake) => {
                assert!(fake.reported > fake.master_max);
                replicas.unregister(link);
                links[slot] = None;
            }
        }
        assert!(
            replicas.completions.released_offset() <= master_max,
            "a report released producers past the master's end"
        );
        black_box(replicas.in_sync(master_max, 1 << 20));
    }
}

/// A metadata frame as master shard 0 sends it: a topic table and group offsets.
pub(crate) fn sample_metadata(version: u64) -> MetadataFrame {
    let (table, _) = TopicTable::default()
        .with_topic("orders", 4, 2)
        .expect("a valid topic");
    MetadataFrame {
        version,
        topics: Some(table),
        group_offsets: vec![OffsetRow {
            group: "readers".into(),
            topic: "orders".into(),
            queue: 1,
            offset: 17,
        }],
        acls: crate::replication::protocol::AclTrailer::Absent,
        users: None,
    }
}
