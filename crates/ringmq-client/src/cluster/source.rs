//! Where a [`super::RouteCache`] gets its broker lists: [`NameServerSource`] asks name servers
//! over the ringmq protocol (`RouteQuery`, opcode 72) through [`NameServerClient`]; tests
//! substitute their own [`RouteSource`].
//!
//! The source keeps one single-server [`NameServerClient`] per name server, rather than one
//! client over the whole list, because the cache decides when to move on: not only when a
//! server fails but also when it answers with an empty list.

use super::BrokerEntry;
use crate::connection::ConnectionOptions;
use crate::error::ClientError;
use crate::namesrv::{namesrv_connection_options, NameServerClient};
use crate::protocol::namesrv::BrokerRoute;
use std::collections::HashMap;
use std::time::Duration;

/// Answers "which brokers does this name server list".
pub trait RouteSource: Send {
    /// Every live broker `server` lists for `cluster` (empty: every cluster).
    fn query(&mut self, server: &str, cluster: &str) -> Result<Vec<BrokerEntry>, ClientError>;
}

/// Asks name servers with `RouteQuery`, one connection per name server.
pub struct NameServerSource {
    options: ConnectionOptions,
    clients: HashMap<String, NameServerClient>,
}

impl NameServerSource {
    pub fn new(options: ConnectionOptions) -> NameServerSource {
        NameServerSource {
            options,
            clients: HashMap::new(),
        }
    }
}

/// Connect, read and write timeout of one route query. A name server answers from memory in
/// well under a millisecond; a send that refreshes its routes waits on this, and one hung name
/// server must not cost a producer more than a fraction of a second before the next is asked.
pub const ROUTE_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

impl Default for NameServerSource {
    /// With [`ROUTE_QUERY_TIMEOUT`]: a hung name server costs half a second.
    fn default() -> Self {
        NameServerSource::new(ConnectionOptions {
            connect_timeout: ROUTE_QUERY_TIMEOUT,
            read_timeout: ROUTE_QUERY_TIMEOUT,
            write_timeout: ROUTE_QUERY_TIMEOUT,
            ..namesrv_connection_options()
        })
    }
}

impl RouteSource for NameServerSource {
    fn query(&mut self, server: &str, cluster: &str) -> Result<Vec<BrokerEntry>, ClientError> {
        if !self.clients.contains_key(server) {
            let client = NameServerClient::new(vec![server.to_string()], self.options)?;
            self.clients.insert(server.to_string(), client);
        }
        let client = self.clients.get_mut(server).expect("just inserted");
        Ok(client
            .routes(cluster)?
            .brokers
            .into_iter()
            .map(entry)
            .collect())
    }
}

fn entry(route: BrokerRoute) -> BrokerEntry {
    let broker = route.broker;
    BrokerEntry {
        cluster: broker.cluster_name,
        group: broker.broker_name,
        broker_id: broker.broker_id,
        role: broker.role,
        epoch: broker.epoch,
        listen: broker.listen,
        topics: broker.topics,
    }
}
