//! TLS on the client and shard ports (rustls with the `ring` provider, TLS 1.2 and 1.3, the
//! provider's AEAD suites only: AES-GCM and ChaCha20-Poly1305).
//!
//! [`ServerTls`] holds the rustls configuration every shard's accept loop reads for each new
//! connection; SIGHUP re-reads the files ([`ServerTls::reload`]) and swaps it in, so new
//! connections get the new certificates while established ones keep their session. A reload
//! whose files do not load keeps the old configuration and says why in the log.
//!
//! The first bytes a client sends tell TLS and the ringmq framing apart (a TLS record starts
//! with content type 22, a ringmq frame with a little-endian length and the magic at bytes 4-5),
//! which is how each kind of port answers the other kind of client in a form it understands
//! ([`opening`], [`PLAINTEXT_PORT_ALERT`]).

use super::Principal;
use crate::config::{BrokerConfig, ClientAuth};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tracing::{error, info};

/// Why the TLS files did not load; names the file and the key it was given for.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The files and the client-auth mode, as configured.
#[derive(Clone, Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

pub(crate) fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| file_error(key, path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The provider with what it offers spelled out: TLS 1.3 and 1.2, AEAD suites only.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // ring's defaults are AEAD already (no CBC, no RSA key exchange); the filter states the
    // rule so a provider update cannot widen it silently.
    provider.cipher_suites.retain(|suite| {
        let name = format!("{:?}", suite.suite());
        name.contains("_GCM_") || name.contains("CHACHA20_POLY1305")
    });
    Arc::new(provider)
}

impl TlsFiles {
    fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certificates("tls_cert_file", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| file_error("tls_key_file", &self.key, e))?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match (&self.ca, self.client_auth) {
            (_, ClientAuth::None) => builder.with_no_client_auth(),
            (None, _) => {
                return Err(TlsError::Rustls(
                    "client_auth needs tls_ca_file".to_string(),
                ))
            }
            (Some(ca), mode) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("tls_ca_file", ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("tls_ca_file", ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match mode {
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_error("tls_ca_file", ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| file_error("tls_key_file", &self.key, e))?;
        Ok(Arc::new(config))
    }
}

/// The broker's TLS configuration, shared by every shard and swapped on reload.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the configured files; `None` when TLS is off (no `tls_cert_file`).
    pub fn from_config(config: &BrokerConfig) -> Result<Option<Arc<ServerTls>>, TlsError> {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: config.tls_ca_file.clone(),
            client_auth: config.client_auth,
        };
        let current = RwLock::new(files.load()?);
        Ok(Some(Arc::new(ServerTls { files, current })))
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files (SIGHUP); on failure the old configuration stays and the error is
    /// logged and returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        match self.files.load() {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                info!(
                    cert = %self.files.cert.display(),
                    "reloaded the TLS certificates; new connections use them"
                );
                Ok(())
            }
            Err(e) => {
                error!("reloading the TLS certificates failed, keeping the previous ones: {e}");
                Err(e)
            }
        }
    }
}

/// The principal of a finished server session: from its client certificate, if it sent one.
pub fn session_principal(session: &ServerConnection) -> Option<Principal> {
    let leaf = session.peer_certificates()?.first()?;
    Principal::from_certificate(leaf)
}

/// The content type of a TLS handshake record, the first byte a TLS client sends.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The handshake message type of a ClientHello, the byte after the 5-byte record header.
const CLIENT_HELLO: u8 = 0x01;

/// How many first bytes [`opening`] may need: the record header and the handshake type.
pub const OPENING_BYTES: usize = 6;

/// What a connection opened with, as far as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A TLS handshake record carrying a ClientHello.
    ClientHello,
    /// Anything else: a ringmq frame (its magic, `52 4d`, sits at bytes 4-5, where a
    /// ClientHello has the end of the record length and the handshake type `01`).
    Plaintext,
    /// Too few bytes yet to tell (at most [`OPENING_BYTES`] decide).
    Undecided,
}

/// Tells a ClientHello from a ringmq frame by the first bytes a client sent: content type 22,
/// major version 3, and handshake type 1 at byte 5. Byte 5 matters: a frame length is
/// little-endian, so a first frame of 790 + 65536·k bytes also starts `16 03`.
pub fn opening(first: &[u8]) -> Opening {
    match first {
        [] => Opening::Undecided,
        [kind, ..] if *kind != TLS_HANDSHAKE_RECORD => Opening::Plaintext,
        [_, major, ..] if *major != 0x03 => Opening::Plaintext,
        _ if first.len() < OPENING_BYTES => Opening::Undecided,
        _ if first[5] == CLIENT_HELLO => Opening::ClientHello,
        _ => Opening::Plaintext,
    }
}

/// What a plaintext port answers a ClientHello with: a fatal TLS alert record
/// (`protocol_version`), which a TLS client reports as a refused handshake at once instead of
/// waiting for a ServerHello that never comes.
pub const PLAINTEXT_PORT_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aead_suites_are_offered() {
        let provider = provider();
        assert!(!provider.cipher_suites.is_empty());
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }

    /// A handshake between an in-memory client and the broker's configuration, under
    /// `client_auth = required`: the session's principal is the client certificate's URI SAN.
    #[test]
    fn a_verified_client_certificate_names_the_principal() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |san: SanType| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![san];
            (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        let (server, server_key) = issue(SanType::DnsName("broker.test".try_into().unwrap()));
        let (client, client_key) = issue(SanType::URI("spiffe://test/app".try_into().unwrap()));
        let path = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let config = BrokerConfig {
            tls_cert_file: Some(path("server.crt", server.pem())),
            tls_key_file: Some(path("server.key", server_key.serialize_pem())),
            tls_ca_file: Some(path("ca.pem", ca.pem())),
            client_auth: ClientAuth::Required,
            ..BrokerConfig::default()
        };
        let tls = ServerTls::from_config(&config).unwrap().unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client.der().clone()],
                PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
            )
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("broker.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(tls.current()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking());
        assert_eq!(
            session_principal(&server),
            Some(Principal::new("spiffe://test/app"))
        );
    }

    #[test]
    fn a_missing_file_is_named_with_its_key() {
        let config = BrokerConfig {
            tls_cert_file: Some("/nonexistent/broker.crt".into()),
            tls_key_file: Some("/nonexistent/broker.key".into()),
            ..BrokerConfig::default()
        };
        let error = ServerTls::from_config(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("tls_cert_file /nonexistent/broker.crt"),
            "{error}"
        );
    }

    #[test]
    fn a_client_hello_is_told_from_a_frame() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
        assert_eq!(opening(&hello), Opening::ClientHello);
        for n in 0..OPENING_BYTES {
            assert_eq!(opening(&hello[..n]), Opening::Undecided, "{n} bytes");
        }
        let frame_of = |body: usize| {
            let mut frame = Vec::new();
            crate::protocol::frame::encode_frame(
                &mut frame,
                crate::protocol::frame::FrameHeader::request(crate::protocol::Opcode::Ping, 1),
                &vec![0u8; body],
            );
            frame
        };
        assert_eq!(opening(&frame_of(0)), Opening::Plaintext);
        assert_eq!(opening(&frame_of(0)[..1]), Opening::Plaintext);
        // A frame whose length is 790 (0x316) starts 16 03 like a TLS record: its magic at
        // bytes 4-5 still tells it apart.
        let confusable = frame_of(790 - 20);
        assert_eq!(&confusable[..2], &[0x16, 0x03]);
        assert_eq!(opening(&confusable[..5]), Opening::Undecided);
        assert_eq!(opening(&confusable), Opening::Plaintext);
    }
}
