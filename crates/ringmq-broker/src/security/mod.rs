//! Who a connection is and how it is protected: TLS on the client and shard ports
//! ([`tls`]), and the identity a connection carries ([`principal`]). A connection's
//! [`Peer`] is made once, when it is accepted (after its TLS handshake where TLS is on), and
//! lives as long as the connection.

pub mod principal;
pub mod tls;

pub use principal::{Peer, Principal};
