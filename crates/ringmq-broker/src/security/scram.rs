//! The broker's side of SCRAM on one connection: the gate before authentication and the two
//! steps of the exchange (AuthStart, opcode 5; AuthFinish, opcode 6). The exchange itself
//! (parsing, proofs) is `ringmq_protocol::scram`; the users come from the shard's copy of the
//! user table ([`super::users`]).
//!
//! A connection starts *open* (`authentication = "off"`, or a principal from a client
//! certificate) or *closed*. A closed connection is served ping and the two steps only, with
//! frames of at most [`PRE_AUTHENTICATION_MAX_FRAME_BYTES`], until a step succeeds or
//! `authentication_timeout_ms` passes; anything else is answered `NOT_AUTHENTICATED` and the
//! connection is closed. A failed step is answered `AUTHENTICATION_FAILED` with one message
//! whatever failed (unknown user, wrong password, a broken exchange), then the connection
//! is closed. The steps run inline in the connection's reader (two HMACs and a hash, no
//! PBKDF2), so frames pipelined behind a successful AuthFinish are served in order.

use super::users::{random_bytes, UserTable};
use super::Principal;
use crate::protocol::scram::{
    nonce_text, AuthAnswer, AuthFinish, AuthStart, ClientFirst, Mechanism, ServerExchange,
};
use crate::protocol::Status;
use crate::shard::mesh::Reply;
use tracing::debug;

/// Largest frame a connection that has not authenticated may send: the exchange's messages
/// are a few hundred bytes, so 4 KiB is ample, and a peer without credentials cannot make the
/// broker read or reserve more than that per frame.
pub const PRE_AUTHENTICATION_MAX_FRAME_BYTES: usize = 4096;

/// Random bytes of the server's part of the nonce (base64: 24 characters).
const SERVER_NONCE_BYTES: usize = 18;

/// The one message of every failed step: it does not say whether the user exists.
pub const AUTHENTICATION_FAILED_MESSAGE: &str =
    "authentication failed: unknown user, wrong password or a broken SCRAM exchange";

/// What a step gives the connection.
pub enum Step {
    /// Answer and keep going (server-first sent).
    Continue(Reply),
    /// Answer; the connection is now authenticated as this principal.
    Authenticated(Reply, Principal),
    /// Answer and close.
    Failed(Reply),
}

fn failed() -> Step {
    Step::Failed(Reply::error(
        Status::AuthenticationFailed,
        AUTHENTICATION_FAILED_MESSAGE,
    ))
}

fn answer(message: String) -> Reply {
    let mut body = Vec::with_capacity(message.len() + 2);
    AuthAnswer { message }.encode(&mut body);
    Reply::ok(body)
}

/// AuthStart: answers client-first with server-first and keeps the exchange in `pending`.
pub fn start(users: &UserTable, body: &[u8], pending: &mut Option<ServerExchange>) -> Step {
    let Ok(request) = AuthStart::decode(body) else {
        debug!("AuthStart: not a valid body");
        return failed();
    };
    let Some(mechanism) = Mechanism::from_name(&request.mechanism) else {
        debug!(mechanism = %request.mechanism.escape_default(), "AuthStart: an unknown mechanism");
        return Step::Failed(Reply::error(
            Status::AuthenticationFailed,
            format!(
                "{AUTHENTICATION_FAILED_MESSAGE} (mechanisms: {}, {})",
                Mechanism::ScramSha256,
                Mechanism::ScramSha512
            ),
        ));
    };
    match start_exchange(users, mechanism, &request.message, pending) {
        Some(server_first) => Step::Continue(answer(server_first)),
        None => failed(),
    }
}

/// The first step of an exchange, whatever carries it (the native AuthStart, Kafka's
/// SaslAuthenticate): server-first for `client_first`, the exchange kept in `pending`;
/// `None` when the exchange cannot go on (the reason is logged at debug).
pub fn start_exchange(
    users: &UserTable,
    mechanism: Mechanism,
    client_first: &str,
    pending: &mut Option<ServerExchange>,
) -> Option<String> {
    let first = match ClientFirst::parse(client_first) {
        Ok(first) => first,
        Err(e) => {
            debug!("SCRAM client-first: {e}");
            return None;
        }
    };
    let nonce = match random_bytes::<SERVER_NONCE_BYTES>() {
        Ok(bytes) => nonce_text(&bytes),
        Err(e) => {
            debug!("SCRAM: no random bytes for a nonce: {e}");
            return None;
        }
    };
    // An unknown user gets a made-up credential, so the answer and the work do not tell.
    let (credential, _known) = users.credential_for(&first.user, mechanism);
    let (exchange, server_first) = ServerExchange::start(first, credential, &nonce);
    *pending = Some(exchange);
    Some(server_first)
}

/// AuthFinish: checks client-final against the exchange AuthStart began (none: fails).
pub fn finish(body: &[u8], pending: &mut Option<ServerExchange>) -> Step {
    let Ok(request) = AuthFinish::decode(body) else {
        debug!("AuthFinish: not a valid body");
        pending.take();
        return failed();
    };
    match finish_exchange(&request.message, pending) {
        Some((server_final, principal)) => Step::Authenticated(answer(server_final), principal),
        None => failed(),
    }
}

