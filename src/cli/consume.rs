//! `ringmq consume TOPIC`: pulls from one or all queues of a topic.
//!
//! Each round sends one pull per queue (pipelined, so queues on different shards wait at the
//! same time) and prints what comes back in queue order. Rounds run with no wait while messages
//! keep coming; once a round comes back empty the next one long-polls for `--max-wait-ms`. An
//! empty long-poll round ends the command unless `--follow` is given.
//!
//! `--group G` (without `--queue` or `--from`) reads as a member of the consumer group through
//! the client's [`GroupConsumer`]: the group's queues are shared with its other members
//! (`--broadcast`: every member reads all of them), each message is printed or handed to
//! `--exec CMD`, and what was processed is committed with the next pull. With `--queue` or
//! `--from` the group is only a set of offsets, read and committed as before, with no
//! membership.
//!
//! `--broker MASTER,SLAVE...` reads through a [`FailoverClient`]: from the master while it
//! answers, from the next reachable broker of the list while it does not, and back to the master
//! when it returns. The cursors are this command's own, so a switch neither skips nor repeats.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, to_json_line, ConsumeLine};
use crate::client::reset::{self, OffsetReset, OffsetResetApplied};
use crate::client::{
    AllocationStrategy, Client, ClientError, ClientOptions, Delivery, Disposition, FailoverClient,
    GroupConsumer, GroupMode, GroupOptions, GroupTransport, PullResult,
};
use crate::protocol::message::{GroupCommit, GroupFetch, PullRequest, PulledMessage, QueueRef};
use crate::protocol::{FailsOver, Status};
use clap::Args;
use std::str::FromStr;

/// Messages asked for per pull: enough to amortise the round trip, small enough that one
/// response stays far below the frame limit at typical message sizes.
pub const PULL_MAX_MESSAGES: u32 = 256;
/// Bytes asked for per pull; bounds one response frame.
pub const PULL_MAX_BYTES: u32 = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
}

impl FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => s
                .parse::<u64>()
                .map(StartFrom::Offset)
                .map_err(|_| format!("`{s}` is not `earliest`, `latest` or a queue offset")),
        }
    }
}

/// `--queue` and `--from` read a group's offsets without membership: a member's flags would
/// be ignored there (and `--exec` would commit past messages it never ran), so they refuse.
const MEMBER_CONFLICTS: [&str; 2] = ["queue", "from"];

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    pub topic: String,
    /// Where to start: earliest, latest or a queue offset. Default: the group's committed
    /// offset with --group, else earliest.
    #[arg(long)]
    pub from: Option<StartFrom>,
    /// Queue to read (default: all queues).
    #[arg(long)]
    pub queue: Option<u32>,
    /// Consumer group: start from its committed offsets and commit after each batch.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after N messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Long-poll wait per pull when the queues are drained.
    #[arg(long, default_value_t = 1000)]
    pub max_wait_ms: u32,
    /// Keep long-polling instead of exiting when no message arrives.
    #[arg(long)]
    pub follow: bool,
    /// With --group: every member reads every message (offsets kept per client id).
    #[arg(long, requires = "group", conflicts_with_all = MEMBER_CONFLICTS)]
    pub broadcast: bool,
    /// With --group: one message at a time per queue, in order, under a broker-side queue
    /// lock leased for the member's session.
    #[arg(long, requires = "group", conflicts_with_all = MEMBER_CONFLICTS)]
    pub orderly: bool,
    /// With --group: how the group's queues are divided among its members.
    #[arg(
        long,
        value_enum,
        default_value_t = StrategyArg::Averagely,
        requires = "group",
        conflicts_with_all = MEMBER_CONFLICTS
    )]
    pub strategy: StrategyArg,
    /// With --group: the member's session; the broker's default (3000) when not given.
    #[arg(long, requires = "group", conflicts_with_all = MEMBER_CONFLICTS)]
    pub session_timeout_ms: Option<u32>,
    /// With --group: the member's name in `group describe` (default HOST-PID).
    #[arg(long, requires = "group", conflicts_with_all = MEMBER_CONFLICTS)]
    pub client_id: Option<String>,
    /// With --group: run CMD with `sh -c` per message instead of printing it: the body on
    /// its stdin, RINGMQ_TOPIC, RINGMQ_QUEUE, RINGMQ_OFFSET, RINGMQ_GROUP, RINGMQ_MEMBER and
    /// RINGMQ_RECONSUME_TIMES (0 on a first delivery) in its environment. Exit 0
    /// acknowledges the message; any other exit rejects it: it comes back later through
    /// `%RETRY%<group>`, or becomes a dead letter in `%DLQ%<group>`.
    #[arg(long, requires = "group", conflicts_with_all = MEMBER_CONFLICTS)]
    pub exec: Option<String>,
    /// With --group: rejections after which a message is a dead letter (default: the
    /// broker's `max_reconsume_times`).
    #[arg(long, requires = "group")]
    pub max_reconsume_times: Option<u32>,
    /// Where to go when an offset is out of the queue's range (retention deleted it): the
    /// queue's minimum (earliest) or its end (latest). The reset is printed to stderr.
    #[arg(long, default_value = "earliest", value_parser = parse_offset_reset)]
    pub offset_reset: OffsetReset,
}

