//! Admission: which connections the broker takes and how much request memory they may hold.
//!
//! [`Admission`] counts client connections across every shard (`max_connections`) and per
//! peer address (`max_connections_per_ip`); it is shared by all shards and touched only on
//! accept and close, so one lock is cheap. A connection over a limit gets a `SYSTEM_BUSY`
//! frame naming the limit and is closed. [`InflightBudget`] is one shard's budget of request
//! bytes held across all of its connections (`shard_inflight_budget_bytes`): a frame takes its
//! bytes before it is read in whole and gives them back when its handler is done.

use crate::config::BrokerConfig;
use crate::constants::INFLIGHT_BUDGET_WAIT_MS;
use futures_lite::future;
use glommio::sync::{Semaphore, StaticPermit};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The connection limits of the whole broker.
pub struct Admission {
    max_connections: usize,
    max_connections_per_ip: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused, worded for the client that receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Total { limit: usize },
    PerIp { ip: IpAddr, limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Total { limit } => write!(
                f,
                "max_connections: the broker already has {limit} client connections; closing this one"
            ),
            Refusal::PerIp { ip, limit } => write!(
                f,
                "max_connections_per_ip: {ip} already has {limit} connections to this broker; closing this one"
            ),
        }
    }
}

/// One admitted connection; dropping it frees its place.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(config: &BrokerConfig) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections: config.max_connections as usize,
            max_connections_per_ip: config.max_connections_per_ip as usize,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_connections {
            return Err(Refusal::Total {
                limit: self.max_connections,
            });
        }
        let from_ip = open.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_connections_per_ip {
            return Err(Refusal::PerIp {
                ip,
                limit: self.max_connections_per_ip,
            });
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Client connections open now, across every shard.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// One shard's request-memory budget. Frames still arriving may hold at most
/// [`RECEIVING_SHARE_PERCENT`] of it, so senders that stall in the middle of large frames
/// cannot starve complete requests of the rest.
pub struct InflightBudget {
    total: Rc<Semaphore>,
    receiving: Rc<Semaphore>,
}

/// Share of the budget that frames still being received may hold (see [`InflightBudget`]).
pub const RECEIVING_SHARE_PERCENT: u64 = 75;

/// Bytes a request holds from the budget until it is dropped.
pub struct BudgetPermit {
    _total: StaticPermit,
}

/// Bytes a frame holds while it is still arriving, beside its [`BudgetPermit`].
pub struct ReceivingPermit {
    _receiving: StaticPermit,
}

impl InflightBudget {
    pub fn new(budget_bytes: u64) -> Rc<InflightBudget> {
        Rc::new(InflightBudget {
            total: Rc::new(Semaphore::new(budget_bytes)),
            receiving: Rc::new(Semaphore::new(budget_bytes / 100 * RECEIVING_SHARE_PERCENT)),
        })
    }

    /// Budget for a complete frame of `bytes`, waiting at most [`INFLIGHT_BUDGET_WAIT_MS`].
    pub async fn reserve(&self, bytes: u64) -> Option<BudgetPermit> {
        let total = within_wait(self.total.clone().acquire_static_permit(bytes)).await?;
        Some(BudgetPermit { _total: total })
    }

    /// Budget for a frame of `bytes` whose body has not arrived yet, waiting at most
    /// [`INFLIGHT_BUDGET_WAIT_MS`] in all.
    pub async fn reserve_receiving(&self, bytes: u64) -> Option<(ReceivingPermit, BudgetPermit)> {
        let wait = async {
            let receiving = self.receiving.clone().acquire_static_permit(bytes).await?;
            let total = self.total.clone().acquire_static_permit(bytes).await?;
            Ok((receiving, total))
        };
        let (receiving, total) = within_wait(wait).await?;
        Some((
            ReceivingPermit {
                _receiving: receiving,
            },
            BudgetPermit { _total: total },
        ))
    }
}

async fn within_wait<T>(
    acquire: impl std::future::Future<Output = glommio::Result<T, ()>>,
) -> Option<T> {
    future::or(async { acquire.await.ok() }, async {
        glommio::timer::sleep(Duration::from_millis(INFLIGHT_BUDGET_WAIT_MS)).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: u32, per_ip: u32) -> Arc<Admission> {
        Admission::new(&BrokerConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..BrokerConfig::default()
        })
    }

    #[test]
    fn per_ip_limit_counts_each_address_and_frees_on_drop() {
        let admission = admission(10, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).err(),
            Some(Refusal::PerIp { ip: a, limit: 2 })
        );
        let _other = admission
            .admit(b)
            .expect("another address is counted apart");
        drop(first);
        let _again = admission
            .admit(a)
            .expect("a closed connection frees its place");
        assert_eq!(admission.open_connections(), 3);
    }

    #[test]
    fn frames_still_arriving_cannot_take_the_whole_budget() {
        glommio::LocalExecutor::default().run(async {
            let budget = InflightBudget::new(1000);
            let receiving = budget
                .reserve_receiving(700)
                .await
                .expect("within the share");
            assert!(
                budget.reserve_receiving(100).await.is_none(),
                "past the receiving share: no budget within the wait"
            );
            let complete = budget
                .reserve(250)
                .await
                .expect("the rest serves complete frames");
            drop((receiving, complete));
            budget.reserve_receiving(750).await.expect("freed on drop");
        });
    }

    #[test]
    fn total_limit_spans_addresses() {
        let admission = admission(2, 5);
        let _a = admission.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _b = admission.admit("10.0.0.2".parse().unwrap()).unwrap();
        let refusal = admission.admit("10.0.0.3".parse().unwrap()).err().unwrap();
        assert_eq!(refusal, Refusal::Total { limit: 2 });
        assert!(refusal.to_string().starts_with("max_connections:"));
    }
}