/// The last step of an exchange, whatever carries it: server-final and the principal when
/// `client_final` proves the password, `None` otherwise (no exchange begun included).
pub fn finish_exchange(
    client_final: &str,
    pending: &mut Option<ServerExchange>,
) -> Option<(String, Principal)> {
    let Some(exchange) = pending.take() else {
        debug!("SCRAM client-final without a client-first before it");
        return None;
    };
    let user = exchange.user().to_string();
    match exchange.finish(client_final) {
        Ok((server_final, user)) => Some((server_final, Principal::new(user))),
        Err(e) => {
            // The user name a client sent is not a secret; the reason stays in the debug log.
            debug!(user = %user.escape_default(), "SCRAM authentication failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scram::{ClientExchange, Credential};

    fn table() -> UserTable {
        let credential =
            Credential::derive(Mechanism::ScramSha256, b"right", b"saltsaltsaltsalt", 4096);
        UserTable::fresh()
            .unwrap()
            .with_user("alice", vec![credential])
            .unwrap()
    }

    fn step_body(message: String) -> Vec<u8> {
        let mut out = Vec::new();
        AuthFinish { message }.encode(&mut out);
        out
    }

    fn attempt(users: &UserTable, user: &str, password: &[u8]) -> Reply {
        let (mut client, first) = ClientExchange::start(Mechanism::ScramSha256, user, "0123456789");
        let mut body = Vec::new();
        AuthStart {
            mechanism: "SCRAM-SHA-256".into(),
            message: first,
        }
        .encode(&mut body);
        let mut pending = None;
        let Step::Continue(reply) = start(users, &body, &mut pending) else {
            panic!("AuthStart refused");
        };
        let server_first = AuthAnswer::decode(&reply.body).unwrap().message;
        let last = client.respond(&server_first, password).unwrap();
        match finish(&step_body(last), &mut pending) {
            Step::Authenticated(reply, principal) => {
                assert_eq!(principal.as_str(), user);
                reply
            }
            Step::Failed(reply) => reply,
            Step::Continue(_) => panic!("finish continued"),
        }
    }

    #[test]
    fn unknown_user_and_wrong_password_get_the_same_answer() {
        let users = table();
        assert_eq!(attempt(&users, "alice", b"right").status, Status::Ok);
        let wrong = attempt(&users, "alice", b"wrong");
        let unknown = attempt(&users, "mallory", b"right");
        assert_eq!(wrong.status, Status::AuthenticationFailed);
        assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
    }

    /// server-first for `user`: its `s=` (decoded) and `i=`.
    fn parameters(users: &UserTable, user: &str) -> (Vec<u8>, String) {
        use base64::Engine;
        let (_, first) = ClientExchange::start(Mechanism::ScramSha256, user, "0123456789");
        let mut body = Vec::new();
        AuthStart {
            mechanism: "SCRAM-SHA-256".into(),
            message: first,
        }
        .encode(&mut body);
        let Step::Continue(reply) = start(users, &body, &mut None) else {
            panic!("AuthStart refused");
        };
        let server_first = AuthAnswer::decode(&reply.body).unwrap().message;
        let field = |key: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(key))
                .unwrap()
                .to_string()
        };
        let salt = base64::engine::general_purpose::STANDARD
            .decode(field("s="))
            .unwrap();
        (salt, field("i="))
    }

    #[test]
    fn server_first_does_not_tell_a_known_name_from_an_unknown_one() {
        let users = table();
        let (known_salt, known_i) = parameters(&users, "alice");
        let (unknown_salt, unknown_i) = parameters(&users, "mallory");
        assert_eq!(known_i, unknown_i, "the same iteration count");
        assert_eq!(known_salt.len(), unknown_salt.len(), "the same salt length");
        assert_eq!(
            parameters(&users, "mallory").0,
            unknown_salt,
            "the same salt every time for one unknown name"
        );
        // The table as a restart (through its file) and a slave (through a metadata frame)
        // hold it answers the unknown name alike.
        let reloaded = UserTable::from_json(&users.to_json()).unwrap();
        assert_eq!(
            parameters(&reloaded, "mallory"),
            (unknown_salt.clone(), unknown_i.clone())
        );
        use crate::replication::protocol::{MetadataFrame, METADATA_HEADER_BYTES};
        let frame = MetadataFrame {
            users: Some(users.clone()),
            // The users section follows the ACL trailer (links of version 4 and later).
            acls: crate::replication::protocol::AclTrailer::Unchanged,
            ..MetadataFrame::default()
        }
        .encode();
        let on_slave = MetadataFrame::decode(&frame[METADATA_HEADER_BYTES..])
            .unwrap()
            .users
            .unwrap();
        assert_eq!(parameters(&on_slave, "mallory"), (unknown_salt, unknown_i));
    }

    #[test]
    fn a_finish_without_a_start_and_garbage_fail() {
        let mut pending = None;
        assert!(matches!(
            finish(&step_body("c=biws,r=x,p=AAAA".into()), &mut pending),
            Step::Failed(_)
        ));
        assert!(matches!(
            start(&table(), b"\xff\xff", &mut pending),
            Step::Failed(_)
        ));
        let mut body = Vec::new();
        AuthStart {
            mechanism: "PLAIN".into(),
            message: "n,,n=alice,r=0123456789".into(),
        }
        .encode(&mut body);
        assert!(matches!(
            start(&table(), &body, &mut pending),
            Step::Failed(_)
        ));
        assert!(pending.is_none());
    }
}
