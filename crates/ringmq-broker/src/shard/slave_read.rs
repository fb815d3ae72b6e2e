//! The pull's slave-read suggestion (`PullSummary::suggest`, with `slave_read_enable`): a
//! master sends a consumer reading far behind its log end to a slave of the group, so that
//! catch-up reads (O_DIRECT, on the core and disk queue the producers' appends use) land on a
//! broker with no producers; a slave sends the consumer back once it is close to the end again.

use super::Shard;
use crate::protocol::message::{SUGGEST_MASTER, SUGGEST_SLAVE, SUGGEST_STAY};
use crate::store::io::Disk;

impl<D: Disk> Shard<D> {
    /// What a pull answer suggests, for a pull whose first record starts at commitlog offset
    /// `record_at` (`None`: the pull is at the queue's end). The distance is commitlog bytes
    /// from that record to this shard's log end, so it counts every queue's appends the
    /// consumer would have to read past, which is what its reads cost the shard.
    pub fn read_suggestion(&self, record_at: Option<u64>) -> u8 {
        let config = self.config();
        if !config.slave_read_enable {
            return SUGGEST_STAY;
        }
        let distance = record_at.map_or(0, |at| self.store().max_offset().saturating_sub(at));
        let far = distance > config.slave_read_lag_bytes;
        if self.is_master() {
            // Only a slave that is connected now has the records (and answers at all).
            let has_slave = far && self.replicas().is_some_and(|r| !r.states().is_empty());
            if has_slave {
                SUGGEST_SLAVE
            } else {
                SUGGEST_STAY
            }
        } else if far {
            SUGGEST_STAY
        } else {
            SUGGEST_MASTER
        }
    }
}
