//! Replication: moving committed commitlog bytes from this broker to its replicas.

pub mod splice;
