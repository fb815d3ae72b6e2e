//! Who a connection is and how it is protected: TLS on the client and shard ports
//! ([`tls`]), the identity a connection carries ([`principal`]), what that identity may do
//! ([`acl`]) and the record of every admin call ([`audit`]). A connection's [`Peer`] is made
//! once, when it is accepted (after its TLS handshake where TLS is on), and lives as long as
//! the connection.

pub mod acl;
pub mod audit;
pub mod principal;
pub mod tls;

pub use principal::{Peer, Principal};
