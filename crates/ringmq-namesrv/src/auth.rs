//! Signed registrations (`ringmq namesrv --secret-file`): with a secret, the name server takes a
//! `BrokerRegister` or `BrokerUnregister` only when it is signed with that secret
//! (`ringmq_protocol::auth`), signed within [`REPLAY_WINDOW_MS`] of this server's clock, and
//! carries a sequence above every one this server accepted from that broker. Anything else is
//! refused before the registry sees it, so a forged registration (whatever epoch it claims)
//! never captures a route and a captured one cannot be sent again. Route queries stay open.
//!
//! Pure apart from the clock values the caller passes: unit-tested below.

use ringmq_protocol::auth::{verify_register, verify_unregister, Secret, SignatureError};
use ringmq_protocol::namesrv::{BrokerRegister, BrokerUnregister};
use ringmq_protocol::Status;
use std::collections::HashMap;

/// How far a signature's time may lie from this server's clock, either way: clocks kept by NTP
/// agree within milliseconds, a minute tolerates a badly kept one. Outside it a signature is a
/// replay whatever its sequence, which is what lets [`Authenticator`] forget sequences.
pub const REPLAY_WINDOW_MS: u64 = 60_000;

/// How long a broker's highest accepted sequence is kept after it was last seen: a signature
/// may claim a time up to the window ahead of this clock, so a registration accepted at `t`
/// may verify until `t + 2 × window`; past that the time check refuses its replay alone.
const SEQUENCE_MEMORY_MS: u64 = 2 * REPLAY_WINDOW_MS + 1_000;

/// Brokers whose sequences are kept: only correctly signed registrations make entries, so this
/// bounds honest brokers (the registry's own `MAX_BROKERS`), not an attacker.
const MAX_SEQUENCES: usize = crate::bounds::MAX_BROKERS;

/// How often a refused registration is logged at most (a rogue peer may retry in a loop).
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

type BrokerKey = (String, String, u64);

/// The secret, and per broker the highest sequence accepted (with when it was last seen, on
/// the server's monotonic clock).
pub struct Authenticator {
    secret: Secret,
    sequences: HashMap<BrokerKey, (u64, u64)>,
    /// Per refusal status: when one was last logged, and how many were not since. Each status
    /// has its own slot, so a flood of unsigned registrations (a misconfigured broker) never
    /// hides a replay, or the reverse.
    logged: HashMap<Status, (Option<u64>, u64)>,
}

/// A refusal: the status to answer and the message (which never holds the secret).
pub type Refusal = (Status, String);

impl Authenticator {
    pub fn new(secret: Secret) -> Authenticator {
        Authenticator {
            secret,
            sequences: HashMap::new(),
            logged: HashMap::new(),
        }
    }

    /// Checks a registration at `wall_ms` (ms since the Unix epoch) and `now_ms` (the server's
    /// monotonic clock). `Ok` records its sequence: the same one is refused from then on.
    pub fn check_register(
        &mut self,
        register: &BrokerRegister,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        verify_register(&self.secret, register, wall_ms, REPLAY_WINDOW_MS).map_err(refusal)?;
        let key = (
            register.cluster_name.clone(),
            register.broker_name.clone(),
            register.broker_id,
        );
        self.take_sequence(key, register.sequence, now_ms)
    }

    /// Checks an unregistration (as [`Authenticator::check_register`]; the broker sends its
    /// next sequence, so a captured unregistration is refused as any replay).
    pub fn check_unregister(
        &mut self,
        unregister: &BrokerUnregister,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        verify_unregister(&self.secret, unregister, wall_ms, REPLAY_WINDOW_MS).map_err(refusal)?;
        let key = (
            unregister.cluster_name.clone(),
            unregister.broker_name.clone(),
            unregister.broker_id,
        );
        self.take_sequence(key, unregister.sequence, now_ms)
    }

    fn take_sequence(&mut self, key: BrokerKey, sequence: u64, now_ms: u64) -> Result<(), Refusal> {
        // An entry not seen for the memory span is as good as absent: every registration it
        // could refuse is refused by the time check alone by now, and keeping it would lock out
        // for good a broker whose sequence went down (a restart with its clock set back).
        // `seen` moves only on an accepted registration, so refused attempts (a replay loop)
        // never keep an entry alive.
        let remembered = self
            .sequences
            .get(&key)
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) < SEQUENCE_MEMORY_MS);
        if let Some((highest, _)) = remembered {
            if sequence <= *highest {
                return Err((
                    Status::ReplayRefused,
                    format!(
                        "sequence {sequence} of {}/{} broker {} is not above {highest}, the last accepted: a replay",
                        key.0, key.1, key.2
                    ),
                ));
            }
        } else if !self.sequences.contains_key(&key) && self.sequences.len() >= MAX_SEQUENCES {
            self.sequences
                .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < SEQUENCE_MEMORY_MS);
            if self.sequences.len() >= MAX_SEQUENCES {
                return Err((
                    Status::SystemBusy,
                    format!("the name server tracks at most {MAX_SEQUENCES} signed brokers"),
                ));
            }
        }
        self.sequences.insert(key, (sequence, now_ms));
        Ok(())
    }

    /// Whether a refusal answered `status` at `now_ms` should be logged, and how many of that
    /// status were not logged since the last one that was (at most one line per
    /// [`REFUSAL_LOG_EVERY_MS`] and status; the statuses are a handful, so is the map).
    pub fn should_log(&mut self, status: Status, now_ms: u64) -> Option<u64> {
        let (last, unlogged) = self.logged.entry(status).or_insert((None, 0));
        if last.is_some_and(|at| now_ms.saturating_sub(at) < REFUSAL_LOG_EVERY_MS) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now_ms);
        Some(std::mem::take(unlogged))
    }
}