fn parse_offset_reset(text: &str) -> Result<OffsetReset, String> {
    OffsetReset::parse(text).ok_or_else(|| format!("`{text}` is not earliest or latest"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    Averagely,
    ByCircle,
    ConsistentHash,
}

/// One queue being read, and the next offset to read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    queue: u32,
    offset: u64,
    committed: u64,
}

/// Where a consume reads from: one broker, or a broker group with failover.
enum Source {
    Single(Box<Client>),
    Group(FailoverClient),
}

impl Source {
    fn describe_topic(
        &mut self,
        topic: &str,
    ) -> Result<crate::protocol::message::TopicDescription, ClientError> {
        match self {
            Source::Single(c) => c.describe_topic(topic),
            Source::Group(c) => c.describe_topic(topic),
        }
    }
    /// A request that may fail over (a consumer's reads and commits), through the failover
    /// client when consuming from a group.
    fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        match self {
            Source::Single(c) => c.call(request),
            Source::Group(c) => c.call(request),
        }
    }
}

pub fn run(args: ConsumeArgs) -> Result<(), String> {
    let member_of = args
        .group
        .clone()
        .filter(|_| args.queue.is_none() && args.from.is_none());
    if let Some(namesrv) = args.broker.namesrv.clone() {
        return match member_of {
            Some(group) => super::routed::consume_as_members(&args, &namesrv, &group),
            None => super::routed::consume(&args, &namesrv),
        };
    }
    if let Some(group) = member_of {
        return run_member(&args, group);
    }
    let mut client = if args.broker.broker.contains(',') {
        Source::Group(
            FailoverClient::connect_list(&args.broker.broker, ClientOptions::default())
                .map_err(|e| describe(&args.broker.broker, &e))?,
        )
    } else {
        Source::Single(Box::new(args.broker.connect()?))
    };
    let fail = |e: ClientError| describe(&args.broker.broker, &e);
    let mut cursors = start_cursors(&mut client, &args).map_err(fail)?;
    let mut printed = 0u64;
    let mut wait_ms = 0;
    loop {
        let round = pull_round(&mut client, &args, &mut cursors, wait_ms, &mut printed)?;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        wait_ms = match (round, wait_ms) {
            (0, 0) => args.max_wait_ms,
            (0, _) if !args.follow => return Ok(()),
            (0, waited) => waited,
            _ => 0,
        };
    }
}

fn start_cursors(client: &mut Source, args: &ConsumeArgs) -> Result<Vec<Cursor>, ClientError> {
    let description = client.describe_topic(&args.topic)?;
    let queues: Vec<_> = description
        .queues
        .iter()
        .filter(|q| args.queue.is_none_or(|wanted| wanted == q.queue))
        .collect();
    if queues.is_empty() {
        return Err(ClientError::Status {
            status: Status::QueueNotFound,
            message: format!(
                "topic `{}` has no queue {}",
                args.topic,
                args.queue.map_or("at all".to_string(), |q| q.to_string())
            ),
        });
    }
    let mut cursors = Vec::with_capacity(queues.len());
    for q in queues {
        let offset = match (args.from, &args.group) {
            (Some(StartFrom::Earliest), _) => q.min_offset,
            (Some(StartFrom::Latest), _) => q.max_offset,
            (Some(StartFrom::Offset(o)), _) => o,
            (None, Some(group)) => client
                .call(&GroupFetch {
                    group: group.clone(),
                    topic: args.topic.clone(),
                    queue: q.queue,
                })?
                .offset
                .unwrap_or(q.min_offset),
            (None, None) => q.min_offset,
        };
        cursors.push(Cursor {
            queue: q.queue,
            offset,
            committed: offset,
        });
    }
    Ok(cursors)
}

