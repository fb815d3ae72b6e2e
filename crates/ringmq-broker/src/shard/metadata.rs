//! The metadata stage: this shard's copy of the topic table and of the user table, the group
//! offsets of the queues it owns, and the version counter slaves watch to copy metadata as soon as it changes.
//!
//! Its event, notified only here: `changed` (this shard's version moved: wakes the shippers,
//! which send a metadata frame to the slaves).

use super::completion::Event;
use super::groups::GroupOffsets;
use super::topics::{TopicEntry, TopicTable};
use crate::security::acl::AclTable;
use crate::security::users::UserTable;
use crate::store::io::Disk;
use futures_channel::oneshot;
use glommio::sync::{Permit, Semaphore};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

pub struct Metadata<D: Disk> {
    topics: RefCell<Arc<TopicTable>>,
    /// The ACL rules, changed on shard 0 like the topic table (under the same gate) and
    /// copied to every shard; a change bumps the version, so slaves get it too.
    acls: RefCell<Arc<AclTable>>,
    /// This shard's copy of the SCRAM users (`security::users`), swapped whole like the
    /// topic table; connections read it for each authentication step.
    users: RefCell<Arc<UserTable>>,
    groups: GroupOffsets<D>,
    /// Serializes topic-table changes on shard 0.
    gate: Semaphore,
    /// Counts topic-table and group-offset changes on this shard.
    version: Cell<u64>,
    changed: Event,
}

impl<D: Disk> Metadata<D> {
    pub fn new(topics: Arc<TopicTable>, acls: Arc<AclTable>, groups: GroupOffsets<D>) -> Self {
        Metadata {
            topics: RefCell::new(topics),
            acls: RefCell::new(acls),
            users: RefCell::new(Arc::new(UserTable::default())),
            groups,
            gate: Semaphore::new(1),
            version: Cell::new(0),
            changed: Event::default(),
        }
    }

    pub fn topic(&self, name: &str) -> Option<TopicEntry> {
        self.topics.borrow().topics.get(name).cloned()
    }

    /// `read` of the topic's entry, without copying it (a request's routing, every request).
    pub fn with_topic<R>(&self, name: &str, read: impl FnOnce(&TopicEntry) -> R) -> Option<R> {
        self.topics.borrow().topics.get(name).map(read)
    }

    pub fn table(&self) -> Arc<TopicTable> {
        self.topics.borrow().clone()
    }

    /// Swaps in a new table (the caller has registered and dropped the queues it implies).
    pub fn set_table(&self, table: Arc<TopicTable>) {
        *self.topics.borrow_mut() = table;
        self.bump();
    }

    pub fn acls(&self) -> Arc<AclTable> {
        self.acls.borrow().clone()
    }

    /// Swaps in new ACL rules (already durable on shard 0).
    pub fn set_acls(&self, acls: Arc<AclTable>) {
        *self.acls.borrow_mut() = acls;
        self.bump();
    }

    pub fn users(&self) -> Arc<UserTable> {
        self.users.borrow().clone()
    }

    /// The table loaded at start-up: no change to ship.
    pub fn install_users(&self, users: Arc<UserTable>) {
        *self.users.borrow_mut() = users;
    }

    /// Swaps in a changed user table (shard 0 has written it); slaves get it with the next
    /// metadata frame.
    pub fn set_users(&self, users: Arc<UserTable>) {
        *self.users.borrow_mut() = users;
        self.bump();
    }

    pub fn groups(&self) -> &GroupOffsets<D> {
        &self.groups
    }

    /// Takes the topic-change gate (shard 0). Never closed, so this only waits.
    pub async fn lock(&self) -> Permit<'_> {
        self.gate
            .acquire_permit(1)
            .await
            .expect("the metadata gate is never closed")
    }

    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Counts a change to topics or group offsets and tells the shippers.
    pub fn bump(&self) {
        self.version.set(self.version.get() + 1);
        self.changed.notify();
    }

    pub fn listen_changed(&self) -> oneshot::Receiver<()> {
        self.changed.listen()
    }
}
