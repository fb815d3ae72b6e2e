//! `ringmq produce TOPIC`: one message per line of stdin (or `--count` synthetic messages),
//! one message per request, pipelined with a bounded window of requests in flight.
//!
//! Stdin is read on its own thread so that acknowledgements are printed as soon as they arrive
//! even while the next input line has not been typed yet.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, to_json_line, ProduceLine};
use crate::client::{Client, ProduceResult, Ticket, DEFAULT_READ_TIMEOUT};
use crate::protocol::message::MessageRef;
use crate::protocol::{Acks, Status};
use clap::Args;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bound for `--window`: each request in flight holds one parked slot on the client and
/// one on the broker's connection; beyond this the broker would answer SYSTEM_BUSY anyway.
pub const MAX_WINDOW: u32 = 4096;

/// How long to wait for an acknowledgement before checking stdin for the next line again.
const INPUT_POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    pub topic: String,
    /// Queue to produce to (default: by --key hash, else round-robin).
    #[arg(long)]
    pub queue: Option<u32>,
    /// Key for every message; also picks the queue when --queue is not given.
    #[arg(long)]
    pub key: Option<String>,
    /// Send N synthetic messages instead of reading stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Body size of synthetic messages in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=MAX_WINDOW as i64))]
    pub window: u32,
    /// With --namesrv: at-least-once, resend to another broker group also when the message
    /// may be stored (no answer after sending) or was stored without the flush or replication
    /// guarantee (RocketMQ's retryAnotherBrokerWhenNotStoreOK); a duplicate is then possible.
    #[arg(long, requires = "namesrv")]
    pub retry_another_group: bool,
    /// With --namesrv and --key: fail rather than send a message to another queue than its
    /// key's (ordered messages).
    #[arg(long, requires = "key", requires = "namesrv")]
    pub ordered: bool,
    /// Acknowledgement level of every produce: `none` (no answer: sent is all the CLI
    /// knows), `leader` (the master's flush guarantee), `all` (its slaves too). Default:
    /// the broker's `default_acks`.
    #[arg(long)]
    pub acks: Option<Acks>,
}

/// Where message bodies come from.
enum Input {
    Synthetic { next: u64, count: u64, size: usize },
    Stdin(Receiver<Vec<u8>>),
}

enum Next {
    Body(Vec<u8>),
    NotYet,
    End,
}

impl Input {
    fn next(&mut self, block: bool) -> Next {
        match self {
            Input::Synthetic { next, count, size } => {
                if *next >= *count {
                    return Next::End;
                }
                *next += 1;
                Next::Body(synthetic_body(*next, *size))
            }
            Input::Stdin(lines) if block => lines.recv().map_or(Next::End, Next::Body),
            Input::Stdin(lines) => match lines.try_recv() {
                Ok(line) => Next::Body(line),
                Err(TryRecvError::Empty) => Next::NotYet,
                Err(TryRecvError::Disconnected) => Next::End,
            },
        }
    }
}

/// `size` bytes: the message number, then filler, so consumers can spot gaps by eye.
pub fn synthetic_body(number: u64, size: usize) -> Vec<u8> {
    let mut body = format!("{number:010}").into_bytes();
    body.resize(size, b'x');
    body
}

fn stdin_lines(capacity: usize) -> Receiver<Vec<u8>> {
    let (sender, receiver) = sync_channel(capacity);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.ends_with(b"\n") {
                line.pop();
                if line.ends_with(b"\r") {
                    line.pop();
                }
            }
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Counts of outcomes, for the summary and the exit code.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: u64,
    /// Stored, but the flush or replication guarantee was not met in time.
    pub stored_without_guarantee: u64,
    pub failed: u64,
    /// Written at level `none`: the broker answers nothing, so their fate is unknown.
    pub unanswered: u64,
}

impl Tally {
    fn record(&mut self, format: Format, line: u64, result: &Result<ProduceResult, String>) {
        match result {
            Ok(r) if r.status == Status::Ok => self.ok += 1,
            Ok(r) => {
                self.stored_without_guarantee += 1;
                if format == Format::Text {
                    eprintln!("line {line}: stored, but {}", r.status.name());
                }
            }
            Err(e) => {
                self.failed += 1;
                if format == Format::Text {
                    eprintln!("line {line}: failed: {e}");
                }
            }
        }
    }
}

