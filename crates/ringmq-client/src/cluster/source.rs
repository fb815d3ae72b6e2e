//! Where a [`super::RouteCache`] gets its broker lists: [`NameServerSource`] asks name servers
//! over the ringmq protocol (`RouteQuery`, opcode 72); tests substitute their own
//! [`RouteSource`].

use super::BrokerEntry;
use crate::connection::{Connection, ConnectionOptions};
use crate::error::ClientError;
use crate::protocol::namesrv::{BrokerRoute, RouteQuery};
use crate::protocol::{Request, Response as _};
use std::collections::HashMap;

/// Answers "which brokers does this name server list".
pub trait RouteSource: Send {
    /// Every live broker `server` lists for `cluster` (empty: every cluster).
    fn query(&mut self, server: &str, cluster: &str) -> Result<Vec<BrokerEntry>, ClientError>;
}

/// Asks name servers with `RouteQuery`, keeping one connection per name server.
pub struct NameServerSource {
    options: ConnectionOptions,
    connections: HashMap<String, Connection>,
}

impl NameServerSource {
    pub fn new(options: ConnectionOptions) -> NameServerSource {
        NameServerSource {
            options,
            connections: HashMap::new(),
        }
    }

    fn ask(&mut self, server: &str, request: &RouteQuery) -> Result<Vec<BrokerRoute>, ClientError> {
        if !self.connections.contains_key(server) {
            let connection = Connection::connect(server, self.options)?;
            self.connections.insert(server.to_string(), connection);
        }
        let connection = self.connections.get_mut(server).expect("just opened");
        let request_id = connection.send_with(RouteQuery::OPCODE, |out| request.encode_body(out))?;
        let (status, body) = connection.wait(request_id)?.into_result(server)?;
        let routes = connection.decode(RouteQuery::RESPONSE_NAME, &body, |b| {
            <RouteQuery as Request>::Response::from_answer(status, b)
        })?;
        Ok(routes.brokers)
    }
}

impl RouteSource for NameServerSource {
    fn query(&mut self, server: &str, cluster: &str) -> Result<Vec<BrokerEntry>, ClientError> {
        let request = RouteQuery {
            cluster_name: cluster.to_string(),
        };
        match self.ask(server, &request) {
            Ok(brokers) => Ok(brokers.into_iter().map(entry).collect()),
            Err(e) => {
                // Reconnect next time; a name server that restarted is asked afresh.
                self.connections.remove(server);
                Err(e)
            }
        }
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
