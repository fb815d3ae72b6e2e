//! The replication link's messages (pure: no I/O), all little-endian.
//!
//! A slave shard opens a TCP connection to its master's HA address and sends a [`Hello`] (u32
//! length prefix); the master answers (u32 length prefix) with a [`Welcome`] that accepts it or
//! a refusal that says why. A refusal keeps one layout in every protocol version (refused byte,
//! reason, then the fields version 1 required), so a slave of any version can print why it was
//! refused, a version mismatch included. After that:
//! - master → slave: frames of one kind byte then a fixed header: `DATA` (commitlog offset u64,
//!   length u32, master confirmed offset u64, then that many raw commitlog bytes), `HEARTBEAT`
//!   (master max offset u64, master confirmed offset u64) or `METADATA` (length u32, then a
//!   [`MetadataFrame`]: topics, group offsets and, from version 4, the ACL state). The confirmed offset bounds what the slave
//!   shows consumers, so a record is never served by a slave before the master's guarantee
//!   holds for it. A `METADATA` frame follows the handshake and every change of the master
//!   shard's topics or group offsets, so the slave copies them over the link it already has;
//! - slave → master: 8-byte reports, the slave's confirmed offset (u64).
//!
//! With `ha_security = "auth"` a [`Challenge`] and the slave's proof come between the hello and
//! the welcome (see [`super::auth`]): no data byte goes out and no report is read before both
//! sides have proved they hold the shared secret.

use super::error::ReplicationError;
use crate::constants::MAX_QUEUES_PER_TOPIC;
use crate::protocol::codec::Fields;
use crate::protocol::codec::{DecodeError, Reader, Writer};
use crate::protocol::scram::{Credential, StoredCredential};
use crate::security::acl::AclTable;
use crate::security::users::UserTable;
use crate::shard::groups::OffsetRow;
use crate::shard::topics::{validate_stored_name, TopicEntry, TopicTable};
use crate::store::record::{self, END_OF_SEGMENT_MARKER_BYTES, RECORD_HEADER_BYTES};
use std::collections::BTreeMap;

pub const HA_MAGIC: u32 = 0x4148_4D52;
/// Version 4: metadata frames end with the ACL trailer ([`AclTrailer`]); the hello, the
/// challenge and the welcome are laid out as in version 3. (Version 3: the hello names the
/// slave's `ha_security` and carries its nonce, and an authenticating master answers it with
/// a [`Challenge`] before the welcome. Version 2: metadata travels in `METADATA` frames; the
/// master's client address left the handshake and the metadata version left `DATA` and
/// `HEARTBEAT` frames.)
///
/// A slave sends its own version; a master takes any from [`MIN_HA_VERSION`] to this one and
/// speaks the slave's on that link (its challenge and welcome carry it, and a version-3 link
/// gets metadata frames without the trailer, which a version-3 slave's decoder requires), so
/// masters can be upgraded before their slaves. A slave takes only its own version back: a
/// newer slave is refused by an older master, naming both versions.
pub const HA_VERSION: u16 = 4;
/// The oldest slave version a master serves.
pub const MIN_HA_VERSION: u16 = 3;
/// The first version whose metadata frames carry the ACL trailer.
pub const ACL_TRAILER_VERSION: u16 = 4;
/// The refused byte of a master's answer: 0 a [`Welcome`], 1 a refusal, 2 a [`Challenge`].
const ANSWER_WELCOME: u8 = 0;
const ANSWER_REFUSED: u8 = 1;
const ANSWER_CHALLENGE: u8 = 2;
/// Bytes of a handshake nonce: 256 random bits, so one never repeats.
pub const NONCE_BYTES: usize = 32;
pub type Nonce = [u8; NONCE_BYTES];
/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_BYTES: usize = ringmq_protocol::auth::TAG_BYTES;
pub type Proof = [u8; PROOF_BYTES];
pub const KIND_DATA: u8 = 1;
pub const KIND_HEARTBEAT: u8 = 2;
pub const KIND_METADATA: u8 = 3;
/// Kind byte + offset + length + master confirmed offset.
pub const DATA_HEADER_BYTES: usize = 1 + 8 + 4 + 8;
/// Kind byte + master max offset + master confirmed offset.
pub const HEARTBEAT_BYTES: usize = 1 + 8 + 8;
/// Kind byte + body length.
pub const METADATA_HEADER_BYTES: usize = 1 + 4;
/// The longest fixed header of a master frame.
pub const MAX_FRAME_HEADER_BYTES: usize = DATA_HEADER_BYTES;
pub const REPORT_BYTES: usize = 8;
/// A report on an authenticated link: the offset, then its tag ([`super::auth::report_tag`]).
pub const AUTH_REPORT_BYTES: usize = REPORT_BYTES + PROOF_BYTES;
/// Largest handshake message accepted: a few hundred epochs and names.
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;
/// Largest metadata frame: a million group offsets with 30-byte names, far more than a broker
/// keeps, while a slave never allocates more than this for one frame a master announces.
pub const MAX_METADATA_BYTES: usize = 64 * 1024 * 1024;

pub type LogId = [u8; 16];

/// (epoch, first commitlog offset written in it). A master starts a new epoch when promoted.
pub type Epoch = (u32, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the slave speaks ([`HA_VERSION`] for this build's slaves).
    pub version: u16,
    pub shard: u16,
    pub shard_count: u16,
    pub segment_size_bytes: u64,
    /// All zeros when the slave's log is empty and it will adopt the master's.
    pub log_id: LogId,
    /// The slave's latest epoch (0 when it has none).
    pub last_epoch: u32,
    pub max_offset: u64,
    pub broker_name: String,
    /// Whether the slave authenticates (its `ha_security`), so a master that requires it
    /// refuses one that does not with a reason that says so.
    pub security: LinkSecurity,
    /// The slave's fresh challenge to the master (zeros when it does not authenticate).
    pub nonce: Nonce,
    /// Controller mode: the broker id the controllers gave the slave, so the master can tell
    /// which SyncStateSet member a link is; 0 otherwise. A trailing field written only when
    /// non-zero, so a hello from before it decodes (as 0) and encodes to the same bytes.
    pub controller_broker_id: u64,
}

/// How a link end authenticates, as the hello carries it (u8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSecurity {
    /// 0: no authentication (`ha_security = "off"`).
    Off,
    /// 1: shared-secret challenge-response (`ha_security = "auth"`).
    Auth,
    /// 2: inside mutual TLS (`ha_security = "tls"`): the TLS handshake authenticated both ends.
    Tls,
}

