//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677): the key derivation, both sides of the
//! exchange, and the bodies of the authentication and user requests (opcodes 5, 6, 61-63).
//!
//! Pure, like the rest of the crate: the caller supplies nonces (fresh random bytes) and the
//! stored credential. The client derives a [`Credential`] from a password (PBKDF2, the
//! expensive part) and the broker stores only that: the salt, the iteration count, StoredKey
//! and ServerKey. Verifying a login ([`ServerExchange`]) costs two HMACs and a hash, never
//! PBKDF2, so it can run on a shard thread.
//!
//! The exchange, as RFC 5802 section 3 names the messages:
//!
//! ```text
//! client-first  n,,n=USER,r=CNONCE                     (AuthStart, opcode 5)
//! server-first  r=CNONCE SNONCE,s=SALT,i=ITERATIONS    (its answer)
//! client-final  c=biws,r=CNONCE SNONCE,p=PROOF         (AuthFinish, opcode 6)
//! server-final  v=SERVER_SIGNATURE                     (its answer)
//! ```
//!
//! What is refused, each with a [`ScramError`] and never a panic: channel binding (`p=` or
//! `y` in the GS2 header: the broker offers none), an authorization identity other than the
//! user (`a=` naming someone else), a nonce that does not extend the client's or does not carry
//! the server's part (a wrong or altered nonce, a client-final replayed from another
//! exchange), a `c=` that is not the GS2 header sent first, a bad proof, and anything that does
//! not parse. Passwords are taken as their UTF-8 bytes (no SASLprep: identical for ASCII).

use super::codec::{
    list, Bytes16, Codec, DecodeError, EncodeError, Fields, Name, Reader, Str16, Struct, Writer,
    U32, U8,
};
use super::message::wire_body;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::digest::{Digest, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};
use std::fmt;

/// Fewest PBKDF2 iterations a credential may have: RFC 7677 section 4's minimum.
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a credential may have, and a client accepts from a server: a hostile
/// server naming 4 billion would keep the client hashing for hours. 2^20 is about a second.
pub const MAX_ITERATIONS: u32 = 1 << 20;
/// Iterations of a credential made by `ringmq user create` unless told otherwise.
pub const DEFAULT_ITERATIONS: u32 = MIN_ITERATIONS;
/// Salt bytes of a new credential (RFC 5802 leaves it open; 16 is what Kafka uses... and more
/// than enough to make precomputed tables useless).
pub const SALT_BYTES: usize = 16;
/// Bounds on a salt received: what a stored credential or a server-first may carry.
pub const MAX_SALT_BYTES: usize = 128;
/// Bounds on a nonce's length (client or server part): long enough to be unguessable, short
/// enough to keep the messages small.
pub const MIN_NONCE_CHARS: usize = 8;
pub const MAX_NONCE_CHARS: usize = 256;
/// Longest user name (bytes): as long as a topic name may be.
pub const MAX_USER_BYTES: usize = 255;

/// A SCRAM mechanism: the hash under HMAC, PBKDF2 and the stored key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    /// The SASL name (RFC 7677 / RFC 5802 registrations).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The wire value in [`StoredCredential::mechanism`].
    pub fn code(self) -> u8 {
        match self {
            Mechanism::ScramSha256 => 1,
            Mechanism::ScramSha512 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.code() == code)
    }

    /// Bytes of the hash output: the length of every key and signature.
    pub fn key_bytes(self) -> usize {
        match self {
            Mechanism::ScramSha256 => 32,
            Mechanism::ScramSha512 => 64,
        }
    }

    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => hmac_of::<Hmac<Sha256>>(key, parts),
            Mechanism::ScramSha512 => hmac_of::<Hmac<Sha512>>(key, parts),
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
            Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// Hi(password, salt, i) of RFC 5802: PBKDF2 with this HMAC, one block of output.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => hi::<Hmac<Sha256>>(password, salt, iterations),
            Mechanism::ScramSha512 => hi::<Hmac<Sha512>>(password, salt, iterations),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn hmac_of<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Hi(): U1 = HMAC(password, salt ‖ INT(1)), Ui = HMAC(password, Ui-1), result U1 ^ ... ^ Ui.
