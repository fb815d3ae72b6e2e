//! The pull's slave-read suggestion (`PullSummary::suggest`, with `slave_read_enable`): a
//! master sends a consumer reading far behind its log end to a slave of the group, so that
//! catch-up reads (O_DIRECT, on the core and disk queue the producers' appends use) land on a
//! broker with no producers; a slave sends the consumer back once it is close to the end again.
//!
//! The master suggests a slave only when one has acknowledged the records the answer returns:
//! the consumer's next pull there must find them, not `OFFSET_OUT_OF_RANGE`. The slave sends
//! the consumer back only at half the distance the master sends it away at
//! ([`BACK_TO_MASTER_DIVISOR`]) and only while its link to the master streams (a master that
//! is down cannot serve it). The way back does not depend on the slave's own
//! `slave_read_enable`: a consumer a master sent here is sent back whatever the slave's
//! configuration, or it would stay for good.

use super::Shard;
use crate::protocol::message::{SUGGEST_MASTER, SUGGEST_SLAVE, SUGGEST_STAY};
use crate::store::io::Disk;
use std::ops::Range;

/// A slave sends a consumer back to the master within `slave_read_lag_bytes / 2` of its log
/// end. The slave's log ends a little before the master's, so at the master's own threshold
/// a consumer just past it would be sent back and forth on every pull; half the distance
/// leaves room for the slave's lag and for the appends made while the consumer moves.
pub const BACK_TO_MASTER_DIVISOR: u64 = 2;

