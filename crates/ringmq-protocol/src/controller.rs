//! Bodies of the controller requests (opcodes 80-99): Raft traffic between controllers, the
//! broker API (broker ids, heartbeats, SyncStateSet changes, group state) and the operator's
//! requests (status, membership). `docs/protocol.md` ("Controller opcodes") lists their layouts
//! and `docs/controller.md` what the controller does with them.
//!
//! The controller's table is kept apart from [`crate::requests::for_each_request!`] on
//! purpose: that table is the broker's dispatch (an opcode there without a broker handler does
//! not compile), and a broker does not serve controller requests; it answers them
//! `UNKNOWN_OPCODE`. [`for_each_controller_request!`] is expanded the same ways (the
//! [`ControllerOpcode`] enum, the [`ControllerRequest`] impls, the controller's dispatch, the
//! property tests and the fuzz targets).

use super::codec::{
    list, Bytes16, Bytes32, Codec, DecodeError, EncodeError, Fields, Name, Reader, Str16, Struct,
    Writer, U16, U32, U64, U8,
};
use super::codes::wire_enum;
use super::message::wire_body;
use super::requests::Response;
use crate::auth::Secret;
use crate::Status;

/// Expands `$callback! { (args) rows }` with the controller's request table; a row is
/// `Opcode = value => "Name": RequestType => ResponseType, "what the response is" {};`, the
/// same shape as [`crate::requests::for_each_request!`]'s rows.
#[macro_export]
macro_rules! for_each_controller_request {
    ($callback:ident $(, $($args:tt)*)?) => {
        $callback! { ($($($args)*)?)
            RaftMessage = 80 => "RaftMessage": $crate::controller::RaftMessage
                => (), "none: raft messages are one-way" {};
            RegisterBroker = 81 => "RegisterBroker": $crate::controller::RegisterBroker
                => $crate::controller::BrokerIdentity, "broker identity" {};
            BrokerHeartbeat = 82 => "BrokerHeartbeat": $crate::controller::BrokerHeartbeat
                => $crate::controller::HeartbeatAnswer, "heartbeat answer" {};
            AlterSyncStateSet = 83 => "AlterSyncStateSet": $crate::controller::AlterSyncStateSet
                => $crate::controller::GroupState, "group state" {};
            GetGroupState = 84 => "GetGroupState": $crate::controller::GroupRef
                => $crate::controller::GroupState, "group state" {};
            ControllerStatus = 85 => "ControllerStatus": $crate::controller::StatusRequest
                => serde_json::Value, "controller status" {};
            AddPeer = 86 => "AddPeer": $crate::controller::AddPeer => (), "add-peer response" {};
            RemovePeer = 87 => "RemovePeer": $crate::controller::RemovePeer
                => (), "remove-peer response" {};
            ControllerHello = 88 => "ControllerHello": $crate::controller::ControllerHello
                => $crate::controller::ControllerChallenge, "controller challenge" {};
            ControllerProof = 89 => "ControllerProof": $crate::controller::ControllerProof
                => (), "controller proof response" {};
            ResignMaster = 90 => "ResignMaster": $crate::controller::ResignMaster
                => $crate::controller::GroupState, "group state" {};
        }
    };
}
pub use for_each_controller_request;

/// Frame flag (bit 3) of a controller request that a follower controller forwarded to its
/// leader on a broker's behalf: the receiver answers it itself, leader or not, and never
/// forwards it again (one hop at most). Only controller frames use it; the broker's table keeps
/// bits 3-7 reserved.
pub const FLAG_FORWARDED: u8 = 0x08;

/// The broker requests a follower forwards to its leader rather than answer `NOT_LEADER`:
/// a broker cut from the leader alone still reaches it through the others, so an asymmetric
/// partition is no failover. The operator's requests are not forwarded (status answers from
/// any controller; membership changes go to the leader itself).
pub fn forwarded_by_followers(opcode: ControllerOpcode) -> bool {
    matches!(
        opcode,
        ControllerOpcode::RegisterBroker
            | ControllerOpcode::BrokerHeartbeat
            | ControllerOpcode::AlterSyncStateSet
            | ControllerOpcode::GetGroupState
            | ControllerOpcode::ResignMaster
    )
}

