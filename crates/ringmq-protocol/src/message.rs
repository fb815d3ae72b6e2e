//! Request and response bodies, one struct per opcode.
//!
//! Produce requests and pull responses carry many messages; their decoders borrow message bytes
//! from the frame instead of copying them, so the broker's produce path allocates nothing per
//! message. Every other body is small and decoded into owned values.

use super::codec::{DecodeError, Reader, Writer};

/// `queue` value in a produce request that lets the receiving shard pick one of its own queues.
pub const ANY_QUEUE: u32 = u32::MAX;

/// Fixed bytes of one message inside a produce request: born timestamp, key length, properties
/// length, body length.
const PRODUCE_MESSAGE_MIN_BYTES: usize = 8 + 2 + 2 + 4;
/// Fixed bytes of one message inside a pull response.
const PULLED_MESSAGE_MIN_BYTES: usize = 8 + 8 + 8 + 2 + 2 + 4;

/// One message as a producer sends it (borrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub born_timestamp_ms: u64,
    pub key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> MessageRef<'a> {
    fn encode(&self, w: &mut Writer<'_>) {
        w.u64(self.born_timestamp_ms)
            .bytes16(self.key)
            .bytes16(self.properties)
            .bytes32(self.body);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(MessageRef {
            born_timestamp_ms: r.u64("born_timestamp_ms")?,
            key: r.bytes16("key")?,
            properties: r.bytes16("properties")?,
            body: r.bytes32("body")?,
        })
    }
}

/// Produce: append a batch of messages to one queue of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest<'a> {
    pub topic: &'a str,
    /// A queue id, or [`ANY_QUEUE`].
    pub queue: u32,
    pub messages: Vec<MessageRef<'a>>,
}

impl<'a> ProduceRequest<'a> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_produce(out, self.topic, self.queue, &self.messages);
    }
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let topic = r.str16("topic")?;
        let queue = r.u32("queue")?;
        let count = r.count("message_count", PRODUCE_MESSAGE_MIN_BYTES)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(MessageRef::decode(&mut r)?);
        }
        r.finish()?;
        if messages.is_empty() {
            return Err(DecodeError::Invalid {
                field: "message_count",
                reason: "a produce request needs at least one message",
            });
        }
        Ok(ProduceRequest {
            topic,
            queue,
            messages,
        })
    }
}

pub fn encode_produce(out: &mut Vec<u8>, topic: &str, queue: u32, messages: &[MessageRef<'_>]) {
    let mut w = Writer::new(out);
    w.str16(topic).u32(queue).u32(messages.len() as u32);
    for m in messages {
        m.encode(&mut w);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceResponse {
    pub queue: u32,
    /// Queue offset of the first message; message `i` of the batch has `base_offset + i`.
    pub base_offset: u64,
    pub count: u32,
    /// Commitlog offset of the first message's record.
    pub commitlog_offset: u64,
}

impl ProduceResponse {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .u32(self.queue)
            .u64(self.base_offset)
            .u32(self.count)
            .u64(self.commitlog_offset);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = ProduceResponse {
            queue: r.u32("queue")?,
            base_offset: r.u64("base_offset")?,
            count: r.u32("count")?,
            commitlog_offset: r.u64("commitlog_offset")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// Pull: read messages of one queue from a queue offset, optionally waiting for new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// Long polling: how long to wait at the end of the queue for a message to arrive.
    pub max_wait_ms: u32,
}

impl PullRequest {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str16(&self.topic)
            .u32(self.queue)
            .u64(self.offset)
            .u32(self.max_messages)
            .u32(self.max_bytes)
            .u32(self.max_wait_ms);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = PullRequest {
            topic: r.str16("topic")?.to_owned(),
            queue: r.u32("queue")?,
            offset: r.u64("offset")?,
            max_messages: r.u32("max_messages")?,
            max_bytes: r.u32("max_bytes")?,
            max_wait_ms: r.u32("max_wait_ms")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// One message as a consumer receives it (borrowed from the response frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PulledMessageRef<'a> {
    pub queue_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

/// An owned pulled message, for clients that keep messages past the response buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledMessage {
    pub queue_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub key: Vec<u8>,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

impl PulledMessageRef<'_> {
    pub fn to_owned(&self) -> PulledMessage {
        PulledMessage {
            queue_offset: self.queue_offset,
            born_timestamp_ms: self.born_timestamp_ms,
            store_timestamp_ms: self.store_timestamp_ms,
            key: self.key.to_vec(),
            properties: self.properties.to_vec(),
            body: self.body.to_vec(),
        }
    }
}

/// Pull response header fields; messages follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullSummary {
    /// The offset to pull from next.
    pub next_offset: u64,
    /// Lowest offset still held in the queue.
    pub min_offset: u64,
    /// One past the highest confirmed (visible) offset.
    pub max_offset: u64,
}

/// Writes a pull response incrementally: header fields first, messages as they are read, the
/// count and next offset patched at the end.
pub struct PullResponseEncoder {
    count_at: usize,
    next_offset_at: usize,
    count: u32,
}

impl PullResponseEncoder {
    pub fn begin(out: &mut Vec<u8>, summary: PullSummary) -> Self {
        let mut w = Writer::new(out);
        let next_offset_at = w.position();
        w.u64(summary.next_offset)
            .u64(summary.min_offset)
            .u64(summary.max_offset);
        let count_at = w.position();
        w.u32(0);
        PullResponseEncoder {
            count_at,
            next_offset_at,
            count: 0,
        }
    }
    pub fn push(&mut self, out: &mut Vec<u8>, m: &PulledMessageRef<'_>) {
        Writer::new(out)
            .u64(m.queue_offset)
            .u64(m.born_timestamp_ms)
            .u64(m.store_timestamp_ms)
            .bytes16(m.key)
            .bytes16(m.properties)
            .bytes32(m.body);
        self.count += 1;
    }
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn finish(self, out: &mut Vec<u8>, next_offset: u64) {
        let mut w = Writer::new(out);
        w.patch_u32(self.count_at, self.count);
        w.patch_u64(self.next_offset_at, next_offset);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullResponse<'a> {
    pub summary: PullSummary,
    pub messages: Vec<PulledMessageRef<'a>>,
}

impl<'a> PullResponse<'a> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut enc = PullResponseEncoder::begin(out, self.summary);
        for m in &self.messages {
            enc.push(out, m);
        }
        enc.finish(out, self.summary.next_offset);
    }
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let summary = PullSummary {
            next_offset: r.u64("next_offset")?,
            min_offset: r.u64("min_offset")?,
            max_offset: r.u64("max_offset")?,
        };
        let count = r.count("message_count", PULLED_MESSAGE_MIN_BYTES)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(PulledMessageRef {
                queue_offset: r.u64("queue_offset")?,
                born_timestamp_ms: r.u64("born_timestamp_ms")?,
                store_timestamp_ms: r.u64("store_timestamp_ms")?,
                key: r.bytes16("key")?,
                properties: r.bytes16("properties")?,
                body: r.bytes32("body")?,
            });
        }
        r.finish()?;
        Ok(PullResponse { summary, messages })
    }
}

/// A topic and a queue: the body of queue-scoped requests (`QueueStats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRef {
    pub topic: String,
    pub queue: u32,
}

