//! Who a connection is and how it is protected: TLS on the client and shard ports
//! ([`tls`]), the identity a connection carries ([`principal`]), what that identity may do
//! ([`acl`]) and the record of every admin call ([`audit`]). A connection's [`Peer`] is made
//! once, when it is accepted (after its TLS handshake where TLS is on), and lives as long as
//! the connection; SCRAM ([`scram`], against the store's [`users`]) fills its principal when a
//! connection authenticates after it was accepted.

pub mod acl;
pub mod audit;
pub mod principal;
pub mod scram;
pub mod tls;
pub mod users;

pub use principal::{Peer, Principal};
