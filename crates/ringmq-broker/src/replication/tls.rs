//! The replication link over mutual TLS (`ha_security = "tls"`).
//!
//! The slave opens the connection with an 8-byte plaintext preface naming its shard
//! ([`encode_preface`]), then the TLS handshake. The preface lets the shard that accepted the
//! socket hand it, still before TLS, to the shard that owns the link (a TLS session's state
//! does not travel with a descriptor). The target shard runs the handshake with
//! [`HaTls::server`]: a slave without a certificate, or with one that does not chain to
//! `ha_tls_ca_file`, fails it and never sees a byte of the log or gets a report read. The
//! slave checks the master's certificate against the same CA and the master's address
//! ([`HaTls::client`]). Inside TLS the link is the plain protocol (hello, welcome, frames, 8-byte
//! reports): TLS authenticates both ends and protects every byte, so the HMAC tags of `"auth"`
//! have nothing left to add.
//!
//! The master's shipper cannot splice into a TLS socket (no kernel TLS on this kernel): it
//! reads segment bytes into memory and writes them through rustls ([`LinkStream::ZERO_COPY`]).

use crate::config::{BrokerConfig, HaSecurity};
use crate::security::tls::{certificates, provider};
use futures_lite::io::{split, ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, OnceLock};

/// Bytes of the plaintext preface before the TLS handshake.
pub const PREFACE_BYTES: usize = 8;
/// The preface's first four bytes: "ringmq HA over TLS, version 1".
const PREFACE_MAGIC: [u8; 4] = *b"RHT1";

/// The preface a slave shard `shard` sends: magic, shard (u16 LE), two zero bytes.
pub fn encode_preface(shard: u16) -> [u8; PREFACE_BYTES] {
    let mut preface = [0u8; PREFACE_BYTES];
    preface[..4].copy_from_slice(&PREFACE_MAGIC);
    preface[4..6].copy_from_slice(&shard.to_le_bytes());
    preface
}

/// The shard a preface names; an error for anything else (a plaintext hello, a bare TLS
/// ClientHello from a slave without `ha_security = "tls"`).
pub fn decode_preface(preface: &[u8; PREFACE_BYTES]) -> Result<u16, String> {
    if preface[..4] != PREFACE_MAGIC || preface[6..] != [0, 0] {
        return Err(
            "the peer did not open with the TLS link's preface: this master requires ha_security = \"tls\" on its slaves"
                .to_string(),
        );
    }
    Ok(u16::from_le_bytes([preface[4], preface[5]]))
}

/// Both ends' rustls configurations, loaded once at start.
pub struct HaTls {
    /// The master's: this broker's certificate, client certificates required from
    /// `ha_tls_ca_file`.
    pub server: Arc<ServerConfig>,
    /// The slave's: the master verified against `ha_tls_ca_file`, this broker's certificate
    /// presented.
    pub client: Arc<ClientConfig>,
}

static HA_TLS: OnceLock<HaTls> = OnceLock::new();

/// Loads the `ha_tls_*` files when `ha_security = "tls"` (at start, so a bad file stops the
/// broker with the key and the file named). The files are not reloaded on SIGHUP.
pub fn init(config: &BrokerConfig) -> Result<(), String> {
    if config.ha_security != HaSecurity::Tls || HA_TLS.get().is_some() {
        return Ok(());
    }
    let (Some(cert), Some(key), Some(ca)) = (
        &config.ha_tls_cert_file,
        &config.ha_tls_key_file,
        &config.ha_tls_ca_file,
    ) else {
        return Err(
            "ha_security = \"tls\" needs ha_tls_cert_file, ha_tls_key_file and ha_tls_ca_file"
                .into(),
        );
    };
    let named = |key: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        format!("{key} {}: {e}", path.display())
    };
    let chain = certificates("ha_tls_cert_file", cert).map_err(|e| e.to_string())?;
    let private =
        |()| PrivateKeyDer::from_pem_file(key).map_err(|e| named("ha_tls_key_file", key, &e));
    let mut roots = RootCertStore::empty();
    for c in certificates("ha_tls_ca_file", ca).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| named("ha_tls_ca_file", ca, &e))?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| named("ha_tls_ca_file", ca, &e))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private(())?)
        .map_err(|e| named("ha_tls_key_file", key, &e))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private(())?)
        .map_err(|e| named("ha_tls_key_file", key, &e))?;
    let _ = HA_TLS.set(HaTls {
        server: Arc::new(server),
        client: Arc::new(client),
    });
    Ok(())
}

/// The loaded configurations; `None` before [`init`] or without `"tls"`.
pub fn get() -> Option<&'static HaTls> {
    HA_TLS.get()
}

/// A replication link's stream, plain or TLS, split into its reading and its writing half
/// (on a master the report task reads and the shipper writes; on a slave the other way
/// round).
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    type Reader: AsyncRead + Unpin + 'static;
    type Writer: AsyncWrite + Unpin + 'static;
    /// Whether bytes may be written to the socket behind rustls's back (splice, `send`):
    /// only on a plain TCP stream.
    const ZERO_COPY: bool;
    /// The socket's descriptor (shutdown, splice).
    fn socket_fd(&self) -> RawFd;
    /// The two halves: (reading, writing).
    fn split_link(self) -> std::io::Result<(Self::Reader, Self::Writer)>;
}

impl LinkStream for TcpStream {
    type Reader = TcpStream;
    type Writer = TcpStream;
    const ZERO_COPY: bool = true;
    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn split_link(self) -> std::io::Result<(TcpStream, TcpStream)> {
        // SAFETY: a second descriptor for the same socket, owned by the other half.
        let fd = unsafe { libc::dup(self.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((unsafe { TcpStream::from_raw_fd(fd) }, self))
    }
}

macro_rules! tls_link_stream {
    ($ty:ty) => {
        impl LinkStream for $ty {
            type Reader = ReadHalf<$ty>;
            type Writer = WriteHalf<$ty>;
            const ZERO_COPY: bool = false;
            fn socket_fd(&self) -> RawFd {
                self.get_ref().0.as_raw_fd()
            }
            fn split_link(self) -> std::io::Result<(Self::Reader, Self::Writer)> {
                Ok(split(self))
            }
        }
    };
}

tls_link_stream!(futures_rustls::server::TlsStream<TcpStream>);
tls_link_stream!(futures_rustls::client::TlsStream<TcpStream>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_round_trips_and_anything_else_is_refused() {
        assert_eq!(decode_preface(&encode_preface(7)), Ok(7));
        let mut hello = [0u8; PREFACE_BYTES];
        hello[0] = 0x16;
        assert!(decode_preface(&hello).is_err());
        let mut odd = encode_preface(1);
        odd[7] = 1;
        assert!(decode_preface(&odd).is_err());
    }
}