/// `Hmac<D>` keeps both pads' hashed state in the keyed value, so each round costs two
/// compressions, not the four a from-scratch HMAC would.
fn hi<M: Mac + KeyInit + Clone>(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let keyed = <M as KeyInit>::new_from_slice(password).expect("HMAC takes any key length");
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = mac.finalize().into_bytes();
    let mut result = u.clone();
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes();
        for (r, b) in result.iter_mut().zip(u.iter()) {
            *r ^= b;
        }
    }
    result.to_vec()
}

/// Equal slices, compared without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y))) == 0
}

/// What a broker stores for one user and mechanism: never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are as good as a password against this broker's users: never printed.
        write!(
            f,
            "Credential({}, {} iterations, <keys redacted>)",
            self.mechanism, self.iterations
        )
    }
}

impl Credential {
    /// The credential of `password`: PBKDF2 (`iterations` rounds), then the two keys. The
    /// expensive step; run by the client (`ringmq user create`), never by a shard.
    pub fn derive(
        mechanism: Mechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Credential {
        let salted = mechanism.salted_password(password, salt, iterations);
        let client_key = mechanism.hmac(&salted, &[b"Client Key"]);
        Credential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Whether the lengths and counts are ones a broker accepts (a credential arrives over
    /// the wire in `UserCreate` and from a master).
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "{}: {} iterations; must be {MIN_ITERATIONS} to {MAX_ITERATIONS}",
                self.mechanism, self.iterations
            ));
        }
        if self.salt.is_empty() || self.salt.len() > MAX_SALT_BYTES {
            return Err(format!(
                "{}: a salt of {} bytes; must be 1 to {MAX_SALT_BYTES}",
                self.mechanism,
                self.salt.len()
            ));
        }
        let keys = self.mechanism.key_bytes();
        if self.stored_key.len() != keys || self.server_key.len() != keys {
            return Err(format!(
                "{}: keys must be {keys} bytes each",
                self.mechanism
            ));
        }
        Ok(())
    }

    /// The wire form (`UserCreate`, metadata frames).
    pub fn to_stored(&self) -> StoredCredential {
        StoredCredential {
            mechanism: self.mechanism.code(),
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }

    pub fn from_stored(stored: &StoredCredential) -> Result<Credential, String> {
        let mechanism = Mechanism::from_code(stored.mechanism)
            .ok_or_else(|| format!("unknown SCRAM mechanism code {}", stored.mechanism))?;
        let credential = Credential {
            mechanism,
            salt: stored.salt.clone(),
            iterations: stored.iterations,
            stored_key: stored.stored_key.clone(),
            server_key: stored.server_key.clone(),
        };
        credential.check()?;
        Ok(credential)
    }
}

/// Why an exchange failed. The broker answers every one of them with the same status and
/// message (`AUTHENTICATION_FAILED`); the detail is for its debug log and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The message does not parse as the SCRAM message expected here.
    Malformed(&'static str),
    /// The client asked for channel binding, which this broker does not offer.
    ChannelBinding,
    /// The authorization identity names someone other than the user.
    Authzid,
    /// The nonce of client-final is not the exchange's.
    Nonce,
    /// The channel-binding attribute is not the GS2 header of client-first.
    Binding,
    /// The proof does not match the stored key (a wrong password, or an unknown user).
    Proof,
    /// The server's signature does not match (client side: not the server holding the keys).
    ServerSignature,
    /// The server answered with `e=`.
    ServerError(String),
    /// The server's iteration count or salt is outside the client's bounds.
    Parameters(String),
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::ChannelBinding => f.write_str("channel binding is not supported"),
            ScramError::Authzid => {
                f.write_str("the authorization identity differs from the user name")
            }
            ScramError::Nonce => f.write_str("the nonce is not this exchange's"),
            ScramError::Binding => f.write_str("the channel-binding attribute does not match"),
            ScramError::Proof => f.write_str("the client proof does not verify"),
            ScramError::ServerSignature => f.write_str(
                "the server's signature does not verify: not the broker holding this user's keys",
            ),
            ScramError::ServerError(e) => write!(f, "the server refused: {e}"),
            ScramError::Parameters(e) => write!(f, "refused server parameters: {e}"),
        }
    }
}

impl std::error::Error for ScramError {}

/// A nonce as SCRAM allows it: printable ASCII without a comma, of bounded length.
fn valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The nonce text of random bytes (base64: printable, no comma).
pub fn nonce_text(random: &[u8]) -> String {
    BASE64.encode(random)
}