/// One pull per queue; returns how many messages were printed.
fn pull_round(
    client: &mut Source,
    args: &ConsumeArgs,
    cursors: &mut [Cursor],
    wait_ms: u32,
    printed: &mut u64,
) -> Result<u64, String> {
    let fail = |e: ClientError| describe(&args.broker.broker, &e);
    let mut tickets = Vec::with_capacity(cursors.len());
    if let Source::Single(client) = client {
        for cursor in cursors.iter() {
            let request = PullRequest {
                topic: args.topic.clone(),
                queue: cursor.queue,
                offset: cursor.offset,
                max_messages: PULL_MAX_MESSAGES,
                max_bytes: PULL_MAX_BYTES,
                max_wait_ms: wait_ms,
            };
            tickets.push(Some(client.send_pull(&request).map_err(fail)?));
        }
    } else {
        // A failover client pulls one queue at a time, so a failed pull can be re-sent to
        // another broker. A long poll is split across the queues to bound the round.
        tickets.resize(cursors.len(), None);
    }
    let group_wait = wait_ms / cursors.len().max(1) as u32;
    let mut round = 0;
    for (cursor, ticket) in cursors.iter_mut().zip(tickets) {
        let pulled = match (&mut *client, ticket) {
            (Source::Single(client), Some(ticket)) => client.wait_pull(ticket, wait_ms),
            (Source::Group(client), _) => client.pull(
                &args.topic,
                cursor.queue,
                cursor.offset,
                PULL_MAX_MESSAGES,
                PULL_MAX_BYTES,
                group_wait,
            ),
            (Source::Single(_), None) => unreachable!("every single-broker pull has a ticket"),
        };
        match pulled {
            Ok(result) => round += print_batch(args, cursor, &result, printed)?,
            Err(e) if e.status() == Some(Status::OffsetOutOfRange) => {
                let policy = args.offset_reset;
                let reset = match reset::reset_for(&e, policy, cursor.queue, cursor.offset) {
                    Some(reset) => reset,
                    // A broker that does not carry the range: ask for it.
                    None => {
                        let stats = client
                            .call(&QueueRef {
                                topic: args.topic.clone(),
                                queue: cursor.queue,
                            })
                            .map_err(fail)?;
                        OffsetResetApplied::new(
                            policy,
                            cursor.queue,
                            cursor.offset,
                            stats.min_offset,
                            stats.max_offset,
                        )
                    }
                };
                eprintln!("{reset}");
                cursor.offset = reset.to;
            }
            Err(e) => return Err(fail(e)),
        }
        if let Some(group) = &args.group {
            if cursor.offset != cursor.committed {
                client
                    .call(&GroupCommit {
                        group: group.clone(),
                        topic: args.topic.clone(),
                        queue: cursor.queue,
                        offset: cursor.offset,
                    })
                    .map_err(fail)?;
                cursor.committed = cursor.offset;
            }
        }
    }
    Ok(round)
}

/// Prints a batch up to the `--count` limit and advances the cursor past what was printed.
fn print_batch(
    args: &ConsumeArgs,
    cursor: &mut Cursor,
    result: &PullResult,
    printed: &mut u64,
) -> Result<u64, String> {
    let mut count = 0;
    for m in &result.messages {
        if args.count.is_some_and(|n| *printed >= n) {
            return Ok(count);
        }
        emit(&format_message(args.broker.format, cursor.queue, m))?;
        cursor.offset = m.queue_offset + 1;
        *printed += 1;
        count += 1;
    }
    cursor.offset = cursor.offset.max(result.summary.next_offset);
    Ok(count)
}

pub fn format_message(format: Format, queue: u32, m: &PulledMessage) -> String {
    match format {
        Format::Json => to_json_line(&ConsumeLine::new(queue, m)),
        Format::Text => {
            let key = if m.key.is_empty() {
                "-".into()
            } else {
                String::from_utf8_lossy(&m.key)
            };
            format!(
                "{queue}\t{}\t{key}\t{}",
                m.queue_offset,
                String::from_utf8_lossy(&m.body)
            )
        }
    }
}

/// `consume --group G`: reads as a member of the group until `--count` messages, or (without
/// `--follow`) until nothing arrived for `--max-wait-ms`, then commits and leaves.
fn run_member(args: &ConsumeArgs, group: String) -> Result<(), String> {
    let options = member_options(args, &group);
    if args.broker.broker.contains(',') {
        let client = FailoverClient::connect_list(&args.broker.broker, ClientOptions::default())
            .map_err(|e| describe(&args.broker.broker, &e))?;
        consume_as_member(GroupConsumer::new(client, options), args)
    } else {
        consume_as_member(GroupConsumer::new(args.broker.connect()?, options), args)
    }
}