pub fn run(args: ProduceArgs) -> Result<(), String> {
    if let Some(namesrv) = &args.broker.namesrv {
        return super::routed::produce(&args, namesrv);
    }
    let mut client = args.broker.connect()?;
    let broker = args.broker.broker.clone();
    client
        .topic(&args.topic)
        .map_err(|e| describe(&broker, &e))?;
    let mut input = match args.count {
        Some(count) => Input::Synthetic {
            next: 0,
            count,
            size: args.size,
        },
        None => Input::Stdin(stdin_lines(args.window as usize)),
    };
    let started = Instant::now();
    let tally = pump(&mut client, &args, &mut input)?;
    let total = tally.ok + tally.stored_without_guarantee + tally.failed + tally.unanswered;
    if args.broker.format == Format::Text {
        let seconds = started.elapsed().as_secs_f64();
        let unanswered = if args.acks == Some(Acks::None) {
            format!(", {} sent unanswered (--acks none)", tally.unanswered)
        } else {
            String::new()
        };
        emit(&format!(
            "sent {total} messages in {seconds:.3} s ({:.0} msg/s): {} ok, {} stored without guarantee, {} failed{unanswered}",
            total as f64 / seconds.max(1e-9),
            tally.ok,
            tally.stored_without_guarantee,
            tally.failed
        ))?;
    }
    if tally.failed > 0 {
        return Err(format!("{} of {total} messages failed", tally.failed));
    }
    Ok(())
}

/// Sends every input message, keeping at most `--window` in flight, and reports each
/// acknowledgement as it arrives.
fn pump(client: &mut Client, args: &ProduceArgs, input: &mut Input) -> Result<Tally, String> {
    let format = args.broker.format;
    let key = args.key.as_deref().unwrap_or("").as_bytes();
    let mut in_flight: HashMap<Ticket, u64> = HashMap::new();
    let mut tally = Tally::default();
    let report = |tally: &mut Tally, line: u64, result: Result<ProduceResult, String>| {
        tally.record(format, line, &result);
        match format {
            Format::Json => emit(&to_json_line(&ProduceLine::new(line, &result))),
            Format::Text => Ok(()),
        }
    };
    let mut next_line = 1u64;
    let mut input_done = false;
    loop {
        while !input_done && in_flight.len() < args.window as usize {
            let body = match input.next(in_flight.is_empty()) {
                Next::Body(body) => body,
                Next::NotYet => break,
                Next::End => {
                    input_done = true;
                    break;
                }
            };
            let line = next_line;
            next_line += 1;
            let message = MessageRef {
                born_timestamp_ms: now_ms(),
                key,
                properties: b"",
                body: &body,
            };
            match client.send_produce_with(&args.topic, args.queue, &[message], args.acks) {
                // Written and never answered: nothing to wait for.
                Ok(_) if args.acks == Some(Acks::None) => tally.unanswered += 1,
                Ok(ticket) => {
                    in_flight.insert(ticket, line);
                }
                Err(e) => report(&mut tally, line, Err(describe(&args.broker.broker, &e)))?,
            }
        }
        if in_flight.is_empty() {
            if input_done {
                return Ok(tally);
            }
            continue;
        }
        let waiting_only_for_acks = input_done || in_flight.len() >= args.window as usize;
        let wait = if waiting_only_for_acks {
            DEFAULT_READ_TIMEOUT
        } else {
            INPUT_POLL_INTERVAL
        };
        match client.next_produce_ack(wait) {
            Ok(Some(ack)) => {
                if let Some(line) = in_flight.remove(&ack.ticket) {
                    let result = ack.result.map_err(|e| describe(&args.broker.broker, &e));
                    report(&mut tally, line, result)?;
                }
            }
            Ok(None) if !waiting_only_for_acks => {}
            outcome => {
                let reason = match outcome {
                    Err(e) => describe(&args.broker.broker, &e),
                    _ => format!("no acknowledgement within {} s", wait.as_secs()),
                };
                let mut lines: Vec<u64> = in_flight.drain().map(|(_, line)| line).collect();
                lines.sort_unstable();
                for line in lines {
                    report(&mut tally, line, Err(reason.clone()))?;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
