//! Certificates for the TLS tests, made at test time with rcgen: a CA and the leaves it
//! signs, written as PEM files (tests/tls.rs, ha_tls.rs, kafka_security.rs).
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::path::{Path, PathBuf};

/// A CA and what it signed, written as PEM files under one directory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA's certificate (`<name>.pem`).
    pub pem: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A leaf with `sans`, written as `<name>.crt` / `<name>.key`.
    pub fn issue(&self, dir: &Path, name: &str, sans: Vec<SanType>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A server's (or broker's) leaf naming 127.0.0.1.
    pub fn server(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue(
            dir,
            name,
            vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
        )
    }
}
