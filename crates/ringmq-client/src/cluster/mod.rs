//! Clients that find brokers through name servers: the route model, the route cache, and the
//! cluster producer and consumer built on them.
//!
//! A name server answers with every live broker it knows ([`BrokerEntry`]). Clients derive
//! their routes from that list: [`ClusterRoute`] groups brokers by broker group
//! (`broker_name`), takes a group's master to be its master-role broker (the highest epoch
//! when, briefly, two claim it) and its slaves to be the rest, and lists a topic's queues per
//! group. A queue is named by its group and its number in that group ([`QueueRef`]): a topic
//! created with `--queues N` on two groups has 2N queues, N on each.
//!
//! [`RouteCache`] asks the name servers: any of them, the next one when one fails or answers
//! with nothing (a name server that just restarted knows no broker until they re-register), so
//! an empty answer never replaces routes that list brokers, and a group an answer leaves out
//! stays cached for [`MISSING_GROUP_GRACE`] (a restarted name server answers with the brokers
//! that registered again so far). It refreshes every `route_refresh` (5 s by default) and
//! when a client saw a routing error, at most every [`MIN_FORCED_REFRESH_SPACING`].

mod consumer;
mod fault;
mod producer;
mod source;
#[cfg(test)]
mod tests;

pub use consumer::{ClusterConsumer, ClusterConsumerOptions};
pub use fault::{FaultTolerance, FAILURE_BASE_AVOID, MAX_AVOID};
pub use producer::{
    classify_error, decide, ClusterProducer, ClusterProducerOptions, Decision, FailureClass,
    SendError, SendOutcome,
};
pub use source::{NameServerSource, RouteSource};

use crate::error::ClientError;
use crate::protocol::message::TopicInfo;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often routes are fetched again when nothing went wrong, by default (RocketMQ: 30 s;
/// shorter here so that a new master is found without a routing error first).
pub const DEFAULT_ROUTE_REFRESH: Duration = Duration::from_millis(5000);

/// The least time between two fetches a routing error forces: every failed send attempt asks
/// for one, and a burst of them must not turn into a query per attempt (each can wait out a
/// hung name server's timeout).
pub const MIN_FORCED_REFRESH_SPACING: Duration = Duration::from_millis(100);

/// How long a group stays in the cache after an answer stopped listing it: a name server that
/// just restarted lists only the brokers that have registered again (each does within its
/// heartbeat interval), and such a partial answer must not drop a live group. The name
/// server's own `broker_expiry_ms` default: a group that is really gone leaves after it.
pub const MISSING_GROUP_GRACE: Duration = Duration::from_millis(10_000);

/// One live broker as a name server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerEntry {
    pub cluster: String,
    /// The broker group (`broker_name`).
    pub group: String,
    pub broker_id: u64,
    /// `SYNC_MASTER`, `ASYNC_MASTER`, `SLAVE` (or `FENCED`).
    pub role: String,
    pub epoch: u32,
    /// Advertised client address HOST:PORT.
    pub listen: String,
    pub topics: Vec<TopicInfo>,
}

impl BrokerEntry {
    pub fn is_master(&self) -> bool {
        matches!(self.role.as_str(), "SYNC_MASTER" | "ASYNC_MASTER")
    }
}

/// A group's master as routes know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterRoute {
    pub listen: String,
    pub epoch: u32,
    pub broker_id: u64,
}

/// One broker group: its master (none while it is lost), its slaves, and its topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRoute {
    pub cluster: String,
    pub name: String,
    pub master: Option<MasterRoute>,
    /// Client addresses of the group's other brokers, in broker-id order.
    pub slaves: Vec<String>,
    /// The master's topics, or while there is no master the first slave's (slaves replicate
    /// the master's topics).
    pub topics: BTreeMap<String, TopicInfo>,
}

impl GroupRoute {
    /// Every broker of the group, the master first: the order a reader tries them in.
    pub fn brokers(&self) -> Vec<String> {
        self.master
            .iter()
            .map(|m| m.listen.clone())
            .chain(self.slaves.iter().cloned())
            .collect()
    }

    pub fn queue_count(&self, topic: &str) -> u32 {
        self.topics.get(topic).map_or(0, TopicInfo::queue_count)
    }
}

/// A queue of a topic spread over groups: its group and its number inside that group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueRef {
    pub group: String,
    pub queue: u32,
}

/// Routes derived from a name server's broker list, groups in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRoute {
    pub groups: BTreeMap<String, GroupRoute>,
}

