//! [`Client`]: a shard-aware client over [`Connection`]s.
//!
//! The bootstrap connection carries metadata, topic and group-describe requests. Queue-scoped
//! requests (produce, pull, queue stats, group commit and fetch) go to the shard that owns the
//! queue according to `TopicInfo::queue_shards`, over a connection to `HOST:shard_ports[n]`
//! opened on first use. A shard whose port is 0 or that cannot be reached is served through the
//! bootstrap connection instead: the broker forwards such requests to the owning core.
//!
//! Every request goes through one typed call, [`Client::call`], which takes any declared
//! [`Request`] (`protocol::requests`) and returns its response; the request says whether it is
//! queue-scoped and how long the broker may hold it. The methods kept beside it add behaviour:
//! queue choice and pipelining for produce, pipelining for pull, timing for ping. The topic
//! cache follows every answered call (`Request::placement`), whichever method sent it.

use super::connection::{Connection, ConnectionOptions, Response};
use super::error::ClientError;
use super::LONG_POLL_MARGIN;
use crate::protocol::message::{
    encode_produce, MessageRef, Metadata, MetadataRequest, Ping, ProduceRequest, PullRequest,
    TopicCreate, TopicDelete, TopicDescribe, TopicDescription, TopicInfo, ANY_QUEUE,
};
pub use crate::protocol::requests::{ProduceResult, PullResult};
use crate::protocol::{Acks, Opcode, Placement, Request, Response as _, Status};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    pub connection: ConnectionOptions,
    /// Talk to the owning shard's port directly. Off, every request uses the bootstrap
    /// connection and the broker forwards (useful behind a proxy that exposes one port).
    pub shard_aware: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connection: ConnectionOptions::default(),
            shard_aware: true,
        }
    }
}

/// Which of the client's connections a request went out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionSlot {
    Bootstrap,
    Shard(u16),
}

/// A request sent without waiting: request ids are per connection, so both are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub slot: ConnectionSlot,
    pub request_id: u64,
}

/// One produce acknowledgement from the pipelined API.
#[derive(Debug)]
pub struct ProduceAck {
    pub ticket: Ticket,
    pub result: Result<ProduceResult, ClientError>,
}

enum ShardConnection {
    NotOpened,
    Open(Box<Connection>),
    /// Port 0 or connect failed: use the bootstrap connection until metadata is refreshed.
    Unavailable,
}

pub struct Client {
    bootstrap_addr: String,
    /// Host part of the bootstrap address; shard ports are reached on the same host.
    host: String,
    options: ClientOptions,
    bootstrap: Connection,
    metadata: Metadata,
    topics: HashMap<String, TopicInfo>,
    /// Indexed by shard; as long as `metadata.shard_ports`.
    shards: Vec<ShardConnection>,
    round_robin: u32,
}