impl LinkSecurity {
    fn wire(self) -> u8 {
        match self {
            LinkSecurity::Off => 0,
            LinkSecurity::Auth => 1,
            LinkSecurity::Tls => 2,
        }
    }

    fn from_wire(value: u8) -> Result<LinkSecurity, DecodeError> {
        match value {
            0 => Ok(LinkSecurity::Off),
            1 => Ok(LinkSecurity::Auth),
            2 => Ok(LinkSecurity::Tls),
            _ => Err(DecodeError::Invalid {
                field: "security",
                reason: "must be 0 (off), 1 (auth) or 2 (tls)",
            }),
        }
    }
}

/// An authenticating master's first answer: its own fresh nonce and identity, and its proof
/// over the hello and these fields (the refused byte 2, an empty reason, the version, then
/// these, then the proof). The slave checks the proof before it proves itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The link's protocol version: the slave's, from its hello.
    pub version: u16,
    pub nonce: Nonce,
    /// The master's `broker_name` and its shard's last epoch: the master's identity as the
    /// proofs bind it.
    pub broker_name: String,
    pub last_epoch: u32,
}

impl Challenge {
    /// The challenge's bytes the proofs cover: everything of the answer body but the proof.
    pub fn unproved_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.u8(ANSWER_CHALLENGE).str16("").u16(self.version);
        out.extend_from_slice(&self.nonce);
        Writer::new(&mut out)
            .str16(&self.broker_name)
            .u32(self.last_epoch);
        out
    }

    /// The whole answer, length-prefixed: the unproved bytes, then `proof`.
    pub fn encode(&self, proof: &Proof, out: &mut Vec<u8>) {
        with_length(out, |out| {
            out.extend_from_slice(&self.unproved_bytes());
            out.extend_from_slice(proof);
        });
    }
}

/// A master's first answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Welcome(Welcome),
    Challenge(Challenge, Proof),
}

impl Answer {
    /// Decodes the master's first answer (after the length prefix): a welcome, a challenge, or
    /// (as errors) a refusal, another version, or bytes that are none of these.
    pub fn decode(body: &[u8]) -> Result<Answer, ReplicationError> {
        if body.first() != Some(&ANSWER_CHALLENGE) {
            return Welcome::decode(body).map(Answer::Welcome);
        }
        let answer = ReplicationError::decode("challenge from the master");
        let mut r = Reader::new(&body[1..]);
        // The reason is always empty in a challenge: one with text is not a challenge this
        // protocol writes (and taking it would make two encodings of the same challenge).
        if !r.str16("reason").map_err(answer)?.is_empty() {
            return Err(answer(DecodeError::Invalid {
                field: "reason",
                reason: "must be empty in a challenge",
            }));
        }
        let version = r.u16("version").map_err(answer)?;
        if version != HA_VERSION {
            return Err(ReplicationError::Version {
                master: version,
                slave: HA_VERSION,
            });
        }
        let nonce = read_array(&mut r, "nonce").map_err(answer)?;
        let broker_name = r.str16("broker_name").map_err(answer)?.to_string();
        let last_epoch = r.u32("last_epoch").map_err(answer)?;
        let proof = read_array(&mut r, "proof").map_err(answer)?;
        r.finish().map_err(answer)?;
        let challenge = Challenge {
            version,
            nonce,
            broker_name,
            last_epoch,
        };
        Ok(Answer::Challenge(challenge, proof))
    }
}

/// A slave's proof, length-prefixed like every handshake message.
pub fn encode_proof(proof: &Proof, out: &mut Vec<u8>) {
    with_length(out, |out| out.extend_from_slice(proof));
}

/// Decodes a slave's proof (after the length prefix): exactly [`PROOF_BYTES`] bytes.
pub fn decode_proof(body: &[u8]) -> Result<Proof, DecodeError> {
    let mut r = Reader::new(body);
    let proof = read_array(&mut r, "proof")?;
    r.finish()?;
    Ok(proof)
}

fn read_array<const N: usize>(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    let mut bytes = [0u8; N];
    for b in bytes.iter_mut() {
        *b = r.u8(field)?;
    }
    Ok(bytes)
}

