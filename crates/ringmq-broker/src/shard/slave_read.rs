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
    /// slave is connected; demoted to a slave, the same shard keeps a far consumer and sends
    /// a near one (or one at the end) back to the master; NOT_MASTER names the master the
    /// name servers named.
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
            shard.replicas().unwrap().register("slave".to_string(), 0);
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
            let end = shard.store().max_offset();
            assert_eq!(shard.read_suggestion(Some(0)), SUGGEST_STAY, "still far");
            assert_eq!(shard.read_suggestion(Some(end - 2048)), SUGGEST_MASTER);
            // A slave shows only what its master confirmed (nothing here): at that end.
            assert_eq!(pull_suggest(&shard, 0).await, SUGGEST_MASTER);

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
