//! `ringmq admin delete-expired|retention`: run every shard's retention pass now (outside the
//! `delete_when` hours; age and disk pressure still decide what goes) and print what it
//! deleted, or print the retention state without deleting anything.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::protocol::admin::Retention;
use crate::protocol::message::{DeleteExpiredRequest, RetentionStatusRequest};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Delete expired commitlog segments now, whatever the hour; prints each one deleted.
    DeleteExpired,
    /// Per shard: log head, segments, disk use and whether appends are refused.
    Retention,
}

pub fn run(args: AdminArgs) -> Result<(), String> {
    let mut client = args.broker.connect()?;
    // With --namesrv, the master it found, not the unused --broker default.
    let addr = client.bootstrap_addr().to_string();
    let retention = match args.command {
        AdminCommand::DeleteExpired => client.call(&DeleteExpiredRequest {}),
        AdminCommand::Retention => client.call(&RetentionStatusRequest {}),
    }
    .map_err(|e| describe(&addr, &e))?;
    match args.broker.format {
        Format::Json => emit(&serde_json::to_string(&retention).expect("retention serializes")),
        Format::Text => {
            print!("{}", retention_text(&retention));
            Ok(())
        }
    }
}

pub fn retention_text(retention: &Retention) -> String {
    let deleted: Vec<Vec<String>> = retention
        .shards
        .iter()
        .flat_map(|s| {
            s.deleted.iter().map(move |d| {
                vec![
                    s.shard.to_string(),
                    d.file.clone(),
                    d.start_offset.to_string(),
                    d.bytes.to_string(),
                    d.reason.clone(),
                ]
            })
        })
        .collect();
    let mut out = if deleted.is_empty() {
        "deleted nothing\n\n".to_string()
    } else {
        let mut out = table(&["SHARD", "DELETED", "START", "BYTES", "REASON"], &deleted);
        out.push('\n');
        out
    };
    let rows: Vec<Vec<String>> = retention
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard.to_string(),
                s.log_head.to_string(),
                s.max_offset.to_string(),
                s.segments.to_string(),
                format!("{:.1}%", s.disk_used_ratio * 100.0),
                if s.appends_refused {
                    "refused (DISK_FULL)".to_string()
                } else {
                    "accepted".to_string()
                },
                s.deleted_segments_total.to_string(),
                s.reclaimed_bytes_total.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SHARD",
            "LOG_HEAD",
            "MAX_OFFSET",
            "SEGMENTS",
            "DISK_USED",
            "APPENDS",
            "DELETED_TOTAL",
            "RECLAIMED_BYTES",
        ],
        &rows,
    ));
    for s in &retention.shards {
        if let Some(error) = &s.error {
            out.push_str(&format!(
                "shard {}: the pass stopped early: {error}\n",
                s.shard
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::admin::{DeletedSegment, ShardRetention};

    #[test]
    fn text_names_each_deleted_segment_and_the_state() {
        let retention = Retention {
            shards: vec![ShardRetention {
                shard: 0,
                log_head: 65536,
                max_offset: 100_000,
                segments: 2,
                disk_used_ratio: 0.5,
                appends_refused: true,
                deleted: vec![DeletedSegment {
                    file: "/data/shard-0/commitlog/00000000000000000000".to_string(),
                    start_offset: 0,
                    bytes: 65536,
                    reason: "expired".to_string(),
                }],
                deleted_segments_total: 3,
                reclaimed_bytes_total: 196_608,
                error: None,
            }],
        };
        let text = retention_text(&retention);
        assert!(text.contains("00000000000000000000"), "{text}");
        assert!(text.contains("expired"), "{text}");
        assert!(text.contains("50.0%"), "{text}");
        assert!(text.contains("refused (DISK_FULL)"), "{text}");
        let empty = Retention {
            shards: vec![ShardRetention {
                deleted: Vec::new(),
                ..retention.shards[0].clone()
            }],
        };
        assert!(retention_text(&empty).starts_with("deleted nothing"));
    }
}