/// A controller request body and what answers it (the controller's counterpart of
/// [`crate::Request`]).
pub trait ControllerRequest {
    const OPCODE: ControllerOpcode;
    type Response: Response;
    /// Names the response body in decode errors.
    const RESPONSE_NAME: &'static str;
    fn encode_body(&self, out: &mut Vec<u8>);
    fn check_body(&self) -> Result<(), EncodeError>;
}

macro_rules! declare_controller_requests {
    (()
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $($extra:tt)* }; )+
    ) => {
        wire_enum! {
            /// What a controller request asks for; the `opcode` field of the frame header.
            pub enum ControllerOpcode {
                $( $op = $value => $wire ),+
            }
        }
        $(
            impl ControllerRequest for $req {
                const OPCODE: ControllerOpcode = ControllerOpcode::$op;
                type Response = $resp;
                const RESPONSE_NAME: &'static str = $what;
                fn encode_body(&self, out: &mut Vec<u8>) {
                    self.encode(out)
                }
                fn check_body(&self) -> Result<(), EncodeError> {
                    self.check()
                }
            }
        )+
    };
}

for_each_controller_request!(declare_controller_requests);

/// The role a controller assigns a broker, as a heartbeat answer carries it.
pub const ROLE_FENCED: u8 = 0;
pub const ROLE_MASTER: u8 = 1;
pub const ROLE_SLAVE: u8 = 2;

/// The name of a wire role value, for status output.
pub fn role_name(role: u8) -> &'static str {
    match role {
        ROLE_MASTER => "MASTER",
        ROLE_SLAVE => "SLAVE",
        _ => "FENCED",
    }
}

wire_body! {
    /// RaftMessage (opcode 80): one Raft message between controllers, in the Raft library's
    /// own encoding (raft-rs `eraftpb::Message`, protobuf). Never answered: Raft retries by
    /// itself, and an answer would only be more traffic to lose.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RaftMessage {
        /// The sender's controller id (the receiver checks it against the message).
        pub from: u64 => U64,
        pub message: Vec<u8> => Bytes32,
    }
}

wire_body! {
    /// RegisterBroker (opcode 81): a broker asks for its persistent id. The same
    /// (cluster, group, store identity) always gets the same id, assigned once by a
    /// compare-and-set in the controller's replicated state.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RegisterBroker {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        /// What identifies the broker's store for good (a random id written once into it).
        pub store_identity: String => Name,
        /// Advertised client address, `HOST:PORT`.
        pub listen: String => Str16,
        /// Advertised HA address, `HOST:PORT`.
        pub ha_listen: String => Str16,
    }
}

wire_body! {
    /// BrokerIdentity: the answer to `RegisterBroker`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BrokerIdentity {
        /// Non-zero, stable for this store in this group.
        pub broker_id: u64 => U64,
    }
}

wire_body! {
    /// BrokerHeartbeat (opcode 82): a broker's liveness and position, every
    /// heartbeat interval. Kept as soft state on the leader controller only.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct BrokerHeartbeat {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        pub broker_id: u64 => U64,
        /// The highest epoch in the broker's store.
        pub epoch: u32 => U32,
        /// Per shard, one past the last offset of its log.
        pub end_offsets: Vec<u64> => list("shard_count", "end_offset", U64),
        /// 1: the broker restarted without a clean shutdown since it was last in sync.
        pub unclean_restart: u8 => U8,
        /// 1: the broker runs ASYNC_FLUSH (an unclean restart may have lost acknowledged data).
        pub async_flush: u8 => U8,
        /// 1: an `async_learner`: replicates, never joins the SyncStateSet, never elected.
        pub learner: u8 => U8,
        /// Higher is preferred among otherwise equal candidates.
        pub election_priority: u32 => U32,
        /// The broker's monotonic clock when it sent this, in ms: the lease in the answer is
        /// measured from it, so time spent in transit counts against the master, not for it.
        pub sent_at_ms: u64 => U64,
        /// A master's slaves as its shards' links show them (empty from any other role):
        /// why each is in or out of the SyncStateSet, for `cluster status`.
        pub slave_links: Vec<SlaveLinkState> => list("slave_count", "slave", Struct),
        /// The master epoch of this broker's last promotion since it started (0: none), and
        /// the ms from receiving the answer that named it master then to every shard being
        /// master and to its first acknowledged produce ([`NOT_YET`] until each happens): the
        /// last phases of the failover timeline.
        pub promoted_epoch: u32 => U32,
        pub promoted_in_ms: u32 => U32,
        pub first_ack_in_ms: u32 => U32,
    }
}

