//! A blocking client of the name servers (`ringmq namesrv`, opcodes 70-72): brokers register
//! through it, clients and `ringmq cluster list` ask it for routes.
//!
//! It holds a list of name servers and one connection at a time, to the one that answered
//! last. A request that cannot get an answer there (the connect fails, the connection breaks,
//! the answer times out) is sent to the next server of the list, each at most once per request;
//! an error *status* is the server's answer and is returned as it is. Name servers keep the
//! same routes (every broker registers with all of them), so which one answers does not matter.
//! Timeouts are short ([`DEFAULT_NAMESRV_TIMEOUT`]): a name server answers from memory, and a
//! hung one should cost a client a few seconds, not the broker-side 30 s.

use crate::connection::{Connection, ConnectionOptions};
use crate::error::ClientError;
use crate::protocol::namesrv::{
    BrokerRegister, BrokerUnregister, RegisterResult, RouteQuery, Routes,
};
use crate::protocol::{Request, Response as _};
use crate::DEFAULT_MAX_FRAME_BYTES;
use std::time::Duration;

/// Connect, read and write timeout of a name-server request, per server tried.
pub const DEFAULT_NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `ringmq namesrv` listens unless told otherwise.
pub const DEFAULT_NAMESRV_ADDR: &str = "127.0.0.1:9876";

/// The connection options [`NameServerClient`] uses by default.
pub fn namesrv_connection_options() -> ConnectionOptions {
    ConnectionOptions {
        connect_timeout: DEFAULT_NAMESRV_TIMEOUT,
        read_timeout: DEFAULT_NAMESRV_TIMEOUT,
        write_timeout: DEFAULT_NAMESRV_TIMEOUT,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
    }
}

/// Splits `HOST:PORT[,HOST:PORT...]` (spaces around commas allowed) into addresses.
pub fn parse_namesrv_list(list: &str) -> Result<Vec<String>, ClientError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "no name-server address in {list:?} (expected HOST:PORT[,HOST:PORT...])"
        )));
    }
    if let Some(bad) = addrs.iter().find(|a| !looks_like_host_port(a)) {
        return Err(ClientError::InvalidArgument(format!(
            "name-server address {bad:?} is not HOST:PORT"
        )));
    }
    Ok(addrs)
}

fn looks_like_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// A client of a list of name servers; see the module documentation.
pub struct NameServerClient {
    addrs: Vec<String>,
    options: ConnectionOptions,
    /// The server tried first: the one that answered last.
    current: usize,
    connection: Option<Connection>,
}

impl NameServerClient {
    /// A client of `addrs` that connects on its first request.
    pub fn new(addrs: Vec<String>, options: ConnectionOptions) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no name-server address given".into(),
            ));
        }
        Ok(NameServerClient {
            addrs,
            options,
            current: 0,
            connection: None,
        })
    }

    /// Parses `HOST:PORT[,HOST:PORT...]` and connects to the first server that accepts,
    /// trying each in turn; fails only when none does.
    pub fn connect_list(list: &str) -> Result<Self, ClientError> {
        let mut client = Self::new(parse_namesrv_list(list)?, namesrv_connection_options())?;
        client.connected()?;
        Ok(client)
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The server the next request goes to first.
    pub fn current_addr(&self) -> &str {
        &self.addrs[self.current]
    }

    /// Registers (or heartbeats) one broker.
    pub fn register(
        &mut self,
        registration: &BrokerRegister,
    ) -> Result<RegisterResult, ClientError> {
        self.call(registration)
    }

    /// Removes one broker from the routes at once (its clean shutdown).
    pub fn unregister(
        &mut self,
        cluster_name: &str,
        broker_name: &str,
        broker_id: u64,
    ) -> Result<(), ClientError> {
        self.call(&BrokerUnregister {
            cluster_name: cluster_name.to_string(),
            broker_name: broker_name.to_string(),
            broker_id,
        })
    }

    /// Every live broker of `cluster_name` (empty: of every cluster).
    pub fn routes(&mut self, cluster_name: &str) -> Result<Routes, ClientError> {
        self.call(&RouteQuery {
            cluster_name: cluster_name.to_string(),
        })
    }

    /// Sends one request, to each server in turn until one answers; see the module doc.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        request
            .check_body()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut last_error = None;
        for _ in 0..self.addrs.len() {
            match self.call_current(request) {
                Ok(response) => return Ok(response),
                Err(e) if e.status().is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!("name server {}: {e}", self.current_addr());
                    self.connection = None;
                    self.current = (self.current + 1) % self.addrs.len();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one server was tried"))
    }

    fn call_current<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        let connection = self.connect_current()?;
        let id = connection.send_with(R::OPCODE, |out| request.encode_body(out))?;
        let response = connection.wait(id)?;
        let (status, body) = response.into_result(connection.addr())?;
        connection.decode(R::RESPONSE_NAME, &body, |b| {
            R::Response::from_answer(status, b)
        })
    }

    fn connect_current(&mut self) -> Result<&mut Connection, ClientError> {
        if self.connection.as_ref().is_some_and(|c| c.is_broken()) {
            self.connection = None;
        }
        if self.connection.is_none() {
            let addr = &self.addrs[self.current];
            self.connection = Some(Connection::connect(addr, self.options)?);
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    /// Connects to the first server of the list (from the current one) that accepts.
    fn connected(&mut self) -> Result<(), ClientError> {
        let mut last_error = None;
        for _ in 0..self.addrs.len() {
            match self.connect_current() {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.current = (self.current + 1) % self.addrs.len();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one server was tried"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        assert_eq!(
            parse_namesrv_list("127.0.0.1:9876, 10.0.0.2:9877,").unwrap(),
            vec!["127.0.0.1:9876", "10.0.0.2:9877"]
        );
        assert!(parse_namesrv_list(" , ").is_err());
        let e = parse_namesrv_list("127.0.0.1:9876,nohost").unwrap_err();
        assert!(e.to_string().contains("\"nohost\""), "{e}");
        assert!(parse_namesrv_list("h:99999").is_err());
    }

    #[test]
    fn a_dead_server_is_skipped_and_all_dead_is_an_io_error() {
        // A listener bound and closed at once: connecting to its port is refused.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = NameServerClient::connect_list(&format!("{dead},{dead}"))
            .err()
            .expect("nothing listens");
        assert!(matches!(e, ClientError::Io { .. }), "{e:?}");
    }
}
