//! What a consumer does when its offset is no longer in the queue: the broker answers
//! `OFFSET_OUT_OF_RANGE` with the queue's minimum and maximum (retention deleted the records
//! before the minimum, or the offset lies past the end), and the consumer moves to one end of
//! that range by its [`OffsetReset`] policy and tells its caller what it did.

use crate::protocol::codes::parse_offset_range;
use crate::protocol::Status;
use crate::ClientError;

/// Where a consumer whose offset left the queue's range goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// To the queue's minimum: the oldest message still retained (nothing retained is skipped).
    Earliest,
    /// To the queue's maximum: only messages produced from now on.
    Latest,
}

impl OffsetReset {
    pub fn name(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }

    pub fn parse(text: &str) -> Option<OffsetReset> {
        match text {
            "earliest" => Some(OffsetReset::Earliest),
            "latest" => Some(OffsetReset::Latest),
            _ => None,
        }
    }

    /// The offset this policy picks in the range `min_offset..=max_offset`.
    pub fn target(self, min_offset: u64, max_offset: u64) -> u64 {
        match self {
            OffsetReset::Earliest => min_offset,
            OffsetReset::Latest => max_offset.max(min_offset),
        }
    }
}

/// A reset a consumer made: report it to the user (the messages between `from` and `to` were
/// skipped when `to > from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetResetApplied {
    pub queue: u32,
    pub from: u64,
    pub to: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub policy: OffsetReset,
}

impl OffsetResetApplied {
    /// The reset `policy` makes for `queue` at `from`, outside `min_offset..=max_offset`. An
    /// offset past the end goes to the end whatever the policy: the consumer has read
    /// everything there is, and `earliest` would replay the whole queue.
    pub fn new(
        policy: OffsetReset,
        queue: u32,
        from: u64,
        min_offset: u64,
        max_offset: u64,
    ) -> OffsetResetApplied {
        let to = if from > max_offset && max_offset >= min_offset {
            max_offset
        } else {
            policy.target(min_offset, max_offset)
        };
        OffsetResetApplied {
            queue,
            from,
            to,
            min_offset,
            max_offset,
            policy,
        }
    }
}

impl std::fmt::Display for OffsetResetApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queue {}: offset {} is out of range {}..={}; reset to {} ({})",
            self.queue,
            self.from,
            self.min_offset,
            self.max_offset,
            self.to,
            self.policy.name()
        )
    }
}

/// The range an `OFFSET_OUT_OF_RANGE` error carries, if `error` is one and carries it.
pub fn out_of_range(error: &ClientError) -> Option<(u64, u64)> {
    match error {
        ClientError::Status {
            status: Status::OffsetOutOfRange,
            message,
        } => parse_offset_range(message),
        _ => None,
    }
}

/// The reset `policy` makes for a pull of `queue` at `offset` that failed with `error`;
/// `None` unless the error is `OFFSET_OUT_OF_RANGE` with its range.
pub fn reset_for(
    error: &ClientError,
    policy: OffsetReset,
    queue: u32,
    offset: u64,
) -> Option<OffsetResetApplied> {
    let (min_offset, max_offset) = out_of_range(error)?;
    Some(OffsetResetApplied::new(
        policy, queue, offset, min_offset, max_offset,
    ))
}

/// What a pull made under a reset policy gave.
#[derive(Debug)]
pub enum PullOutcome {
    Pulled(crate::PullResult),
    /// The offset was out of range and has been moved: report this, then pull again.
    Reset(OffsetResetApplied),
}

/// Pulls `queue` at `*offset` with `pull` (any client's pull: [`crate::Client::pull`],
/// [`crate::FailoverClient::pull`]); on `OFFSET_OUT_OF_RANGE` carrying the range, moves
/// `*offset` where `policy` says and returns the reset for the caller to report. Any other
/// error, or a range the broker did not send, is returned as it came.
pub fn pull_with_reset(
    policy: OffsetReset,
    queue: u32,
    offset: &mut u64,
    pull: impl FnOnce(u64) -> Result<crate::PullResult, ClientError>,
) -> Result<PullOutcome, ClientError> {
    match pull(*offset) {
        Ok(result) => Ok(PullOutcome::Pulled(result)),
        Err(error) => match reset_for(&error, policy, queue, *offset) {
            Some(reset) => {
                *offset = reset.to;
                Ok(PullOutcome::Reset(reset))
            }
            None => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codes::offset_out_of_range_message;

    fn error(status: Status, message: String) -> ClientError {
        ClientError::Status { status, message }
    }

    #[test]
    fn each_policy_picks_its_end_of_the_carried_range() {
        let e = error(
            Status::OffsetOutOfRange,
            offset_out_of_range_message("offset 2 is below the minimum", 40, 90),
        );
        let earliest = reset_for(&e, OffsetReset::Earliest, 3, 2).expect("a reset");
        assert_eq!((earliest.from, earliest.to), (2, 40));
        assert_eq!(
            earliest.to_string(),
            "queue 3: offset 2 is out of range 40..=90; reset to 40 (earliest)"
        );
        let latest = reset_for(&e, OffsetReset::Latest, 3, 2).expect("a reset");
        assert_eq!(latest.to, 90);
        // Another status, or an old broker's message without the range: no reset here.
        let other = error(Status::StoreError, offset_out_of_range_message("x", 1, 2));
        assert_eq!(reset_for(&other, OffsetReset::Earliest, 0, 0), None);
        let old = error(
            Status::OffsetOutOfRange,
            "offset 2 is outside 40..=90".into(),
        );
        assert_eq!(reset_for(&old, OffsetReset::Earliest, 0, 0), None);
        assert_eq!(OffsetReset::parse("latest"), Some(OffsetReset::Latest));
        assert_eq!(OffsetReset::parse("newest"), None);
    }

    /// Review finding 9: an offset past the end goes to the end under either policy;
    /// `earliest` used to rewind it to the minimum and replay the whole queue.
    #[test]
    fn an_offset_past_the_end_goes_to_the_end() {
        let e = error(
            Status::OffsetOutOfRange,
            offset_out_of_range_message("offset 500 is past the queue's end", 40, 90),
        );
        for policy in [OffsetReset::Earliest, OffsetReset::Latest] {
            let reset = reset_for(&e, policy, 3, 500).expect("a reset");
            assert_eq!((reset.from, reset.to), (500, 90), "{policy:?}");
        }
    }

    #[test]
    fn a_pull_out_of_range_moves_the_offset_and_reports_it() {
        let mut offset = 7;
        let outcome = pull_with_reset(OffsetReset::Latest, 1, &mut offset, |at| {
            assert_eq!(at, 7);
            Err(error(
                Status::OffsetOutOfRange,
                offset_out_of_range_message("offset 7 is below", 10, 20),
            ))
        })
        .expect("a reset, not an error");
        assert!(matches!(outcome, PullOutcome::Reset(r) if r.to == 20 && r.from == 7));
        assert_eq!(offset, 20);
        let failed = pull_with_reset(OffsetReset::Earliest, 1, &mut offset, |_| {
            Err(error(Status::StoreError, "disk".into()))
        });
        assert!(failed.is_err());
        assert_eq!(offset, 20, "another error leaves the offset");
    }
}
