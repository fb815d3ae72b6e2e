//! Output shared by the client subcommands: JSON line objects and aligned text tables.
//!
//! JSON lines are written and flushed one at a time so a pipeline downstream sees each
//! acknowledgement or message as soon as it exists.

use crate::client::ProduceResult;
use crate::protocol::message::PulledMessage;
use base64::Engine;
use serde::Serialize;
use std::io::Write;

/// One produce acknowledgement (or failure) in `--format json`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ProduceLine {
    /// 1-based number of the input line (or synthetic message).
    pub line: u64,
    /// The broker's status name, or `ERROR` when the message was not stored.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProduceLine {
    pub fn new(line: u64, result: &Result<ProduceResult, String>) -> Self {
        match result {
            Ok(r) => ProduceLine {
                line,
                status: r.status.name().to_string(),
                queue: Some(r.response.queue),
                offset: Some(r.response.base_offset),
                error: None,
            },
            Err(e) => ProduceLine {
                line,
                status: "ERROR".to_string(),
                queue: None,
                offset: None,
                error: Some(e.clone()),
            },
        }
    }
}

/// One consumed message in `--format json`. Bytes that are not UTF-8 go out as base64 under a
/// `_base64` name so that no byte is altered.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ConsumeLine {
    pub queue: u32,
    pub offset: u64,
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Store timestamp, ms since the Unix epoch.
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The message's properties as text, when it has any (a retried or dead message carries
    /// its origin and attempts there: `RECONSUME_TIMES=2\nORIGIN_TOPIC=...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<String>,
}

impl ConsumeLine {
    pub fn new(queue: u32, m: &PulledMessage) -> Self {
        let (key, key_base64) = match std::str::from_utf8(&m.key) {
            _ if m.key.is_empty() => (None, None),
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64_text(&m.key))),
        };
        let (body, body_base64) = match std::str::from_utf8(&m.body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64_text(&m.body))),
        };
        ConsumeLine {
            queue,
            offset: m.queue_offset,
            key,
            key_base64,
            timestamp: m.store_timestamp_ms,
            body,
            body_base64,
            properties: (!m.properties.is_empty())
                .then(|| String::from_utf8_lossy(&m.properties).into_owned()),
        }
    }
}

fn base64_text(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn to_json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("output structs serialize")
}

/// Writes one line to stdout and flushes it; a closed stdout (e.g. `| head`) is an error the
/// caller stops on.
pub fn emit(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// Left-aligned columns, each as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}