impl<D: Disk> Shard<D> {
    /// What a pull answer suggests, for a pull whose records span the commitlog range
    /// `records` (`None`: the pull is at the queue's end). The distance is commitlog bytes
    /// from the first record to this shard's log end, so it counts every queue's appends the
    /// consumer would have to read past, which is what its reads cost the shard.
    pub fn read_suggestion(&self, records: Option<Range<u64>>) -> u8 {
        let config = self.config();
        let end = self.store().max_offset();
        let distance = records.as_ref().map_or(0, |r| end.saturating_sub(r.start));
        if self.is_master() {
            let far = distance > config.slave_read_lag_bytes;
            // Only a connected slave holding what this answer returns can serve the next pull.
            let slave_has_them = || {
                records.as_ref().is_some_and(|r| {
                    self.replicas()
                        .is_some_and(|replicas| replicas.any_acked_at_least(r.end))
                })
            };
            if config.slave_read_enable && far && slave_has_them() {
                SUGGEST_SLAVE
            } else {
                SUGGEST_STAY
            }
        } else {
            let near = distance <= config.slave_read_lag_bytes / BACK_TO_MASTER_DIVISOR;
            let master_serves = self
                .role_state()
                .slave_link()
                .is_some_and(|link| link.is_streaming());
            if near && master_serves {
                SUGGEST_MASTER
            } else {
                SUGGEST_STAY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::RealClock;
    use crate::config::BrokerConfig;
    use crate::protocol::message::{
        MessageRef, ProduceRequest, PullRequest, PullResponse, TopicCreate, SUGGEST_MASTER,
        SUGGEST_SLAVE, SUGGEST_STAY,
    };
    use crate::protocol::{not_master_hint, MasterHint, Opcode, Status};
    use crate::shard::role::RoleTarget;
    use crate::shard::{handlers, Shard};
    use crate::testing::disk::SimDisk;
    use std::rc::Rc;

    /// Records of 1 KiB body: 64 of them put the first well past a 16 KiB distance.
    const LAG: u64 = 16 * 1024;
    const MESSAGES: u64 = 64;

    async fn pull_suggest(shard: &Rc<Shard<SimDisk>>, offset: u64) -> u8 {
        let mut body = Vec::new();
        PullRequest {
            topic: "t".to_string(),
            queue: 0,
            offset,
            max_messages: 1,
            max_bytes: 1 << 16,
            max_wait_ms: 0,
        }
        .encode(&mut body);
        let answer = handlers::handle(shard, Opcode::Pull, &body).await;
        assert!(
            matches!(answer.status, Status::Ok | Status::NoNewMessage),
            "{:?}",
            answer.status
        );
        PullResponse::decode(&answer.body).unwrap().summary.suggest
    }

    /// The master suggests a slave only to a consumer far behind its log end and only while a
    /// connected slave holds the records; demoted to a slave, the same shard keeps a far
    /// consumer and sends a near one (within half the distance, or at the end) back to the
    /// master while its link streams; NOT_MASTER names the master the name servers named.
    #[test]
    fn far_consumers_go_to_a_slave_and_near_ones_back_to_the_master() {
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                slave_read_enable: true,
                slave_read_lag_bytes: LAG,
                ..crate::testing::small_shard_config()
            };
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            let mut create = Vec::new();
            TopicCreate {
                name: "t".to_string(),
                queue_count: 1,
            }
            .encode(&mut create);
            assert_eq!(
                handlers::handle(&shard, Opcode::TopicCreate, &create)
                    .await
                    .status,
                Status::Ok
            );
            let payload = vec![7u8; 1024];
            for _ in 0..MESSAGES {
                let mut body = Vec::new();
                ProduceRequest {
                    topic: "t",
                    queue: 0,
                    messages: vec![MessageRef {
                        born_timestamp_ms: 0,
                        key: b"",
                        properties: b"",
                        body: &payload,
                    }],
                }
                .encode(&mut body);
                let produced = handlers::handle(&shard, Opcode::Produce, &body).await;
                assert_eq!(produced.status, Status::Ok);
            }
            // No slave connected: nowhere to send the far consumer.
            assert_eq!(pull_suggest(&shard, 0).await, SUGGEST_STAY);
            let replicas = shard.replicas().unwrap();
            let slave = replicas.register("slave".to_string(), 0, 0);
            // Connected but holding none of the records yet: its answer would be out of range.
            assert_eq!(pull_suggest(&shard, 0).await, SUGGEST_STAY);
            let end = shard.store().max_offset();
            replicas.report(slave, 4096, end).unwrap();
            assert_eq!(
                pull_suggest(&shard, 0).await,
                SUGGEST_SLAVE,
                "it holds them"
            );
            replicas.report(slave, end, end).unwrap();
            assert_eq!(pull_suggest(&shard, 0).await, SUGGEST_SLAVE);
            assert_eq!(pull_suggest(&shard, MESSAGES - 2).await, SUGGEST_STAY);
            assert_eq!(
                pull_suggest(&shard, MESSAGES).await,
                SUGGEST_STAY,
                "at the end"
            );

            // Nothing listens there: the link retries in the background.
            let master: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            shard.change_role(RoleTarget::Slave(master)).await.unwrap();
            let near = end - 2048..end;
            assert_eq!(
                shard.read_suggestion(Some(0..1024)),
                SUGGEST_STAY,
                "still far"
            );
            assert_eq!(
                shard.read_suggestion(Some(near.clone())),
                SUGGEST_STAY,
                "near, but the master is not there to serve it"
            );
            // A slave shows only what its master confirmed (nothing here): at that end.
            assert_eq!(pull_suggest(&shard, 0).await, SUGGEST_STAY);
            // Checked with no await in between: the link task would see it fail again.
            shard.role_state().slave_link().unwrap().established();
            assert_eq!(shard.read_suggestion(Some(near)), SUGGEST_MASTER);
            assert_eq!(shard.read_suggestion(None), SUGGEST_MASTER, "at the end");
            // Between half the distance and the whole: the master would keep it away, so the
            // slave keeps it too rather than send it back and forth.
            let between = end - LAG / 2 - 1024;
            assert_eq!(shard.read_suggestion(Some(between..end)), SUGGEST_STAY);

            let mut produce = Vec::new();
            ProduceRequest {
                topic: "t",
                queue: 0,
                messages: vec![MessageRef {
                    born_timestamp_ms: 0,
                    key: b"",
                    properties: b"",
                    body: b"x",
                }],
            }
            .encode(&mut produce);
            let refused = handlers::handle(&shard, Opcode::Produce, &produce).await;
            assert_eq!(refused.status, Status::NotMaster);
            assert_eq!(
                not_master_hint(&String::from_utf8_lossy(&refused.body)),
                None
            );
            let named = MasterHint {
                listen: "10.1.2.3:10911".to_string(),
                epoch: 5,
            };
            shard.registration().set_master(Some(named.clone()));
            let refused = handlers::handle(&shard, Opcode::Produce, &produce).await;
            assert_eq!(refused.status, Status::NotMaster);
            let message = String::from_utf8_lossy(&refused.body).into_owned();
            assert_eq!(not_master_hint(&message), Some(named), "{message}");
            let refused = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
            assert!(String::from_utf8_lossy(&refused.body)
                .ends_with(" [master=10.1.2.3:10911 epoch=5]"));
            shard.stop(background).await.unwrap();
        });
    }
}
