//! Client commands through name servers (`--namesrv ADDRS` or `RINGMQ_NAMESRV`, in place of
//! `--broker`): the routes come from [`RouteCache`], and a topic is the union of its queues on
//! every broker group.
//!
//! - `topic create` creates the topic with `--queues N` on every master of the cluster (or of
//!   `--groups`), so it has N queues per group; `list`, `describe` and `delete` cover every
//!   group (`describe` names each queue's group).
//! - `produce` sends through [`ClusterProducer`], one message per request (no window: each
//!   message's resend decision needs its outcome first), and reports the group that took it.
//! - `consume` reads every queue of every group through [`ClusterConsumer`], from a slave
//!   while a group's master is down. `consume --group G` as a member runs one
//!   [`GroupConsumer`] per broker group, each joining that group's own coordinator (each
//!   broker group coordinates the queues it holds), so `--count` applies per broker group.
//! - Commands about one broker (`stats`, `admin`, `group`, `cluster status`) use the master of
//!   the only group listed, and refuse when there are several (name one with `--broker`).

use super::app::{describe, BrokerArgs, Format};
use super::consume::{self, ConsumeArgs, StartFrom, PULL_MAX_BYTES, PULL_MAX_MESSAGES};
use super::output::{emit, table, ConsumeLine};
use super::produce::{synthetic_body, ProduceArgs};
use super::topic::TopicCommand;
use crate::client::cluster::{
    ClusterConsumer, ClusterConsumerOptions, ClusterProducer, ClusterProducerOptions, ClusterRoute,
    FailureClass, QueueRef, RouteCache,
};
use crate::client::{reset, Client, ClientError, ClientOptions, FailoverClient, GroupConsumer};
use crate::protocol::message::{MessageRef, PulledMessage, TopicDescription, TopicListRequest};
use crate::protocol::Status;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The routes for `args`, fetched once; refuses routes that span several clusters unless
/// `--cluster` picked one.
pub fn routes(args: &BrokerArgs, namesrv: &str) -> Result<RouteCache, String> {
    let fail = |e: ClientError| describe(namesrv, &e);
    let mut cache = RouteCache::connect(namesrv, &args.cluster_name).map_err(fail)?;
    let route = cache.route().map_err(fail)?;
    if route.is_empty() {
        return Err(format!("the name servers at {namesrv} list no broker"));
    }
    let mut clusters: Vec<&str> = route.groups.values().map(|g| g.cluster.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    if clusters.len() > 1 {
        return Err(format!(
            "the name servers list several clusters ({}): pick one with --cluster",
            clusters.join(", ")
        ));
    }
    Ok(cache)
}

/// A client of the master of the only broker group listed.
pub fn single_master(args: &BrokerArgs, namesrv: &str) -> Result<Client, String> {
    let mut cache = routes(args, namesrv)?;
    let route = cache.route().map_err(|e| describe(namesrv, &e))?;
    let masters: Vec<(String, String)> = route
        .groups
        .values()
        .filter_map(|g| {
            g.master
                .as_ref()
                .map(|m| (g.name.clone(), m.listen.clone()))
        })
        .collect();
    match masters.as_slice() {
        [(_, listen)] if route.groups.len() == 1 => {
            Client::connect(listen).map_err(|e| describe(listen, &e))
        }
        _ => Err(format!(
            "this command talks to one broker and the name servers list {} broker groups ({}): \
             name the broker with --broker",
            route.groups.len(),
            route
                .groups
                .values()
                .map(|g| match &g.master {
                    Some(m) => format!("{} at {}", g.name, m.listen),
                    None => format!("{} without master", g.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A reader of one group: its brokers, the master first.
fn group_reader(route: &ClusterRoute, group: &str) -> Result<FailoverClient, String> {
    let brokers = route.groups[group].brokers();
    FailoverClient::connect(&brokers, ClientOptions::default())
        .map_err(|e| describe(&brokers.join(","), &e))
}

/// `topic create|list|describe|delete` over every group.
pub fn topic(args: &BrokerArgs, namesrv: &str, command: TopicCommand) -> Result<(), String> {
    let mut cache = routes(args, namesrv)?;
    let route = cache.route().map_err(|e| describe(namesrv, &e))?.clone();
    match command {
        TopicCommand::Create {
            name,
            queues,
            groups,
        } => topic_create(args, &route, &name, queues, groups),
        TopicCommand::List => topic_list(args, &route),
        TopicCommand::Describe { name } => topic_describe(args, &route, &name),
        TopicCommand::Delete { name } => topic_delete(args, &route, &name),
    }
}

/// Creates `name` with `queues` queues on the master of every group of `groups` (empty: all).
fn topic_create(
    args: &BrokerArgs,
    route: &ClusterRoute,
    name: &str,
    queues: u32,
    groups: Vec<String>,
) -> Result<(), String> {
    let targets: Vec<String> = if groups.is_empty() {
        route.groups.keys().cloned().collect()
    } else {
        groups
    };
    let mut created = Vec::new();
    for group in &targets {
        let Some(route_group) = route.groups.get(group) else {
            return Err(format!("broker group `{group}` is not in the routes"));
        };
        let Some(master) = &route_group.master else {
            return Err(format!(
                "broker group `{group}` has no master now: cannot create `{name}` there"
            ));
        };
        let mut client =
            Client::connect(&master.listen).map_err(|e| describe(&master.listen, &e))?;
        let fail = |e: ClientError| format!("group {group}: {}", describe(&master.listen, &e));
        let info = match client.create_topic(name, queues) {
            Ok(info) => info,
            // Creating on several groups is not atomic: a rerun after a create that failed
            // partway finds the topic on the groups done before, which is fine when it has the
            // queue count asked for.
            Err(e) if e.status() == Some(Status::TopicExists) => {
                let existing = client.describe_topic(name).map_err(fail)?.topic;
                if existing.queue_count() != queues {
                    return Err(format!(
                        "group {group}: TOPIC_EXISTS: `{name}` has {} queues there, not {queues}",
                        existing.queue_count()
                    ));
                }
                existing
            }
            Err(e) => return Err(fail(e)),
        };
        created.push((group.clone(), info));
    }
    match args.format {
        Format::Json => {
            let groups: Vec<_> = created
                .iter()
                .map(|(g, info)| {
                    json!({"group": g, "topic_id": info.topic_id,
                           "queues": info.queue_count(), "queue_shards": info.queue_shards})
                })
                .collect();
            emit(&json!({"name": name, "groups": groups}).to_string())
        }
        Format::Text => emit(&format!(
            "created topic {name} with {queues} queues on each of {} groups ({})",
            created.len(),
            targets.join(", ")
        )),
    }
}

fn topic_list(args: &BrokerArgs, route: &ClusterRoute) -> Result<(), String> {
    let mut topics: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for group in route.groups.keys() {
        let mut reader = group_reader(route, group)?;
        let list = reader
            .call(&TopicListRequest {})
            .map_err(|e| format!("group {group}: {}", describe(reader.active_addr(), &e)))?;
        for t in list.topics {
            let queues = t.queue_count();
            topics
                .entry(t.name)
                .or_default()
                .push((group.clone(), queues));
        }
    }
    match args.format {
        Format::Json => {
            let list: Vec<_> = topics
                .iter()
                .map(|(name, groups)| {
                    let groups: Vec<_> = groups
                        .iter()
                        .map(|(g, q)| json!({"group": g, "queues": q}))
                        .collect();
                    json!({"name": name, "groups": groups})
                })
                .collect();
            emit(&json!({ "topics": list }).to_string())
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|(name, groups)| {
                    let total: u32 = groups.iter().map(|(_, q)| q).sum();
                    let names: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
                    vec![name.clone(), names.join(","), total.to_string()]
                })
                .collect();
            print!("{}", table(&["TOPIC", "GROUPS", "QUEUES"], &rows));
            Ok(())
        }
    }
}

fn topic_describe(args: &BrokerArgs, route: &ClusterRoute, name: &str) -> Result<(), String> {
    let mut described: Vec<(String, TopicDescription)> = Vec::new();
    for group in route.groups.keys() {
        let mut reader = group_reader(route, group)?;
        match reader.describe_topic(name) {
            Ok(d) => described.push((group.clone(), d)),
            Err(e) if e.status() == Some(Status::TopicNotFound) => {}
            Err(e) => {
                return Err(format!(
                    "group {group}: {}",
                    describe(reader.active_addr(), &e)
                ))
            }
        }
    }
    if described.is_empty() {
        return Err(format!(
            "TOPIC_NOT_FOUND: no broker group has topic `{name}`"
        ));
    }
    match args.format {
        Format::Json => {
            let groups: Vec<_> = described
                .iter()
                .map(|(g, d)| {
                    let queues: Vec<_> = d
                        .queues
                        .iter()
                        .map(|q| {
                            json!({"queue": q.queue, "shard": q.shard,
                                   "min_offset": q.min_offset, "max_offset": q.max_offset})
                        })
                        .collect();
                    json!({"group": g, "topic_id": d.topic.topic_id, "queues": queues})
                })
                .collect();
            emit(&json!({"name": name, "groups": groups}).to_string())
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = described
                .iter()
                .flat_map(|(g, d)| {
                    d.queues.iter().map(move |q| {
                        vec![
                            g.clone(),
                            q.queue.to_string(),
                            q.shard.to_string(),
                            q.min_offset.to_string(),
                            q.max_offset.to_string(),
                        ]
                    })
                })
                .collect();
            print!(
                "topic {name}\n{}",
                table(
                    &["GROUP", "QUEUE", "SHARD", "MIN_OFFSET", "MAX_OFFSET"],
                    &rows
                )
            );
            Ok(())
        }
    }
}

fn topic_delete(args: &BrokerArgs, route: &ClusterRoute, name: &str) -> Result<(), String> {
    let mut deleted = Vec::new();
    for (group, g) in &route.groups {
        if !g.topics.contains_key(name) {
            continue;
        }
        let Some(master) = &g.master else {
            return Err(format!(
                "broker group `{group}` has no master now: cannot delete `{name}` there"
            ));
        };
        let mut client =
            Client::connect(&master.listen).map_err(|e| describe(&master.listen, &e))?;
        client
            .delete_topic(name)
            .map_err(|e| format!("group {group}: {}", describe(&master.listen, &e)))?;
        deleted.push(group.clone());
    }
    if deleted.is_empty() {
        return Err(format!(
            "TOPIC_NOT_FOUND: no broker group lists topic `{name}`"
        ));
    }
    match args.format {
        Format::Json => emit(&json!({ "deleted": name, "groups": deleted }).to_string()),
        Format::Text => emit(&format!("deleted topic {name} on {}", deleted.join(", "))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn class_name(class: FailureClass) -> &'static str {
    match class {
        FailureClass::NotStored => "NOT_STORED",
        FailureClass::MaybeStored => "MAYBE_STORED",
        FailureClass::StoredWithoutGuarantee => "STORED_WITHOUT_GUARANTEE",
        FailureClass::Rejected => "REJECTED",
    }
}

/// `produce --namesrv`: one message per request through the cluster producer.
pub fn produce(args: &ProduceArgs, namesrv: &str) -> Result<(), String> {
    if args.queue.is_some() {
        return Err(
            "--queue names a queue of one broker; with --namesrv pick queues by --key".into(),
        );
    }
    let routes = routes(&args.broker, namesrv)?;
    let options = ClusterProducerOptions {
        cluster: args.broker.cluster_name.clone(),
        retry_another_group_when_not_stored_ok: args.retry_another_group,
        ordered: args.ordered,
        acks: args.acks,
        ..Default::default()
    };
    let mut producer = ClusterProducer::with_routes(routes, options);
    let key = args.key.as_deref().unwrap_or("").as_bytes();
    let format = args.broker.format;
    let (mut ok, mut unguaranteed, mut failed) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut stdin = std::io::stdin().lock();
    let mut line_number = 0u64;
    loop {
        let body = match args.count {
            Some(count) if line_number >= count => break,
            Some(_) => synthetic_body(line_number + 1, args.size),
            None => {
                let mut line = Vec::new();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(format!("reading stdin: {e}")),
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                line
            }
        };
        line_number += 1;
        let message = MessageRef {
            born_timestamp_ms: now_ms(),
            key,
            properties: b"",
            body: &body,
        };
        match producer.send(&args.topic, None, &[message]) {
            Ok(outcome) => {
                if outcome.status == Status::Ok {
                    ok += 1;
                } else {
                    unguaranteed += 1;
                    if format == Format::Text {
                        eprintln!(
                            "line {line_number}: stored on {}, but {}",
                            outcome.group,
                            outcome.status.name()
                        );
                    }
                }
                if format == Format::Json {
                    emit(
                        &json!({"line": line_number, "status": outcome.status.name(),
                                "group": outcome.group, "queue": outcome.queue,
                                "offset": outcome.base_offset, "attempts": outcome.attempts})
                        .to_string(),
                    )?;
                }
            }
            Err(e) => {
                failed += 1;
                match format {
                    Format::Json => emit(
                        &json!({"line": line_number, "status": "ERROR",
                                "class": class_name(e.class), "group": e.group,
                                "attempts": e.attempts, "error": e.error.to_string()})
                        .to_string(),
                    )?,
                    Format::Text => eprintln!("line {line_number}: failed: {e}"),
                }
            }
        }
    }
    let total = ok + unguaranteed + failed;
    if format == Format::Text {
        let seconds = started.elapsed().as_secs_f64();
        emit(&format!(
            "sent {total} messages in {seconds:.3} s ({:.0} msg/s): {ok} ok, {unguaranteed} stored without guarantee, {failed} failed",
            total as f64 / seconds.max(1e-9),
        ))?;
    }
    if failed > 0 {
        return Err(format!("{failed} of {total} messages failed"));
    }
    Ok(())
}

/// One queue being read, and where.
struct Cursor {
    queue: QueueRef,
    offset: u64,
    committed: u64,
}

fn format_line(format: Format, queue: &QueueRef, m: &PulledMessage) -> String {
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(ConsumeLine::new(queue.queue, m))
                .expect("output structs serialize");
            value["group"] = json!(queue.group);
            value.to_string()
        }
        Format::Text => format!(
            "{}/{}",
            queue.group,
            consume::format_message(Format::Text, queue.queue, m)
        ),
    }
}

/// `consume --namesrv` (not as a group member): every queue of every group, or with
/// `--queue N` queue N of every group.
pub fn consume(args: &ConsumeArgs, namesrv: &str) -> Result<(), String> {
    let fail = |e: ClientError| describe(namesrv, &e);
    let routes = routes(&args.broker, namesrv)?;
    let options = ClusterConsumerOptions {
        cluster: args.broker.cluster_name.clone(),
        ..Default::default()
    };
    let mut consumer = ClusterConsumer::with_routes(routes, options);
    let mut cursors = Vec::new();
    let queues: Vec<QueueRef> = consumer
        .queues(&args.topic)
        .map_err(fail)?
        .into_iter()
        .filter(|q| args.queue.is_none_or(|wanted| wanted == q.queue))
        .collect();
    let mut ranges: BTreeMap<String, TopicDescription> = BTreeMap::new();
    for queue in queues {
        if !ranges.contains_key(&queue.group) {
            let d = consumer
                .describe_topic(&queue.group, &args.topic)
                .map_err(fail)?;
            ranges.insert(queue.group.clone(), d);
        }
        let stats = ranges[&queue.group]
            .queues
            .iter()
            .find(|q| q.queue == queue.queue);
        let (min, max) = stats.map_or((0, 0), |q| (q.min_offset, q.max_offset));
        let offset = match (args.from, &args.group) {
            (Some(StartFrom::Earliest), _) => min,
            (Some(StartFrom::Latest), _) => max,
            (Some(StartFrom::Offset(o)), _) => o,
            (None, Some(group)) => consumer
                .committed(group, &args.topic, &queue)
                .map_err(fail)?
                .unwrap_or(min),
            (None, None) => min,
        };
        cursors.push(Cursor {
            queue,
            offset,
            committed: offset,
        });
    }
    if cursors.is_empty() {
        return Err(format!(
            "QUEUE_NOT_FOUND: topic `{}` has no such queue",
            args.topic
        ));
    }
    let mut printed = 0u64;
    let mut wait_ms = 0;
    loop {
        let mut round = 0;
        // One queue at a time, so a failed pull can go to another broker of its group; a long
        // poll is split across the queues to bound the round.
        let per_queue_wait = wait_ms / cursors.len() as u32;
        for cursor in cursors.iter_mut() {
            let pulled = consumer.pull(
                &args.topic,
                &cursor.queue,
                cursor.offset,
                PULL_MAX_MESSAGES,
                PULL_MAX_BYTES,
                per_queue_wait,
            );
            match pulled {
                Ok(result) => {
                    for m in &result.messages {
                        if args.count.is_some_and(|n| printed >= n) {
                            break;
                        }
                        emit(&format_line(args.broker.format, &cursor.queue, m))?;
                        cursor.offset = m.queue_offset + 1;
                        printed += 1;
                        round += 1;
                    }
                    if args.count.is_none_or(|n| printed < n) {
                        cursor.offset = cursor.offset.max(result.summary.next_offset);
                    }
                }
                Err(e) if e.status() == Some(Status::OffsetOutOfRange) => {
                    let Some(reset) =
                        reset::reset_for(&e, args.offset_reset, cursor.queue.queue, cursor.offset)
                    else {
                        return Err(fail(e));
                    };
                    eprintln!("group {}: {reset}", cursor.queue.group);
                    cursor.offset = reset.to;
                }
                Err(e) => return Err(fail(e)),
            }
            if let Some(group) = &args.group {
                if cursor.offset != cursor.committed {
                    consumer
                        .commit(group, &args.topic, &cursor.queue, cursor.offset)
                        .map_err(fail)?;
                    cursor.committed = cursor.offset;
                }
            }
        }
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

/// `consume --group G --namesrv` as a member: one group consumer per broker group, each on
/// its own thread and joining that broker group's coordinator.
pub fn consume_as_members(args: &ConsumeArgs, namesrv: &str, group: &str) -> Result<(), String> {
    let mut cache = routes(&args.broker, namesrv)?;
    let route = cache.route().map_err(|e| describe(namesrv, &e))?.clone();
    let groups: Vec<String> = route
        .groups
        .values()
        .filter(|g| g.topics.contains_key(&args.topic))
        .map(|g| g.name.clone())
        .collect();
    if groups.is_empty() {
        return Err(format!(
            "TOPIC_NOT_FOUND: no broker group lists topic `{}`",
            args.topic
        ));
    }
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|broker_group| {
                let route = &route;
                scope.spawn(move || {
                    let client = group_reader(route, broker_group)?;
                    let options = consume::member_options(args, group);
                    consume::consume_as_member(GroupConsumer::new(client, options), args)
                        .map_err(|e| format!("broker group {broker_group}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a member thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}
