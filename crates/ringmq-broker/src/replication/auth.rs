//! The replication link's mutual authentication (`ha_security = "auth"`).
//!
//! Both ends hold the same secret (`ha_secret_file`). The exchange, before any log byte,
//! metadata frame or offset report:
//!
//! 1. slave → master: the hello, which carries the slave's fresh nonce;
//! 2. master → slave: a [`Challenge`] (the master's fresh nonce, its group name and epoch) and
//!    the master's proof, HMAC-SHA256(secret, [`MASTER_LABEL`] ‖ hello ‖ challenge);
//! 3. the slave checks that proof (a master without the secret cannot feed it), then sends
//!    its own, HMAC-SHA256(secret, [`SLAVE_LABEL`] ‖ hello ‖ challenge);
//! 4. the master checks it and only then sends the welcome and the log; the welcome and every
//!    offset report carry a tag under the session key ([`session_key`]).
//!
//! Before step 2 the master checks what needs no secret (it is a master of the slave's group)
//! and refuses a hello this process sent itself ([`is_own_hello`]), so a slave's hello
//! reflected to its own HA port earns no master proof.
//!
//! Each proof covers both nonces, so an answer recorded on one connection fails on the next
//! (the other side's nonce is new), and both identities as exchanged. The labels differ by
//! direction, so a master's proof reflected back as the slave's fails. Tags are compared in
//! constant time ([`Secret::verify`]). Both ends bound the whole handshake by one
//! `ha_link_timeout_ms` deadline.

use super::protocol::{Challenge, Hello, Nonce, Proof, NONCE_BYTES};
use ringmq_protocol::auth::Secret;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::warn;

/// Label of the master's proof: the protocol, its version and the direction.
pub const MASTER_LABEL: &str = "ringmq replication v3 master proof";
/// Label of the slave's proof.
pub const SLAVE_LABEL: &str = "ringmq replication v3 slave proof";