/// `promoted_in_ms` / `first_ack_in_ms` of a phase that has not happened yet.
pub const NOT_YET: u32 = u32::MAX;

wire_body! {
    /// One slave of a master, over the master's shards.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct SlaveLinkState {
        pub broker_id: u64 => U64,
        /// Shards it has a replication link on.
        pub linked_shards: u16 => U16,
        /// Shards where it caught up within `ha_max_time_slave_not_catchup_ms`.
        pub in_sync_shards: u16 => U16,
    }
}

wire_body! {
    /// HeartbeatAnswer: what the controller assigns the broker.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HeartbeatAnswer {
        /// `ROLE_FENCED`, `ROLE_MASTER` or `ROLE_SLAVE`.
        pub role: u8 => U8,
        pub master_broker_id: u64 => U64,
        pub master_listen: String => Str16,
        pub master_ha_listen: String => Str16,
        pub master_epoch: u32 => U32,
        pub sync_state_set_epoch: u32 => U32,
        pub sync_state_set: Vec<u64> => list("sync_state_set_count", "broker_id", U64),
        /// For a master: until when (the broker's clock, `sent_at_ms` + the lease) it may
        /// acknowledge at lease-based levels; 0 for any other role.
        pub lease_expires_ms: u64 => U64,
        /// 1: the controllers may elect a master outside the SyncStateSet
        /// (`enable_elect_unclean_master`), so the set no longer fences a deposed master and
        /// an `all`-level acknowledgement needs the lease too.
        pub unclean_election: u8 => U8,
    }
}

wire_body! {
    /// AlterSyncStateSet (opcode 83): the master proposes a new SyncStateSet. Committed only
    /// when both epochs are the group's current ones, so a deposed master, or a proposal built
    /// on an older set, is refused (`STALE_EPOCH`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AlterSyncStateSet {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        pub master_broker_id: u64 => U64,
        pub master_epoch: u32 => U32,
        pub sync_state_set_epoch: u32 => U32,
        pub new_sync_state_set: Vec<u64> => list("sync_state_set_count", "broker_id", U64),
    }
}

wire_body! {
    /// ResignMaster (opcode 90): a master stopping cleanly hands its group to `successor`, a
    /// SyncStateSet member it has seen hold its whole log on every shard. Committed as an
    /// election of `successor` in a new master epoch, with the resigning broker out of the
    /// set; refused (`STALE_EPOCH`) unless the sender is the group's master at
    /// `master_epoch`, and (`BAD_REQUEST`) unless `successor` is an alive, eligible member.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ResignMaster {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        pub broker_id: u64 => U64,
        pub master_epoch: u32 => U32,
        pub successor_broker_id: u64 => U64,
    }
}

wire_body! {
    /// GetGroupState (opcode 84): one group's replicated state.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupRef {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
    }
}

wire_body! {
    /// One broker the controller knows in a group.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BrokerEntry {
        pub broker_id: u64 => U64,
        pub listen: String => Str16,
        pub ha_listen: String => Str16,
        /// 1: it heartbeated within the silence limit (as the leader sees it).
        pub alive: u8 => U8,
    }
}

wire_body! {
    /// GroupState: a group's master, epochs and SyncStateSet as committed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupState {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        /// 0: no master (none elected yet, or none electable).
        pub master_broker_id: u64 => U64,
        pub master_epoch: u32 => U32,
        pub sync_state_set_epoch: u32 => U32,
        pub sync_state_set: Vec<u64> => list("sync_state_set_count", "broker_id", U64),
        pub brokers: Vec<BrokerEntry> => list("broker_count", "broker", Struct),
    }
}

wire_body! {
    /// ControllerStatus (opcode 85): empty; answered with a JSON document (the controller's
    /// id, leader, peers, commit index, and every group).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct StatusRequest {}
}

wire_body! {
    /// AddPeer (opcode 86): adds a controller to the Raft group (a membership change).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AddPeer {
        pub id: u64 => U64,
        /// The new controller's `HOST:PORT`.
        pub addr: String => Str16,
    }
}

