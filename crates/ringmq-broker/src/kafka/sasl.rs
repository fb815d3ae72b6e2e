//! SASL on the Kafka listener (`authentication = "scram"`): SaslHandshake v1 names the
//! mechanism (SCRAM-SHA-256 or SCRAM-SHA-512), then SaslAuthenticate carries the SCRAM
//! messages, two round trips, the same exchange and user table as the native AuthStart and
//! AuthFinish (`security::scram`), so a user has one password and one principal on both
//! listeners, and the ACLs apply alike.
//!
//! Until the exchange succeeds a connection is served ApiVersions, SaslHandshake and
//! SaslAuthenticate only, in requests of at most `PRE_AUTHENTICATION_MAX_FRAME_BYTES`, within
//! `authentication_timeout_ms` of its accept; anything else closes it (Kafka's broker does the
//! same: a client cannot be told, it has not authenticated). A failed step is answered
//! SASL_AUTHENTICATION_FAILED (58) with the one message of every failure (unknown user and
//! wrong password alike), then the connection closes. A connection with a principal from its
//! client certificate is authenticated from the start, as on the native ports.
//!
//! After a SaslHandshake v0 (Kafka before 1.0; librdkafka also requires v0 in the broker's
//! range before it uses SASL at all) the SCRAM messages travel as bare size-prefixed frames,
//! without a Kafka header, answered alike; a failed step there closes the connection without
//! a word, as Kafka does.

use super::api::code;
use crate::config::{Authentication, BrokerConfig};
use crate::protocol::scram::{Mechanism, ServerExchange};
use crate::security::scram::{finish_exchange, start_exchange, AUTHENTICATION_FAILED_MESSAGE};
use crate::security::users::UserTable;
use crate::security::Principal;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

/// Kafka's error for a SASL request out of order (a second handshake, an authenticate
/// before the handshake).
const ILLEGAL_SASL_STATE: i16 = 34;
/// Kafka's error for a mechanism the broker does not offer.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Kafka's error for a failed exchange.
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// One connection's place in the exchange.
pub struct Sasl {
    /// Whether SASL is offered at all (`authentication = "scram"`).
    offered: bool,
    /// The connection's principal: from its client certificate, or from the exchange.
    principal: Option<Principal>,
    authenticated: bool,
    /// The mechanism a handshake chose; `None` until then.
    mechanism: Option<Mechanism>,
    /// The exchange between its two steps.
    exchange: Option<ServerExchange>,
    /// The handshake was v0: the exchange's messages come as bare frames.
    bare_tokens: bool,
}

/// What a SASL request leaves the connection to do after its answer.
pub enum Then {
    KeepGoing,
    Close,
}

impl Sasl {
    pub fn new(config: &BrokerConfig, principal: Option<Principal>) -> Sasl {
        let offered = config.authentication == Authentication::Scram;
        Sasl {
            offered,
            authenticated: !offered || principal.is_some(),
            principal,
            mechanism: None,
            exchange: None,
            bare_tokens: false,
        }
    }

    pub fn is_offered(&self) -> bool {
        self.offered
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Whether the connection's next frame is a bare SCRAM message (after a v0 handshake).
    pub fn awaits_bare_token(&self) -> bool {
        self.bare_tokens && !self.authenticated && self.mechanism.is_some()
    }

    /// One bare SCRAM message (after a v0 handshake): the bare answer, or `None` to close.
    pub fn bare_token(
        &mut self,
        users: &UserTable,
        token: &[u8],
        failed: impl FnOnce(),
    ) -> Option<Vec<u8>> {
        let request = SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::copy_from_slice(token));
        let (response, then) = self.authenticate(users, &request, failed);
        match then {
            Then::KeepGoing => Some(response.auth_bytes.to_vec()),
            Then::Close => None,
        }
    }