/// A fresh random nonce from the kernel's CSPRNG (getrandom(2), which blocks only before
/// the pool is first initialised, long before a broker starts). An error (a kernel or seccomp
/// policy without getrandom) fails the one handshake that needed the nonce, never the broker.
pub fn fresh_nonce() -> std::io::Result<Nonce> {
    let mut nonce = [0u8; NONCE_BYTES];
    let mut filled = 0;
    while filled < NONCE_BYTES {
        // SAFETY: getrandom writes at most the length given into the buffer given.
        let n = unsafe {
            libc::getrandom(nonce[filled..].as_mut_ptr().cast(), NONCE_BYTES - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        } else {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
    Ok(nonce)
}

/// The nonces of the hellos this process's slave links have sent and whose handshakes are
/// still going: a hello arriving at this process's HA port with one of them is this process's
/// own hello reflected back (an attacker forwarding a slave's hello to the slave's own HA
/// port, to have it compute the master's proof its slave link would accept). At most one per
/// slave shard, so a short list.
static OUTSTANDING_HELLOS: Mutex<Vec<Nonce>> = Mutex::new(Vec::new());

/// A hello nonce registered as outstanding for as long as this lives (the slave's
/// handshake).
pub struct OutstandingHello(Nonce);

impl OutstandingHello {
    pub fn register(nonce: Nonce) -> OutstandingHello {
        OUTSTANDING_HELLOS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(nonce);
        OutstandingHello(nonce)
    }
}

impl Drop for OutstandingHello {
    fn drop(&mut self) {
        let mut outstanding = OUTSTANDING_HELLOS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = outstanding.iter().position(|n| *n == self.0) {
            outstanding.swap_remove(at);
        }
    }
}

/// Whether `nonce` is that of a hello this process sent and is still waiting on.
pub fn is_own_hello(nonce: &Nonce) -> bool {
    OUTSTANDING_HELLOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(nonce)
}

fn parts<'a>(hello: &'a [u8], challenge: &'a [u8]) -> [&'a [u8]; 2] {
    [hello, challenge]
}

/// Label of the session key both ends derive once the proofs passed.
pub const SESSION_LABEL: &str = "ringmq replication v3 session";
/// Label of the tag after an authenticated link's welcome.
pub const WELCOME_LABEL: &str = "ringmq replication v3 welcome";
/// Label of the tag on each offset report of an authenticated link.
pub const REPORT_LABEL: &str = "ringmq replication v3 report";

/// The link's session key, HMAC-SHA256(secret, [`SESSION_LABEL`] ‖ hello ‖ challenge): only
/// the two ends that proved themselves hold it. It tags the welcome and every offset report,
/// so an attacker relaying the handshake between a real master and slave cannot, once it is
/// done, alter the welcome or move the acknowledged offset (a report it forges or replays
/// fails: each tag covers the report's number on the link).
pub fn session_key(secret: &Secret, hello: &Hello, challenge: &Challenge) -> Secret {
    secret.derive(
        SESSION_LABEL,
        &parts(&hello.body_bytes(), &challenge.unproved_bytes()),
    )
}

/// The tag of the welcome whose body (without the length prefix) is `welcome`.
pub fn welcome_tag(session: &Secret, welcome: &[u8]) -> Proof {
    session.tag(WELCOME_LABEL, &[welcome])
}

/// The tag of the `number`-th report (from 0) of a link, carrying `offset`.
pub fn report_tag(session: &Secret, number: u64, offset: u64) -> Proof {
    session.tag(
        REPORT_LABEL,
        &[&number.to_le_bytes(), &offset.to_le_bytes()],
    )
}

/// Whether `tag` is that of the `number`-th report carrying `offset` (constant time).
pub fn verify_report(session: &Secret, number: u64, offset: u64, tag: &[u8]) -> bool {
    session.verify(
        REPORT_LABEL,
        &[&number.to_le_bytes(), &offset.to_le_bytes()],
        tag,
    )
}

/// Whether `tag` is that of the welcome whose body is `welcome` (constant time).
pub fn verify_welcome(session: &Secret, welcome: &[u8], tag: &[u8]) -> bool {
    session.verify(WELCOME_LABEL, &[welcome], tag)
}

/// The master's proof over the hello's body and the challenge (without its proof).
pub fn master_proof(secret: &Secret, hello: &Hello, challenge: &Challenge) -> Proof {
    secret.tag(
        MASTER_LABEL,
        &parts(&hello.body_bytes(), &challenge.unproved_bytes()),
    )
}

/// The slave's proof over the same transcript, under the other label.
pub fn slave_proof(secret: &Secret, hello: &Hello, challenge: &Challenge) -> Proof {
    secret.tag(
        SLAVE_LABEL,
        &parts(&hello.body_bytes(), &challenge.unproved_bytes()),
    )
}

/// Whether `proof` is the master's proof of this transcript.
pub fn verify_master(secret: &Secret, hello: &Hello, challenge: &Challenge, proof: &[u8]) -> bool {
    secret.verify(
        MASTER_LABEL,
        &parts(&hello.body_bytes(), &challenge.unproved_bytes()),
        proof,
    )
}

/// Whether `proof` is the slave's proof of this transcript.
pub fn verify_slave(secret: &Secret, hello: &Hello, challenge: &Challenge, proof: &[u8]) -> bool {
    secret.verify(
        SLAVE_LABEL,
        &parts(&hello.body_bytes(), &challenge.unproved_bytes()),
        proof,
    )
}

/// How often a refused handshake is logged per [`RefusalKind`], for the whole broker: a rogue
/// peer reconnecting in a loop must not fill the log; the next warning of that kind says how
/// many were not logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a refusal was about. Each kind has its own log slot, so a port scanner's broken
/// connections (one every few ms) never take the slot a real authentication failure needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The hello never arrived or did not decode, or no handshake slot was free.
    Hello,
    /// The peer spoke the protocol but is not a slave this master serves (role, group).
    Peer,
    /// The challenge-response failed (wrong or no secret, no proof in time).
    Auth,
}

impl RefusalKind {
    const COUNT: usize = 3;

    fn slot(self) -> usize {
        match self {
            RefusalKind::Hello => 0,
            RefusalKind::Peer => 1,
            RefusalKind::Auth => 2,
        }
    }
}

/// Per kind: when a refusal was last logged, and how many were refused since without a log
/// line. Process-wide (shards are threads): one warning per interval and kind says enough
/// about one peer or many.
static REFUSAL_LOG: Mutex<[(Option<Instant>, u64); RefusalKind::COUNT]> =
    Mutex::new([(None, 0); RefusalKind::COUNT]);

/// Whether a refusal of `kind` at `now` is logged, and how many of that kind were not since
/// the last one that was.
fn should_log(kind: RefusalKind, now: Instant) -> Option<u64> {
    let mut log = REFUSAL_LOG.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut log[kind.slot()];
    if slot
        .0
        .is_some_and(|at| now.saturating_duration_since(at) < REFUSAL_LOG_EVERY)
    {
        slot.1 += 1;
        return None;
    }
    slot.0 = Some(now);
    Some(std::mem::take(&mut slot.1))
}

/// Logs a refused replication handshake, at most once per [`REFUSAL_LOG_EVERY`] and kind for
/// the whole broker. `reason` never holds a secret (only what the peer sent and what was
/// expected).
pub fn log_refusal(shard: usize, peer: &str, kind: RefusalKind, reason: &str) {
    if let Some(unlogged) = should_log(kind, Instant::now()) {
        warn!(
            shard,
            %peer,
            unlogged_refusals = unlogged,
            "refused a replication peer: {reason}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::protocol::LinkSecurity;
    use crate::replication::protocol::HA_VERSION;

    fn secret(byte: u8) -> Secret {
        Secret::from_file_contents(vec![byte; 32]).unwrap()
    }

    fn hello(nonce: Nonce) -> Hello {
        Hello {
            version: HA_VERSION,
            shard: 0,
            shard_count: 1,
            segment_size_bytes: 1 << 20,
            log_id: [0; 16],
            last_epoch: 0,
            max_offset: 0,
            broker_name: "broker-a".into(),
            security: LinkSecurity::Auth,
            nonce,
            controller_broker_id: 0,
        }
    }

    fn challenge(nonce: Nonce) -> Challenge {
        Challenge {
            version: HA_VERSION,
            nonce,
            broker_name: "broker-a".into(),
            last_epoch: 1 << 16,
        }
    }

    #[test]
    fn the_right_secret_passes_both_ways() {
        let s = secret(1);
        let (h, c) = (
            hello(fresh_nonce().unwrap()),
            challenge(fresh_nonce().unwrap()),
        );
        assert!(verify_master(&s, &h, &c, &master_proof(&s, &h, &c)));
        assert!(verify_slave(&s, &h, &c, &slave_proof(&s, &h, &c)));
    }

    #[test]
    fn a_wrong_secret_fails_on_either_side() {
        let (right, wrong) = (secret(1), secret(2));
        let (h, c) = (
            hello(fresh_nonce().unwrap()),
            challenge(fresh_nonce().unwrap()),
        );
        // A rogue slave with another secret, and a rogue master with another secret.
        assert!(!verify_slave(&right, &h, &c, &slave_proof(&wrong, &h, &c)));
        assert!(!verify_master(
            &right,
            &h,
            &c,
            &master_proof(&wrong, &h, &c)
        ));
        // No secret at all: the zero proof, or nothing.
        assert!(!verify_slave(&right, &h, &c, &[0; 32]));
        assert!(!verify_slave(&right, &h, &c, &[]));
    }

    /// A rogue slave that sends the master's own proof back as its answer is refused: the
    /// labels bind each proof to its direction.
    #[test]
    fn a_reflected_proof_fails() {
        let s = secret(1);
        let (h, c) = (
            hello(fresh_nonce().unwrap()),
            challenge(fresh_nonce().unwrap()),
        );
        let masters = master_proof(&s, &h, &c);
        assert!(!verify_slave(&s, &h, &c, &masters));
        assert!(!verify_master(&s, &h, &c, &slave_proof(&s, &h, &c)));
    }

    /// A proof recorded on one connection fails on the next: the other end's nonce is new.
    #[test]
    fn a_replayed_proof_fails_against_a_fresh_nonce() {
        let s = secret(1);
        let recorded_hello = hello(fresh_nonce().unwrap());
        let recorded_challenge = challenge(fresh_nonce().unwrap());
        let slave_answer = slave_proof(&s, &recorded_hello, &recorded_challenge);
        let master_answer = master_proof(&s, &recorded_hello, &recorded_challenge);
        // The rogue slave replays the recorded hello and answer; the master's nonce is fresh.
        let new_challenge = challenge(fresh_nonce().unwrap());
        assert!(!verify_slave(
            &s,
            &recorded_hello,
            &new_challenge,
            &slave_answer
        ));
        // The rogue master replays the recorded challenge; the slave's nonce is fresh.
        let new_hello = hello(fresh_nonce().unwrap());
        assert!(!verify_master(
            &s,
            &new_hello,
            &recorded_challenge,
            &master_answer
        ));
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }

    /// A flood of one kind of refusal leaves the other kinds their own log line.
    #[test]
    fn each_refusal_kind_has_its_own_log_slot() {
        // Far in the future, so other tests' refusals (same process) are long past.
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(should_log(RefusalKind::Hello, now), Some(0));
        for _ in 0..5 {
            assert_eq!(should_log(RefusalKind::Hello, now), None);
        }
        assert_eq!(should_log(RefusalKind::Auth, now), Some(0));
        assert_eq!(should_log(RefusalKind::Auth, now), None);
        assert_eq!(should_log(RefusalKind::Peer, now), Some(0));
        assert_eq!(
            should_log(RefusalKind::Hello, now + REFUSAL_LOG_EVERY),
            Some(5)
        );
        assert_eq!(
            should_log(RefusalKind::Auth, now + REFUSAL_LOG_EVERY),
            Some(1)
        );
    }

    /// A report tag holds for its number and offset only: a replayed or moved report fails.
    #[test]
    fn report_tags_bind_the_number_and_the_offset() {
        let s = secret(1);
        let (h, c) = (
            hello(fresh_nonce().unwrap()),
            challenge(fresh_nonce().unwrap()),
        );
        let key = session_key(&s, &h, &c);
        let other = session_key(&s, &hello(fresh_nonce().unwrap()), &c);
        let tag = report_tag(&key, 3, 4096);
        assert_eq!(tag, report_tag(&key, 3, 4096));
        assert_ne!(
            tag,
            report_tag(&key, 4, 4096),
            "replayed as the next report"
        );
        assert_ne!(tag, report_tag(&key, 3, 8192), "offset moved");
        assert_ne!(tag, report_tag(&other, 3, 4096), "another connection's key");
        assert!(verify_report(&key, 3, 4096, &tag));
        assert!(!verify_report(&key, 3, 4097, &tag));
        assert!(verify_welcome(&key, b"w", &welcome_tag(&key, b"w")));
        assert!(!verify_welcome(&key, b"x", &welcome_tag(&key, b"w")));
    }

    #[test]
    fn an_outstanding_hello_is_recognised_until_dropped() {
        let nonce = fresh_nonce().unwrap();
        assert!(!is_own_hello(&nonce));
        let outstanding = OutstandingHello::register(nonce);
        assert!(is_own_hello(&nonce));
        assert!(!is_own_hello(&fresh_nonce().unwrap()));
        drop(outstanding);
        assert!(!is_own_hello(&nonce));
    }

    /// The proofs bind the identities exchanged: a changed group name, epoch or offset breaks
    /// them.
    #[test]
    fn proofs_bind_both_identities() {
        let s = secret(1);
        let (h, c) = (
            hello(fresh_nonce().unwrap()),
            challenge(fresh_nonce().unwrap()),
        );
        let proof = slave_proof(&s, &h, &c);
        let other_epoch = Challenge {
            last_epoch: c.last_epoch + 1,
            ..c.clone()
        };
        assert!(!verify_slave(&s, &h, &other_epoch, &proof));
        let other_offset = Hello {
            max_offset: 1,
            ..h.clone()
        };
        assert!(!verify_slave(&s, &other_offset, &c, &proof));
        assert!(!verify_slave(&s, &h, &c, &proof[..31]), "truncated proof");
    }
}