/// The master's acceptance of a slave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The link's protocol version: the slave's, from its hello.
    pub version: u16,
    pub log_id: LogId,
    pub epochs: Vec<Epoch>,
    /// The slave must first cut its log back to this offset (it diverged there); `u64::MAX`
    /// when nothing needs cutting.
    pub truncate_to: u64,
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
                .u16(self.version)
                .u16(self.shard)
                .u16(self.shard_count)
                .u64(self.segment_size_bytes);
            out.extend_from_slice(&self.log_id);
            Writer::new(out)
                .u32(self.last_epoch)
                .u64(self.max_offset)
                .str16(&self.broker_name)
                .u8(self.security.wire());
            out.extend_from_slice(&self.nonce);
            if self.controller_broker_id != 0 {
                Writer::new(out).u64(self.controller_broker_id);
            }
        });
    }

    /// The hello's body as encoded (without the length prefix): what the proofs cover. A
    /// decoded hello encodes to the bytes it was decoded from, so both ends hash the same.
    pub fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out.split_off(4)
    }

    /// The protocol version a hello body (after the length prefix) speaks. The magic and the
    /// version open the hello in every version, so a master can name the slave's version when
    /// it refuses it.
    pub fn version_of(body: &[u8]) -> Result<u16, DecodeError> {
        let mut r = Reader::new(body);
        if r.u32("magic")? != HA_MAGIC {
            return Err(DecodeError::Invalid {
                field: "magic",
                reason: "not a ringmq replication link",
            });
        }
        r.u16("version")
    }

    /// Decodes the body after the length prefix; a hello of a version outside
    /// [`MIN_HA_VERSION`]..=[`HA_VERSION`] is an error (check [`Hello::version_of`] first to
    /// say which).
    pub fn decode(body: &[u8]) -> Result<Hello, DecodeError> {
        let version = Hello::version_of(body)?;
        if !(MIN_HA_VERSION..=HA_VERSION).contains(&version) {
            return Err(DecodeError::Invalid {
                field: "version",
                reason: "unsupported replication protocol version",
            });
        }
        let mut r = Reader::new(&body[6..]);
        let shard = r.u16("shard")?;
        let shard_count = r.u16("shard_count")?;
        let segment_size_bytes = r.u64("segment_size_bytes")?;
        let log_id = read_log_id(&mut r)?;
        let hello = Hello {
            version,
            shard,
            shard_count,
            segment_size_bytes,
            log_id,
            last_epoch: r.u32("last_epoch")?,
            max_offset: r.u64("max_offset")?,
            broker_name: r.str16("broker_name")?.to_string(),
            security: LinkSecurity::from_wire(r.u8("security")?)?,
            nonce: read_array(&mut r, "nonce")?,
            controller_broker_id: 0,
        };
        let hello = if r.remaining() > 0 {
            let id = r.u64("controller_broker_id")?;
            if id == 0 {
                return Err(DecodeError::Invalid {
                    field: "controller_broker_id",
                    reason: "written only when non-zero",
                });
            }
            Hello {
                controller_broker_id: id,
                ..hello
            }
        } else {
            hello
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

/// A refusal: refused byte 1 and the reason, then what version 1's answer required after them
/// (zero log id, no epochs, no cut, empty client address), so that slaves of version 1 print
/// the reason too.
pub fn encode_refusal(reason: &str, out: &mut Vec<u8>) {
    with_length(out, |out| {
        Writer::new(out).u8(ANSWER_REFUSED).str16(reason);
        out.extend_from_slice(&[0; 16]);
        Writer::new(out).u32(0).u64(u64::MAX).str16("");
    });
}

impl Welcome {
    /// An acceptance: refused byte 0, an empty reason, then the master's protocol version, so a
    /// slave tells a master of another version from a garbled answer.
    pub fn encode(&self, out: &mut Vec<u8>) {
        with_length(out, |out| {
            let mut w = Writer::new(out);
            w.u8(ANSWER_WELCOME).str16("").u16(self.version);
            out.extend_from_slice(&self.log_id);
            let mut w = Writer::new(out);
            w.u32(self.epochs.len() as u32);
            for (epoch, start) in &self.epochs {
                w.u32(*epoch).u64(*start);
            }
            w.u64(self.truncate_to);
        });
    }

    /// Decodes the master's answer (the body after the length prefix): a refusal, an
    /// acceptance in another protocol version and bytes that are neither are errors.
    pub fn decode(body: &[u8]) -> Result<Welcome, ReplicationError> {
        let answer = ReplicationError::decode("answer from the master");
        let mut r = Reader::new(body);
        let refused = r.u8("refused").map_err(answer)?;
        let reason = r.str16("reason").map_err(answer)?;
        if refused == ANSWER_CHALLENGE {
            return Err(ReplicationError::Protocol(
                "the master sent a second challenge where its welcome was due".to_string(),
            ));
        }
        if refused != ANSWER_WELCOME {
            // What follows the reason differs between versions and says nothing more.
            return Err(ReplicationError::Refused(reason.to_string()));
        }
        let version = r.u16("version").map_err(answer)?;
        if version != HA_VERSION {
            return Err(ReplicationError::Version {
                master: version,
                slave: HA_VERSION,
            });
        }
        let decode = |r: &mut Reader<'_>| -> Result<Welcome, DecodeError> {
            let log_id = read_log_id(r)?;
            let count = r.count("epoch_count", 12)?;
            let mut epochs = Vec::with_capacity(count);
            for _ in 0..count {
                epochs.push((r.u32("epoch")?, r.u64("epoch_start")?));
            }
            Ok(Welcome {
                version,
                log_id,
                epochs,
                truncate_to: r.u64("truncate_to")?,
            })
        };
        let welcome = decode(&mut r).map_err(answer)?;
        r.finish().map_err(answer)?;
        Ok(welcome)
    }
}

pub fn encode_data_header(offset: u64, len: u32, confirmed_offset: u64) -> [u8; DATA_HEADER_BYTES] {
    let mut out = [0u8; DATA_HEADER_BYTES];
    out[0] = KIND_DATA;
    out[1..9].copy_from_slice(&offset.to_le_bytes());
    out[9..13].copy_from_slice(&len.to_le_bytes());
    out[13..21].copy_from_slice(&confirmed_offset.to_le_bytes());
    out
}

pub fn encode_heartbeat(master_max_offset: u64, confirmed_offset: u64) -> [u8; HEARTBEAT_BYTES] {
    let mut out = [0u8; HEARTBEAT_BYTES];
    out[0] = KIND_HEARTBEAT;
    out[1..9].copy_from_slice(&master_max_offset.to_le_bytes());
    out[9..17].copy_from_slice(&confirmed_offset.to_le_bytes());
    out
}

/// A master → slave frame's fixed header (everything but the bytes a `DATA` or `METADATA`
/// frame carries after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterFrame {
    /// `len` raw commitlog bytes starting at commitlog offset `offset` follow.
    Data {
        offset: u64,
        len: u32,
        confirmed_offset: u64,
    },
    Heartbeat {
        master_max_offset: u64,
        confirmed_offset: u64,
    },
    /// A [`MetadataFrame`] of `len` bytes follows.
    Metadata { len: u32 },
}