    /// SaslHandshake at `version`: the mechanism for the exchange that follows (v0: in bare
    /// frames).
    pub fn handshake(
        &mut self,
        request: &SaslHandshakeRequest,
        version: i16,
    ) -> (SaslHandshakeResponse, Then) {
        let mechanisms = Mechanism::ALL
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
        if self.authenticated || self.mechanism.is_some() {
            debug!("Kafka SaslHandshake on a connection that already began or finished one");
            return (response.with_error_code(ILLEGAL_SASL_STATE), Then::Close);
        }
        match Mechanism::from_name(request.mechanism.as_str()) {
            Some(mechanism) => {
                self.mechanism = Some(mechanism);
                self.bare_tokens = version == 0;
                (response.with_error_code(code::NONE), Then::KeepGoing)
            }
            None => {
                debug!(
                    mechanism = %request.mechanism.as_str().escape_default(),
                    "Kafka SaslHandshake names a mechanism ringmq does not offer"
                );
                (
                    response.with_error_code(UNSUPPORTED_SASL_MECHANISM),
                    Then::Close,
                )
            }
        }
    }

    /// SaslAuthenticate: client-first, then client-final. `failed` is called once for a
    /// failed exchange (the broker counts it).
    pub fn authenticate(
        &mut self,
        users: &UserTable,
        request: &SaslAuthenticateRequest,
        failed: impl FnOnce(),
    ) -> (SaslAuthenticateResponse, Then) {
        let refuse = |error: i16, message: &str| {
            (
                SaslAuthenticateResponse::default()
                    .with_error_code(error)
                    .with_error_message(Some(StrBytes::from_string(message.to_string()))),
                Then::Close,
            )
        };
        let Some(mechanism) = self.mechanism.filter(|_| !self.authenticated) else {
            debug!("Kafka SaslAuthenticate without a SaslHandshake before it, or after success");
            return refuse(
                ILLEGAL_SASL_STATE,
                "SaslAuthenticate needs a SaslHandshake first, and only one exchange runs",
            );
        };
        let Ok(message) = std::str::from_utf8(&request.auth_bytes) else {
            failed();
            return refuse(SASL_AUTHENTICATION_FAILED, AUTHENTICATION_FAILED_MESSAGE);
        };
        let answer = if self.exchange.is_none() {
            start_exchange(users, mechanism, message, &mut self.exchange)
        } else {
            finish_exchange(message, &mut self.exchange).map(|(server_final, principal)| {
                debug!(principal = %principal, "Kafka SASL/SCRAM authentication succeeded");
                self.principal = Some(principal);
                self.authenticated = true;
                server_final
            })
        };
        match answer {
            Some(answer) => (
                SaslAuthenticateResponse::default()
                    .with_error_code(code::NONE)
                    .with_auth_bytes(answer.into_bytes().into()),
                Then::KeepGoing,
            ),
            None => {
                failed();
                refuse(SASL_AUTHENTICATION_FAILED, AUTHENTICATION_FAILED_MESSAGE)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scram::{ClientExchange, Credential};

    fn scram() -> BrokerConfig {
        BrokerConfig {
            authentication: Authentication::Scram,
            ..BrokerConfig::default()
        }
    }

    fn users() -> UserTable {
        let credential =
            Credential::derive(Mechanism::ScramSha512, b"right", b"saltsaltsaltsalt", 4096);
        UserTable::fresh()
            .unwrap()
            .with_user("alice", vec![credential])
            .unwrap()
    }

    fn handshake(sasl: &mut Sasl, mechanism: &'static str) -> (i16, bool) {
        let request =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let (response, then) = sasl.handshake(&request, 1);
        (response.error_code, matches!(then, Then::Close))
    }

    fn step(sasl: &mut Sasl, message: String, failures: &mut u32) -> (i16, String, bool) {
        let request =
            SaslAuthenticateRequest::default().with_auth_bytes(message.into_bytes().into());
        let (response, then) = sasl.authenticate(&users(), &request, || *failures += 1);
        (
            response.error_code,
            String::from_utf8(response.auth_bytes.to_vec()).unwrap(),
            matches!(then, Then::Close),
        )
    }

    /// The whole exchange for `user` with `password`: the last step's error code.
    fn exchange(user: &str, password: &[u8], failures: &mut u32) -> (Sasl, i16) {
        let mut sasl = Sasl::new(&scram(), None);
        assert!(!sasl.is_authenticated());
        assert_eq!(handshake(&mut sasl, "SCRAM-SHA-512"), (code::NONE, false));
        let (mut client, first) =
            ClientExchange::start(Mechanism::ScramSha512, user, "kafka-nonce-01");
        let (error, server_first, closed) = step(&mut sasl, first, failures);
        assert_eq!(
            (error, closed),
            (code::NONE, false),
            "server-first for any name"
        );
        let last = client.respond(&server_first, password).unwrap();
        let (error, _, _) = step(&mut sasl, last, failures);
        (sasl, error)
    }

    #[test]
    fn the_right_password_authenticates_and_names_the_principal() {
        let mut failures = 0;
        let (sasl, error) = exchange("alice", b"right", &mut failures);
        assert_eq!(error, code::NONE);
        assert!(sasl.is_authenticated());
        assert_eq!(sasl.principal().map(|p| p.as_str()), Some("alice"));
        assert_eq!(failures, 0);
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike_and_close() {
        let mut failures = 0;
        let (wrong, wrong_error) = exchange("alice", b"wrong", &mut failures);
        let (unknown, unknown_error) = exchange("mallory", b"right", &mut failures);
        assert_eq!(wrong_error, SASL_AUTHENTICATION_FAILED);
        assert_eq!(unknown_error, SASL_AUTHENTICATION_FAILED);
        assert!(!wrong.is_authenticated() && !unknown.is_authenticated());
        assert!(wrong.principal().is_none());
        assert_eq!(failures, 2);
    }

    #[test]
    fn out_of_order_requests_and_unknown_mechanisms_are_refused() {
        let mut failures = 0;
        let mut sasl = Sasl::new(&scram(), None);
        let (error, _, closed) = step(&mut sasl, "n,,n=alice,r=abc".into(), &mut failures);
        assert_eq!(
            (error, closed),
            (ILLEGAL_SASL_STATE, true),
            "authenticate first"
        );
        assert_eq!(
            handshake(&mut sasl, "PLAIN"),
            (UNSUPPORTED_SASL_MECHANISM, true)
        );
        let mut sasl = Sasl::new(&scram(), None);
        assert_eq!(handshake(&mut sasl, "scram-sha-256"), (code::NONE, false));
        assert_eq!(
            handshake(&mut sasl, "SCRAM-SHA-256"),
            (ILLEGAL_SASL_STATE, true)
        );
        let (error, _, closed) = step(&mut sasl, "not scram".into(), &mut failures);
        assert_eq!((error, closed), (SASL_AUTHENTICATION_FAILED, true));
        assert_eq!(failures, 1);
    }

    #[test]
    fn after_a_v0_handshake_the_exchange_runs_in_bare_frames() {
        let mut failures = 0;
        let mut sasl = Sasl::new(&scram(), None);
        let request = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512"));
        assert_eq!(sasl.handshake(&request, 0).0.error_code, code::NONE);
        assert!(sasl.awaits_bare_token());
        let (mut client, first) =
            ClientExchange::start(Mechanism::ScramSha512, "alice", "kafka-nonce-02");
        let server_first = sasl
            .bare_token(&users(), first.as_bytes(), || failures += 1)
            .expect("server-first");
        let last = client
            .respond(std::str::from_utf8(&server_first).unwrap(), b"right")
            .unwrap();
        let server_final = sasl
            .bare_token(&users(), last.as_bytes(), || failures += 1)
            .expect("server-final");
        assert!(String::from_utf8(server_final).unwrap().starts_with("v="));
        assert!(sasl.is_authenticated() && !sasl.awaits_bare_token());
        assert_eq!(failures, 0);
        // A wrong proof in bare frames: no answer, the connection closes.
        let mut sasl = Sasl::new(&scram(), None);
        sasl.handshake(&request, 0);
        let (mut client, first) =
            ClientExchange::start(Mechanism::ScramSha512, "alice", "kafka-nonce-03");
        let server_first = sasl.bare_token(&users(), first.as_bytes(), || {}).unwrap();
        let last = client
            .respond(std::str::from_utf8(&server_first).unwrap(), b"wrong")
            .unwrap();
        assert!(sasl
            .bare_token(&users(), last.as_bytes(), || failures += 1)
            .is_none());
        assert_eq!(failures, 1);
    }

    #[test]
    fn a_certificate_principal_or_authentication_off_needs_no_exchange() {
        let off = Sasl::new(&BrokerConfig::default(), None);
        assert!(off.is_authenticated() && !off.is_offered());
        let mut certified = Sasl::new(&scram(), Some(Principal::new("spiffe://prod/app")));
        assert!(certified.is_authenticated());
        assert_eq!(
            handshake(&mut certified, "SCRAM-SHA-256"),
            (ILLEGAL_SASL_STATE, true)
        );
    }
}
