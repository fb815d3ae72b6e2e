//! User commands (UserCreate 61, UserDelete 62, UserList 63). Changes run on shard 0, which
//! owns the user table as it owns the topic table: under the metadata gate it writes
//! `users.json` atomically, then every shard swaps in the new table before the reply. The
//! client computed the keys (the broker never sees a password); who may call these is the
//! connection's check (`superusers` when authentication is on).

use super::body;
use crate::protocol::scram::{Credential, UserCreate, UserDelete, UserList};
use crate::protocol::Opcode;
use crate::security::users::{users_path, UserTable};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use std::rc::Rc;
use std::sync::Arc;
use tracing::info;

/// Shard that owns the user table.
const METADATA_SHARD: usize = 0;

/// The authentication steps have an arm in the dispatch because they share the request
/// table; the connection answers them itself, so a handler never sees one from a client.
pub fn connection_only(request: &str) -> ShardError {
    ShardError::Refused(format!(
        "{request} is answered by the connection it arrives on, never forwarded"
    ))
}

fn refuse_on_slave<D: Disk>(shard: &Shard<D>) -> Result<(), ShardError> {
    if shard.is_master() {
        return Ok(());
    }
    Err(ShardError::NotMaster(
        "users are changed on the master; this slave copies them".to_string(),
    ))
}

/// Runs a user-table change on shard 0 (forwarding it there from any other shard).
async fn change_users<D: Disk>(
    shard: &Rc<Shard<D>>,
    opcode: Opcode,
    raw: &[u8],
    change: impl FnOnce(&UserTable) -> Result<UserTable, ShardError>,
) -> Result<Option<Reply>, ShardError> {
    refuse_on_slave(shard)?;
    if shard.id() != METADATA_SHARD {
        return Ok(Some(
            shard.forward(METADATA_SHARD, opcode, raw.to_vec()).await,
        ));
    }
    let _gate = shard.metadata().lock().await;
    let table = change(&shard.metadata().users())?;
    publish(shard, table).await?;
    Ok(None)
}

pub async fn create<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = UserCreate::decode(raw)?;
    let credentials = request
        .credentials
        .iter()
        .map(Credential::from_stored)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ShardError::Refused)?;
    let forwarded = change_users(shard, Opcode::UserCreate, raw, |current| {
        current
            .with_user(&request.name, credentials)
            .map_err(ShardError::InvalidName)
    })
    .await?;
    if let Some(reply) = forwarded {
        return Ok(reply);
    }
    info!(user = %request.name, "user created or its keys replaced");
    Ok(Reply::ok(Vec::new()))
}

pub async fn delete<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = UserDelete::decode(raw)?;
    let forwarded = change_users(shard, Opcode::UserDelete, raw, |current| {
        current
            .without_user(&request.name)
            .ok_or_else(|| ShardError::Refused(format!("there is no user `{}`", request.name)))
    })
    .await?;
    if let Some(reply) = forwarded {
        return Ok(reply);
    }
    info!(user = %request.name, "user deleted");
    Ok(Reply::ok(Vec::new()))
}

/// Names and mechanisms from this shard's copy (every shard holds the same table).
pub fn list<D: Disk>(shard: &Shard<D>) -> Reply {
    let list = UserList {
        users: shard.metadata().users().summaries(),
    };
    Reply::ok(body(|out| list.encode(out)))
}

/// Makes a new user table durable, then applies it on every shard: this one first, then each
/// other, every one tried even when one fails (a shard left with the old table would still
/// let a deleted user in), and the error names those that did not take it. Also what slave
/// shard 0 runs for a table its master sent.
pub async fn publish<D: Disk>(shard: &Rc<Shard<D>>, table: UserTable) -> Result<(), ShardError> {
    let path = users_path(&shard.config().store_dir);
    shard
        .disk()
        .write_atomic(&path, table.to_json())
        .await
        .map_err(|e| ShardError::Metadata(format!("{}: {e}", path.display())))?;
    let table = Arc::new(table);
    shard.metadata().set_users(table.clone());
    let mut missed = Vec::new();
    for other in (0..shard.shard_count()).filter(|s| *s != shard.id()) {
        let (reply, answer) = futures_channel::oneshot::channel();
        let request = ShardRequest::ApplyUsers {
            table: table.clone(),
            reply,
        };
        let applied = match shard.mesh().send(other, request).await {
            Ok(()) => answer.await.is_ok(),
            Err(_) => false,
        };
        if !applied {
            missed.push(other);
        }
    }
    if missed.is_empty() {
        return Ok(());
    }
    Err(ShardError::Metadata(format!(
        "{} is written, but shards {missed:?} did not take the new user table (they are \
         stopping); a restart loads it everywhere",
        path.display()
    )))
}
