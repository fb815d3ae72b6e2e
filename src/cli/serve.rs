//! `ringmq serve`: builds the effective configuration (defaults, then `--config FILE`, then
//! flags) and runs the broker.

use crate::config::{BrokerConfig, ConfigError, FlushDiskType};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store directory (default ./data).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Client listen address HOST:PORT (default 127.0.0.1:10911); port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Number of shards, one executor pinned per core (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// SYNC_FLUSH or ASYNC_FLUSH.
    #[arg(long)]
    pub flush: Option<String>,
    /// SYNC_MASTER, ASYNC_MASTER or SLAVE.
    #[arg(long)]
    pub role: Option<String>,
    /// Name of the broker group (master and slaves share it).
    #[arg(long)]
    pub broker_name: Option<String>,
    /// Replication listen address of a master HOST:PORT (default 127.0.0.1:10912).
    #[arg(long)]
    pub ha_listen: Option<String>,
    /// A slave's master: the master's replication address HOST:PORT.
    #[arg(long)]
    pub master: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Name servers to register with, HOST:PORT[,HOST:PORT...], names resolved at start
    /// (default: none, the broker works alone).
    #[arg(long, value_delimiter = ',')]
    pub namesrv: Option<Vec<String>>,
    /// The cluster this broker's group belongs to (default DefaultCluster).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The client address registered with the name servers, HOST:PORT (default: the bound
    /// listen address).
    #[arg(long)]
    pub advertised_listen: Option<String>,
    /// The replication address registered with the name servers, HOST:PORT (default: the
    /// bound ha-listen address).
    #[arg(long)]
    pub advertised_ha_listen: Option<String>,
    /// Serve Kafka's wire protocol on HOST:PORT (default: off; docs/kafka.md).
    #[arg(long)]
    pub kafka_listen: Option<String>,
    /// Controller mode: the controllers HOST:PORT[,HOST:PORT...] assign this broker its id and
    /// role (docs/controller.md); `--role` and `--master` are then refused.
    #[arg(long, value_delimiter = ',')]
    pub controller: Option<Vec<String>>,
}

impl ServeArgs {
    pub fn effective_config(&self) -> Result<BrokerConfig, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--config {}: {e}", path.display()))?;
                BrokerConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => BrokerConfig::default(),
        };
        if let Some(store) = &self.store {
            config.store_dir = store.clone();
        }
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(shards) = self.shards {
            if shards == 0 {
                return Err("--shards: must be at least 1".into());
            }
            config.shards = shards;
        }
        if let Some(role) = &self.role {
            config.broker_role = role.parse().map_err(|e: ConfigError| e.to_string())?;
            config.given.broker_role = true;
        }
        if let Some(controller) = &self.controller {
            config.controller = controller
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if config.controller.is_empty() {
                return Err("--controller: give at least one HOST:PORT".into());
            }
        }
        if let Some(name) = &self.broker_name {
            config.broker_name = name.clone();
        }
        if let Some(ha) = &self.ha_listen {
            config.ha_listen = ha.clone();
        }
        if let Some(master) = &self.master {
            config.master = Some(master.clone());
        }
        if let Some(metrics) = &self.metrics_listen {
            config.metrics_listen = Some(metrics.clone());
        }
        if let Some(namesrv) = &self.namesrv {
            config.namesrv = namesrv
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if config.namesrv.is_empty() {
                return Err("--namesrv: give at least one HOST:PORT".into());
            }
        }
        if let Some(cluster) = &self.cluster {
            config.cluster_name = cluster.clone();
        }
        if let Some(advertised) = &self.advertised_listen {
            config.advertised_listen = Some(advertised.clone());
        }
        if let Some(advertised) = &self.advertised_ha_listen {
            config.advertised_ha_listen = Some(advertised.clone());
        }
        if let Some(kafka) = &self.kafka_listen {
            config.kafka_listen = Some(kafka.clone());
        }
        if let Some(flush) = &self.flush {
            config.flush_disk_type = flush.parse::<FlushDiskType>().map_err(|e| e.to_string())?;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Runs the broker until SIGINT/SIGTERM. Returns a message for the user on failure.
pub fn run(args: ServeArgs) -> Result<(), String> {
    crate::server::run(args.effective_config()?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;

    #[test]
    fn cluster_flags_reach_the_configuration_and_bad_addresses_are_named() {
        let args = ServeArgs {
            namesrv: Some(vec!["127.0.0.1:9876".into(), " 127.0.0.1:9877".into()]),
            cluster: Some("prod".into()),
            broker_name: Some("broker-b".into()),
            advertised_listen: Some("broker-b.example:10911".into()),
            ..ServeArgs::default()
        };
        let config = args.effective_config().expect("valid");
        assert_eq!(config.namesrv, ["127.0.0.1:9876", "127.0.0.1:9877"]);
        assert_eq!(config.cluster_name, "prod");
        assert_eq!(config.broker_name, "broker-b");
        assert_eq!(
            config.advertised_listen.as_deref(),
            Some("broker-b.example:10911")
        );
        let alone = ServeArgs::default().effective_config().expect("valid");
        assert!(alone.namesrv.is_empty());
        assert_eq!(alone.cluster_name, "DefaultCluster");

        let bad = ServeArgs {
            namesrv: Some(vec!["ns-1".into()]),
            ..ServeArgs::default()
        };
        let refused = bad.effective_config().expect_err("an address needs a port");
        assert!(refused.starts_with("namesrv: `ns-1`"), "{refused}");
        let empty = ServeArgs {
            namesrv: Some(vec![String::new()]),
            ..ServeArgs::default()
        };
        assert!(empty.effective_config().unwrap_err().contains("--namesrv"));
        let bad = ServeArgs {
            namesrv: Some(vec!["127.0.0.1:9876".into()]),
            advertised_listen: Some("no-port".into()),
            ..ServeArgs::default()
        };
        assert!(bad
            .effective_config()
            .unwrap_err()
            .starts_with("advertised_listen:"));
    }

    #[test]
    fn controller_mode_refuses_a_configured_role_or_master() {
        let controlled = ServeArgs {
            controller: Some(vec!["127.0.0.1:9877".into()]),
            ..ServeArgs::default()
        };
        let config = controlled.effective_config().expect("valid");
        assert!(config.controller_mode());
        let with_role = ServeArgs {
            role: Some("SYNC_MASTER".into()),
            ..controlled.clone()
        };
        let refused = with_role.effective_config().unwrap_err();
        assert!(refused.starts_with("broker_role:"), "{refused}");
        let with_master = ServeArgs {
            master: Some("127.0.0.1:10912".into()),
            ..controlled.clone()
        };
        let refused = with_master.effective_config().unwrap_err();
        assert!(refused.starts_with("master:"), "{refused}");
        let empty = ServeArgs {
            controller: Some(vec![" ".into()]),
            ..ServeArgs::default()
        };
        assert!(empty
            .effective_config()
            .unwrap_err()
            .contains("--controller"));
    }
}