wire_body! {
    /// RemovePeer (opcode 87): removes a controller from the Raft group.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RemovePeer {
        pub id: u64 => U64,
    }
}

wire_body! {
    /// ControllerHello (opcode 88): the first frame of a connection to a controller that has a
    /// secret (`--secret-file`): the opener's fresh nonce. Answered with a
    /// [`ControllerChallenge`]; see [`crate::auth::controller_server_proof`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ControllerHello {
        /// [`crate::auth::NONCE_BYTES`] random bytes, new for every connection.
        pub nonce: Vec<u8> => Bytes16,
    }
}

wire_body! {
    /// ControllerChallenge: the controller's fresh nonce and its proof that it holds the
    /// secret, over both nonces.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ControllerChallenge {
        pub nonce: Vec<u8> => Bytes16,
        pub proof: Vec<u8> => Bytes16,
    }
}

wire_body! {
    /// ControllerProof (opcode 89): the opener's proof over both nonces, under the other
    /// label. Answered `OK` (the connection is authenticated from then on) or
    /// `NOT_AUTHENTICATED` (and the connection is closed).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ControllerProof {
        pub proof: Vec<u8> => Bytes16,
    }
}

/// A `NOT_LEADER` message: `detail`, then ` [leader=HOST:PORT id=N]` when the controller
/// knows the leader, so a client follows it in one round trip.
pub fn not_leader_message(detail: &str, leader: Option<(u64, &str)>) -> String {
    match leader {
        Some((id, addr)) if !addr.is_empty() && !addr.contains(char::is_whitespace) => {
            format!("{detail} [leader={addr} id={id}]")
        }
        _ => detail.to_string(),
    }
}

/// The leader a `NOT_LEADER` message ends with, if it names one: (id, address).
pub fn not_leader_hint(message: &str) -> Option<(u64, String)> {
    let rest = message.strip_suffix(']')?;
    let tail = &rest[rest.rfind(" [leader=")? + " [leader=".len()..];
    let (addr, id) = tail.split_once(" id=")?;
    if addr.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, addr.to_string()))
}

/// Why a connection to a controller did not authenticate.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The controller answered the hello or the proof with an error status (`NOT_AUTHENTICATED`:
    /// another secret; `BAD_REQUEST`: it runs without one).
    #[error("{status}: {message}")]
    Refused { status: Status, message: String },
    /// The controller's answer was not a valid challenge, or its proof does not match.
    #[error("{0}")]
    Protocol(String),
}

/// Largest answer read during the handshake: a challenge is under 80 bytes, an error a
/// sentence.
const HANDSHAKE_FRAME_BYTES: usize = 4096;

/// The opener's side of the controller port's handshake (`ControllerHello`, then
/// `ControllerProof`), on a connection nothing else has used yet; request ids `first_request_id`
/// and the next. It returns once the controller has proved it holds `secret` and accepted
/// this side's proof. One copy for every opener (Raft peers in `ringmq-controller`, brokers and
/// operators in `ringmq-client`), generic over the stream so that it needs no socket.
pub fn authenticate<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    secret: &Secret,
    first_request_id: u64,
) -> Result<(), HandshakeError> {
    let client_nonce = crate::auth::fresh_nonce()?;
    let (status, answer) = handshake_step(
        stream,
        ControllerOpcode::ControllerHello,
        first_request_id,
        &ControllerHello {
            nonce: client_nonce.to_vec(),
        },
    )?;
    if status != Status::Ok {
        return Err(refused(status, &answer));
    }
    let challenge = <ControllerChallenge as Response>::from_answer(Status::Ok, &answer)
        .map_err(|e| HandshakeError::Protocol(format!("undecodable challenge: {e}")))?;
    if !crate::auth::verify_controller_server(
        secret,
        &client_nonce,
        &challenge.nonce,
        &challenge.proof,
    ) {
        return Err(HandshakeError::Protocol(
            "the controller's proof does not match: its --secret-file differs from this side's secret".into(),
        ));
    }
    let proof = crate::auth::controller_client_proof(secret, &client_nonce, &challenge.nonce);
    let (status, answer) = handshake_step(
        stream,
        ControllerOpcode::ControllerProof,
        first_request_id + 1,
        &ControllerProof {
            proof: proof.to_vec(),
        },
    )?;
    if status != Status::Ok {
        return Err(refused(status, &answer));
    }
    Ok(())
}