impl Client {
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default())
    }

    /// Connects to the bootstrap address and fetches metadata.
    pub fn connect_with(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
            _ => {
                return Err(ClientError::InvalidArgument(format!(
                    "broker address `{addr}` is not HOST:PORT"
                )))
            }
        };
        let bootstrap = Connection::connect(addr, options.connection)?;
        let mut client = Client {
            bootstrap_addr: addr.to_string(),
            host: host.to_string(),
            options,
            bootstrap,
            metadata: Metadata {
                broker_name: String::new(),
                role: String::new(),
                flush_disk_type: String::new(),
                shard_ports: Vec::new(),
                topics: Vec::new(),
            },
            topics: HashMap::new(),
            shards: Vec::new(),
            round_robin: 0,
        };
        client.refresh_metadata()?;
        Ok(client)
    }

    /// The metadata fetched last.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Fetches metadata from the bootstrap connection and resets shard connections whose port
    /// changed (what any answered [`MetadataRequest`] does, see [`Client::call`]).
    pub fn refresh_metadata(&mut self) -> Result<&Metadata, ClientError> {
        self.call(&MetadataRequest {})?;
        Ok(&self.metadata)
    }

    /// Applies what an answer says about topic placement to the topic cache (and, for
    /// metadata, to the shard connections), so routing follows every answered call.
    fn learn(&mut self, placement: Placement<'_>) {
        match placement {
            Placement::Unchanged => {}
            Placement::Topic(info) => {
                self.topics.insert(info.name.clone(), info.clone());
            }
            // Forgotten, so the next request for the name refreshes metadata when the broker
            // does not know it (a stale entry would route it to the old queues instead).
            Placement::Deleted(name) => {
                self.topics.remove(name);
            }
            Placement::Everything(metadata) => self.apply_metadata(metadata.clone()),
        }
    }

    fn apply_metadata(&mut self, metadata: Metadata) {
        let ports_changed = metadata.shard_ports != self.metadata.shard_ports;
        self.topics = metadata
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        if ports_changed {
            self.shards = (0..metadata.shard_ports.len())
                .map(|_| ShardConnection::NotOpened)
                .collect();
        } else {
            for slot in &mut self.shards {
                if matches!(slot, ShardConnection::Unavailable) {
                    *slot = ShardConnection::NotOpened;
                }
            }
        }
        self.metadata = metadata;
    }

    /// Round-trip time of an empty request on the bootstrap connection.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        self.call(&Ping {})?;
        Ok(started.elapsed())
    }

    pub fn create_topic(&mut self, name: &str, queues: u32) -> Result<TopicInfo, ClientError> {
        self.call(&TopicCreate {
            name: name.to_string(),
            queue_count: queues,
        })
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        self.call(&TopicDelete {
            name: name.to_string(),
        })
    }

    pub fn describe_topic(&mut self, name: &str) -> Result<TopicDescription, ClientError> {
        self.call(&TopicDescribe {
            name: name.to_string(),
        })
    }

    /// The topic's placement, refreshing metadata once when the topic is not known yet.
    pub fn topic(&mut self, name: &str) -> Result<TopicInfo, ClientError> {
        if !self.topics.contains_key(name) {
            self.refresh_metadata()?;
        }
        self.topics
            .get(name)
            .cloned()
            .ok_or_else(|| ClientError::Status {
                status: Status::TopicNotFound,
                message: format!("topic `{name}` is not in the broker's metadata"),
            })
    }

    /// The queue a key maps to: crc32c (Castagnoli) of the key bytes modulo the queue count, so
    /// every client in every language places a key on the same queue.
    pub fn queue_for_key(&mut self, topic: &str, key: &[u8]) -> Result<u32, ClientError> {
        let info = self.topic(topic)?;
        queue_for_key(&info, key).ok_or_else(|| no_queues(topic))
    }

    /// Produces a batch to one queue and waits for the acknowledgement. With `queue: None` the
    /// queue is the first message's key hash, or round-robin when it has no key. The broker's
    /// `default_acks` decides what the acknowledgement means (see [`produce_with`](Self::produce_with)).
    pub fn produce(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
    ) -> Result<ProduceResult, ClientError> {
        let answered = self.produce_at(topic, queue, messages, None)?;
        Ok(answered.expect("a produce at the broker's default level is answered"))
    }

    /// [`produce`](Self::produce) at acknowledgement level `acks`: `Leader` is answered once
    /// the master's flush guarantee holds, `All` once its slaves have the batch too. At
    /// `Acks::None` it returns `Ok(None)` as soon as the request is written and waits for
    /// nothing: the broker writes no answer, so nothing about the outcome (not even an error)
    /// reaches the client. A broker whose `min_acks` is above `none` raises the level and
    /// answers; that answer is dropped here. Every other level returns `Ok(Some(..))`.
    pub fn produce_with(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
        acks: Acks,
    ) -> Result<Option<ProduceResult>, ClientError> {
        self.produce_at(topic, queue, messages, Some(acks))
    }

    fn produce_at(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
        acks: Option<Acks>,
    ) -> Result<Option<ProduceResult>, ClientError> {
        check_messages(topic, messages)?;
        let known = self.topics.contains_key(topic);
        // Picking a queue for an unknown topic already refreshed metadata once.
        let may_refresh = !known && queue.is_some();
        let queue = self.resolve_queue(topic, queue, messages)?;
        let attempt = |client: &mut Client| {
            let slot = client.route(topic, queue);
            let connection = client.connection(slot)?;
            let request_id = connection.send_with_acks(Opcode::Produce, acks, |out| {
                encode_produce(out, topic, queue, messages)
            })?;
            if acks == Some(Acks::None) {
                return Ok(None);
            }
            let response = connection.wait(request_id)?;
            decode_answer::<ProduceRequest<'_>>(connection, response).map(Some)
        };
        retry_unknown_topic(self, !may_refresh, attempt)
    }

    /// Sends a produce without waiting; collect the acknowledgement with
    /// [`next_produce_ack`](Self::next_produce_ack) or [`wait_produce`](Self::wait_produce).
    /// No metadata retry happens here: call [`topic`](Self::topic) first to learn the routing.
    pub fn send_produce(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
    ) -> Result<Ticket, ClientError> {
        self.send_produce_with(topic, queue, messages, None)
    }

    /// [`send_produce`](Self::send_produce) naming a level (`None`: the broker's default). A
    /// ticket of an `Acks::None` produce is never answered: do not wait for it.
    pub fn send_produce_with(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
        acks: Option<Acks>,
    ) -> Result<Ticket, ClientError> {
        check_messages(topic, messages)?;
        let queue = self.resolve_queue(topic, queue, messages)?;
        let slot = self.route(topic, queue);
        let connection = self.connection(slot)?;
        let request_id = connection.send_with_acks(Opcode::Produce, acks, |out| {
            encode_produce(out, topic, queue, messages)
        })?;
        Ok(Ticket { slot, request_id })
    }

    pub fn wait_produce(&mut self, ticket: Ticket) -> Result<ProduceResult, ClientError> {
        let response = self.wait_ticket(ticket, None)?;
        decode_answer::<ProduceRequest<'_>>(self.connection(ticket.slot)?, response)
    }

    /// Requests sent through the pipelined API and not yet collected, over all connections.
    pub fn in_flight(&self) -> usize {
        self.open_connections().map(|(_, c)| c.in_flight()).sum()
    }

    /// The next produce acknowledgement in arrival order over every connection, or `None` when
    /// nothing arrived within `timeout` (or nothing is in flight). An `Err` means a connection
    /// failed: its requests in flight will not be answered.
    pub fn next_produce_ack(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ProduceAck>, ClientError> {
        let Some((slot, response)) = self.next_response(timeout)? else {
            return Ok(None);
        };
        let ticket = Ticket {
            slot,
            request_id: response.request_id(),
        };
        let connection = self.connection(slot)?;
        if response.header.opcode != Opcode::Produce as u16 {
            return Err(ClientError::InvalidArgument(format!(
                "response to request {} on {} is not a produce acknowledgement",
                ticket.request_id,
                connection.addr()
            )));
        }
        let result = decode_answer::<ProduceRequest<'_>>(connection, response);
        Ok(Some(ProduceAck { ticket, result }))
    }

    /// Reads one message batch from a queue; `max_wait_ms > 0` long-polls at the queue's end.
    pub fn pull(
        &mut self,
        topic: &str,
        queue: u32,
        offset: u64,
        max_messages: u32,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<PullResult, ClientError> {
        check_name("topic", topic)?;
        self.call(&PullRequest {
            topic: topic.to_string(),
            queue,
            offset,
            max_messages,
            max_bytes,
            max_wait_ms,
        })
    }

    /// Sends a pull without waiting, so pulls on many queues can wait at the same time.
    pub fn send_pull(&mut self, request: &PullRequest) -> Result<Ticket, ClientError> {
        check_name("topic", &request.topic)?;
        let slot = self.route(&request.topic, request.queue);
        let connection = self.connection(slot)?;
        let request_id = connection.send_with(Opcode::Pull, |out| request.encode_body(out))?;
        Ok(Ticket { slot, request_id })
    }

    pub fn wait_pull(
        &mut self,
        ticket: Ticket,
        max_wait_ms: u32,
    ) -> Result<PullResult, ClientError> {
        let timeout = self.pull_timeout(max_wait_ms);
        let response = self.wait_ticket(ticket, Some(timeout))?;
        decode_answer::<PullRequest>(self.connection(ticket.slot)?, response)
    }

    /// Sends any declared request without waiting for its answer, to the connection
    /// [`Client::call`] would use, so requests on several shards are in flight at once;
    /// [`Client::wait_request`] collects the answer. Nothing is learnt from the answer about
    /// topic placement, and an unknown topic is not retried: learn routing first
    /// ([`Client::topic`]).
    pub fn send_request<R: Request>(&mut self, request: &R) -> Result<Ticket, ClientError> {
        request
            .check_body()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let slot = match request.queue() {
            Some((topic, queue)) => self.route(topic, queue),
            None => ConnectionSlot::Bootstrap,
        };
        let connection = self.connection(slot)?;
        let request_id = connection.send_with(R::OPCODE, |out| request.encode_body(out))?;
        Ok(Ticket { slot, request_id })
    }

    /// The answer to a request sent with [`Client::send_request`].
    pub fn wait_request<R: Request>(
        &mut self,
        ticket: Ticket,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let timeout = request.wait_ms().map(|wait| self.pull_timeout(wait));
        let response = self.wait_ticket(ticket, timeout)?;
        decode_answer::<R>(self.connection(ticket.slot)?, response)
    }

    /// The connection a queue-scoped request for `topic`/`queue` would use.
    pub fn route(&mut self, topic: &str, queue: u32) -> ConnectionSlot {
        if !self.options.shard_aware {
            return ConnectionSlot::Bootstrap;
        }
        let shard = self
            .topics
            .get(topic)
            .and_then(|info| info.queue_shards.get(queue as usize).copied());
        match shard {
            Some(shard) if self.open_shard(shard) => ConnectionSlot::Shard(shard),
            _ => ConnectionSlot::Bootstrap,
        }
    }

    /// Forgets connections the broker closed while they were idle ([`Connection::peer_closed`]),
    /// so the next request reconnects (and fails to connect, before anything is written, when
    /// the broker is gone).
    pub fn drop_closed_connections(&mut self) {
        self.bootstrap.peer_closed();
        for slot in &mut self.shards {
            if let ShardConnection::Open(c) = slot {
                if c.peer_closed() {
                    *slot = ShardConnection::NotOpened;
                }
            }
        }
    }

    pub fn bootstrap_addr(&self) -> &str {
        &self.bootstrap_addr
    }

    /// Makes sure shard `shard` has a live connection; false means "use bootstrap".
    fn open_shard(&mut self, shard: u16) -> bool {
        let index = shard as usize;
        let Some(&port) = self.metadata.shard_ports.get(index) else {
            return false;
        };
        match &self.shards[index] {
            ShardConnection::Open(c) if !c.is_broken() => return true,
            ShardConnection::Unavailable => return false,
            _ => {}
        }
        self.shards[index] = if port == 0 {
            ShardConnection::Unavailable
        } else {
            let addr = format!("{}:{port}", self.host);
            match Connection::connect(&addr, self.options.connection) {
                Ok(c) => ShardConnection::Open(Box::new(c)),
                Err(_) => ShardConnection::Unavailable,
            }
        };
        matches!(self.shards[index], ShardConnection::Open(_))
    }

    fn connection(&mut self, slot: ConnectionSlot) -> Result<&mut Connection, ClientError> {
        if let ConnectionSlot::Shard(shard) = slot {
            if let Some(ShardConnection::Open(c)) = self.shards.get_mut(shard as usize) {
                return Ok(c);
            }
        }
        if self.bootstrap.is_broken() {
            self.bootstrap = Connection::connect(&self.bootstrap_addr, self.options.connection)?;
        }
        Ok(&mut self.bootstrap)
    }

    fn open_connections(&self) -> impl Iterator<Item = (ConnectionSlot, &Connection)> {
        let shards = self.shards.iter().enumerate().filter_map(|(n, s)| match s {
            ShardConnection::Open(c) => Some((ConnectionSlot::Shard(n as u16), &**c)),
            _ => None,
        });
        std::iter::once((ConnectionSlot::Bootstrap, &self.bootstrap)).chain(shards)
    }

    /// Sends any declared request and returns its response: the one call every request
    /// type shares. A queue-scoped request goes to the shard that owns its queue, and when the
    /// broker does not know the topic or queue and the client had no metadata for it, metadata
    /// is refreshed once (routing may change) and the request sent again. A request that may
    /// be held (a pull's long poll) is waited for that long on top of the read timeout.
    ///
    /// An answer that says where topics are (create, describe, delete, metadata:
    /// [`Request::placement`]) updates the topic cache routing uses, as the answer to a
    /// [`MetadataRequest`] also resets shard connections whose port changed.
    ///
    /// Statuses that carry a body (`Ok`, the "stored, but" statuses of produce,
    /// `NoNewMessage`) are answers, not errors; responses for which the status matters
    /// ([`ProduceResult`], [`PullResult`]) keep it.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        request
            .check_body()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let timeout = request.wait_ms().map(|wait| self.pull_timeout(wait));
        let response = match request.queue() {
            None => self.call_on(ConnectionSlot::Bootstrap, request, timeout),
            Some((topic, queue)) => {
                let known = self.topics.contains_key(topic);
                retry_unknown_topic(self, known, |client| {
                    let slot = client.route(topic, queue);
                    client.call_on(slot, request, timeout)
                })
            }
        }?;
        self.learn(request.placement(&response));
        Ok(response)
    }

    /// One request on one connection, waiting for its answer and decoding it.
    fn call_on<R: Request>(
        &mut self,
        slot: ConnectionSlot,
        request: &R,
        timeout: Option<Duration>,
    ) -> Result<R::Response, ClientError> {
        let response = self.exchange(slot, R::OPCODE, timeout, |out| request.encode_body(out))?;
        decode_answer::<R>(self.connection(slot)?, response)
    }

    /// Sends one frame on one connection and waits for its answer.
    fn exchange(
        &mut self,
        slot: ConnectionSlot,
        opcode: Opcode,
        timeout: Option<Duration>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response, ClientError> {
        let connection = self.connection(slot)?;
        let request_id = connection.send_with(opcode, encode)?;
        let timeout = timeout.unwrap_or(connection.options().read_timeout);
        connection.wait_within(request_id, timeout)
    }

    fn wait_ticket(
        &mut self,
        ticket: Ticket,
        timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let connection = self.connection(ticket.slot)?;
        let timeout = timeout.unwrap_or(connection.options().read_timeout);
        connection.wait_within(ticket.request_id, timeout)
    }

    /// The next response on any connection with requests in flight, in arrival order;
    /// `None` when nothing is in flight or none arrived within `timeout`. A connection that
    /// becomes readable with only answers to `none` produces (dropped) does not count: the
    /// wait goes on, never past `timeout`.
    fn next_response(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(ConnectionSlot, Response)>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let busy: Vec<(ConnectionSlot, i32, bool)> = self
                .open_connections()
                .filter(|(_, c)| c.in_flight() > 0 || c.has_buffered_response())
                .map(|(slot, c)| (slot, c.as_raw_fd(), c.has_buffered_response()))
                .collect();
            if let Some(&(slot, _, _)) = busy.iter().find(|(_, _, buffered)| *buffered) {
                return Ok(Some((slot, self.connection(slot)?.recv()?)));
            }
            if busy.is_empty() {
                return Ok(None);
            }
            let mut fds: Vec<libc::pollfd> = busy
                .iter()
                .map(|&(_, fd, _)| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Rounded up, so a sub-millisecond remainder still waits rather than spins.
            let timeout_ms = remaining.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd
            // structs whose descriptors are owned by connections that outlive this call.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 {
                let source = std::io::Error::last_os_error();
                if source.kind() == std::io::ErrorKind::Interrupted {
                    return Ok(None);
                }
                return Err(ClientError::Io {
                    addr: self.bootstrap_addr.clone(),
                    source,
                });
            }
            for (at, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                let slot = busy[at].0;
                if let Some(response) = self.connection(slot)?.try_recv()? {
                    return Ok(Some((slot, response)));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn pull_timeout(&self, max_wait_ms: u32) -> Duration {
        let long_poll = Duration::from_millis(u64::from(max_wait_ms)) + LONG_POLL_MARGIN;
        long_poll.max(self.options.connection.read_timeout)
    }

    fn resolve_queue(
        &mut self,
        topic: &str,
        queue: Option<u32>,
        messages: &[MessageRef<'_>],
    ) -> Result<u32, ClientError> {
        if let Some(queue) = queue {
            return Ok(queue);
        }
        if !self.topics.contains_key(topic) {
            self.refresh_metadata()?;
        }
        let Some(info) = self.topics.get(topic) else {
            // Unknown even after a refresh: let the broker pick, or say the topic is missing.
            return Ok(ANY_QUEUE);
        };
        let key = messages.first().map(|m| m.key).unwrap_or_default();
        if !key.is_empty() {
            return queue_for_key(info, key).ok_or_else(|| no_queues(topic));
        }
        let count = info.queue_count();
        if count == 0 {
            return Err(no_queues(topic));
        }
        self.round_robin = self.round_robin.wrapping_add(1);
        Ok(self.round_robin % count)
    }
}

/// Runs `attempt`; when the broker does not know the topic or queue and the client had no
/// metadata for it, refreshes metadata once (routing may change) and tries again.
fn retry_unknown_topic<T>(
    client: &mut Client,
    known: bool,
    mut attempt: impl FnMut(&mut Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    match attempt(client) {
        Err(e)
            if !known
                && matches!(
                    e.status(),
                    Some(Status::TopicNotFound | Status::QueueNotFound)
                ) =>
        {
            client.refresh_metadata()?;
            attempt(client)
        }
        result => result,
    }
}

/// crc32c of the key modulo the queue count; `None` for a topic without queues.
pub fn queue_for_key(info: &TopicInfo, key: &[u8]) -> Option<u32> {
    let count = info.queue_count();
    (count > 0).then(|| crc32c::crc32c(key) % count)
}

fn no_queues(topic: &str) -> ClientError {
    ClientError::Status {
        status: Status::QueueNotFound,
        message: format!("topic `{topic}` has no queues"),
    }
}

/// Turns an answer to `R` into its response: an error status becomes the error it names,
/// any other status and the body are decoded as `R` declares.
fn decode_answer<R: Request>(
    connection: &Connection,
    response: Response,
) -> Result<R::Response, ClientError> {
    let (status, body) = response.into_result(connection.addr())?;
    connection.decode(R::RESPONSE_NAME, &body, |b| {
        R::Response::from_answer(status, b)
    })
}

/// Names are `u16`-length-prefixed on the wire; longer ones cannot be encoded.
fn check_name(what: &str, name: &str) -> Result<(), ClientError> {
    if name.is_empty() || name.len() > u16::MAX as usize {
        return Err(ClientError::InvalidArgument(format!(
            "{what} name must be 1 to {} bytes, got {}",
            u16::MAX,
            name.len()
        )));
    }
    Ok(())
}

fn check_messages(topic: &str, messages: &[MessageRef<'_>]) -> Result<(), ClientError> {
    check_name("topic", topic)?;
    if messages.is_empty() {
        return Err(ClientError::InvalidArgument(
            "a produce request needs at least one message".to_string(),
        ));
    }
    for (index, m) in messages.iter().enumerate() {
        if m.key.len() > u16::MAX as usize || m.properties.len() > u16::MAX as usize {
            return Err(ClientError::InvalidArgument(format!(
                "message {index}: key and properties must be at most {} bytes each",
                u16::MAX
            )));
        }
    }
    Ok(())
}