impl QueueRef {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out).str16(&self.topic).u32(self.queue);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = QueueRef {
            topic: r.str16("topic")?.to_owned(),
            queue: r.u32("queue")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// Offsets of one queue as seen by the shard that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: u32,
    pub shard: u16,
    pub min_offset: u64,
    /// One past the highest confirmed offset: what consumers can read.
    pub max_offset: u64,
}

impl QueueStats {
    const BYTES: usize = 4 + 2 + 8 + 8;
    fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.queue)
            .u16(self.shard)
            .u64(self.min_offset)
            .u64(self.max_offset);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(QueueStats {
            queue: r.u32("queue")?,
            shard: r.u16("shard")?,
            min_offset: r.u64("min_offset")?,
            max_offset: r.u64("max_offset")?,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut Writer::new(out));
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

/// A topic's identity and queue placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// Never reused, so records of a deleted topic are never mistaken for a new one's.
    pub topic_id: u32,
    /// `queue_shards[q]` is the shard that owns queue `q`.
    pub queue_shards: Vec<u16>,
}

impl TopicInfo {
    const MIN_BYTES: usize = 2 + 4 + 4;
    pub fn queue_count(&self) -> u32 {
        self.queue_shards.len() as u32
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.str16(&self.name)
            .u32(self.topic_id)
            .u32(self.queue_shards.len() as u32);
        for s in &self.queue_shards {
            w.u16(*s);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.str16("name")?.to_owned();
        let topic_id = r.u32("topic_id")?;
        let n = r.count("queue_count", 2)?;
        let mut queue_shards = Vec::with_capacity(n);
        for _ in 0..n {
            queue_shards.push(r.u16("queue_shard")?);
        }
        Ok(TopicInfo {
            name,
            topic_id,
            queue_shards,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut Writer::new(out));
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

fn encode_list<T>(out: &mut Vec<u8>, items: &[T], write: impl Fn(&T, &mut Writer<'_>)) {
    let mut w = Writer::new(out);
    w.u32(items.len() as u32);
    for item in items {
        write(item, &mut w);
    }
}

fn decode_list<T>(
    r: &mut Reader<'_>,
    field: &'static str,
    min_item_bytes: usize,
    read: impl Fn(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = r.count(field, min_item_bytes)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(read(r)?);
    }
    Ok(items)
}

/// Metadata: what a shard-aware client needs to route requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub broker_name: String,
    /// `BrokerRole` name, e.g. `ASYNC_MASTER`.
    pub role: String,
    /// `FlushDiskType` name, e.g. `SYNC_FLUSH`.
    pub flush_disk_type: String,
    /// `shard_ports[n]` is the port on which shard `n` accepts connections directly.
    pub shard_ports: Vec<u16>,
    pub topics: Vec<TopicInfo>,
}

impl Metadata {
    pub fn shard_count(&self) -> usize {
        self.shard_ports.len()
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.str16(&self.broker_name)
            .str16(&self.role)
            .str16(&self.flush_disk_type)
            .u32(self.shard_ports.len() as u32);
        for p in &self.shard_ports {
            w.u16(*p);
        }
        encode_list(out, &self.topics, TopicInfo::write);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let broker_name = r.str16("broker_name")?.to_owned();
        let role = r.str16("role")?.to_owned();
        let flush_disk_type = r.str16("flush_disk_type")?.to_owned();
        let shard_ports = decode_list(&mut r, "shard_count", 2, |r| r.u16("shard_port"))?;
        let topics = decode_list(&mut r, "topic_count", TopicInfo::MIN_BYTES, TopicInfo::read)?;
        r.finish()?;
        Ok(Metadata {
            broker_name,
            role,
            flush_disk_type,
            shard_ports,
            topics,
        })
    }
}

/// TopicCreate request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicCreate {
    pub name: String,
    pub queue_count: u32,
}

impl TopicCreate {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out).str16(&self.name).u32(self.queue_count);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = TopicCreate {
            name: r.str16("name")?.to_owned(),
            queue_count: r.u32("queue_count")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// A body that is a single name: TopicDelete, TopicDescribe, GroupDescribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub name: String,
}

impl Name {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out).str16(&self.name);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = Name {
            name: r.str16("name")?.to_owned(),
        };
        r.finish()?;
        Ok(v)
    }
}

/// TopicList response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicList {
    pub topics: Vec<TopicInfo>,
}

