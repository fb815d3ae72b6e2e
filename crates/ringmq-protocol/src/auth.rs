//! Shared-secret authentication: HMAC-SHA256 tags over labelled, length-prefixed parts, checked
//! in constant time. Used by the replication link's handshake (`ha_security = "auth"`, both
//! ends prove they hold `ha_secret_file`) and by signed name-server registrations
//! (`namesrv_secret_file` on the broker, `--secret-file` on the name server).
//!
//! Pure: the caller reads the secret's file and supplies fresh nonces and the clock. Every
//! tag starts with a label naming the protocol, its version and the sender's role, so a tag
//! made for one purpose or direction never verifies for another (a master's answer reflected
//! back as a slave's fails), and every part is length-prefixed, so no two different part lists
//! hash the same bytes.

use crate::namesrv::{BrokerRegister, BrokerUnregister};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Shortest secret accepted: 256 bits, HMAC-SHA256's full strength (RFC 2104 advises a key at
/// least as long as the hash output).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest secret accepted: a file of a few KiB is a secret, one of megabytes is a mistake.
pub const MAX_SECRET_BYTES: usize = 4096;
/// Bytes of every tag (the whole SHA-256 output, never truncated).
pub const TAG_BYTES: usize = 32;

/// A shared secret. Its bytes never leave this type except into the MAC: `Debug` prints a
/// placeholder, there is no `Display`, so a config or error that holds one cannot print it.
/// Equality (configurations compare) takes the same time whatever byte differs, and the bytes
/// are overwritten with zeros when a copy is dropped, so a freed buffer does not keep them.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        // Lengths are no secret (the file's size is not); the bytes are compared without an
        // early exit.
        self.0.len() == other.0.len()
            && std::hint::black_box(
                self.0
                    .iter()
                    .zip(&other.0)
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b)),
            ) == 0
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // SAFETY: a valid, exclusive reference; a volatile write is not optimised away
            // although the buffer is freed right after.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The secret held by a file's contents. One trailing newline (`\n` or `\r\n`) is not part
    /// of it, so a file written with `echo` or an editor holds the secret its text shows. The
    /// error says what is wrong and never contains the bytes.
    pub fn from_file_contents(bytes: Vec<u8>) -> Result<Secret, String> {
        // Held as a `Secret` from here on, so a refused one is zeroed too.
        let mut secret = Secret(bytes);
        let bytes = &mut secret.0;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_SECRET_BYTES} are required (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; at most {MAX_SECRET_BYTES} are accepted",
                bytes.len()
            ));
        }
        Ok(secret)
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// HMAC-SHA256 over `label` and `parts`, each after its u32 length.
    pub fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        self.mac(label, parts).finalize().into_bytes().into()
    }

    /// A key derived from this one: the tag of `label` and `parts`, as a secret of its own (a
    /// per-connection session key, say).
    pub fn derive(&self, label: &str, parts: &[&[u8]]) -> Secret {
        Secret(self.tag(label, parts).to_vec())
    }

    /// Whether `tag` is the tag of `label` and `parts`, compared in constant time (a wrong tag
    /// takes as long to refuse whatever byte it first differs in). A tag of another length
    /// (truncated, or empty: unsigned) fails.
    pub fn verify(&self, label: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() == TAG_BYTES && self.mac(label, parts).verify_slice(tag).is_ok()
    }
}

/// Bytes of a handshake nonce (the controller port's; the replication link has its own of the
/// same size).
pub const NONCE_BYTES: usize = 32;

/// A fresh nonce from the kernel's CSPRNG (getrandom(2)). An error (a kernel or seccomp policy
/// without it) fails the one handshake that needed the nonce, never the process.
pub fn fresh_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(std::io::Error::other)?;
    Ok(nonce)
}

/// Label of a controller's proof on its port (`ControllerChallenge`).
const CONTROLLER_SERVER_LABEL: &str = "ringmq controller v1 server proof";
/// Label of the opener's proof on a controller's port (`ControllerProof`): Raft peers,
/// brokers and operators alike.
const CONTROLLER_CLIENT_LABEL: &str = "ringmq controller v1 client proof";