/// A `saslname` decoded: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("a user name with a bad `=` escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() || out.len() > MAX_USER_BYTES {
        return Err(ScramError::Malformed("the user name is empty or too long"));
    }
    Ok(out)
}

fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The value of attribute `key` (`n=...`) in one comma-separated part.
fn attribute<'a>(
    part: Option<&'a str>,
    key: char,
    what: &'static str,
) -> Result<&'a str, ScramError> {
    let part = part.ok_or(ScramError::Malformed(what))?;
    let mut chars = part.chars();
    if chars.next() != Some(key) || chars.next() != Some('=') {
        return Err(ScramError::Malformed(what));
    }
    Ok(&part[2..])
}

/// client-first, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    pub client_nonce: String,
    /// The GS2 header (`n,,` or `n,a=USER,`): client-final's `c=` must be its base64.
    gs2_header: String,
    /// client-first-bare, part of the AuthMessage.
    bare: String,
}

impl ClientFirst {
    pub fn parse(message: &str) -> Result<ClientFirst, ScramError> {
        let mut parts = message.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            // `y`: the client could bind but believes the server cannot. This server offers no
            // -PLUS mechanism, so that belief is right and the exchange goes on (RFC 5802 §6);
            // client-final's `c=` then carries `y,,`.
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("the GS2 flag must be `n` or `y`")),
        }
        let authzid = parts
            .next()
            .ok_or(ScramError::Malformed("no authorization identity field"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        let mut attributes = bare.split(',');
        let first = attributes.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let user = decode_saslname(attribute(first, 'n', "no `n=` user name")?)?;
        let client_nonce = attribute(attributes.next(), 'r', "no `r=` nonce")?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed(
                "the client nonce is not 8 to 256 printable characters without a comma",
            ));
        }
        if attributes.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        if !authzid.is_empty() {
            let authzid = decode_saslname(attribute(Some(authzid), 'a', "a bad `a=` field")?)?;
            if authzid != user {
                return Err(ScramError::Authzid);
            }
        }
        Ok(ClientFirst {
            gs2_header: format!("{flag},{authzid},"),
            user,
            client_nonce: client_nonce.to_string(),
            bare: bare.to_string(),
        })
    }
}

/// The server's side of one exchange, between its server-first and the client's final.
pub struct ServerExchange {
    first: ClientFirst,
    credential: Credential,
    nonce: String,
    server_first: String,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerExchange({})", self.first.user)
    }
}

impl ServerExchange {
    /// Answers client-first with server-first, for the user's credential. For a user that
    /// does not exist the caller passes a made-up credential (a salt derived from a secret
    /// and the name), so the answer and the work look the same and the proof then fails.
    pub fn start(
        first: ClientFirst,
        credential: Credential,
        server_nonce: &str,
    ) -> (ServerExchange, String) {
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let exchange = ServerExchange {
            first,
            credential,
            nonce,
            server_first: server_first.clone(),
        };
        (exchange, server_first)
    }

    pub fn user(&self) -> &str {
        &self.first.user
    }

    /// Checks client-final; on success the user is authenticated and the answer is
    /// server-final (`v=`). Consumes the exchange: a second client-final has none to verify.
    pub fn finish(self, client_final: &str) -> Result<(String, String), ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no `p=` proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attribute(attributes.next(), 'c', "no `c=` channel binding")?;
        let nonce = attribute(attributes.next(), 'r', "no `r=` nonce")?;
        if attributes.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("`c=` is not base64"))?;
        if binding != self.first.gs2_header.as_bytes() {
            return Err(ScramError::Binding);
        }
        // librdkafka (through 2.x at least) sends its own nonce again in front of the whole
        // one server-first named (`r=<client><client><server>`); Kafka's broker accepts any
        // nonce that ends with the server's part, so every librdkafka client gets in there.
        // This accepts exactly the two forms: the exchange's nonce, and librdkafka's.
        let repeated = format!("{}{}", self.first.client_nonce, self.nonce);
        if !constant_time_eq(nonce.as_bytes(), self.nonce.as_bytes())
            && !constant_time_eq(nonce.as_bytes(), repeated.as_bytes())
        {
            return Err(ScramError::Nonce);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("`p=` is not base64"))?;
        let mechanism = self.credential.mechanism;
        if proof.len() != mechanism.key_bytes() {
            return Err(ScramError::Proof);
        }
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let signature = mechanism.hmac(&self.credential.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !constant_time_eq(&mechanism.hash(&client_key), &self.credential.stored_key) {
            return Err(ScramError::Proof);
        }
        let server_signature =
            mechanism.hmac(&self.credential.server_key, &[auth_message.as_bytes()]);
        let server_final = format!("v={}", BASE64.encode(server_signature));
        Ok((server_final, self.first.user))
    }
}

