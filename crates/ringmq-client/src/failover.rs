//! [`FailoverClient`]: a consumer's client for a broker group (a master and its slaves).
//!
//! Reads (pull, queue stats, topic describe and list, metadata) and consumer-group offsets
//! (fetch, commit) go to the first broker of the list, the master, while it answers. When a request fails because its
//! broker cannot be reached (connection refused, reset or closed, or no answer in time) the same
//! request goes to the next reachable broker of the list, and that broker serves from then on.
//! While on another broker the client tries the master again at most once per
//! `retry_primary_every`, before a request, and goes back to it as soon as it connects.
//!
//! The consumer's positions are its own: the caller passes every offset, so switching brokers
//! neither skips nor repeats anything. A slave serves records up to what the master confirmed,
//! so everything a consumer read from the master is also on the slave.
//!
//! Only those requests fail over: [`FailoverClient::call`] takes the requests the protocol
//! marks [`FailsOver`], and no other request compiles there. Produce never fails over:
//! [`FailoverClient::produce`] always goes to the master (a slave would answer `NOT_MASTER`, and
//! a produce that timed out may have been stored). Topic changes and promotion go through
//! [`FailoverClient::primary`]: resent to a slave after a slow answer they could make it a
//! second master.
//!
//! ```compile_fail
//! # use ringmq_client::FailoverClient;
//! # use ringmq_protocol::message::TopicDelete;
//! fn delete(client: &mut FailoverClient) {
//!     // Refused: a topic change must not be resent to a slave.
//!     let _ = client.call(&TopicDelete { name: "t".into() });
//! }
//! ```
//!
//! while a read compiles (the same code with a request that fails over):
//!
//! ```no_run
//! # use ringmq_client::FailoverClient;
//! # use ringmq_protocol::message::TopicDescribe;
//! fn describe(client: &mut FailoverClient) {
//!     let _ = client.call(&TopicDescribe { name: "t".into() });
//! }
//! ```
//!
//! A broker's error status (e.g. `OFFSET_OUT_OF_RANGE`) is not a reason to switch: it is
//! returned as is.

use super::api::{Client, ClientOptions, ProduceResult, PullResult};
use super::error::ClientError;
use crate::protocol::message::{MessageRef, TopicDescription};
use crate::protocol::{Acks, FailsOver};
use std::time::{Duration, Instant};

/// How often a client that failed over tries the master again, by default.
pub const DEFAULT_RETRY_PRIMARY_EVERY: Duration = Duration::from_secs(2);

pub struct FailoverClient {
    brokers: Vec<String>,
    options: ClientOptions,
    retry_primary_every: Duration,
    /// One lazily opened client per broker; `None` until needed or after it failed.
    clients: Vec<Option<Client>>,
    /// The broker requests go to now.
    active: usize,
    /// When the client may next try to go back to the master.
    primary_retry_at: Instant,
    switches: u64,
}

/// Errors that mean "this broker is not reachable", as opposed to an answer from it.
fn unreachable(error: &ClientError) -> bool {
    error.breaks_connection() || matches!(error, ClientError::Timeout { .. })
}