impl ClusterRoute {
    /// Builds routes from a broker list; `cluster` empty keeps every cluster.
    pub fn from_brokers(brokers: &[BrokerEntry], cluster: &str) -> ClusterRoute {
        let mut sorted: Vec<&BrokerEntry> = brokers
            .iter()
            .filter(|b| cluster.is_empty() || b.cluster == cluster)
            .collect();
        sorted.sort_by_key(|b| (b.group.clone(), b.broker_id));
        let mut groups = BTreeMap::<String, GroupRoute>::new();
        for broker in &sorted {
            groups
                .entry(broker.group.clone())
                .or_insert_with(|| GroupRoute {
                    cluster: broker.cluster.clone(),
                    name: broker.group.clone(),
                    master: None,
                    slaves: Vec::new(),
                    topics: BTreeMap::new(),
                });
        }
        for group in groups.values_mut() {
            let members: Vec<&&BrokerEntry> =
                sorted.iter().filter(|b| b.group == group.name).collect();
            // The name server already keeps one master per group (the highest epoch); should
            // two master claims ever be listed, the higher epoch is the master here too.
            let master = members
                .iter()
                .filter(|b| b.is_master())
                .max_by_key(|b| (b.epoch, b.broker_id));
            group.master = master.map(|m| MasterRoute {
                listen: m.listen.clone(),
                epoch: m.epoch,
                broker_id: m.broker_id,
            });
            group.slaves = members
                .iter()
                .filter(|b| master.is_none_or(|m| m.broker_id != b.broker_id))
                .map(|b| b.listen.clone())
                .collect();
            let topics_from = master.or_else(|| members.first());
            if let Some(broker) = topics_from {
                group.topics = broker
                    .topics
                    .iter()
                    .map(|t| (t.name.clone(), t.clone()))
                    .collect();
            }
        }
        ClusterRoute { groups }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Queues a producer may send to: every queue of `topic` on every group with a master,
    /// in group-name then queue order (the order key hashing indexes).
    pub fn writable_queues(&self, topic: &str) -> Vec<QueueRef> {
        self.queues_where(topic, |g| g.master.is_some())
    }

    /// Queues a consumer reads: every queue of `topic` on every group, with or without a
    /// master (a lost master's queues are read from its slaves).
    pub fn readable_queues(&self, topic: &str) -> Vec<QueueRef> {
        self.queues_where(topic, |_| true)
    }

    fn queues_where(&self, topic: &str, keep: impl Fn(&GroupRoute) -> bool) -> Vec<QueueRef> {
        self.groups
            .values()
            .filter(|g| keep(g))
            .flat_map(|g| {
                (0..g.queue_count(topic)).map(|queue| QueueRef {
                    group: g.name.clone(),
                    queue,
                })
            })
            .collect()
    }

    /// The union of the groups' topic names.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .values()
            .flat_map(|g| g.topics.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Routes fetched from name servers, refreshed on a timer and on demand.
pub struct RouteCache {
    source: Box<dyn RouteSource>,
    servers: Vec<String>,
    cluster: String,
    /// The name server asked first next time: the one that answered last.
    preferred: usize,
    route: ClusterRoute,
    /// Bumped whenever the routes change, so users can tell an unchanged route.
    version: u64,
    refresh_every: Duration,
    /// When the routes are fetched again; `None`: at the next use.
    next_refresh: Option<Instant>,
    /// When the name servers were last asked (see [`MIN_FORCED_REFRESH_SPACING`]).
    last_fetch: Option<Instant>,
    forced_refresh_spacing: Duration,
    /// Groups cached but missing from the answers since then (see [`MISSING_GROUP_GRACE`]).
    missing_since: HashMap<String, Instant>,
    missing_group_grace: Duration,
    /// Answers that listed nothing while the cache listed brokers, and so were ignored.
    ignored_empty: u64,
    failed_queries: u64,
}

impl RouteCache {
    /// A cache over `servers` (at least one), for `cluster` (empty: every cluster). Nothing is
    /// fetched until the routes are first used.
    pub fn new(
        source: Box<dyn RouteSource>,
        servers: Vec<String>,
        cluster: &str,
        refresh_every: Duration,
    ) -> Result<RouteCache, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::InvalidArgument(
                "at least one name server address is needed".into(),
            ));
        }
        Ok(RouteCache {
            source,
            servers,
            cluster: cluster.to_string(),
            preferred: 0,
            route: ClusterRoute::default(),
            version: 0,
            refresh_every,
            next_refresh: None,
            last_fetch: None,
            forced_refresh_spacing: MIN_FORCED_REFRESH_SPACING,
            missing_since: HashMap::new(),
            missing_group_grace: MISSING_GROUP_GRACE,
            ignored_empty: 0,
            failed_queries: 0,
        })
    }