fn refused(status: Status, answer: &[u8]) -> HandshakeError {
    HandshakeError::Refused {
        status,
        message: String::from_utf8_lossy(answer).into_owned(),
    }
}

/// Sends one handshake request and reads its answer: (status, body).
fn handshake_step<S: std::io::Read + std::io::Write, B: for<'a> Fields<'a>>(
    stream: &mut S,
    opcode: ControllerOpcode,
    request_id: u64,
    body: &B,
) -> Result<(Status, Vec<u8>), HandshakeError> {
    let mut encoded = Vec::new();
    body.write_fields(&mut Writer::new(&mut encoded));
    let mut frame = Vec::new();
    crate::frame::encode_frame(
        &mut frame,
        crate::frame::FrameHeader {
            flags: 0,
            opcode: opcode as u16,
            status: 0,
            request_id,
        },
        &encoded,
    );
    stream.write_all(&frame)?;
    let decoder = crate::frame::FrameDecoder::new(HANDSHAKE_FRAME_BYTES);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match decoder.decode(&buf) {
            Ok(Some(frame)) => {
                if !frame.header.is_response() || frame.header.request_id != request_id {
                    return Err(HandshakeError::Protocol(format!(
                        "answer to request {} where {request_id} ({}) was asked",
                        frame.header.request_id,
                        opcode.name()
                    )));
                }
                let status = Status::from_u16(frame.header.status).ok_or_else(|| {
                    HandshakeError::Protocol(format!("unknown status {}", frame.header.status))
                })?;
                return Ok((status, frame.body.to_vec()));
            }
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Protocol(format!("bad frame: {e}"))),
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Decodes a controller request body by its type (the fuzz targets and tests use it).
pub fn decode_request<T: for<'a> Fields<'a>>(body: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(body);
    let value = T::read_fields(&mut r)?;
    r.finish()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::strategies::Generate;
    use proptest::prelude::*;

    trait RoundTrips {
        fn round_trip();
    }
    impl RoundTrips for () {
        fn round_trip() {}
    }
    impl RoundTrips for serde_json::Value {
        fn round_trip() {}
    }
    impl<T> RoundTrips for T
    where
        T: Generate + for<'a> Fields<'a> + PartialEq + std::fmt::Debug + Clone + 'static,
    {
        fn round_trip() {
            proptest!(|(value in T::strategy())| {
                let mut out = Vec::new();
                value.write_fields(&mut crate::codec::Writer::new(&mut out));
                prop_assert_eq!(decode_request::<T>(&out).unwrap(), value);
            });
        }
    }

    macro_rules! round_trip_every_row {
        (()
            $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
               { $($extra:tt)* }; )+
        ) => {
            $(
                <$req as RoundTrips>::round_trip();
                <$resp as RoundTrips>::round_trip();
                assert_eq!(<$req as ControllerRequest>::OPCODE.name(), $wire);
                assert!((80..=99).contains(&$value), "controller opcodes are 80-99");
            )+
        };
    }

    #[test]
    fn every_controller_message_round_trips() {
        for_each_controller_request!(round_trip_every_row);
    }

    macro_rules! decode_with_every_row {
        (($input:expr)
            $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
               { $($extra:tt)* }; )+
        ) => {
            $(
                let _ = decode_request::<$req>($input);
                let _ = <$resp as Response>::from_answer(crate::Status::Ok, $input);
            )+
        };
    }

    proptest! {
        #[test]
        fn controller_decoders_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            for_each_controller_request!(decode_with_every_row, &input);
            let _ = not_leader_hint(&String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn the_leader_hint_round_trips() {
        let message = not_leader_message("controller 2 is a follower", Some((3, "10.0.0.3:9878")));
        assert_eq!(not_leader_hint(&message), Some((3, "10.0.0.3:9878".into())));
        assert_eq!(not_leader_message("no leader", None), "no leader");
        assert_eq!(not_leader_hint("no leader"), None);
        assert_eq!(not_leader_hint("x [leader=h:1 id=]"), None);
        assert_eq!(not_leader_hint("x [leader= id=2]"), None);
    }
}
