//! SCRAM credentials of a client (`--user NAME --password-file FILE` in the CLI) and the
//! exchange every new broker connection runs with them before its first request.
//!
//! Like [`ClientTls`](crate::ClientTls), a [`ClientScram`] is made once, leaked into a
//! `&'static` and put in [`ConnectionOptions::scram`](crate::ConnectionOptions), or made the
//! process default ([`set_default_scram`]) so every `ConnectionOptions::default()` carries it:
//! the bootstrap connection, the shard connections, failover and group connections alike.
//! Name-server connections never authenticate (they are cleared there, as TLS is).
//!
//! The password stays in this process: the broker gets a proof, and answers with its own,
//! which [`authenticate`] checks, so a connection to something that does not hold the user's
//! keys fails rather than serving requests.

use crate::protocol::scram::{
    nonce_text, AuthAnswer, AuthFinish, AuthStart, ClientExchange, Credential, Mechanism,
    DEFAULT_ITERATIONS, SALT_BYTES,
};
use crate::protocol::{Opcode, Status};
use crate::{ClientError, Connection};
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// Random bytes of the client's part of the nonce (base64: 24 characters).
const CLIENT_NONCE_BYTES: usize = 18;

/// A user, its password and the mechanism to prove it with.
pub struct ClientScram {
    pub mechanism: Mechanism,
    pub user: String,
    password: Vec<u8>,
    /// SaltedPassword of the last (salt, iterations) a broker named: every connection of a
    /// process (shard ports, failover, the bench's many) reuses it instead of running PBKDF2
    /// again. A broker naming other parameters replaces it.
    salted: Mutex<Option<Salted>>,
}

/// One SaltedPassword and the parameters it was computed for.
struct Salted {
    salt: Vec<u8>,
    iterations: u32,
    bytes: Vec<u8>,
}

fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY: a valid, exclusive reference; volatile so the zeroing is not elided.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
}

impl fmt::Debug for ClientScram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientScram({}, user {}, <password redacted>)",
            self.mechanism, self.user
        )
    }
}

impl Drop for ClientScram {
    fn drop(&mut self) {
        wipe(&mut self.password);
        if let Some(salted) = self.salted.get_mut().ok().and_then(|s| s.as_mut()) {
            wipe(&mut salted.bytes);
        }
    }
}

impl ClientScram {
    pub fn new(mechanism: Mechanism, user: impl Into<String>, password: Vec<u8>) -> ClientScram {
        ClientScram {
            mechanism,
            user: user.into(),
            password,
            salted: Mutex::new(None),
        }
    }

    /// SaltedPassword for `salt` and `iterations`: from the cache when the last broker named
    /// the same, else computed (PBKDF2) and kept.
    fn salted_password(&self, salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut cache = self.salted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(salted) = cache.as_ref() {
            if salted.salt == salt && salted.iterations == iterations {
                return salted.bytes.clone();
            }
        }
        let bytes = self
            .mechanism
            .salted_password(&self.password, salt, iterations);
        if let Some(old) = cache.as_mut() {
            wipe(&mut old.bytes);
        }
        *cache = Some(Salted {
            salt: salt.to_vec(),
            iterations,
            bytes: bytes.clone(),
        });
        bytes
    }

    /// Lives as long as the process: what `ConnectionOptions` (a `Copy` type) holds.
    pub fn leak(self) -> &'static ClientScram {
        Box::leak(Box::new(self))
    }

    pub fn password(&self) -> &[u8] {
        &self.password
    }
}

/// The password of a password file's contents: one trailing newline (`\n` or `\r\n`) is not
/// part of it, so a file written with `echo` holds the password its text shows. Empty is
/// refused.
pub fn password_from_file_contents(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err("the password is empty".to_string());
    }
    Ok(bytes)
}

static DEFAULT_SCRAM: OnceLock<&'static ClientScram> = OnceLock::new();

/// Makes `scram` the credentials of every `ConnectionOptions::default()` made afterwards (the
/// CLI sets it from `--user`); the first call wins.
pub fn set_default_scram(scram: &'static ClientScram) {
    let _ = DEFAULT_SCRAM.set(scram);
}

/// The credentials [`set_default_scram`] made the default, if any.
pub fn default_scram() -> Option<&'static ClientScram> {
    DEFAULT_SCRAM.get().copied()
}

/// Fresh random bytes from the kernel (getrandom(2)).
fn random_bytes<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most the length given into the buffer given.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ClientError::InvalidArgument(format!(
                "no random bytes for a SCRAM nonce: {error}"
            )));
        }
        filled += n as usize;
    }
    Ok(bytes)
}

