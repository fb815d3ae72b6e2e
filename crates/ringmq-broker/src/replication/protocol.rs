//! The replication link's messages (pure: no I/O), all little-endian.
//!
//! A slave shard opens a TCP connection to its master's HA address and sends a [`Hello`] (u32
//! length prefix); the master answers with a [`Welcome`] (u32 length prefix) that accepts or
//! refuses it. After that:
//! - master → slave: frames of one kind byte then a fixed header: `DATA` (commitlog offset u64,
//!   length u32, master confirmed offset u64, metadata version u64, then that many raw
//!   commitlog bytes) or `HEARTBEAT` (master max offset u64, master confirmed offset u64,
//!   metadata version u64). The confirmed offset bounds what the slave shows consumers, so a
//!   record is never served by a slave before the master's guarantee holds for it; a change of
//!   the metadata version (topics or group offsets changed) makes the slave copy them at once;
//! - slave → master: 8-byte reports, the slave's confirmed offset (u64).

use crate::protocol::codec::{DecodeError, Reader, Writer};
use crate::store::record::{
    END_OF_SEGMENT_MAGIC, END_OF_SEGMENT_MARKER_BYTES, RECORD_HEADER_BYTES,
};

pub const HA_MAGIC: u32 = 0x4148_4D52;
pub const HA_VERSION: u16 = 1;
pub const KIND_DATA: u8 = 1;
pub const KIND_HEARTBEAT: u8 = 2;
/// Kind byte + offset + length + master confirmed offset + metadata version.
pub const DATA_HEADER_BYTES: usize = 1 + 8 + 4 + 8 + 8;
/// Kind byte + master max offset + master confirmed offset + metadata version.
pub const HEARTBEAT_BYTES: usize = 1 + 8 + 8 + 8;
pub const REPORT_BYTES: usize = 8;
/// Largest handshake message accepted: a few hundred epochs and names.
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

pub type LogId = [u8; 16];

/// (epoch, first commitlog offset written in it). A master starts a new epoch when promoted.
pub type Epoch = (u32, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub shard: u16,
    pub shard_count: u16,
    pub segment_size_bytes: u64,
    /// All zeros when the slave's log is empty and it will adopt the master's.
    pub log_id: LogId,
    /// The slave's latest epoch (0 when it has none).
    pub last_epoch: u32,
    pub max_offset: u64,
    pub broker_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// `None` means accepted; `Some(reason)` refused.
    pub refused: Option<String>,
    pub log_id: LogId,
    pub epochs: Vec<Epoch>,
    /// The slave must first cut its log back to this offset (it diverged there); `u64::MAX`
    /// when nothing needs cutting.
    pub truncate_to: u64,
    /// The master's client address, for copying topics and group offsets.
    pub client_addr: String,
}