impl TopicList {
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_list(out, &self.topics, TopicInfo::write);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let topics = decode_list(&mut r, "topic_count", TopicInfo::MIN_BYTES, TopicInfo::read)?;
        r.finish()?;
        Ok(TopicList { topics })
    }
}

/// TopicDescribe response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    pub topic: TopicInfo,
    pub queues: Vec<QueueStats>,
}

impl TopicDescription {
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.topic.write(&mut Writer::new(out));
        encode_list(out, &self.queues, QueueStats::write);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let topic = TopicInfo::read(&mut r)?;
        let queues = decode_list(&mut r, "queue_count", QueueStats::BYTES, QueueStats::read)?;
        r.finish()?;
        Ok(TopicDescription { topic, queues })
    }
}

/// GroupCommit request: a consumer group's next offset to consume for one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
}

impl GroupCommit {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str16(&self.group)
            .str16(&self.topic)
            .u32(self.queue)
            .u64(self.offset);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = GroupCommit {
            group: r.str16("group")?.to_owned(),
            topic: r.str16("topic")?.to_owned(),
            queue: r.u32("queue")?,
            offset: r.u64("offset")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// GroupFetch request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFetch {
    pub group: String,
    pub topic: String,
    pub queue: u32,
}

impl GroupFetch {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str16(&self.group)
            .str16(&self.topic)
            .u32(self.queue);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = GroupFetch {
            group: r.str16("group")?.to_owned(),
            topic: r.str16("topic")?.to_owned(),
            queue: r.u32("queue")?,
        };
        r.finish()?;
        Ok(v)
    }
}

/// GroupFetch response: the committed offset, if the group ever committed one for the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    pub offset: Option<u64>,
}

impl GroupOffset {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self.offset {
            Some(o) => w.u8(1).u64(o),
            None => w.u8(0).u64(0),
        };
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let present = r.u8("present")?;
        let offset = r.u64("offset")?;
        r.finish()?;
        match present {
            0 => Ok(GroupOffset { offset: None }),
            1 => Ok(GroupOffset {
                offset: Some(offset),
            }),
            _ => Err(DecodeError::Invalid {
                field: "present",
                reason: "must be 0 or 1",
            }),
        }
    }
}

/// One row of a GroupDescribe response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupQueueLag {
    pub topic: String,
    pub queue: u32,
    pub committed_offset: u64,
    pub max_offset: u64,
}

impl GroupQueueLag {
    pub fn lag(&self) -> u64 {
        self.max_offset.saturating_sub(self.committed_offset)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.str16(&self.topic)
            .u32(self.queue)
            .u64(self.committed_offset)
            .u64(self.max_offset);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(GroupQueueLag {
            topic: r.str16("topic")?.to_owned(),
            queue: r.u32("queue")?,
            committed_offset: r.u64("committed_offset")?,
            max_offset: r.u64("max_offset")?,
        })
    }
}

/// GroupDescribe response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub queues: Vec<GroupQueueLag>,
}

impl GroupDescription {
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out).str16(&self.group);
        encode_list(out, &self.queues, GroupQueueLag::write);
    }
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let group = r.str16("group")?.to_owned();
        let queues = decode_list(&mut r, "queue_count", 2 + 4 + 8 + 8, GroupQueueLag::read)?;
        r.finish()?;
        Ok(GroupDescription { group, queues })
    }
}

/// Decodes an error response body (any status for which `Status::has_body` is false).
pub fn decode_error_message(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
