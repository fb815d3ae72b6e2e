//! [`ClusterConsumer`]: reads every queue of a topic on every broker group the name servers
//! list, the caller keeping the positions (as with [`FailoverClient`]).
//!
//! Per group it keeps a [`FailoverClient`] over the group's brokers, the master first: while
//! the master cannot be reached its queues are read from a slave, which serves up to what the
//! master confirmed, and the client goes back to the master when it answers again. Since the
//! caller passes every offset, nothing is skipped or repeated across the switch. When the
//! routes change (a master expired from them, or a new one registered) the group's client is
//! rebuilt over the new broker list.
//!
//! A pull answer may suggest where to read the queue next (`PullSummary::suggest`, with
//! `slave_read_enable` on the broker): 1, a slave of the group (the master is busy: the
//! consumer reads far behind its log's end); 2, back to the master. The suggestion is followed
//! per queue: such a queue is read through a second client over the same group whose list
//! starts with the slaves.
//!
//! Consumer-group offsets go to the group that owns the queue, through the same failover. A
//! commit a slave took while the master was down is remembered and sent again to the master
//! once the group's reader is back on it: the returning master's metadata would otherwise
//! overwrite the slave's newer offset, and the consumer group would read those messages again.

use super::{QueueRef, RouteCache, DEFAULT_ROUTE_REFRESH};
use crate::api::{ClientOptions, PullResult};
use crate::error::ClientError;
use crate::failover::{FailoverClient, DEFAULT_RETRY_PRIMARY_EVERY};
use crate::protocol::message::{
    GroupCommit, GroupFetch, TopicDescription, SUGGEST_MASTER, SUGGEST_SLAVE,
};
use crate::protocol::Status;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ClusterConsumerOptions {
    pub client: ClientOptions,
    /// Only this cluster's groups; empty: every cluster.
    pub cluster: String,
    pub route_refresh: Duration,
    /// How often a group's client that is on a slave tries its master again.
    pub retry_primary_every: Duration,
}

impl Default for ClusterConsumerOptions {
    fn default() -> Self {
        ClusterConsumerOptions {
            client: ClientOptions::default(),
            cluster: String::new(),
            route_refresh: DEFAULT_ROUTE_REFRESH,
            retry_primary_every: DEFAULT_RETRY_PRIMARY_EVERY,
        }
    }
}

struct GroupReader {
    /// The broker list the clients were built over (the master first).
    brokers: Vec<String>,
    master_first: Option<FailoverClient>,
    /// For queues whose answers suggested a slave: the slaves first, then the master.
    slave_first: Option<FailoverClient>,
}

pub struct ClusterConsumer {
    routes: RouteCache,
    options: ClusterConsumerOptions,
    readers: HashMap<String, GroupReader>,
    /// (topic, queue) pairs a master suggested reading from a slave.
    on_slave: HashSet<(String, QueueRef)>,
    /// Commits a slave took, by (consumer group, topic, queue): sent again to the master.
    pending_commits: HashMap<(String, String, QueueRef), u64>,
}

impl ClusterConsumer {
    pub fn connect(
        namesrv: &str,
        options: ClusterConsumerOptions,
    ) -> Result<ClusterConsumer, ClientError> {
        let mut routes = RouteCache::connect(namesrv, &options.cluster)?;
        routes.set_refresh_every(options.route_refresh);
        Ok(ClusterConsumer::with_routes(routes, options))
    }

    pub fn with_routes(routes: RouteCache, options: ClusterConsumerOptions) -> ClusterConsumer {
        ClusterConsumer {
            routes,
            options,
            readers: HashMap::new(),
            on_slave: HashSet::new(),
            pending_commits: HashMap::new(),
        }
    }

    pub fn routes(&mut self) -> &mut RouteCache {
        &mut self.routes
    }

    /// Every queue of `topic` on every group (with or without a master), in group then queue
    /// order; fetched again once when the routes do not list the topic.
    pub fn queues(&mut self, topic: &str) -> Result<Vec<QueueRef>, ClientError> {
        let mut queues = self.routes.route()?.readable_queues(topic);
        if queues.is_empty() {
            self.routes.invalidate();
            queues = self.routes.route()?.readable_queues(topic);
        }
        if queues.is_empty() {
            return Err(ClientError::Status {
                status: Status::TopicNotFound,
                message: format!("no group lists topic `{topic}`"),
            });
        }
        Ok(queues)
    }

    /// Whether the queue is read from a slave because its master suggested it.
    pub fn reads_from_slave(&self, topic: &str, queue: &QueueRef) -> bool {
        self.on_slave.contains(&(topic.to_string(), queue.clone()))
    }

    /// The address the group's reads go to now, when its client is open.
    pub fn active_broker(&self, group: &str) -> Option<&str> {
        let reader = self.readers.get(group)?;
        reader
            .master_first
            .as_ref()
            .map(FailoverClient::active_addr)
    }

