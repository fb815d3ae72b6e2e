//! `ringmq group dlq GROUP`: the group's dead letters, read from `%DLQ%<group>` from its start
//! to its end (it does not wait for more; `ringmq consume %DLQ%<group> --follow` does).

use super::app::{describe, BrokerArgs, Format};
use super::consume::{PULL_MAX_BYTES, PULL_MAX_MESSAGES};
use super::output::{emit, table, to_json_line};
use crate::client::retry::{dlq_topic, Delivery};
use crate::client::{Client, ClientError};
use crate::protocol::message::PulledMessage;
use crate::protocol::Status;
use serde::Serialize;

/// Characters of a body shown in the text listing (the JSON has the whole body).
const BODY_PREVIEW_CHARS: usize = 40;

#[derive(Serialize)]
struct DeadLetter {
    queue: u32,
    offset: u64,
    origin_topic: Option<String>,
    origin_queue: Option<u32>,
    origin_offset: Option<u64>,
    origin_message_id: Option<String>,
    /// Deliveries that were rejected.
    attempts: u32,
    /// Store timestamp of the dead letter, ms since the Unix epoch.
    timestamp: u64,
    body: String,
}

impl DeadLetter {
    fn new(queue: u32, m: &PulledMessage) -> DeadLetter {
        let delivery = Delivery::of(m);
        let (origin_topic, origin_queue, origin_offset) = match delivery.origin {
            Some((topic, queue, offset)) => (Some(topic), Some(queue), Some(offset)),
            None => (None, None, None),
        };
        DeadLetter {
            queue,
            offset: m.queue_offset,
            origin_topic,
            origin_queue,
            origin_offset,
            origin_message_id: delivery.origin_message_id,
            attempts: delivery.reconsume_times,
            timestamp: m.store_timestamp_ms,
            body: String::from_utf8_lossy(&m.body).into_owned(),
        }
    }

    fn row(&self) -> Vec<String> {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let mut preview: String = self.body.chars().take(BODY_PREVIEW_CHARS).collect();
        if self.body.chars().count() > BODY_PREVIEW_CHARS {
            preview.push('…');
        }
        vec![
            self.queue.to_string(),
            self.offset.to_string(),
            or_dash(self.origin_topic.clone()),
            or_dash(self.origin_queue.map(|q| q.to_string())),
            or_dash(self.origin_offset.map(|o| o.to_string())),
            self.attempts.to_string(),
            preview.replace(['\n', '\t'], " "),
        ]
    }
}

pub fn run(broker: &BrokerArgs, group: &str) -> Result<(), String> {
    let mut client = broker.connect()?;
    // With --namesrv, the master it found, not the unused --broker default.
    let addr = client.bootstrap_addr().to_string();
    let letters = match read_all(&mut client, &dlq_topic(group)) {
        Ok(letters) => letters,
        // No reject of this group ever went to the dead-letter topic.
        Err(e) if e.status() == Some(Status::TopicNotFound) => Vec::new(),
        Err(e) => return Err(describe(&addr, &e)),
    };
    match broker.format {
        Format::Json => {
            for letter in &letters {
                emit(&to_json_line(letter))?;
            }
            Ok(())
        }
        Format::Text => {
            let rows: Vec<_> = letters.iter().map(DeadLetter::row).collect();
            print!(
                "group {group}: {} dead letters in {}\n{}",
                letters.len(),
                dlq_topic(group),
                table(
                    &[
                        "QUEUE",
                        "OFFSET",
                        "ORIGIN_TOPIC",
                        "ORIGIN_QUEUE",
                        "ORIGIN_OFFSET",
                        "ATTEMPTS",
                        "BODY"
                    ],
                    &rows
                )
            );
            Ok(())
        }
    }
}

/// Every message of every queue of `topic`, up to the end each queue shows now.
fn read_all(client: &mut Client, topic: &str) -> Result<Vec<DeadLetter>, ClientError> {
    let description = client.describe_topic(topic)?;
    let mut letters = Vec::new();
    for queue in &description.queues {
        let mut offset = queue.min_offset;
        while offset < queue.max_offset {
            let pulled = client.pull(
                topic,
                queue.queue,
                offset,
                PULL_MAX_MESSAGES,
                PULL_MAX_BYTES,
                0,
            )?;
            if pulled.messages.is_empty() {
                break;
            }
            for m in &pulled.messages {
                letters.push(DeadLetter::new(queue.queue, m));
            }
            offset = pulled.summary.next_offset.max(offset + 1);
        }
    }
    Ok(letters)
}
