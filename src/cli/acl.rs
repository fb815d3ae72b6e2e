//! `ringmq acl add|remove|list`: the ACL rules of a broker (`--broker`), of every broker
//! group's master (`--namesrv`), or of a stopped broker's store (`--store DIR`, the bootstrap
//! before `authorization = "acl"` is turned on; it takes the store's lock, so it refuses a
//! store a broker runs on). Rules are checked here as the broker checks them
//! (`security::acl`), so a typo is named before anything is sent.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::client::Client;
use crate::protocol::admin::{AclEntry, AclList};
use crate::protocol::message::{AclAdd, AclListRequest, AclRemove};
use crate::security::acl::{AclTable, Rule};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct AclArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Change or read the rules of the stopped broker whose store is DIR, offline.
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AclCommand,
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Add a rule (adding one the broker holds changes nothing).
    Add(RuleArgs),
    /// Remove a rule (removing one it does not hold changes nothing).
    Remove(RuleArgs),
    /// Every rule, and whether the broker enforces them.
    List,
}

#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    /// The principal: a certificate's name or a user, ANONYMOUS for connections that did not
    /// authenticate, or * for everyone.
    #[arg(long)]
    pub principal: String,
    /// produce, consume, describe, create, delete (topics); commit, fetch (groups);
    /// promote, demote, stats, describe, metadata_snapshot, retention, alter_users,
    /// alter_acls (cluster).
    #[arg(long)]
    pub operation: String,
    #[command(flatten)]
    pub resource: ResourceArgs,
    #[command(flatten)]
    pub effect: EffectArgs,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct ResourceArgs {
    /// This topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Every topic whose name starts with this.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// This group.
    #[arg(long)]
    pub group: Option<String>,
    /// Every group whose name starts with this.
    #[arg(long)]
    pub group_prefix: Option<String>,
    /// The cluster (promote, demote, stats, describe, metadata_snapshot, retention,
    /// alter_users, alter_acls). Not `--cluster`, which names a cluster with --namesrv.
    #[arg(long = "cluster-resource")]
    pub cluster: bool,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct EffectArgs {
    #[arg(long)]
    pub allow: bool,
    #[arg(long)]
    pub deny: bool,
}

impl RuleArgs {
    /// The rule's four texts as the wire carries them, checked as the broker checks them.
    fn entry(&self) -> Result<AclEntry, String> {
        let r = &self.resource;
        let resource = match (&r.topic, &r.topic_prefix, &r.group, &r.group_prefix) {
            (Some(t), ..) => format!("topic:{t}"),
            (_, Some(p), ..) => format!("topic-prefix:{p}"),
            (_, _, Some(g), _) => format!("group:{g}"),
            (.., Some(p)) => format!("group-prefix:{p}"),
            _ => "cluster".to_string(),
        };
        let effect = if self.effect.deny { "deny" } else { "allow" };
        let rule = Rule::parse(&self.principal, &self.operation, &resource, effect)?;
        Ok(rule.entry())
    }
}

pub fn run(args: AclArgs) -> Result<(), String> {
    if let Some(store) = &args.store {
        if args.broker.namesrv.is_some() {
            return Err("--store changes a stopped broker's rules: drop --namesrv".to_string());
        }
        return offline(store, &args.command, args.broker.format);
    }
    let targets = masters(&args.broker)?;
    let mut lists = Vec::new();
    for (name, listen) in &targets {
        let mut client = Client::connect(listen).map_err(|e| describe(listen, &e))?;
        let fail = |e| format!("{name}: {}", describe(listen, &e));
        match &args.command {
            AclCommand::Add(rule) => {
                let e = rule.entry()?;
                client
                    .call(&AclAdd {
                        principal: e.principal,
                        operation: e.operation,
                        resource: e.resource,
                        effect: e.effect,
                    })
                    .map_err(fail)?;
            }
            AclCommand::Remove(rule) => {
                let e = rule.entry()?;
                client
                    .call(&AclRemove {
                        principal: e.principal,
                        operation: e.operation,
                        resource: e.resource,
                        effect: e.effect,
                    })
                    .map_err(fail)?;
            }
            AclCommand::List => {
                lists.push((name.clone(), client.call(&AclListRequest {}).map_err(fail)?))
            }
        }
    }
    match &args.command {
        AclCommand::List => print_lists(&lists, args.broker.format),
        AclCommand::Add(_) | AclCommand::Remove(_) => {
            let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
            emit(&format!("done on {}", names.join(", ")))
        }
    }
}

/// (name, client address) of each broker to change: `--broker`, or with `--namesrv` the
/// master of every broker group (one without a master is an error: its rules would differ).
fn masters(args: &BrokerArgs) -> Result<Vec<(String, String)>, String> {
    let Some(namesrv) = &args.namesrv else {
        return Ok(vec![(args.broker.clone(), args.broker.clone())]);
    };
    let mut cache = super::routed::routes(args, namesrv)?;
    let route = cache.route().map_err(|e| describe(namesrv, &e))?;
    route
        .groups
        .values()
        .map(|g| match &g.master {
            Some(m) => Ok((g.name.clone(), m.listen.clone())),
            None => Err(format!(
                "broker group `{}` has no master now: its rules cannot be changed or read (retry once it has one)",
                g.name
            )),
        })
        .collect()
}

fn print_lists(lists: &[(String, AclList)], format: Format) -> Result<(), String> {
    match format {
        Format::Json => {
            let by_broker: std::collections::BTreeMap<&str, &AclList> =
                lists.iter().map(|(n, l)| (n.as_str(), l)).collect();
            emit(&serde_json::to_string(&by_broker).expect("ACL lists serialize"))
        }
        Format::Text => {
            for (name, list) in lists {
                print!("{}", list_text(name, list));
            }
            Ok(())
        }
    }
}

pub fn list_text(name: &str, list: &AclList) -> String {
    let rows: Vec<Vec<String>> = list
        .rules
        .iter()
        .map(|r| {
            vec![
                r.principal.clone(),
                r.operation.clone(),
                r.resource.clone(),
                r.effect.clone(),
            ]
        })
        .collect();
    format!(
        "{name}: authorization {}, {} rules\n{}",
        list.authorization,
        rows.len(),
        table(&["PRINCIPAL", "OPERATION", "RESOURCE", "EFFECT"], &rows)
    )
}

/// Reads or changes `<store>/acls.json` of a stopped broker, holding the store's lock.
fn offline(store: &Path, command: &AclCommand, format: Format) -> Result<(), String> {
    if !store.is_dir() {
        return Err(format!("--store {}: no such directory", store.display()));
    }
    let _lock = crate::store::lock::StoreLock::acquire(store).map_err(|e| {
        format!("{e} (stop the broker first, or give --broker to change its rules online)")
    })?;
    let table = AclTable::load(store)?;
    let parse = |rule: &RuleArgs| {
        let e = rule.entry()?;
        Rule::parse(&e.principal, &e.operation, &e.resource, &e.effect)
    };
    let changed = match command {
        AclCommand::List => {
            let list = AclList {
                authorization: "(offline: see the broker's configuration)".to_string(),
                rules: table.entries(),
            };
            let name = store.display().to_string();
            return print_lists(&[(name, list)], format);
        }
        AclCommand::Add(rule) => table.with_rule(parse(rule)?)?,
        AclCommand::Remove(rule) => table.without_rule(&parse(rule)?),
    };
    if let Some(table) = changed {
        table.store_blocking(store)?;
    }
    emit(&format!("done on {}", store.display()))
}