/// The client's side of one exchange.
pub struct ClientExchange {
    mechanism: Mechanism,
    bare: String,
    client_nonce: String,
    /// Set once server-first is answered: what server-final must sign.
    expected_server_signature: Option<Vec<u8>>,
}

impl ClientExchange {
    /// Starts an exchange; returns it and client-first.
    pub fn start(mechanism: Mechanism, user: &str, client_nonce: &str) -> (ClientExchange, String) {
        let bare = format!("n={},r={client_nonce}", encode_saslname(user));
        let first = format!("n,,{bare}");
        let exchange = ClientExchange {
            mechanism,
            bare,
            client_nonce: client_nonce.to_string(),
            expected_server_signature: None,
        };
        (exchange, first)
    }

    /// Answers server-first with client-final (runs PBKDF2: the client's cost).
    pub fn respond(&mut self, server_first: &str, password: &[u8]) -> Result<String, ScramError> {
        let mechanism = self.mechanism;
        self.respond_with(server_first, |salt, iterations| {
            mechanism.salted_password(password, salt, iterations)
        })
    }

    /// [`respond`](Self::respond) with SaltedPassword from `salted(salt, iterations)`, called
    /// once the server's parameters passed their checks: a caller that keeps it for the same
    /// salt and count runs PBKDF2 once, not once per connection.
    pub fn respond_with(
        &mut self,
        server_first: &str,
        salted: impl FnOnce(&[u8], u32) -> Vec<u8>,
    ) -> Result<String, ScramError> {
        if let Some(error) = server_first.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let mut attributes = server_first.split(',');
        if attributes
            .clone()
            .next()
            .is_some_and(|a| a.starts_with("m="))
        {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let nonce = attribute(attributes.next(), 'r', "no `r=` nonce")?;
        let salt = attribute(attributes.next(), 's', "no `s=` salt")?;
        let iterations = attribute(attributes.next(), 'i', "no `i=` iteration count")?;
        let server_part = nonce
            .strip_prefix(self.client_nonce.as_str())
            .ok_or(ScramError::Nonce)?;
        if server_part.is_empty() || !valid_nonce(nonce) {
            return Err(ScramError::Nonce);
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("`s=` is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed("`i=` is not a number"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations)
            || salt.is_empty()
            || salt.len() > MAX_SALT_BYTES
        {
            return Err(ScramError::Parameters(format!(
                "{iterations} iterations and a {}-byte salt",
                salt.len()
            )));
        }
        let mechanism = self.mechanism;
        let salted = salted(&salt, iterations);
        let client_key = mechanism.hmac(&salted, &[b"Client Key"]);
        let stored_key = mechanism.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let signature = mechanism.hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = mechanism.hmac(&salted, &[b"Server Key"]);
        self.expected_server_signature =
            Some(mechanism.hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Checks server-final: the server proved it holds the user's ServerKey.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let signature = server_final
            .strip_prefix("v=")
            .ok_or(ScramError::Malformed("no `v=` signature"))?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("`v=` is not base64"))?;
        match &self.expected_server_signature {
            Some(expected) if constant_time_eq(expected, &signature) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

wire_body! {
    /// AuthStart request (opcode 5): the mechanism's name and client-first.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuthStart {
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
        pub mechanism: String => Str16,
        pub message: String => Str16,
    }
}

wire_body! {
    /// AuthFinish request (opcode 6): client-final.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuthFinish {
        pub message: String => Str16,
    }
}

wire_body! {
    /// The answer to AuthStart (server-first) and to AuthFinish (server-final).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuthAnswer {
        pub message: String => Str16,
    }
}

wire_body! {
    /// One user's keys for one mechanism, as `UserCreate` and the store carry them.
    #[derive(Clone, PartialEq, Eq)]
    pub struct StoredCredential {
        /// [`Mechanism::code`]: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
        pub mechanism: u8 => U8,
        pub salt: Vec<u8> => Bytes16,
        pub iterations: u32 => U32,
        pub stored_key: Vec<u8> => Bytes16,
        pub server_key: Vec<u8> => Bytes16,
    }
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoredCredential(mechanism {}, {} iterations, <keys redacted>)",
            self.mechanism, self.iterations
        )
    }
}

wire_body! {
    /// UserCreate request (opcode 61): a user and its keys, one per mechanism, computed by the
    /// client from the password (the broker never sees it). Replaces an existing user's keys.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UserCreate {
        pub name: String => Name,
        pub credentials: Vec<StoredCredential> => list("credential_count", "credential", Struct),
    }
}

