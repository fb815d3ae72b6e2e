//! The identity of a connection's client.
//!
//! Under mutual TLS the principal is a subject alternative name of the client's certificate:
//! the first URI SAN (`spiffe://cluster/app`, say), else the first DNS SAN, else the first
//! email SAN. URI first because it is what service meshes issue per workload; DNS names are
//! shared by every process of a host. A certificate with none of them has no principal (the
//! handshake still succeeds: the chain was verified, only the name is missing). The later
//! SCRAM round fills the principal from the authenticated user name instead.

use std::fmt;
use std::net::SocketAddr;
use x509_parser::extensions::GeneralName;

/// A client's name as ACLs will match it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn new(name: impl Into<String>) -> Principal {
        Principal(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal a DER client certificate names, as the module doc says; `None` when it
    /// has no URI, DNS or email SAN or does not parse (the TLS layer verified it already).
    pub fn from_certificate(der: &[u8]) -> Option<Principal> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = certificate.subject_alternative_name().ok()??;
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        let dns = || {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
        };
        let email = || {
            names.iter().find_map(|n| match n {
                GeneralName::RFC822Name(email) => Some(*email),
                _ => None,
            })
        };
        uri.or_else(dns)
            .or_else(email)
            .map(|name| Principal(name.to_string()))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The other end of one client connection, as the handlers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Filled from the client certificate under mutual TLS; `None` on a plaintext port or
    /// when the client sent no certificate (`client_auth = optional`).
    pub principal: Option<Principal>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn certificate(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn uri_wins_over_dns_and_email() {
        let der = certificate(vec![
            SanType::DnsName("app.example".try_into().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::URI("spiffe://prod/orders".try_into().unwrap()),
        ]);
        assert_eq!(
            Principal::from_certificate(&der),
            Some(Principal::new("spiffe://prod/orders"))
        );
    }

    #[test]
    fn dns_then_email_when_there_is_no_uri() {
        let der = certificate(vec![
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::DnsName("app.example".try_into().unwrap()),
        ]);
        assert_eq!(
            Principal::from_certificate(&der),
            Some(Principal::new("app.example"))
        );
        let der = certificate(vec![SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        )]);
        assert_eq!(
            Principal::from_certificate(&der),
            Some(Principal::new("ops@example.com"))
        );
    }

    #[test]
    fn no_name_or_garbage_gives_no_principal() {
        let der = certificate(vec![SanType::IpAddress("127.0.0.1".parse().unwrap())]);
        assert_eq!(Principal::from_certificate(&der), None);
        assert_eq!(Principal::from_certificate(b"not a certificate"), None);
    }
}
