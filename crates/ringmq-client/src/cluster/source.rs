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

impl Default for NameServerSource {
    /// With the name-server client's short timeouts: a hung name server costs a few seconds.
    fn default() -> Self {
        NameServerSource::new(namesrv_connection_options())
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