wire_body! {
    /// UserDelete request (opcode 62).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UserDelete {
        pub name: String => Name,
    }
}

wire_body! {
    /// UserList request (opcode 63): no fields.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UserListRequest {}
}

wire_body! {
    /// One user in a `UserList`: its name and the names of its mechanisms, never keys.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UserSummary {
        pub name: String => Str16,
        pub mechanisms: Vec<String> => list("mechanism_count", "mechanism", Str16),
    }
}

wire_body! {
    /// The answer to UserList.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UserList {
        pub users: Vec<UserSummary> => list("user_count", "user", Struct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user `user`, password `pencil`, 4096 iterations.
    const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_credential() -> Credential {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Credential::derive(Mechanism::ScramSha256, b"pencil", &salt, 4096)
    }

    fn rfc7677_server() -> ServerExchange {
        let first = ClientFirst::parse(RFC7677_CLIENT_FIRST).unwrap();
        let (exchange, server_first) = ServerExchange::start(
            first,
            rfc7677_credential(),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        assert_eq!(server_first, RFC7677_SERVER_FIRST);
        exchange
    }

    #[test]
    fn rfc7677_vector_client_side() {
        let (mut client, first) =
            ClientExchange::start(Mechanism::ScramSha256, "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, RFC7677_CLIENT_FIRST);
        let last = client.respond(RFC7677_SERVER_FIRST, b"pencil").unwrap();
        assert_eq!(last, RFC7677_CLIENT_FINAL);
        client.verify(RFC7677_SERVER_FINAL).unwrap();
        assert_eq!(
            client.verify("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn rfc7677_vector_server_side() {
        let (server_final, user) = rfc7677_server().finish(RFC7677_CLIENT_FINAL).unwrap();
        assert_eq!(server_final, RFC7677_SERVER_FINAL);
        assert_eq!(user, "user");
    }

    /// RFC 5802 section 5's SHA-1 vector checks the generic Hi(): its SaltedPassword is
    /// PBKDF2-HMAC-SHA-1, which this crate does not carry, so the equivalent PBKDF2-SHA-256
    /// vector (RFC 7914 section 11, "passwd"/"salt", 1 iteration) checks Hi() instead.
    #[test]
    fn hi_is_pbkdf2() {
        let out = Mechanism::ScramSha256.salted_password(b"passwd", b"salt", 1);
        assert_eq!(
            out[..],
            [
                0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44,
                0xb6, 0x05, 0xf9, 0x41, 0x85, 0x21, 0x6d, 0xde, 0x04, 0x65, 0xe6, 0x8b, 0x9d, 0x57,
                0xc2, 0x0d, 0xac, 0xbc
            ]
        );
    }

    fn round_trip(mechanism: Mechanism, stored: &[u8], given: &[u8]) -> Result<(), ScramError> {
        let credential = Credential::derive(mechanism, stored, b"0123456789abcdef", 4096);
        let (mut client, first) = ClientExchange::start(mechanism, "a,b=c", "clientnonce123");
        let parsed = ClientFirst::parse(&first)?;
        assert_eq!(parsed.user, "a,b=c");
        let (server, server_first) = ServerExchange::start(parsed, credential, "servernonce456");
        let last = client.respond(&server_first, given)?;
        let (server_final, _) = server.finish(&last)?;
        client.verify(&server_final)
    }

    #[test]
    fn sha512_round_trip_and_wrong_password() {
        round_trip(Mechanism::ScramSha512, b"secret", b"secret").unwrap();
        round_trip(Mechanism::ScramSha256, b"secret", b"secret").unwrap();
        assert_eq!(
            round_trip(Mechanism::ScramSha512, b"secret", b"Secret"),
            Err(ScramError::Proof)
        );
    }

    #[test]
    fn altered_nonce_is_refused() {
        let altered = RFC7677_CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(rfc7677_server().finish(&altered), Err(ScramError::Nonce));
        let truncated = RFC7677_CLIENT_FINAL.replace("$k0,p=", ",p=");
        assert!(rfc7677_server().finish(&truncated).is_err());
    }

    /// librdkafka's client-final repeats its nonce in front of the whole one
    /// (`r=<client><client><server>`), with a proof over what it sent: accepted; any other
    /// prefix is not.
    #[test]
    fn librdkafkas_repeated_client_nonce_is_accepted_and_nothing_else() {
        let client_nonce = "rOprNGfwEbeRWgbNEkqO";
        let final_with = |nonce: &str| {
            let mechanism = Mechanism::ScramSha256;
            let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
            let salted = mechanism.salted_password(b"pencil", &salt, 4096);
            let client_key = mechanism.hmac(&salted, &[b"Client Key"]);
            let stored_key = mechanism.hash(&client_key);
            let without_proof = format!("c=biws,r={nonce}");
            let auth = format!("n=user,r={client_nonce},{RFC7677_SERVER_FIRST},{without_proof}");
            let signature = mechanism.hmac(&stored_key, &[auth.as_bytes()]);
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            format!("{without_proof},p={}", BASE64.encode(proof))
        };
        let whole = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        assert!(rfc7677_server().finish(&final_with(whole)).is_ok());
        let repeated = format!("{client_nonce}{whole}");
        let (server_final, user) = rfc7677_server().finish(&final_with(&repeated)).unwrap();
        assert!(server_final.starts_with("v=") && user == "user");
        let other = format!("someoneelse{whole}");
        assert_eq!(
            rfc7677_server().finish(&final_with(&other)),
            Err(ScramError::Nonce)
        );
    }

    #[test]
    fn a_replayed_client_final_fails_on_a_new_exchange() {
        // The same client-first, another server nonce: the recorded final names the old one.
        let first = ClientFirst::parse(RFC7677_CLIENT_FIRST).unwrap();
        let (server, _) = ServerExchange::start(first, rfc7677_credential(), "anotherservernonce");
        assert_eq!(server.finish(RFC7677_CLIENT_FINAL), Err(ScramError::Nonce));
    }

    #[test]
    fn authzid_other_than_the_user_is_refused() {
        assert_eq!(
            ClientFirst::parse("n,a=admin,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            Err(ScramError::Authzid)
        );
        let same = ClientFirst::parse("n,a=user,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(same.gs2_header, "n,a=user,");
    }

    /// RFC 5802 §6: `y` (the client could bind, and believes the server cannot) is accepted by
    /// a server that offers no -PLUS mechanism; `c=` must then carry `y,,`, and `n,,` there
    /// (a header the client did not send) is refused.
    #[test]
    fn the_y_flag_is_accepted_and_its_header_checked() {
        let credential = rfc7677_credential();
        let y_first = RFC7677_CLIENT_FIRST.replacen("n,,", "y,,", 1);
        let server = |first: &str| {
            let first = ClientFirst::parse(first).unwrap();
            ServerExchange::start(first, credential.clone(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").0
        };
        let (mut client, _) =
            ClientExchange::start(Mechanism::ScramSha256, "user", "rOprNGfwEbeRWgbNEkqO");
        // The client's final for a `y,,` header: the same proof computation over `c=eSws`.
        let biws = client.respond(RFC7677_SERVER_FIRST, b"pencil").unwrap();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let without_proof = format!("c=eSws,r={nonce}");
        let bare = &RFC7677_CLIENT_FIRST[3..];
        let auth_message = format!("{bare},{RFC7677_SERVER_FIRST},{without_proof}");
        let m = Mechanism::ScramSha256;
        let salted = m.salted_password(b"pencil", &credential.salt, 4096);
        let client_key = m.hmac(&salted, &[b"Client Key"]);
        let signature = m.hmac(&m.hash(&client_key), &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let y_final = format!("{without_proof},p={}", BASE64.encode(proof));
        let (_, user) = server(&y_first).finish(&y_final).unwrap();
        assert_eq!(user, "user");
        assert_eq!(server(&y_first).finish(&biws), Err(ScramError::Binding));
    }

    #[test]
    fn respond_with_takes_the_salted_password_from_the_caller() {
        let (mut client, _) =
            ClientExchange::start(Mechanism::ScramSha256, "user", "rOprNGfwEbeRWgbNEkqO");
        let mut asked = None;
        let last = client
            .respond_with(RFC7677_SERVER_FIRST, |salt, iterations| {
                asked = Some((salt.to_vec(), iterations));
                Mechanism::ScramSha256.salted_password(b"pencil", salt, iterations)
            })
            .unwrap();
        assert_eq!(last, RFC7677_CLIENT_FINAL);
        assert_eq!(asked, Some((rfc7677_credential().salt, 4096)));
    }

    #[test]
    fn bad_proof_and_binding_are_refused() {
        let bad_proof = RFC7677_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(rfc7677_server().finish(&bad_proof), Err(ScramError::Proof));
        let short = RFC7677_CLIENT_FINAL
            .split(",p=")
            .next()
            .unwrap()
            .to_string()
            + ",p=AAAA";
        assert_eq!(rfc7677_server().finish(&short), Err(ScramError::Proof));
        let binding = RFC7677_CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(rfc7677_server().finish(&binding), Err(ScramError::Binding));
    }

    #[test]
    fn malformed_messages_are_refused_without_panic() {
        for first in [
            "",
            "n",
            "n,",
            "n,,",
            "n,,n=",
            "n,,n=user",
            "n,,n=user,r=",
            "n,,n=user,r=short",
            "n,,r=abcdefghijk,n=user",
            "n,,n=us=er,r=abcdefghijk",
            "n,,n=user,r=abcdefghijk,x=ext",
            "n,,m=x,n=user,r=abcdefghijk",
            "p=tls-unique,,n=user,r=abcdefghijk",
            "q,,n=user,r=abcdefghijk",
            "n,b=x,n=user,r=abcdefghijk",
            "n,,n=user,r=abc,defghijk",
            "n,,n=\u{e9}\u{e9},r=abc\u{e9}defghijk",
        ] {
            assert!(ClientFirst::parse(first).is_err(), "{first:?}");
        }
        for last in [
            "",
            "p=",
            "c=biws",
            "c=biws,p=xx",
            "r=x,c=biws,p=AAAA",
            "c=!!,r=x,p=AAAA",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,x=1,p=AAAA",
        ] {
            assert!(rfc7677_server().finish(last).is_err(), "{last:?}");
        }
        let (mut client, _) = ClientExchange::start(Mechanism::ScramSha256, "user", "abcdefghij");
        for server_first in [
            "",
            "r=abcdefghij,s=AAAA,i=4096",
            "r=zzzzzzzzzzzz,s=AAAA,i=4096",
            "r=abcdefghijX,s=!!,i=4096",
            "r=abcdefghijX,s=AAAA,i=x",
            "r=abcdefghijX,s=AAAA,i=4294967295",
            "r=abcdefghijX,s=AAAA,i=1",
            "r=abcdefghijX,s=,i=4096",
            "e=other-error",
        ] {
            assert!(
                client.respond(server_first, b"p").is_err(),
                "{server_first:?}"
            );
        }
        assert!(client.verify("v=AAAA").is_err());
        assert!(client.verify("e=invalid-proof").is_err());
    }

    #[test]
    fn credentials_check_their_bounds() {
        let good = Credential::derive(Mechanism::ScramSha256, b"p", b"salt", MIN_ITERATIONS);
        assert!(good.check().is_ok());
        let stored = good.to_stored();
        assert_eq!(Credential::from_stored(&stored).unwrap(), good);
        let mut bad = stored.clone();
        bad.mechanism = 9;
        assert!(Credential::from_stored(&bad).is_err());
        let mut bad = stored.clone();
        bad.iterations = 1;
        assert!(Credential::from_stored(&bad).is_err());
        let mut bad = stored;
        bad.stored_key.pop();
        assert!(Credential::from_stored(&bad).is_err());
        assert!(!format!("{good:?}").contains(&format!("{:?}", good.stored_key)));
    }
}