impl FailoverClient {
    /// Connects to the first reachable broker of `brokers` (the master first). Fails only when
    /// none can be reached.
    pub fn connect(brokers: &[String], options: ClientOptions) -> Result<Self, ClientError> {
        if brokers.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a failover client needs at least one broker".into(),
            ));
        }
        let mut client = FailoverClient {
            brokers: brokers.to_vec(),
            options,
            retry_primary_every: DEFAULT_RETRY_PRIMARY_EVERY,
            clients: brokers.iter().map(|_| None).collect(),
            active: 0,
            primary_retry_at: Instant::now(),
            switches: 0,
        };
        let mut last = None;
        for index in 0..brokers.len() {
            match client.client_at(index) {
                Ok(_) => {
                    client.switch_to(index);
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one broker was tried"))
    }

    /// Parses `a,b,c` (the master first).
    pub fn connect_list(list: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let brokers: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        FailoverClient::connect(&brokers, options)
    }

    /// How often to try the master again while on another broker (default 2 s).
    pub fn set_retry_primary_every(&mut self, every: Duration) {
        self.retry_primary_every = every;
        self.primary_retry_at = self.primary_retry_at.min(Instant::now() + every);
    }

    pub fn brokers(&self) -> &[String] {
        &self.brokers
    }

    /// Index in the broker list of the broker requests go to now (0: the master).
    pub fn active(&self) -> usize {
        self.active
    }

    pub fn active_addr(&self) -> &str {
        &self.brokers[self.active]
    }

    /// How many times the client moved to another broker.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The master's client, for anything that must go to the master (produce, admin).
    pub fn primary(&mut self) -> Result<&mut Client, ClientError> {
        self.client_at(0)
    }

    /// Produce goes to the master only; it never fails over to a slave.
    pub fn produce(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
    ) -> Result<ProduceResult, ClientError> {
        let result = self.client_at(0)?.produce(topic, queue, messages);
        if matches!(&result, Err(e) if unreachable(e)) {
            self.clients[0] = None;
        }
        result
    }

    /// [`Client::produce_with`] on the master (never a slave): `Ok(None)` at `Acks::None`.
    pub fn produce_with(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
        acks: Acks,
    ) -> Result<Option<ProduceResult>, ClientError> {
        let result = self
            .client_at(0)?
            .produce_with(topic, queue, messages, acks);
        if matches!(&result, Err(e) if unreachable(e)) {
            self.clients[0] = None;
        }
        result
    }

    pub fn pull(
        &mut self,
        topic: &str,
        queue: u32,
        offset: u64,
        max_messages: u32,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<PullResult, ClientError> {
        self.with_failover(|c| c.pull(topic, queue, offset, max_messages, max_bytes, max_wait_ms))
    }

    pub fn describe_topic(&mut self, topic: &str) -> Result<TopicDescription, ClientError> {
        self.with_failover(|c| c.describe_topic(topic))
    }

    /// Sends a request that may fail over ([`Client::call`]): to the active broker, and to
    /// the next reachable one while a broker cannot be reached or does not answer in time.
    pub fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        self.with_failover(|c| c.call(request))
    }

    /// Runs `op` on the active broker, and on the next reachable ones while a broker cannot be
    /// reached. Private: `op` must be a read ([`FailsOver`]), which only the callers here know.
    fn with_failover<T>(
        &mut self,
        mut op: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.maybe_return_to_primary();
        let order: Vec<usize> = std::iter::once(self.active)
            .chain((0..self.brokers.len()).filter(|i| *i != self.active))
            .collect();
        let mut last = None;
        for index in order {
            let result = match self.client_at(index) {
                Ok(client) => op(client),
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => {
                    self.switch_to(index);
                    return Ok(value);
                }
                Err(e) if unreachable(&e) => {
                    self.clients[index] = None;
                    last = Some(e);
                }
                Err(e) => {
                    self.switch_to(index);
                    return Err(e);
                }
            }
        }
        Err(last.expect("at least one broker was tried"))
    }

    fn switch_to(&mut self, index: usize) {
        if index == self.active {
            return;
        }
        if self.active == 0 {
            // Left the master: the first try to go back is one interval from now.
            self.primary_retry_at = Instant::now() + self.retry_primary_every;
        }
        self.switches += 1;
        tracing::info!(
            from = %self.brokers[self.active],
            to = %self.brokers[index],
            "consumer failover: switched broker"
        );
        self.active = index;
    }

    /// Tries the master now (not waiting for `retry_primary_every`) and goes back to it if it
    /// connects: for an answer from a slave that says the master should serve this.
    pub fn retry_primary_now(&mut self) {
        self.primary_retry_at = Instant::now();
        self.maybe_return_to_primary();
    }

    fn maybe_return_to_primary(&mut self) {
        if self.active == 0 || Instant::now() < self.primary_retry_at {
            return;
        }
        self.primary_retry_at = Instant::now() + self.retry_primary_every;
        if self.client_at(0).is_ok() {
            self.switch_to(0);
        }
    }

    fn client_at(&mut self, index: usize) -> Result<&mut Client, ClientError> {
        if self.clients[index].is_none() {
            let client = Client::connect_with(&self.brokers[index], self.options)?;
            self.clients[index] = Some(client);
        }
        Ok(self.clients[index].as_mut().expect("just opened"))
    }
}
