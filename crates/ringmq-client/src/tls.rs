//! TLS for the blocking client: rustls (the `ring` provider) over the connection's
//! `TcpStream`, the server name taken from the address's host (an IP address is checked
//! against the certificate's IP SANs, so `127.0.0.1:PORT` works with a certificate for it).
//!
//! [`ClientTls`] is made once per process (the CLI builds it from `--tls-ca`, `--tls-cert`,
//! `--tls-key`) and leaked into a `&'static`: every [`ConnectionOptions`](crate::ConnectionOptions)
//! copies the reference, and the options stay `Copy` as the rest of the client expects.
//! Handshake failures become sentences ([`explain`]) that say what to change.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The TLS settings [`ConnectionOptions::default`](crate::ConnectionOptions) starts from: set
/// once by a program whose every broker connection uses TLS (the CLI, from its flags), so each
/// of its commands gets TLS without threading options through. Name-server connections stay
/// plaintext (they set `tls: None`).
static DEFAULT_TLS: OnceLock<&'static ClientTls> = OnceLock::new();

/// Makes `tls` the default of every [`ConnectionOptions`](crate::ConnectionOptions) made after
/// this; a second call is ignored (the first settings stay, as connections may use them).
pub fn set_default_tls(tls: &'static ClientTls) {
    let _ = DEFAULT_TLS.set(tls);
}

pub(crate) fn default_tls() -> Option<&'static ClientTls> {
    DEFAULT_TLS.get().copied()
}

/// The TLS settings every connection of a process uses.
#[derive(Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

fn file_error(flag: &str, path: &Path, reason: impl std::fmt::Display) -> String {
    format!("{flag} {}: {reason}", path.display())
}

fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    if !path.exists() {
        return Err(file_error(flag, path, "no such file"));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

impl ClientTls {
    /// Trusts the CAs in `ca` (PEM); with `identity` (certificate chain, key) the client also
    /// presents a certificate (mutual TLS). Errors name the flag and the file.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in certificates("--tls-ca", ca)? {
            roots.add(cert).map_err(|e| file_error("--tls-ca", ca, e))?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates("--tls-cert", cert)?;
                if !key.exists() {
                    return Err(file_error("--tls-key", key, "no such file"));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_error("--tls-key", key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| file_error("--tls-key", key, e))?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Makes the settings live for the rest of the process (see the module doc).
    pub fn leak(self) -> &'static ClientTls {
        Box::leak(Box::new(self))
    }

    pub(crate) fn session(&self, addr: &str) -> Result<rustls::ClientConnection, String> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            format!("{addr}: `{host}` is not a host name or IP address TLS can check")
        })?;
        rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())
    }
}

/// The host part of `HOST:PORT` or `[IPv6]:PORT`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A handshake failure as a sentence: what it means for the user and what to change.
pub(crate) fn explain(error: &std::io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {error}");
    };
    use rustls::{AlertDescription, CertificateError, Error};
    match tls {
        Error::AlertReceived(AlertDescription::ProtocolVersion) | Error::InvalidMessage(_) => {
            "the broker does not speak TLS on this port (it answered a TLS ClientHello as plaintext): drop --tls-ca or use its TLS port".to_string()
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            "the broker's certificate is not signed by a CA in --tls-ca: give the CA that issued it".to_string()
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the broker's certificate does not name the host or IP address connected to".to_string()
        }
        Error::InvalidCertificate(other) => format!("the broker's certificate was refused: {other:?}"),
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the broker requires a client certificate (client_auth = required): give --tls-cert and --tls-key".to_string()
        }
        Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError,
        ) => "the broker refused this client's certificate (not signed by its tls_ca_file)".to_string(),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_is_the_address_without_its_port() {
        assert_eq!(host_of("127.0.0.1:10911"), "127.0.0.1");
        assert_eq!(host_of("broker.example:10911"), "broker.example");
        assert_eq!(host_of("[::1]:10911"), "::1");
    }
}
