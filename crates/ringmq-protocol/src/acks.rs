//! Acknowledgement levels: how much of a produce must be safe before the broker answers it
//! (Kafka's `acks`, RocketMQ's one-way send).
//!
//! A produce request carries its level in frame header flag bits 1-2 (see
//! [`crate::frame::FrameHeader::acks`]); zero there leaves the choice to the broker's
//! `default_acks`. The broker raises a level below its `min_acks` to that floor and never
//! refuses a level, so the levels are ordered: `None < Leader < All`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// What a produce waits for before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Appended like `Leader`, but no response frame is written at all: the sender learns
    /// nothing, not even an error (RocketMQ's one-way send, Kafka's `acks=0`).
    None,
    /// The master's own guarantee: after its fdatasync under SYNC_FLUSH, from memory under
    /// ASYNC_FLUSH. No replica is waited for.
    Leader,
    /// The master's guarantee and every replica the broker counts (in master/slave mode its
    /// slave, as SYNC_MASTER waits today).
    All,
}

impl Acks {
    /// Every level, weakest first.
    pub const ALL: [Acks; 3] = [Acks::None, Acks::Leader, Acks::All];

    /// The name used in configuration, on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::All => "all",
        }
    }

    /// Whether the broker writes a response frame for a produce at this level.
    pub fn is_answered(self) -> bool {
        self != Acks::None
    }

    /// The value of flag bits 1-2 (before shifting) that names this level: 1, 2 or 3.
    pub(crate) fn flag_value(self) -> u8 {
        match self {
            Acks::None => 1,
            Acks::Leader => 2,
            Acks::All => 3,
        }
    }

    pub(crate) fn from_flag_value(value: u8) -> Option<Acks> {
        match value {
            1 => Some(Acks::None),
            2 => Some(Acks::Leader),
            3 => Some(Acks::All),
            _ => None,
        }
    }
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown acknowledgement level {0:?}: expected none, leader or all")]
pub struct UnknownAcks(pub String);

impl FromStr for Acks {
    type Err = UnknownAcks;
    fn from_str(text: &str) -> Result<Acks, UnknownAcks> {
        Acks::ALL
            .into_iter()
            .find(|acks| acks.name() == text)
            .ok_or_else(|| UnknownAcks(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_order_is_weakest_first() {
        for acks in Acks::ALL {
            assert_eq!(acks.name().parse::<Acks>(), Ok(acks));
            assert_eq!(acks.to_string(), acks.name());
            assert_eq!(Acks::from_flag_value(acks.flag_value()), Some(acks));
        }
        assert!(Acks::None < Acks::Leader && Acks::Leader < Acks::All);
        assert!("LEADER".parse::<Acks>().is_err());
        assert!("1".parse::<Acks>().is_err());
        assert_eq!(Acks::from_flag_value(0), None);
    }
}