impl MasterFrame {
    /// Header bytes after the kind byte; `None` for a kind this slave does not know.
    pub fn header_bytes_after(kind: u8) -> Option<usize> {
        match kind {
            KIND_DATA => Some(DATA_HEADER_BYTES - 1),
            KIND_HEARTBEAT => Some(HEARTBEAT_BYTES - 1),
            KIND_METADATA => Some(METADATA_HEADER_BYTES - 1),
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
                confirmed_offset: r.u64("confirmed_offset")?,
            },
            KIND_HEARTBEAT => MasterFrame::Heartbeat {
                master_max_offset: r.u64("master_max_offset")?,
                confirmed_offset: r.u64("confirmed_offset")?,
            },
            KIND_METADATA => MasterFrame::Metadata {
                len: r.u32("length")?,
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

/// What a master shard tells its slave shard about metadata: the whole topic table from shard
/// 0 (with the next topic id, so a promoted slave never reuses a deleted topic's id) and the
/// group offsets of the queues the master shard owns, which the slave shard of the same number
/// owns too (same table, same placement).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataFrame {
    /// The master shard's metadata version this snapshot reflects (for logs and tests).
    pub version: u64,
    /// Master shard 0 only: the topic table, published by slave shard 0 when it differs.
    pub topics: Option<TopicTable>,
    pub group_offsets: Vec<OffsetRow>,
    /// Master shard 0 only, once a user was ever created there: the SCRAM user table. After
    /// the ACL trailer (so only on links of version 4 and later): `has_users` (u8: 0 none, 1 a
    /// section follows), then for 1 the section's length (u32) and the section
    /// ([`encode_users`]). Bytes after it belong to later sections and are left to their
    /// decoders; a frame that ends before it carries none.
    pub users: Option<UserTable>,
    /// The ACL state, after the offsets: [`AclTrailer`].
    pub acls: AclTrailer,
}

/// The ACL trailer of a metadata frame, right after the group offsets. Layout:
///
/// | bytes | field |
/// |---|---|
/// | 0 (the frame ends after the offsets) | [`AclTrailer::Absent`]: a version-3 link |
/// | u8 `0` | [`AclTrailer::Unchanged`] |
/// | u8 `1`, u32 length, that many bytes of compact JSON | [`AclTrailer::Table`] |
///
/// Self-delimiting: bytes after it belong to later trailers, which a decoder that does not
/// know them skips, so a later version can append its own without breaking this one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AclTrailer {
    /// No trailer: the link speaks version 3 (whose slaves refuse bytes after the offsets).
    #[default]
    Absent,
    /// The master's rules and policy are the ones it last sent on this link (and every frame
    /// of a shard other than 0, which holds no rules of its own to send).
    Unchanged,
    /// Master shard 0's rules with its authorization and superusers (`AclTable::master`
    /// set): sent on a link's first frame and after every change, taken by slave shard 0.
    Table(AclTable),
}

/// Reads the [`AclTrailer`] at `r` (right after the group offsets), consuming exactly its
/// bytes.
fn decode_acl_trailer(r: &mut Reader<'_>) -> Result<AclTrailer, DecodeError> {
    if r.remaining() == 0 {
        return Ok(AclTrailer::Absent);
    }
    match r.u8("has_acls")? {
        0 => Ok(AclTrailer::Unchanged),
        1 => {
            let json = r.bytes32("acls")?;
            let table = AclTable::from_json(json).map_err(|_| DecodeError::Invalid {
                field: "acls",
                reason: "not a valid ACL table",
            })?;
            Ok(AclTrailer::Table(table))
        }
        _ => Err(DecodeError::Invalid {
            field: "has_acls",
            reason: "must be 0 or 1",
        }),
    }
}

/// Shortest encodings, for counts: a topic (empty name, id, queue count) and a row.
const MIN_TOPIC_BYTES: usize = 2 + 4 + 4;
const MIN_ROW_BYTES: usize = 2 + 2 + 4 + 8;

impl MetadataFrame {
    /// The whole frame: kind byte, body length, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![KIND_METADATA, 0, 0, 0, 0];
        let mut w = Writer::new(&mut out);
        w.u64(self.version);
        match &self.topics {
            None => {
                w.u8(0);
            }
            Some(table) => {
                w.u8(1)
                    .u32(table.next_topic_id)
                    .u32(table.topics.len() as u32);
                for (name, entry) in &table.topics {
                    w.str16(name)
                        .u32(entry.topic_id)
                        .u32(entry.queue_shards.len() as u32);
                    for shard in &entry.queue_shards {
                        w.u16(*shard);
                    }
                }
            }
        }
        w.u32(self.group_offsets.len() as u32);
        for row in &self.group_offsets {
            w.str16(&row.group)
                .str16(&row.topic)
                .u32(row.queue)
                .u64(row.offset);
        }
        // After the offsets: the ACL trailer, then the users section, both only on links of
        // version 4 and later (`AclTrailer::Absent`: a version-3 link, whose slaves refuse
        // bytes after the offsets, gets neither).
        if !matches!(self.acls, AclTrailer::Absent) {
            match &self.acls {
                AclTrailer::Absent => {}
                AclTrailer::Unchanged => {
                    w.u8(0);
                }
                AclTrailer::Table(acls) => {
                    w.u8(1).bytes32(&acls.to_wire_json());
                }
            }
            match &self.users {
                None => {
                    w.u8(NO_USERS);
                }
                Some(users) => {
                    let mut section = Vec::new();
                    encode_users(&mut Writer::new(&mut section), users);
                    w.u8(HAS_USERS).bytes32(&section);
                }
            }
        }
        let len = (out.len() - METADATA_HEADER_BYTES) as u32;
        out[1..METADATA_HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// Decodes a body (after the frame header). Names must be valid topic and group names and
    /// each topic has 1 to `MAX_QUEUES_PER_TOPIC` queues, as on a master; which shards exist
    /// is the receiver's check.
    pub fn decode(body: &[u8]) -> Result<MetadataFrame, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u64("version")?;
        let topics = match r.u8("has_topics")? {
            0 => None,
            1 => {
                let next_topic_id = r.u32("next_topic_id")?;
                let count = r.count("topic_count", MIN_TOPIC_BYTES)?;
                let mut topics = BTreeMap::new();
                for _ in 0..count {
                    let name = r.str16("topic")?;
                    if validate_stored_name("topic", name).is_err() {
                        return Err(DecodeError::Invalid {
                            field: "topic",
                            reason: "not a valid topic name",
                        });
                    }
                    let topic_id = r.u32("topic_id")?;
                    let queues = r.count("queue_count", 2)?;
                    if queues == 0 || queues > MAX_QUEUES_PER_TOPIC as usize {
                        return Err(DecodeError::Invalid {
                            field: "queue_count",
                            reason: "a topic has 1 to MAX_QUEUES_PER_TOPIC queues",
                        });
                    }
                    let mut queue_shards = Vec::with_capacity(queues);
                    for _ in 0..queues {
                        queue_shards.push(r.u16("queue_shard")?);
                    }
                    let entry = TopicEntry {
                        topic_id,
                        queue_shards,
                    };
                    if topics.insert(name.to_string(), entry).is_some() {
                        return Err(DecodeError::Invalid {
                            field: "topic",
                            reason: "a topic is listed twice",
                        });
                    }
                }
                // As on a master: ids are handed out from next_topic_id up, once each, so a
                // promoted slave never hands out an id a topic already has.
                let mut ids = std::collections::BTreeSet::new();
                for entry in topics.values() {
                    if entry.topic_id >= next_topic_id || !ids.insert(entry.topic_id) {
                        return Err(DecodeError::Invalid {
                            field: "topic_id",
                            reason: "topic ids must be unique and below next_topic_id",
                        });
                    }
                }
                Some(TopicTable {
                    next_topic_id,
                    topics,
                })
            }
            _ => {
                return Err(DecodeError::Invalid {
                    field: "has_topics",
                    reason: "must be 0 or 1",
                })
            }
        };
        let count = r.count("offset_count", MIN_ROW_BYTES)?;
        let mut group_offsets = Vec::with_capacity(count);
        for _ in 0..count {
            let group = r.str16("group")?;
            let topic = r.str16("topic")?;
            if validate_stored_name("group", group).is_err()
                || validate_stored_name("topic", topic).is_err()
            {
                return Err(DecodeError::Invalid {
                    field: "group_offset",
                    reason: "not a valid group or topic name",
                });
            }
            group_offsets.push(OffsetRow {
                group: group.to_string(),
                topic: topic.to_string(),
                queue: r.u32("queue")?,
                offset: r.u64("offset")?,
            });
        }
        let acls = decode_acl_trailer(&mut r)?;
        // Then the users section (only after an ACL trailer: a version-3 link carries
        // neither); whatever follows it is a later version's and is skipped.
        let users = match r.remaining() {
            0 => None,
            _ => match r.u8("has_users")? {
                NO_USERS => None,
                HAS_USERS => {
                    let mut section = Reader::new(r.bytes32("users")?);
                    let users = decode_users(&mut section)?;
                    section.finish()?;
                    Some(users)
                }
                _ => {
                    return Err(DecodeError::Invalid {
                        field: "has_users",
                        reason: "must be 0 or 1",
                    })
                }
            },
        };
        Ok(MetadataFrame {
            version,
            topics,
            group_offsets,
            acls,
            users,
        })
    }
}

/// `has_users` after the group offsets: no user table follows (a master that never made a
/// user, or a shard other than 0).
const NO_USERS: u8 = 0;
/// `has_users`: a `u32` length and the user section of that many bytes follow.
const HAS_USERS: u8 = 1;

/// The user section of a metadata frame (inside its `u32` length): the generation (u64), the
/// unknown-user key (bytes16), the user count (u32), then per user its name (str16), its
/// credential count (u32) and each credential in the `StoredCredential` layout of
/// `UserCreate`.
fn encode_users(w: &mut Writer<'_>, users: &UserTable) {
    w.u64(users.generation)
        .bytes16(&users.unknown_user_key)
        .u32(users.users.len() as u32);
    for (name, credentials) in users.to_wire() {
        w.str16(&name).u32(credentials.len() as u32);
        for credential in &credentials {
            credential.write_fields(w);
        }
    }
}

/// Shortest user: an empty name and no credentials.
const MIN_USER_BYTES: usize = 2 + 4;

fn decode_users(r: &mut Reader<'_>) -> Result<UserTable, DecodeError> {
    let invalid = |reason: &'static str| DecodeError::Invalid {
        field: "users",
        reason,
    };
    let generation = r.u64("user_generation")?;
    let unknown_user_key = r
        .bytes16("unknown_user_key")?
        .try_into()
        .map_err(|_| invalid("the unknown-user key is 32 bytes"))?;
    let count = r.count("user_count", MIN_USER_BYTES)?;
    let mut users = BTreeMap::new();
    for _ in 0..count {
        let name = r.str16("user")?.to_string();
        let credentials = r.count("credential_count", StoredCredential::min_bytes())?;
        let mut list = Vec::with_capacity(credentials);
        for _ in 0..credentials {
            let stored = StoredCredential::read_fields(r)?;
            list.push(
                Credential::from_stored(&stored)
                    .map_err(|_| invalid("a credential a master cannot hold"))?,
            );
        }
        if users.insert(name, list).is_some() {
            return Err(invalid("a user is listed twice"));
        }
    }
    let table = UserTable {
        generation,
        unknown_user_key,
        users,
    };
    table
        .check()
        .map_err(|_| invalid("a user name or credential a master cannot hold"))?;
    Ok(table)
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
pub fn next_shipped(
    rest: &[u8],
    at: u64,
    segment_size_bytes: u64,
) -> Result<Shipped, ReplicationError> {
    let segment_left = (segment_size_bytes - at % segment_size_bytes) as usize;
    if segment_left < END_OF_SEGMENT_MARKER_BYTES || record::is_end_of_segment(rest) {
        return Ok(if rest.len() < segment_left {
            Shipped::Incomplete
        } else {
            Shipped::SegmentTail(segment_left)
        });
    }
    if rest.len() < RECORD_HEADER_BYTES {
        return Ok(Shipped::Incomplete);
    }
    let size = record::peek_total_size(rest).expect("a whole header") as usize;
    if size < RECORD_HEADER_BYTES || size > segment_left {
        return Err(ReplicationError::Protocol(format!(
            "corrupt record size {size} at offset {at}"
        )));
    }
    // The slave appends where its own log ends, which a segment tail the master skipped may
    // leave behind the stream's position: a record must claim the position it arrived at.
    let claimed = record::peek_commitlog_offset(rest).expect("a whole header");
    if claimed != at {
        return Err(ReplicationError::Protocol(format!(
            "a record claims commitlog offset {claimed} but arrived at {at}"
        )));
    }
    Ok(if rest.len() < size {
        Shipped::Incomplete
    } else {
        Shipped::Record(size)
    })
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

    fn hello() -> Hello {
        Hello {
            version: HA_VERSION,
            shard: 1,
            shard_count: 2,
            segment_size_bytes: 1 << 20,
            log_id: [7; 16],
            last_epoch: 3,
            max_offset: 4096,
            broker_name: "broker-a".into(),
            security: LinkSecurity::Auth,
            nonce: [5; NONCE_BYTES],
            controller_broker_id: 0,
        }
    }

    /// Controller mode's broker id rides after the nonce, only when set: an older hello (and
    /// one without it) still decodes, to 0, and a set one round trips.
    #[test]
    fn the_controller_broker_id_is_an_optional_tail() {
        let plain = hello();
        let mut old = Vec::new();
        plain.encode(&mut old);
        let with_id = Hello {
            controller_broker_id: 7,
            ..hello()
        };
        let mut new = Vec::new();
        with_id.encode(&mut new);
        assert_eq!(new.len(), old.len() + 8);
        assert_eq!(Hello::decode(&old[4..]).unwrap(), plain);
        assert_eq!(Hello::decode(&new[4..]).unwrap(), with_id);
        let mut zero = old.clone();
        zero.extend_from_slice(&0u64.to_le_bytes());
        assert!(
            Hello::decode(&zero[4..]).is_err(),
            "a zero id is never written"
        );
        assert!(Hello::decode(&new[4..new.len() - 3]).is_err(), "a cut id");
    }

    #[test]
    fn handshake_round_trips() {
        let hello = hello();
        let mut out = Vec::new();
        hello.encode(&mut out);
        assert_eq!(
            u32::from_le_bytes(out[..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
        assert_eq!(Hello::decode(&out[4..]).unwrap(), hello);
        assert_eq!(Hello::version_of(&out[4..]), Ok(HA_VERSION));
        let welcome = Welcome {
            version: HA_VERSION,
            log_id: [9; 16],
            epochs: vec![(1, 0), (2, 8192)],
            truncate_to: 8192,
        };
        let mut out = Vec::new();
        welcome.encode(&mut out);
        assert_eq!(Welcome::decode(&out[4..]).unwrap(), welcome);
        let mut out = Vec::new();
        encode_refusal("wrong group", &mut out);
        assert!(matches!(
            Welcome::decode(&out[4..]),
            Err(ReplicationError::Refused(reason)) if reason == "wrong group"
        ));
        assert!(Hello::decode(&[0u8; 10]).is_err());
        let mut encoded = Vec::new();
        hello.encode(&mut encoded);
        assert_eq!(hello.body_bytes(), encoded[4..].to_vec());
        let challenge = Challenge {
            version: HA_VERSION,
            nonce: [3; NONCE_BYTES],
            broker_name: "broker-a".into(),
            last_epoch: 1 << 16,
        };
        let mut out = Vec::new();
        challenge.encode(&[4; PROOF_BYTES], &mut out);
        assert_eq!(
            Answer::decode(&out[4..]).unwrap(),
            Answer::Challenge(challenge.clone(), [4; PROOF_BYTES])
        );
        assert_eq!(
            out[4..out.len() - PROOF_BYTES].to_vec(),
            challenge.unproved_bytes()
        );
        let mut out = Vec::new();
        encode_proof(&[6; PROOF_BYTES], &mut out);
        assert_eq!(decode_proof(&out[4..]), Ok([6; PROOF_BYTES]));
    }

    /// Every cut of a hello, a challenge and a proof is an error, never a shorter message.
    #[test]
    fn truncated_handshake_messages_are_refused() {
        let mut hello_bytes = Vec::new();
        hello().encode(&mut hello_bytes);
        for cut in 4..hello_bytes.len() {
            assert!(
                Hello::decode(&hello_bytes[4..cut]).is_err(),
                "hello cut at {cut}"
            );
        }
        let mut challenge = Vec::new();
        Challenge {
            version: HA_VERSION,
            nonce: [3; NONCE_BYTES],
            broker_name: "broker-a".into(),
            last_epoch: 2,
        }
        .encode(&[4; PROOF_BYTES], &mut challenge);
        for cut in 5..challenge.len() {
            assert!(
                Answer::decode(&challenge[4..cut]).is_err(),
                "challenge cut at {cut}"
            );
        }
        // A challenge with a reason: the same challenge otherwise, refused (not taken with
        // its reason dropped, which would re-encode to other bytes).
        let mut with_reason = challenge[4..5].to_vec();
        with_reason.extend_from_slice(&1u16.to_le_bytes());
        with_reason.push(b'x');
        with_reason.extend_from_slice(&challenge[7..]);
        assert!(Answer::decode(&with_reason).is_err());
        assert!(Answer::decode(&challenge[4..]).is_ok());
        assert!(decode_proof(&[1; PROOF_BYTES - 1]).is_err());
        assert!(decode_proof(&[1; PROOF_BYTES + 1]).is_err());
        let mut bad_security = hello_bytes.clone();
        let at = bad_security.len() - NONCE_BYTES - 1;
        bad_security[at] = 9;
        assert!(Hello::decode(&bad_security[4..]).is_err());
    }

    /// A peer of another version is told apart from garbage, on both sides: the master reads
    /// the slave's version before anything else, and the slave reads the master's.
    #[test]
    fn another_protocol_version_is_named_not_garbled() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        out[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(Hello::version_of(&out[4..]), Ok(1));
        assert!(Hello::decode(&out[4..]).is_err());
        let mut out = Vec::new();
        Welcome {
            version: HA_VERSION,
            log_id: [9; 16],
            epochs: vec![(1, 0)],
            truncate_to: u64::MAX,
        }
        .encode(&mut out);
        // refused byte, empty reason (2 bytes), then the version.
        out[7..9].copy_from_slice(&(HA_VERSION + 1).to_le_bytes());
        let error = Welcome::decode(&out[4..]).unwrap_err();
        assert!(matches!(
            error,
            ReplicationError::Version { master, slave: HA_VERSION } if master == HA_VERSION + 1
        ));
        let message = error.to_string();
        assert!(
            message.contains(&format!("version {}", HA_VERSION + 1))
                && message.contains(&format!("version {HA_VERSION}")),
            "{message}"
        );
    }

    /// A refusal keeps version 1's layout, so a version-1 slave decodes it with its own
    /// decoder (refused, reason, log id, epochs, truncate_to, client address) and prints why.
    #[test]
    fn a_refusal_decodes_as_version_one_did() {
        let mut out = Vec::new();
        encode_refusal("versions differ", &mut out);
        let mut r = Reader::new(&out[4..]);
        assert_eq!(r.u8("refused"), Ok(1));
        assert_eq!(r.str16("reason"), Ok("versions differ"));
        assert_eq!(read_log_id(&mut r), Ok([0; 16]));
        assert_eq!(r.count("epoch_count", 12), Ok(0));
        assert_eq!(r.u64("truncate_to"), Ok(u64::MAX));
        assert_eq!(r.str16("client_addr"), Ok(""));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn master_frames_decode_what_the_master_encodes() {
        let data = encode_data_header(8192, 300, 4096);
        assert_eq!(
            MasterFrame::header_bytes_after(data[0]),
            Some(data.len() - 1)
        );
        assert_eq!(
            MasterFrame::decode(data[0], &data[1..]),
            Ok(MasterFrame::Data {
                offset: 8192,
                len: 300,
                confirmed_offset: 4096
            })
        );
        let beat = encode_heartbeat(12_000, 4096);
        assert_eq!(
            MasterFrame::header_bytes_after(beat[0]),
            Some(beat.len() - 1)
        );
        assert_eq!(
            MasterFrame::decode(beat[0], &beat[1..]),
            Ok(MasterFrame::Heartbeat {
                master_max_offset: 12_000,
                confirmed_offset: 4096
            })
        );
        assert_eq!(MasterFrame::header_bytes_after(7), None);
        assert!(MasterFrame::decode(KIND_DATA, &data[1..10]).is_err());
    }

    fn metadata() -> MetadataFrame {
        let (table, _) = TopicTable::default().with_topic("orders", 3, 2).unwrap();
        let (table, _) = table.with_topic("audit", 1, 2).unwrap();
        MetadataFrame {
            version: 7,
            topics: Some(table),
            group_offsets: vec![OffsetRow {
                group: "readers".into(),
                topic: "orders".into(),
                queue: 2,
                offset: 41,
            }],
            acls: AclTrailer::Table(AclTable {
                rules: vec![crate::security::acl::Rule::parse(
                    "app",
                    "produce",
                    "topic-prefix:ord",
                    "allow",
                )
                .unwrap()],
                master: Some(crate::security::acl::Policy {
                    authorization: crate::config::Authorization::Acl,
                    superusers: vec!["root".into()],
                }),
            }),
            users: None,
        }
    }

    #[test]
    fn the_user_section_is_self_delimiting_and_bytes_after_it_are_left() {
        use crate::protocol::scram::{Credential, Mechanism};
        let plain = metadata().encode();
        let plain_body = &plain[METADATA_HEADER_BYTES..];
        assert_eq!(plain_body.last(), Some(&NO_USERS), "no users: one 0 byte");
        let old_master = &plain_body[..plain_body.len() - 1];
        assert_eq!(MetadataFrame::decode(old_master), Ok(metadata()));
        let mut with_users = metadata();
        let credential =
            Credential::derive(Mechanism::ScramSha512, b"pw", b"saltsaltsaltsalt", 4096);
        with_users.users = Some(
            UserTable::fresh()
                .unwrap()
                .with_user("alice", vec![credential])
                .unwrap(),
        );
        let bytes = with_users.encode();
        let body = &bytes[METADATA_HEADER_BYTES..];
        assert_eq!(
            &body[..old_master.len()],
            old_master,
            "the section comes after the offsets"
        );
        assert_eq!(body[old_master.len()], HAS_USERS);
        let section_len = u32::from_le_bytes(
            body[old_master.len() + 1..old_master.len() + 5]
                .try_into()
                .unwrap(),
        ) as usize;
        assert_eq!(old_master.len() + 5 + section_len, body.len(), "u32 length");
        assert_eq!(MetadataFrame::decode(body), Ok(with_users.clone()));
        // A later section (the ACL round appends one) after the users is left alone.
        let mut trailer = body.to_vec();
        trailer.extend_from_slice(&[1, 3, 0, 0, 0, b'{', b'}', b'x']);
        assert_eq!(MetadataFrame::decode(&trailer), Ok(with_users));
        for cut in old_master.len() + 1..body.len() {
            assert!(MetadataFrame::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_flag = body.to_vec();
        bad_flag[old_master.len()] = 2;
        assert!(MetadataFrame::decode(&bad_flag).is_err());
    }

    #[test]
    fn metadata_frames_round_trip_and_refuse_what_a_master_cannot_hold() {
        for frame in [metadata(), MetadataFrame::default()] {
            let bytes = frame.encode();
            let header_len = MasterFrame::header_bytes_after(bytes[0]).unwrap();
            let header = MasterFrame::decode(bytes[0], &bytes[1..1 + header_len]).unwrap();
            let MasterFrame::Metadata { len } = header else {
                panic!("not a metadata frame: {header:?}");
            };
            let body = &bytes[METADATA_HEADER_BYTES..];
            assert_eq!(len as usize, body.len());
            assert_eq!(MetadataFrame::decode(body), Ok(frame));
        }
        let mut bad_name = metadata();
        bad_name.group_offsets[0].group = "../etc".into();
        let bytes = bad_name.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
        let mut same_id = metadata();
        let table = same_id.topics.as_mut().unwrap();
        let orders = table.topics["orders"].topic_id;
        table.topics.get_mut("audit").unwrap().topic_id = orders;
        let bytes = same_id.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
        let mut unissued_id = metadata();
        let table = unissued_id.topics.as_mut().unwrap();
        table.topics.get_mut("audit").unwrap().topic_id = table.next_topic_id;
        let bytes = unissued_id.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
        let mut no_queues = metadata();
        let table = no_queues.topics.as_mut().unwrap();
        table.topics.get_mut("audit").unwrap().queue_shards.clear();
        let bytes = no_queues.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
        let bytes = metadata().encode();
        // Without the trailer (a version-3 link) the frame ends right after the offsets, as
        // a version-3 slave's decoder requires: exactly two bytes shorter than "unchanged"
        // (its ACL flag and its users flag).
        let absent = MetadataFrame {
            acls: AclTrailer::Absent,
            ..metadata()
        };
        let unchanged = MetadataFrame {
            acls: AclTrailer::Unchanged,
            ..metadata()
        };
        let (absent_bytes, unchanged_bytes) = (absent.encode(), unchanged.encode());
        assert_eq!(absent_bytes.len() + 2, unchanged_bytes.len());
        assert_eq!(
            absent_bytes[METADATA_HEADER_BYTES..],
            unchanged_bytes[METADATA_HEADER_BYTES..absent_bytes.len()]
        );
        let offsets_end = absent_bytes.len() - METADATA_HEADER_BYTES;
        assert_eq!(
            MetadataFrame::decode(&absent_bytes[METADATA_HEADER_BYTES..]),
            Ok(absent)
        );
        assert_eq!(
            MetadataFrame::decode(&unchanged_bytes[METADATA_HEADER_BYTES..]),
            Ok(unchanged)
        );
        // Bytes after the trailer are a later version's trailer: skipped.
        let mut longer = bytes[METADATA_HEADER_BYTES..].to_vec();
        longer.extend_from_slice(&[7, 0, 0, 0, 1]);
        assert_eq!(MetadataFrame::decode(&longer), Ok(metadata()));
        // Every other cut is an error but the one before `has_users` (a master from before
        // users: it decodes); so is a flag that is neither 0 nor 1.
        let users_at = bytes.len() - METADATA_HEADER_BYTES - 1;
        for cut in
            (0..bytes.len() - METADATA_HEADER_BYTES).filter(|c| *c != offsets_end && *c != users_at)
        {
            let body = &bytes[METADATA_HEADER_BYTES..METADATA_HEADER_BYTES + cut];
            assert!(MetadataFrame::decode(body).is_err(), "cut at {cut}");
        }
        let mut bad_flag = unchanged_bytes[METADATA_HEADER_BYTES..].to_vec();
        *bad_flag.last_mut().unwrap() = 2;
        assert!(MetadataFrame::decode(&bad_flag).is_err());
        // A master's superusers are checked as the slave's own would be.
        let mut reserved = metadata();
        if let AclTrailer::Table(table) = &mut reserved.acls {
            table.master.as_mut().unwrap().superusers = vec!["ANONYMOUS".into()];
        }
        let bytes = reserved.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
    }

    /// A master takes a hello of every version from MIN_HA_VERSION on and answers in it; the
    /// hello, challenge and welcome of version 3 are those of version 4 but for the number.
    #[test]
    fn a_version_3_hello_is_taken_and_answered_in_version_3() {
        let old = Hello {
            version: MIN_HA_VERSION,
            ..hello()
        };
        let mut out = Vec::new();
        old.encode(&mut out);
        assert_eq!(Hello::version_of(&out[4..]), Ok(3));
        assert_eq!(Hello::decode(&out[4..]), Ok(old));
        let mut current = Vec::new();
        hello().encode(&mut current);
        assert_eq!(out[10..], current[10..], "only the version differs");
        let welcome = Welcome {
            version: 3,
            log_id: [1; 16],
            epochs: Vec::new(),
            truncate_to: u64::MAX,
        };
        let mut out = Vec::new();
        welcome.encode(&mut out);
        // What a version-3 slave reads: refused byte 0, empty reason, version 3.
        assert_eq!(out[4..9], [0, 0, 0, 3, 0]);
        let mut too_old = Vec::new();
        Hello {
            version: MIN_HA_VERSION - 1,
            ..hello()
        }
        .encode(&mut too_old);
        assert!(Hello::decode(&too_old[4..]).is_err());
    }

    /// A master's retry, dead-letter and schedule topics, and the scheduler's progress rows,
    /// reach its slaves: the broker's own `%` names pass, a client-style name with `%` does not.
    #[test]
    fn metadata_frames_carry_the_broker_s_internal_names() {
        let mut frame = metadata();
        let table = frame.topics.as_mut().unwrap();
        for name in ["%RETRY%billing", "%DLQ%billing", "%SCHEDULE%"] {
            let (with, _) = table.with_internal_topic(name, 2, 2).unwrap();
            *table = with;
        }
        frame.group_offsets.push(OffsetRow {
            group: "%SCHEDULE%".into(),
            topic: "%SCHEDULE%".into(),
            queue: 1,
            offset: 4,
        });
        let bytes = frame.encode();
        assert_eq!(
            MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]),
            Ok(frame.clone())
        );
        frame.group_offsets[0].topic = "%OTHER%x".into();
        let bytes = frame.encode();
        assert!(MetadataFrame::decode(&bytes[METADATA_HEADER_BYTES..]).is_err());
    }

    #[test]
    fn shipped_bytes_split_at_records_and_segment_tails() {
        let segment = 64 * 1024;
        let mut record = vec![0u8; RECORD_HEADER_BYTES + 10];
        let size = record.len() as u32;
        record[..4].copy_from_slice(&size.to_le_bytes());
        assert_eq!(
            next_shipped(&record, 0, segment).ok(),
            Some(Shipped::Record(86))
        );
        assert_eq!(
            next_shipped(&record[..50], 0, segment).ok(),
            Some(Shipped::Incomplete)
        );
        let mut tail = vec![0u8; 100];
        tail[..4].copy_from_slice(&100u32.to_le_bytes());
        tail[4..8].copy_from_slice(&record::END_OF_SEGMENT_MAGIC.to_le_bytes());
        let at = segment - 100;
        assert_eq!(
            next_shipped(&tail, at, segment).ok(),
            Some(Shipped::SegmentTail(100))
        );
        assert_eq!(
            next_shipped(&tail[..99], at, segment).ok(),
            Some(Shipped::Incomplete)
        );
        assert_eq!(
            next_shipped(&[0; 5], segment - 5, segment).ok(),
            Some(Shipped::SegmentTail(5))
        );
        // A record that claims the offset before a skipped segment tail (where the slave's
        // log still ends) is refused, not appended behind the stream's position.
        assert!(next_shipped(&record, segment, segment).is_err());
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