    /// A cache that asks the name servers of `list` (`a,b`) over the ringmq protocol, with
    /// the name-server client's short timeouts.
    pub fn connect(list: &str, cluster: &str) -> Result<RouteCache, ClientError> {
        RouteCache::new(
            Box::new(NameServerSource::default()),
            crate::namesrv::parse_namesrv_list(list)?,
            cluster,
            DEFAULT_ROUTE_REFRESH,
        )
    }

    pub fn set_refresh_every(&mut self, every: Duration) {
        self.refresh_every = every;
    }

    /// The least time between forced fetches ([`MIN_FORCED_REFRESH_SPACING`] by default).
    pub fn set_forced_refresh_spacing(&mut self, spacing: Duration) {
        self.forced_refresh_spacing = spacing;
    }

    /// How long a group missing from the answers stays cached ([`MISSING_GROUP_GRACE`]).
    pub fn set_missing_group_grace(&mut self, grace: Duration) {
        self.missing_group_grace = grace;
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The routes, fetched first when they are due. A failed refresh keeps the routes cached
    /// (and is an error only while nothing was ever fetched).
    pub fn route(&mut self) -> Result<&ClusterRoute, ClientError> {
        let due = self.next_refresh.is_none_or(|at| Instant::now() >= at);
        if due {
            if let Err(e) = self.refresh() {
                if self.route.is_empty() {
                    return Err(e);
                }
            }
        }
        Ok(&self.route)
    }

    /// The routes cached now, without fetching.
    pub fn cached(&self) -> &ClusterRoute {
        &self.route
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Makes the next [`route`](Self::route) fetch: for a caller that saw a routing error.
    /// Not sooner than [`MIN_FORCED_REFRESH_SPACING`] after the last fetch.
    pub fn invalidate(&mut self) {
        self.next_refresh = self
            .last_fetch
            .map(|at| at + self.forced_refresh_spacing)
            .filter(|at| *at > Instant::now());
    }

    pub fn ignored_empty_answers(&self) -> u64 {
        self.ignored_empty
    }

    pub fn failed_queries(&self) -> u64 {
        self.failed_queries
    }

    /// Asks the name servers, the one that answered last first and the next on failure, and
    /// keeps the first answer that lists brokers. An answer that lists nothing replaces the
    /// routes only when they list nothing either, and only once every server was asked.
    pub fn refresh(&mut self) -> Result<&ClusterRoute, ClientError> {
        self.last_fetch = Some(Instant::now());
        let count = self.servers.len();
        let mut last_error = None;
        let mut answered_empty = false;
        for step in 0..count {
            let index = (self.preferred + step) % count;
            match self.source.query(&self.servers[index], &self.cluster) {
                Ok(brokers) => {
                    let route = ClusterRoute::from_brokers(&brokers, &self.cluster);
                    if route.is_empty() {
                        answered_empty = true;
                        continue;
                    }
                    self.preferred = index;
                    let route = self.keep_missing_groups(route);
                    self.install(route);
                    return Ok(&self.route);
                }
                Err(e) => {
                    self.failed_queries += 1;
                    tracing::debug!(server = %self.servers[index], error = %e, "route query failed");
                    last_error = Some(e);
                }
            }
        }
        self.next_refresh = Some(Instant::now() + self.refresh_every);
        if answered_empty {
            if self.route.is_empty() {
                return Ok(&self.route);
            }
            self.ignored_empty += 1;
            tracing::info!("name servers listed no broker; keeping the cached routes");
            return Ok(&self.route);
        }
        Err(last_error.expect("at least one server was asked"))
    }

    /// Adds to `route` the cached groups it lacks that have been missing for less than the
    /// grace (see [`MISSING_GROUP_GRACE`]).
    fn keep_missing_groups(&mut self, mut route: ClusterRoute) -> ClusterRoute {
        let now = Instant::now();
        let mut still_missing = HashMap::new();
        for (name, group) in &self.route.groups {
            if route.groups.contains_key(name) {
                continue;
            }
            let since = self.missing_since.get(name).copied().unwrap_or(now);
            if now.saturating_duration_since(since) < self.missing_group_grace {
                route.groups.insert(name.clone(), group.clone());
                still_missing.insert(name.clone(), since);
            } else {
                tracing::info!(group = %name, "the name servers no longer list the group");
            }
        }
        self.missing_since = still_missing;
        route
    }

    fn install(&mut self, route: ClusterRoute) {
        self.next_refresh = Some(Instant::now() + self.refresh_every);
        if route != self.route {
            self.route = route;
            self.version += 1;
        }
    }
}