/// The controller's proof over the opener's nonce and its own. Both nonces are in both proofs
/// (a proof recorded on one connection fails on the next) and the labels differ by direction
/// (the controller's proof sent back as the opener's fails).
pub fn controller_server_proof(
    secret: &Secret,
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> [u8; TAG_BYTES] {
    secret.tag(CONTROLLER_SERVER_LABEL, &[client_nonce, server_nonce])
}

/// The opener's proof over the same nonces, under the other label.
pub fn controller_client_proof(
    secret: &Secret,
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> [u8; TAG_BYTES] {
    secret.tag(CONTROLLER_CLIENT_LABEL, &[client_nonce, server_nonce])
}

/// Whether `proof` is the controller's proof of these nonces (constant time); nonces of
/// another length than [`NONCE_BYTES`] fail.
pub fn verify_controller_server(
    secret: &Secret,
    client_nonce: &[u8],
    server_nonce: &[u8],
    proof: &[u8],
) -> bool {
    client_nonce.len() == NONCE_BYTES
        && server_nonce.len() == NONCE_BYTES
        && secret.verify(
            CONTROLLER_SERVER_LABEL,
            &[client_nonce, server_nonce],
            proof,
        )
}

/// Whether `proof` is the opener's proof of these nonces (constant time).
pub fn verify_controller_client(
    secret: &Secret,
    client_nonce: &[u8],
    server_nonce: &[u8],
    proof: &[u8],
) -> bool {
    client_nonce.len() == NONCE_BYTES
        && server_nonce.len() == NONCE_BYTES
        && secret.verify(
            CONTROLLER_CLIENT_LABEL,
            &[client_nonce, server_nonce],
            proof,
        )
}

/// Label of a registration's signature (the opcode's name and the signature's version).
const REGISTER_LABEL: &str = "ringmq namesrv BrokerRegister v1";
/// Label of an unregistration's signature.
const UNREGISTER_LABEL: &str = "ringmq namesrv BrokerUnregister v1";

/// The bytes a registration's signature covers: the body as encoded with an empty signature,
/// so every other field (the timestamp and the sequence included) is covered.
fn unsigned_register_bytes(register: &BrokerRegister) -> Vec<u8> {
    let mut unsigned = register.clone();
    unsigned.signature.clear();
    let mut out = Vec::new();
    unsigned.encode(&mut out);
    out
}

fn unsigned_unregister_bytes(unregister: &BrokerUnregister) -> Vec<u8> {
    let mut unsigned = unregister.clone();
    unsigned.signature.clear();
    let mut out = Vec::new();
    unsigned.encode(&mut out);
    out
}

/// Signs a registration: sets `signed_at_ms` (the broker's wall clock, ms since the Unix epoch)
/// and the signature over every field. Its `sequence` must be set first: the name server
/// refuses a sequence it has seen, which is what makes a captured registration useless.
pub fn sign_register(secret: &Secret, register: &mut BrokerRegister, now_ms: u64) {
    register.signed_at_ms = now_ms;
    register.signature = secret
        .tag(REGISTER_LABEL, &[&unsigned_register_bytes(register)])
        .to_vec();
}

/// Signs an unregistration (as [`sign_register`]).
pub fn sign_unregister(secret: &Secret, unregister: &mut BrokerUnregister, now_ms: u64) {
    unregister.signed_at_ms = now_ms;
    unregister.signature = secret
        .tag(UNREGISTER_LABEL, &[&unsigned_unregister_bytes(unregister)])
        .to_vec();
}

/// Why a name server refuses a registration or an unregistration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature, or one that is not the secret's tag of this body (a wrong secret, or a
    /// field changed after signing).
    #[error("{0}")]
    NotAuthenticated(&'static str),
    /// A valid signature outside the replay window, or over a sequence already seen.
    #[error("{0}")]
    Replayed(String),
}

/// Checks a registration's signature and its age: `now_ms` is the name server's wall clock and
/// `window_ms` how far `signed_at_ms` may lie from it either way (clock skew between hosts plus
/// transit). The sequence check (a repeated sequence is a replay) is the registry's, which
/// knows the sequences seen.
pub fn verify_register(
    secret: &Secret,
    register: &BrokerRegister,
    now_ms: u64,
    window_ms: u64,
) -> Result<(), SignatureError> {
    check_signature(
        secret,
        REGISTER_LABEL,
        &unsigned_register_bytes(register),
        &register.signature,
    )?;
    check_age(register.signed_at_ms, now_ms, window_ms)?;
    if register.sequence == 0 {
        return Err(SignatureError::NotAuthenticated(
            "a signed registration must carry a sequence (0 is never fresh)",
        ));
    }
    Ok(())
}

/// Checks an unregistration's signature and its age (as [`verify_register`]).
pub fn verify_unregister(
    secret: &Secret,
    unregister: &BrokerUnregister,
    now_ms: u64,
    window_ms: u64,
) -> Result<(), SignatureError> {
    check_signature(
        secret,
        UNREGISTER_LABEL,
        &unsigned_unregister_bytes(unregister),
        &unregister.signature,
    )?;
    check_age(unregister.signed_at_ms, now_ms, window_ms)?;
    if unregister.sequence == 0 {
        return Err(SignatureError::NotAuthenticated(
            "a signed unregistration must carry a sequence (0 is never fresh)",
        ));
    }
    Ok(())
}

fn check_signature(
    secret: &Secret,
    label: &str,
    unsigned: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    if signature.is_empty() {
        return Err(SignatureError::NotAuthenticated(
            "this name server requires signed registrations (namesrv_secret_file on the broker)",
        ));
    }
    if !secret.verify(label, &[unsigned], signature) {
        return Err(SignatureError::NotAuthenticated(
            "the signature does not match: the broker's namesrv_secret_file differs from this name server's --secret-file, or the body was altered",
        ));
    }
    Ok(())
}

fn check_age(signed_at_ms: u64, now_ms: u64, window_ms: u64) -> Result<(), SignatureError> {
    let skew = signed_at_ms.abs_diff(now_ms);
    if skew > window_ms {
        return Err(SignatureError::Replayed(format!(
            "signed {skew} ms {} this name server's clock, outside its {window_ms} ms replay window (a replay, or clocks apart)",
            if signed_at_ms < now_ms { "before" } else { "after" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret::from_file_contents(vec![byte; MIN_SECRET_BYTES]).unwrap()
    }

    #[test]
    fn secrets_are_bounded_trimmed_and_never_printed() {
        assert!(Secret::from_file_contents(vec![b'x'; MIN_SECRET_BYTES - 1]).is_err());
        let with_newline = {
            let mut bytes = vec![b'x'; MIN_SECRET_BYTES];
            bytes.extend_from_slice(b"\r\n");
            Secret::from_file_contents(bytes).unwrap()
        };
        assert_eq!(with_newline, secret(b'x'));
        assert_ne!(secret(b'x'), secret(b'y'));
        let mut longer = vec![b'x'; MIN_SECRET_BYTES + 1];
        assert_ne!(
            Secret::from_file_contents(longer.clone()).unwrap(),
            secret(b'x')
        );
        longer[MIN_SECRET_BYTES] = b'z';
        assert_ne!(
            Secret::from_file_contents(longer.clone()).unwrap(),
            Secret::from_file_contents(vec![b'x'; MIN_SECRET_BYTES + 1]).unwrap()
        );
        assert!(Secret::from_file_contents(vec![b'x'; MAX_SECRET_BYTES + 1]).is_err());
        let short = Secret::from_file_contents(b"hunter2hunter2\n".to_vec()).unwrap_err();
        assert!(!short.contains("hunter2"), "{short}");
        assert_eq!(format!("{:?}", secret(b'q')), "Secret(<redacted>)");
    }

    #[test]
    fn tags_bind_the_label_the_parts_and_their_boundaries() {
        let s = secret(1);
        let tag = s.tag("role a", &[b"ab", b"c"]);
        assert!(s.verify("role a", &[b"ab", b"c"], &tag));
        assert!(!s.verify("role b", &[b"ab", b"c"], &tag), "another label");
        assert!(!s.verify("role a", &[b"a", b"bc"], &tag), "moved boundary");
        assert!(
            !secret(2).verify("role a", &[b"ab", b"c"], &tag),
            "other secret"
        );
        assert!(!s.verify("role a", &[b"ab", b"c"], &tag[..31]), "truncated");
        assert!(!s.verify("role a", &[b"ab", b"c"], &[]), "empty");
    }

    #[test]
    fn controller_proofs_bind_both_nonces_and_their_direction() {
        let s = secret(3);
        let (c, n) = (fresh_nonce().unwrap(), fresh_nonce().unwrap());
        assert_ne!(c, n);
        let server = controller_server_proof(&s, &c, &n);
        let client = controller_client_proof(&s, &c, &n);
        assert!(verify_controller_server(&s, &c, &n, &server));
        assert!(verify_controller_client(&s, &c, &n, &client));
        assert!(!verify_controller_client(&s, &c, &n, &server), "reflected");
        assert!(
            !verify_controller_client(&secret(4), &c, &n, &client),
            "other secret"
        );
        let replayed_on = fresh_nonce().unwrap();
        assert!(
            !verify_controller_client(&s, &c, &replayed_on, &client),
            "replayed"
        );
        assert!(
            !verify_controller_client(&s, &c[..31], &n, &client),
            "short nonce"
        );
    }

    fn register() -> BrokerRegister {
        BrokerRegister {
            cluster_name: "c".into(),
            broker_name: "broker-a".into(),
            broker_id: 7,
            role: "SYNC_MASTER".into(),
            epoch: 1 << 16,
            flush_disk_type: "SYNC_FLUSH".into(),
            listen: "127.0.0.1:1".into(),
            ha_listen: "127.0.0.1:2".into(),
            shard_ports: vec![3],
            topics: vec![],
            shards: vec![],
            sequence: 42,
            signed_at_ms: 0,
            signature: vec![],
        }
    }

    #[test]
    fn a_registration_verifies_only_signed_with_the_secret_unaltered_and_fresh() {
        let s = secret(9);
        let now = 1_000_000;
        let window = 30_000;
        let unsigned = register();
        assert!(matches!(
            verify_register(&s, &unsigned, now, window),
            Err(SignatureError::NotAuthenticated(_))
        ));
        let mut signed = register();
        sign_register(&s, &mut signed, now);
        assert_eq!(verify_register(&s, &signed, now + 1_000, window), Ok(()));
        assert!(matches!(
            verify_register(&secret(8), &signed, now, window),
            Err(SignatureError::NotAuthenticated(_))
        ));
        let mut forged = signed.clone();
        forged.epoch += 1;
        assert!(matches!(
            verify_register(&s, &forged, now, window),
            Err(SignatureError::NotAuthenticated(_))
        ));
        let mut backdated = signed.clone();
        backdated.signed_at_ms -= 1;
        assert!(verify_register(&s, &backdated, now, window).is_err());
        assert!(matches!(
            verify_register(&s, &signed, now + window + 1, window),
            Err(SignatureError::Replayed(_))
        ));
        // An unregistration's signature is not a registration's, and the reverse.
        let mut unregister = BrokerUnregister {
            cluster_name: "c".into(),
            broker_name: "broker-a".into(),
            broker_id: 7,
            sequence: 43,
            signed_at_ms: 0,
            signature: vec![],
        };
        sign_unregister(&s, &mut unregister, now);
        assert_eq!(verify_unregister(&s, &unregister, now, window), Ok(()));
        let mut swapped = signed.clone();
        swapped.signature = unregister.signature.clone();
        assert!(verify_register(&s, &swapped, now, window).is_err());
    }
}