    /// Reads one batch of `queue` from `offset` (long-polling `max_wait_ms` at its end).
    pub fn pull(
        &mut self,
        topic: &str,
        queue: &QueueRef,
        offset: u64,
        max_messages: u32,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<PullResult, ClientError> {
        let key = (topic.to_string(), queue.clone());
        let slave_first = self.on_slave.contains(&key);
        let client = self.client(&queue.group, slave_first)?;
        let result = client.pull(
            topic,
            queue.queue,
            offset,
            max_messages,
            max_bytes,
            max_wait_ms,
        );
        if result.is_ok() {
            self.resend_pending_commits(&queue.group);
        }
        match &result {
            Ok(answer) => match answer.summary.suggest {
                SUGGEST_SLAVE => {
                    self.on_slave.insert(key);
                }
                SUGGEST_MASTER => {
                    self.on_slave.remove(&key);
                }
                _ => {}
            },
            // No broker of the group answered: the routes may be stale.
            Err(e) if e.breaks_connection() || matches!(e, ClientError::Timeout { .. }) => {
                self.routes.invalidate();
            }
            Err(_) => {}
        }
        result
    }

    /// The topic as the group's reader (master first, a slave while it is down) describes it.
    pub fn describe_topic(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<TopicDescription, ClientError> {
        self.client(group, false)?.describe_topic(topic)
    }

    /// Commits a consumer group's next offset for `queue`, to the group owning the queue.
    pub fn commit(
        &mut self,
        consumer_group: &str,
        topic: &str,
        queue: &QueueRef,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.resend_pending_commits(&queue.group);
        let client = self.client(&queue.group, false)?;
        client.call(&GroupCommit {
            group: consumer_group.to_string(),
            topic: topic.to_string(),
            queue: queue.queue,
            offset,
        })?;
        let on_master = self.on_master(&queue.group);
        let key = (consumer_group.to_string(), topic.to_string(), queue.clone());
        if on_master {
            self.pending_commits.remove(&key);
        } else {
            self.pending_commits.insert(key, offset);
        }
        Ok(())
    }

    /// Commits taken by a slave and not yet by the master (see the module documentation).
    pub fn pending_commits(&self) -> usize {
        self.pending_commits.len()
    }

    /// Whether the group's reader is on the master the routes list.
    fn on_master(&self, group: &str) -> bool {
        let master = self
            .routes
            .cached()
            .groups
            .get(group)
            .and_then(|g| g.master.as_ref());
        match (master, self.active_broker(group)) {
            (Some(master), Some(active)) => master.listen == active,
            _ => false,
        }
    }

    /// Sends the group's remembered slave commits to its master, once the reader is on it; a
    /// failed one stays remembered for the next try.
    fn resend_pending_commits(&mut self, group: &str) {
        if !self.pending_commits.keys().any(|k| k.2.group == group) || !self.on_master(group) {
            return;
        }
        let pending: Vec<((String, String, QueueRef), u64)> = self
            .pending_commits
            .iter()
            .filter(|(k, _)| k.2.group == group)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let Ok(client) = self.client(group, false) else {
            return;
        };
        let mut sent = Vec::new();
        for (key, offset) in pending {
            let commit = GroupCommit {
                group: key.0.clone(),
                topic: key.1.clone(),
                queue: key.2.queue,
                offset,
            };
            match client.call(&commit) {
                Ok(()) => sent.push(key),
                Err(e) => {
                    tracing::debug!(group, error = %e, "resending a slave's commit to the master");
                    break;
                }
            }
        }
        if !sent.is_empty() {
            tracing::info!(
                group,
                commits = sent.len(),
                "sent the commits a slave took to the master"
            );
        }
        for key in sent {
            self.pending_commits.remove(&key);
        }
    }

    /// The consumer group's committed offset for `queue`, from the group owning the queue.
    pub fn committed(
        &mut self,
        consumer_group: &str,
        topic: &str,
        queue: &QueueRef,
    ) -> Result<Option<u64>, ClientError> {
        self.resend_pending_commits(&queue.group);
        let answer = self.client(&queue.group, false)?.call(&GroupFetch {
            group: consumer_group.to_string(),
            topic: topic.to_string(),
            queue: queue.queue,
        })?;
        Ok(answer.offset)
    }

    /// The group's client, rebuilt when the routes list other brokers for the group than it
    /// was built over.
    fn client(
        &mut self,
        group: &str,
        slave_first: bool,
    ) -> Result<&mut FailoverClient, ClientError> {
        let route = self.routes.route()?;
        let Some(group_route) = route.groups.get(group) else {
            return Err(ClientError::InvalidArgument(format!(
                "broker group `{group}` is not in the routes"
            )));
        };
        let brokers = group_route.brokers();
        let reader = self
            .readers
            .entry(group.to_string())
            .or_insert_with(|| GroupReader {
                brokers: brokers.clone(),
                master_first: None,
                slave_first: None,
            });
        if reader.brokers != brokers {
            tracing::info!(
                group,
                ?brokers,
                "group's brokers changed; reconnecting its reader"
            );
            *reader = GroupReader {
                brokers: brokers.clone(),
                master_first: None,
                slave_first: None,
            };
        }
        let (slot, order) = if slave_first && brokers.len() > 1 {
            let mut order = brokers[1..].to_vec();
            order.push(brokers[0].clone());
            (&mut reader.slave_first, order)
        } else {
            (&mut reader.master_first, brokers)
        };
        if slot.is_none() {
            let mut client = FailoverClient::connect(&order, self.options.client)?;
            client.set_retry_primary_every(self.options.retry_primary_every);
            *slot = Some(client);
        }
        Ok(slot.as_mut().expect("just opened"))
    }
}
