//! `ringmq user create|delete|list`: SCRAM users on a broker (`--broker`), on every group's
//! master (`--namesrv`), or in a stopped broker's store (`--store DIR`, under the store lock:
//! how the first superuser is made before `authentication = "scram"` is turned on).
//!
//! `create` computes the keys here from the password (PBKDF2, one credential per mechanism,
//! each with a fresh salt) and sends only those: the broker never sees a password. The new
//! user's password comes from `--new-password-file` (`-`: the first line of standard input),
//! never from an argument; `--user` / `--password-file` are the caller's own login.

use super::app::{describe, read_password, BrokerArgs, Format};
use super::output::{emit, table};
use crate::client::{Client, ClientError};
use crate::protocol::scram::{
    Credential, Mechanism, UserCreate, UserDelete, UserList, UserListRequest, UserSummary,
    MAX_ITERATIONS, MIN_ITERATIONS,
};
use crate::security::users::{validate_user_name, write_blocking, UserTable};
use crate::store::lock::StoreLock;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Change the users of this stopped broker's store instead of a running broker (refused
    /// while a broker holds the store).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "namesrv")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user, or replace its keys (a new password).
    Create {
        name: String,
        /// File holding the new user's password, one trailing newline ignored; `-`: the first
        /// line of standard input.
        #[arg(long = "new-password-file", value_name = "FILE")]
        new_password_file: PathBuf,
        /// PBKDF2 iterations of the keys (4096 to 1048576).
        #[arg(long, default_value_t = crate::client::scram::DEFAULT_CREDENTIAL_ITERATIONS)]
        iterations: u32,
        /// Mechanisms to make keys for (default: both).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "SCRAM-SHA-256,SCRAM-SHA-512"
        )]
        mechanisms: Vec<String>,
    },
    /// Delete a user.
    Delete { name: String },
    /// List users and their mechanisms (never keys).
    List,
}

pub fn run(args: UserArgs) -> Result<(), String> {
    let request = Prepared::from(&args.command)?;
    if let Some(store) = &args.store {
        return offline(store, request, args.broker.format);
    }
    match &args.broker.namesrv {
        Some(namesrv) => every_master(&args.broker, namesrv, &request),
        None => {
            let mut client = args.broker.connect()?;
            let done =
                online(&mut client, &request).map_err(|e| describe(&args.broker.broker, &e))?;
            report(&request, done, args.broker.format)
        }
    }
}

/// A command with its keys computed (once, whatever the number of brokers it goes to).
enum Prepared {
    Create {
        name: String,
        credentials: Vec<Credential>,
    },
    Delete {
        name: String,
    },
    List,
}

impl Prepared {
    fn from(command: &UserCommand) -> Result<Prepared, String> {
        Ok(match command {
            UserCommand::Create {
                name,
                new_password_file,
                iterations,
                mechanisms,
            } => {
                validate_user_name(name)?;
                if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(iterations) {
                    return Err(format!(
                        "--iterations {iterations}: must be {MIN_ITERATIONS} to {MAX_ITERATIONS}"
                    ));
                }
                let mechanisms = mechanisms
                    .iter()
                    .map(|m| {
                        Mechanism::from_name(m.trim()).ok_or_else(|| {
                            format!("--mechanisms: `{m}` is not SCRAM-SHA-256 or SCRAM-SHA-512")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let password = read_password(new_password_file, "--new-password-file")?;
                let credentials =
                    crate::client::scram::credentials_for(&password, *iterations, &mechanisms)
                        .map_err(|e| e.to_string())?;
                Prepared::Create {
                    name: name.clone(),
                    credentials,
                }
            }
            UserCommand::Delete { name } => Prepared::Delete { name: name.clone() },
            UserCommand::List => Prepared::List,
        })
    }
}

/// What a command did, for the report.
enum Done {
    Changed,
    Listed(Vec<UserSummary>),
}

fn online(client: &mut Client, request: &Prepared) -> Result<Done, ClientError> {
    match request {
        Prepared::Create { name, credentials } => {
            client.call(&UserCreate {
                name: name.clone(),
                credentials: credentials.iter().map(Credential::to_stored).collect(),
            })?;
            Ok(Done::Changed)
        }
        Prepared::Delete { name } => {
            client.call(&UserDelete { name: name.clone() })?;
            Ok(Done::Changed)
        }
        Prepared::List => Ok(Done::Listed(client.call(&UserListRequest {})?.users)),
    }
}

/// The same command on the master of every group the name servers list.
fn every_master(args: &BrokerArgs, namesrv: &str, request: &Prepared) -> Result<(), String> {
    let mut cache = super::routed::routes(args, namesrv)?;
    let route = cache.route().map_err(|e| describe(namesrv, &e))?.clone();
    for (group, route_group) in &route.groups {
        let Some(master) = &route_group.master else {
            return Err(format!("broker group `{group}` has no master now"));
        };
        let fail = |e: ClientError| format!("group {group}: {}", describe(&master.listen, &e));
        let mut client = Client::connect(&master.listen).map_err(fail)?;
        let done = online(&mut client, request).map_err(fail)?;
        if args.format == Format::Text {
            emit(&format!("group {group} ({}):", master.listen))?;
        }
        report(request, done, args.format)?;
    }
    Ok(())
}

/// The command on a stopped broker's store: load, change, write atomically, under the lock.
fn offline(store: &Path, request: Prepared, format: Format) -> Result<(), String> {
    if !store.is_dir() {
        return Err(format!("--store {}: not a directory", store.display()));
    }
    let _lock = StoreLock::acquire(store).map_err(|e| format!("--store: {e}"))?;
    let table = UserTable::load(store)?;
    let changed = match &request {
        Prepared::Create { name, credentials } => Some(table.with_user(name, credentials.clone())?),
        Prepared::Delete { name } => Some(
            table
                .without_user(name)
                .ok_or_else(|| format!("there is no user `{name}` in {}", store.display()))?,
        ),
        Prepared::List => None,
    };
    let done = match changed {
        Some(table) => {
            write_blocking(store, &table).map_err(|e| {
                format!(
                    "writing {}: {e}",
                    crate::security::users::users_path(store).display()
                )
            })?;
            Done::Changed
        }
        None => Done::Listed(table.summaries()),
    };
    report(&request, done, format)
}

fn report(request: &Prepared, done: Done, format: Format) -> Result<(), String> {
    match (request, done) {
        (Prepared::Create { name, credentials }, _) => {
            let mechanisms: Vec<&str> = credentials.iter().map(|c| c.mechanism.name()).collect();
            match format {
                Format::Json => {
                    emit(&json!({"created": name, "mechanisms": mechanisms}).to_string())
                }
                Format::Text => emit(&format!("user {name} created ({})", mechanisms.join(", "))),
            }
        }
        (Prepared::Delete { name }, _) => match format {
            Format::Json => emit(&json!({ "deleted": name }).to_string()),
            Format::Text => emit(&format!("user {name} deleted")),
        },
        (Prepared::List, Done::Listed(users)) => list(&UserList { users }, format),
        (Prepared::List, Done::Changed) => Ok(()),
    }
}

fn list(users: &UserList, format: Format) -> Result<(), String> {
    match format {
        Format::Json => {
            let rows: Vec<_> = users
                .users
                .iter()
                .map(|u| json!({"name": u.name, "mechanisms": u.mechanisms}))
                .collect();
            emit(&json!({ "users": rows }).to_string())
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = users
                .users
                .iter()
                .map(|u| vec![u.name.clone(), u.mechanisms.join(",")])
                .collect();
            emit(&table(&["USER", "MECHANISMS"], &rows))
        }
    }
}