fn refusal(error: SignatureError) -> Refusal {
    match error {
        SignatureError::NotAuthenticated(why) => (Status::NotAuthenticated, why.to_string()),
        SignatureError::Replayed(why) => (Status::ReplayRefused, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_protocol::auth::{sign_register, sign_unregister};

    fn secret(byte: u8) -> Secret {
        Secret::from_file_contents(vec![byte; 32]).unwrap()
    }

    fn register(sequence: u64, epoch: u32) -> BrokerRegister {
        BrokerRegister {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: 1,
            role: "SYNC_MASTER".into(),
            epoch,
            flush_disk_type: "SYNC_FLUSH".into(),
            listen: "127.0.0.1:1".into(),
            ha_listen: "127.0.0.1:2".into(),
            shard_ports: vec![3],
            topics: vec![],
            shards: vec![],
            sequence,
            signed_at_ms: 0,
            signature: vec![],
        }
    }

    const WALL: u64 = 1_700_000_000_000;

    #[test]
    fn only_fresh_correctly_signed_registrations_pass() {
        let mut auth = Authenticator::new(secret(1));
        let mut good = register(10, 1 << 16);
        sign_register(&secret(1), &mut good, WALL);
        assert_eq!(auth.check_register(&good, WALL + 5, 0), Ok(()));
        // The same registration again: a replay.
        assert_eq!(
            auth.check_register(&good, WALL + 6, 1).unwrap_err().0,
            Status::ReplayRefused
        );
        // Unsigned, and signed with another secret at a higher epoch: forged.
        let unsigned = register(11, 9 << 16);
        assert_eq!(
            auth.check_register(&unsigned, WALL, 2).unwrap_err().0,
            Status::NotAuthenticated
        );
        let mut forged = register(12, 9 << 16);
        sign_register(&secret(2), &mut forged, WALL);
        assert_eq!(
            auth.check_register(&forged, WALL, 3).unwrap_err().0,
            Status::NotAuthenticated
        );
        // Signed right but long ago.
        let mut old = register(13, 1 << 16);
        sign_register(&secret(1), &mut old, WALL - REPLAY_WINDOW_MS - 1);
        assert_eq!(
            auth.check_register(&old, WALL, 4).unwrap_err().0,
            Status::ReplayRefused
        );
        // The next heartbeat passes, and an unregistration with a later sequence too; a
        // replayed unregistration does not.
        let mut next = register(14, 1 << 16);
        sign_register(&secret(1), &mut next, WALL);
        assert_eq!(auth.check_register(&next, WALL, 5), Ok(()));
        let mut leave = BrokerUnregister {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: 1,
            sequence: 15,
            signed_at_ms: 0,
            signature: vec![],
        };
        sign_unregister(&secret(1), &mut leave, WALL);
        assert_eq!(auth.check_unregister(&leave, WALL, 6), Ok(()));
        assert_eq!(
            auth.check_unregister(&leave, WALL, 7).unwrap_err().0,
            Status::ReplayRefused
        );
    }

    /// A broker whose sequence went down (restarted with its clock set back) is refused while
    /// its last accepted sequence is remembered, then accepted once the memory span has passed
    /// since that acceptance; a refused attempt meanwhile does not extend the span.
    #[test]
    fn a_lower_sequence_is_accepted_after_the_memory_span() {
        let mut auth = Authenticator::new(secret(1));
        let t = 5_000;
        let mut first = register(100, 1 << 16);
        sign_register(&secret(1), &mut first, WALL);
        assert_eq!(auth.check_register(&first, WALL, t), Ok(()));
        let mut lower = register(50, 1 << 16);
        sign_register(&secret(1), &mut lower, WALL + 1_000);
        assert_eq!(
            auth.check_register(&lower, WALL + 1_000, t + 1_000)
                .unwrap_err()
                .0,
            Status::ReplayRefused
        );
        let mut later = register(50, 1 << 16);
        sign_register(&secret(1), &mut later, WALL + 122_000);
        assert_eq!(
            auth.check_register(&later, WALL + 122_000, t + 122_000),
            Ok(())
        );
        // The accepted one is remembered again: its replay is refused.
        assert_eq!(
            auth.check_register(&later, WALL + 122_001, t + 122_001)
                .unwrap_err()
                .0,
            Status::ReplayRefused
        );
    }

    /// A signature dated in the future beyond the window is refused (a captured registration
    /// cannot be pre-dated to outlive the sequence memory).
    #[test]
    fn a_future_dated_signature_is_refused() {
        let mut auth = Authenticator::new(secret(1));
        let mut ahead = register(1, 1 << 16);
        sign_register(&secret(1), &mut ahead, WALL + REPLAY_WINDOW_MS + 1);
        assert_eq!(
            auth.check_register(&ahead, WALL, 0).unwrap_err().0,
            Status::ReplayRefused
        );
    }

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let mut auth = Authenticator::new(secret(1));
        let unsigned = Status::NotAuthenticated;
        assert_eq!(auth.should_log(unsigned, 0), Some(0));
        assert_eq!(auth.should_log(unsigned, 1), None);
        assert_eq!(auth.should_log(unsigned, 2), None);
        // A replay in the middle of a flood of unsigned registrations still gets its line.
        assert_eq!(auth.should_log(Status::ReplayRefused, 3), Some(0));
        assert_eq!(auth.should_log(Status::ReplayRefused, 4), None);
        assert_eq!(auth.should_log(unsigned, REFUSAL_LOG_EVERY_MS), Some(2));
    }
}