/// The group consumer's options from the member flags.
pub(super) fn member_options(args: &ConsumeArgs, group: &str) -> GroupOptions {
    let mut options = GroupOptions::new(group, &args.topic);
    if let Some(id) = &args.client_id {
        options.client_id = id.clone();
    }
    options.mode = if args.broadcast {
        GroupMode::Broadcasting
    } else {
        GroupMode::Clustering
    };
    options.strategy = match args.strategy {
        StrategyArg::Averagely => AllocationStrategy::Averagely,
        StrategyArg::ByCircle => AllocationStrategy::ByCircle,
        StrategyArg::ConsistentHash => AllocationStrategy::ConsistentHash,
    };
    options.orderly = args.orderly;
    options.session_timeout_ms = args.session_timeout_ms.unwrap_or(0);
    options.max_reconsume_times = args.max_reconsume_times.unwrap_or(0);
    options.max_wait_ms = args.max_wait_ms;
    if args.exec.is_some() {
        // A command per message is slow: a small batch keeps the uncommitted tail (what a
        // crash redelivers) and the time between heartbeats short.
        options.max_messages = 16;
    }
    options
}

pub(super) fn consume_as_member<T: GroupTransport>(
    mut consumer: GroupConsumer<T>,
    args: &ConsumeArgs,
) -> Result<(), String> {
    let fail = |e: ClientError| describe(args.broker.target(), &e);
    let group = args.group.clone().unwrap_or_default();
    let mut printed = 0u64;
    let mut last_message = std::time::Instant::now();
    let mut failure: Option<String> = None;
    let stop = stop_on_signals();
    let result = loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Interrupted: commit and leave below, so the queues move at once and nothing
            // processed is delivered again.
            break Ok(());
        }
        let limit = args.count.map_or(u64::MAX, |n| n - printed);
        let mut handler = |d: &Delivery<'_>| match &args.exec {
            Some(command) => run_exec(command, &group, d),
            None => {
                if let Err(e) = emit(&format_message(args.broker.format, d.queue, d.message)) {
                    failure.get_or_insert(e);
                }
                Disposition::Ack
            }
        };
        let polled = match consumer.poll(limit, &mut handler) {
            Ok(polled) => polled,
            Err(e) => break Err(fail(e)),
        };
        if let Some(e) = failure.take() {
            break Err(e);
        }
        printed += polled.delivered;
        if polled.delivered > 0 {
            last_message = std::time::Instant::now();
        }
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let idle_for = last_message.elapsed().as_millis() as u64;
        if !args.follow && polled.idle && idle_for >= args.max_wait_ms as u64 {
            break Ok(());
        }
    };
    let closed = consumer.close().map_err(fail);
    let stats = consumer.stats();
    eprintln!(
        "group {group}: delivered {}, joins {}, rebalances {}, refused {}, rejected {} (dead {})",
        stats.delivered, stats.joins, stats.rebalances, stats.refused, stats.rejected, stats.dead
    );
    result.and(closed)
}

/// Longest pause between two looks at a running `--exec` command: its exit is seen within
/// this, and heartbeats (one per interval, a second or so) go out on time.
const EXEC_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits for the command's exit, renewing the member's session while it runs, so a command
/// slower than the session does not lose its queue (and have its message redelivered to the
/// next owner, forever). The first looks come quickly so a fast command costs little.
fn wait_keeping_alive(
    child: &mut std::process::Child,
    d: &Delivery<'_>,
) -> std::io::Result<std::process::ExitStatus> {
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        d.keep_alive();
        std::thread::sleep(pause);
        pause = (pause * 2).min(EXEC_POLL_MAX);
    }
}

/// A flag SIGINT and SIGTERM set, so a member stops at the end of its poll and leaves
/// cleanly (committing); a second signal ends the process at once, for a member stuck on an
/// unreachable broker. Without handlers the signal kills it with its tail uncommitted and its
/// queues stalled for a session.
fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registration fails only for a forbidden signal; these two never are.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone());
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}

/// Runs `--exec` for one message: exit 0 acknowledges it, anything else (a failed start
/// included) rejects it.
fn run_exec(command: &str, group: &str, d: &Delivery<'_>) -> Disposition {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("RINGMQ_TOPIC", d.topic)
        .env("RINGMQ_QUEUE", d.queue.to_string())
        .env("RINGMQ_OFFSET", d.message.queue_offset.to_string())
        .env("RINGMQ_GROUP", group)
        .env("RINGMQ_MEMBER", d.member_id)
        .env(
            "RINGMQ_RECONSUME_TIMES",
            crate::client::retry::Delivery::of(d.message)
                .reconsume_times
                .to_string(),
        )
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("--exec: cannot start `sh -c {command}`: {e}");
            return Disposition::Reject;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin closes the pipe early: not a failure.
        let _ = stdin.write_all(&d.message.body);
    }
    match wait_keeping_alive(&mut child, d) {
        Ok(status) if status.success() => Disposition::Ack,
        Ok(status) => {
            eprintln!(
                "--exec: {status} for {}/{} offset {}: rejected",
                d.topic, d.queue, d.message.queue_offset
            );
            Disposition::Reject
        }
        Err(e) => {
            eprintln!("--exec: waiting for `sh -c {command}`: {e}");
            Disposition::Reject
        }
    }
}