/// The keys `ringmq user create` sends for `password`: one credential per mechanism, each with
/// its own fresh salt. Runs PBKDF2 here, in the client, so the broker never sees the password.
pub fn credentials_for(
    password: &[u8],
    iterations: u32,
    mechanisms: &[Mechanism],
) -> Result<Vec<Credential>, ClientError> {
    mechanisms
        .iter()
        .map(|mechanism| {
            let salt = random_bytes::<SALT_BYTES>()?;
            Ok(Credential::derive(*mechanism, password, &salt, iterations))
        })
        .collect()
}

/// The iteration count of new credentials unless told otherwise.
pub const DEFAULT_CREDENTIAL_ITERATIONS: u32 = DEFAULT_ITERATIONS;

fn answer(
    connection: &mut Connection,
    opcode: Opcode,
    body: &[u8],
    user: &str,
) -> Result<String, ClientError> {
    let addr = connection.addr().to_string();
    let response = connection.call(opcode, body)?;
    match response.into_result(&addr) {
        Ok((_, body)) => AuthAnswer::decode(&body)
            .map(|a| a.message)
            .map_err(|source| ClientError::Decode {
                addr,
                what: "SCRAM answer",
                source,
            }),
        Err(ClientError::Status { status, message }) if status == Status::AuthenticationFailed => {
            Err(ClientError::Status {
                status,
                message: format!("{message} (user `{user}`; check --user and --password-file)"),
            })
        }
        Err(e) => Err(e),
    }
}

/// A plaintext socket to `addr`, authenticated with the default credentials when there are
/// some, for callers that frame requests into raw sockets (the bench's event loop).
pub fn connect_plaintext(addr: &str) -> Result<std::net::TcpStream, ClientError> {
    let Some(scram) = default_scram() else {
        return std::net::TcpStream::connect(addr).map_err(|source| ClientError::Io {
            addr: addr.to_string(),
            source,
        });
    };
    let options = crate::ConnectionOptions {
        tls: None,
        scram: Some(scram),
        ..crate::ConnectionOptions::default()
    };
    Connection::connect(addr, options)?
        .into_plaintext_socket()
        .ok_or_else(|| ClientError::Protocol {
            addr: addr.to_string(),
            reason: "the broker sent more than the SCRAM answers".to_string(),
        })
}

/// Runs the SCRAM exchange on a fresh connection: AuthStart, AuthFinish, then the broker's
/// signature is checked. Fails with the broker's status (`AUTHENTICATION_FAILED`) or a
/// protocol error when the broker's answers do not verify.
pub fn authenticate(connection: &mut Connection, scram: &ClientScram) -> Result<(), ClientError> {
    let nonce = nonce_text(&random_bytes::<CLIENT_NONCE_BYTES>()?);
    let (mut exchange, first) = ClientExchange::start(scram.mechanism, &scram.user, &nonce);
    let mut body = Vec::new();
    AuthStart {
        mechanism: scram.mechanism.name().to_string(),
        message: first,
    }
    .encode(&mut body);
    let server_first = answer(connection, Opcode::AuthStart, &body, &scram.user)?;
    let protocol = |e: crate::protocol::scram::ScramError| ClientError::Protocol {
        addr: connection.addr().to_string(),
        reason: format!("SCRAM ({}): {e}", scram.mechanism),
    };
    let last = exchange
        .respond_with(&server_first, |salt, iterations| {
            scram.salted_password(salt, iterations)
        })
        .map_err(protocol)?;
    body.clear();
    AuthFinish { message: last }.encode(&mut body);
    let server_final = answer(connection, Opcode::AuthFinish, &body, &scram.user)?;
    exchange
        .verify(&server_final)
        .map_err(|e| ClientError::Protocol {
            addr: connection.addr().to_string(),
            reason: format!("SCRAM ({}): {e}", scram.mechanism),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salted_password_is_computed_once_per_salt_and_count() {
        let scram = ClientScram::new(Mechanism::ScramSha256, "alice", b"pw".to_vec());
        let first = scram.salted_password(b"salt-one", 4096);
        assert_eq!(
            first,
            Mechanism::ScramSha256.salted_password(b"pw", b"salt-one", 4096)
        );
        // A cached value is returned as is: plant a marker and see it come back.
        scram.salted.lock().unwrap().as_mut().unwrap().bytes = b"cached".to_vec();
        assert_eq!(scram.salted_password(b"salt-one", 4096), b"cached");
        let other = scram.salted_password(b"salt-two", 4096);
        assert_eq!(
            other,
            Mechanism::ScramSha256.salted_password(b"pw", b"salt-two", 4096)
        );
        assert_ne!(scram.salted_password(b"salt-two", 8192), other);
    }
}