fn with_length(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    encode(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

impl Hello {
    pub fn encode(&self, out: &mut Vec<u8>) {
        with_length(out, |out| {
            let mut w = Writer::new(out);
            w.u32(HA_MAGIC)
                .u16(HA_VERSION)
                .u16(self.shard)
                .u16(self.shard_count)
                .u64(self.segment_size_bytes);
            out.extend_from_slice(&self.log_id);
            Writer::new(out)
                .u32(self.last_epoch)
                .u64(self.max_offset)
                .str16(&self.broker_name);
        });
    }

    /// Decodes the body after the length prefix.
    pub fn decode(body: &[u8]) -> Result<Hello, DecodeError> {
        let mut r = Reader::new(body);
        if r.u32("magic")? != HA_MAGIC {
            return Err(DecodeError::Invalid {
                field: "magic",
                reason: "not a ringmq replication link",
            });
        }
        if r.u16("version")? != HA_VERSION {
            return Err(DecodeError::Invalid {
                field: "version",
                reason: "unsupported replication protocol version",
            });
        }
        let shard = r.u16("shard")?;
        let shard_count = r.u16("shard_count")?;
        let segment_size_bytes = r.u64("segment_size_bytes")?;
        let log_id = read_log_id(&mut r)?;
        let hello = Hello {
            shard,
            shard_count,
            segment_size_bytes,
            log_id,
            last_epoch: r.u32("last_epoch")?,
            max_offset: r.u64("max_offset")?,
            broker_name: r.str16("broker_name")?.to_string(),
        };
        r.finish()?;
        Ok(hello)
    }
}

fn read_log_id(r: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let mut id = [0u8; 16];
    for b in id.iter_mut() {
        *b = r.u8("log_id")?;
    }
    Ok(id)
}

impl Welcome {
    pub fn refuse(reason: impl Into<String>) -> Welcome {
        Welcome {
            refused: Some(reason.into()),
            log_id: [0; 16],
            epochs: Vec::new(),
            truncate_to: u64::MAX,
            client_addr: String::new(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        with_length(out, |out| {
            Writer::new(out)
                .u8(self.refused.is_some() as u8)
                .str16(self.refused.as_deref().unwrap_or(""));
            out.extend_from_slice(&self.log_id);
            let mut w = Writer::new(out);
            w.u32(self.epochs.len() as u32);
            for (epoch, start) in &self.epochs {
                w.u32(*epoch).u64(*start);
            }
            w.u64(self.truncate_to).str16(&self.client_addr);
        });
    }

    pub fn decode(body: &[u8]) -> Result<Welcome, DecodeError> {
        let mut r = Reader::new(body);
        let refused = r.u8("refused")?;
        let reason = r.str16("reason")?.to_string();
        let log_id = read_log_id(&mut r)?;
        let count = r.count("epoch_count", 12)?;
        let mut epochs = Vec::with_capacity(count);
        for _ in 0..count {
            epochs.push((r.u32("epoch")?, r.u64("epoch_start")?));
        }
        let welcome = Welcome {
            refused: (refused != 0).then_some(reason),
            log_id,
            epochs,
            truncate_to: r.u64("truncate_to")?,
            client_addr: r.str16("client_addr")?.to_string(),
        };
        r.finish()?;
        Ok(welcome)
    }
}

/// What every master frame carries besides log bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasterState {
    pub confirmed_offset: u64,
    /// Counts topic and group-offset changes on the master shard.
    pub metadata_version: u64,
}

pub fn encode_data_header(offset: u64, len: u32, state: MasterState) -> [u8; DATA_HEADER_BYTES] {
    let mut out = [0u8; DATA_HEADER_BYTES];
    out[0] = KIND_DATA;
    out[1..9].copy_from_slice(&offset.to_le_bytes());
    out[9..13].copy_from_slice(&len.to_le_bytes());
    out[13..21].copy_from_slice(&state.confirmed_offset.to_le_bytes());
    out[21..29].copy_from_slice(&state.metadata_version.to_le_bytes());
    out
}

pub fn encode_heartbeat(master_max_offset: u64, state: MasterState) -> [u8; HEARTBEAT_BYTES] {
    let mut out = [0u8; HEARTBEAT_BYTES];
    out[0] = KIND_HEARTBEAT;
    out[1..9].copy_from_slice(&master_max_offset.to_le_bytes());
    out[9..17].copy_from_slice(&state.confirmed_offset.to_le_bytes());
    out[17..25].copy_from_slice(&state.metadata_version.to_le_bytes());
    out
}

/// A master → slave frame's fixed header (everything but a `DATA` frame's log bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterFrame {
    /// `len` raw commitlog bytes starting at commitlog offset `offset` follow.
    Data {
        offset: u64,
        len: u32,
        state: MasterState,
    },
    Heartbeat {
        master_max_offset: u64,
        state: MasterState,
    },
}

impl MasterFrame {
    /// Header bytes after the kind byte; `None` for a kind this slave does not know.
    pub fn header_bytes_after(kind: u8) -> Option<usize> {
        match kind {
            KIND_DATA => Some(DATA_HEADER_BYTES - 1),
            KIND_HEARTBEAT => Some(HEARTBEAT_BYTES - 1),
            _ => None,
        }
    }

    /// Decodes the header bytes that followed the kind byte `kind`.
    pub fn decode(kind: u8, rest: &[u8]) -> Result<MasterFrame, DecodeError> {
        let mut r = Reader::new(rest);
        let frame = match kind {
            KIND_DATA => MasterFrame::Data {
                offset: r.u64("offset")?,
                len: r.u32("length")?,
                state: read_master_state(&mut r)?,
            },
            KIND_HEARTBEAT => MasterFrame::Heartbeat {
                master_max_offset: r.u64("master_max_offset")?,
                state: read_master_state(&mut r)?,
            },
            _ => {
                return Err(DecodeError::Invalid {
                    field: "kind",
                    reason: "unknown master frame kind",
                })
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

fn read_master_state(r: &mut Reader<'_>) -> Result<MasterState, DecodeError> {
    Ok(MasterState {
        confirmed_offset: r.u64("confirmed_offset")?,
        metadata_version: r.u64("metadata_version")?,
    })
}

/// What the front of a slave's received log bytes holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shipped {
    /// The master left the rest of this segment unused. The slave's append rule does the same
    /// when the next record arrives (and writes the marker itself), so these bytes are skipped.
    SegmentTail(usize),
    /// One whole record of this many bytes.
    Record(usize),
    /// The next record or segment tail has not fully arrived.
    Incomplete,
}

/// Splits received log bytes `rest`, which start at commitlog offset `at`, at the next record
/// or segment-tail boundary. An error means the master's bytes cannot be a log of this
/// segment size.
pub fn next_shipped(rest: &[u8], at: u64, segment_size_bytes: u64) -> Result<Shipped, String> {
    let segment_left = (segment_size_bytes - at % segment_size_bytes) as usize;
    if segment_left < END_OF_SEGMENT_MARKER_BYTES || is_end_of_segment(rest) {
        return Ok(if rest.len() < segment_left {
            Shipped::Incomplete
        } else {
            Shipped::SegmentTail(segment_left)
        });
    }
    if rest.len() < RECORD_HEADER_BYTES {
        return Ok(Shipped::Incomplete);
    }
    let size = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    if size < RECORD_HEADER_BYTES || size > segment_left {
        return Err(format!("corrupt record size {size} at offset {at}"));
    }
    Ok(if rest.len() < size {
        Shipped::Incomplete
    } else {
        Shipped::Record(size)
    })
}

fn is_end_of_segment(bytes: &[u8]) -> bool {
    bytes.len() >= END_OF_SEGMENT_MARKER_BYTES
        && u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) == END_OF_SEGMENT_MAGIC
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the master's log and a slave's diverge: the start of the first master epoch newer
/// than the slave's last one (everything the slave wrote from there on was never the master's),
/// or `u64::MAX` when the slave's last epoch is the master's current one.
pub fn divergence_point(master_epochs: &[Epoch], slave_last_epoch: u32) -> u64 {
    master_epochs
        .iter()
        .find(|(epoch, _)| *epoch > slave_last_epoch)
        .map(|(_, start)| *start)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trips() {
        let hello = Hello {
            shard: 1,
            shard_count: 2,
            segment_size_bytes: 1 << 20,
            log_id: [7; 16],
            last_epoch: 3,
            max_offset: 4096,
            broker_name: "broker-a".into(),
        };
        let mut out = Vec::new();
        hello.encode(&mut out);
        assert_eq!(
            u32::from_le_bytes(out[..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
        assert_eq!(Hello::decode(&out[4..]).unwrap(), hello);
        let welcome = Welcome {
            refused: None,
            log_id: [9; 16],
            epochs: vec![(1, 0), (2, 8192)],
            truncate_to: 8192,
            client_addr: "127.0.0.1:10911".into(),
        };
        let mut out = Vec::new();
        welcome.encode(&mut out);
        assert_eq!(Welcome::decode(&out[4..]).unwrap(), welcome);
        let mut out = Vec::new();
        Welcome::refuse("wrong group").encode(&mut out);
        assert_eq!(
            Welcome::decode(&out[4..]).unwrap().refused.as_deref(),
            Some("wrong group")
        );
        assert!(Hello::decode(&[0u8; 10]).is_err());
    }

    #[test]
    fn master_frames_decode_what_the_master_encodes() {
        let state = MasterState {
            confirmed_offset: 4096,
            metadata_version: 9,
        };
        let data = encode_data_header(8192, 300, state);
        assert_eq!(
            MasterFrame::header_bytes_after(data[0]),
            Some(data.len() - 1)
        );
        assert_eq!(
            MasterFrame::decode(data[0], &data[1..]),
            Ok(MasterFrame::Data {
                offset: 8192,
                len: 300,
                state
            })
        );
        let beat = encode_heartbeat(12_000, state);
        assert_eq!(
            MasterFrame::header_bytes_after(beat[0]),
            Some(beat.len() - 1)
        );
        assert_eq!(
            MasterFrame::decode(beat[0], &beat[1..]),
            Ok(MasterFrame::Heartbeat {
                master_max_offset: 12_000,
                state
            })
        );
        assert_eq!(MasterFrame::header_bytes_after(7), None);
        assert!(MasterFrame::decode(KIND_DATA, &data[1..10]).is_err());
    }

    #[test]
    fn shipped_bytes_split_at_records_and_segment_tails() {
        let segment = 64 * 1024;
        let mut record = vec![0u8; RECORD_HEADER_BYTES + 10];
        let size = record.len() as u32;
        record[..4].copy_from_slice(&size.to_le_bytes());
        assert_eq!(next_shipped(&record, 0, segment), Ok(Shipped::Record(86)));
        assert_eq!(
            next_shipped(&record[..50], 0, segment),
            Ok(Shipped::Incomplete)
        );
        let mut tail = vec![0u8; 100];
        tail[..4].copy_from_slice(&100u32.to_le_bytes());
        tail[4..8].copy_from_slice(&END_OF_SEGMENT_MAGIC.to_le_bytes());
        let at = segment - 100;
        assert_eq!(
            next_shipped(&tail, at, segment),
            Ok(Shipped::SegmentTail(100))
        );
        assert_eq!(
            next_shipped(&tail[..99], at, segment),
            Ok(Shipped::Incomplete)
        );
        assert_eq!(
            next_shipped(&[0; 5], segment - 5, segment),
            Ok(Shipped::SegmentTail(5))
        );
        record[..4].copy_from_slice(&200u32.to_le_bytes());
        assert!(next_shipped(&record, segment - 150, segment).is_err());
    }

    #[test]
    fn divergence_is_the_first_newer_epoch() {
        let epochs = [(1, 0), (2, 5000), (3, 9000)];
        assert_eq!(divergence_point(&epochs, 1), 5000);
        assert_eq!(divergence_point(&epochs, 2), 9000);
        assert_eq!(divergence_point(&epochs, 3), u64::MAX);
        assert_eq!(divergence_point(&epochs, 0), 0);
    }
}
