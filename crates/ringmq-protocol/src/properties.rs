//! Message properties the broker reads and writes: retries, dead letters, and the producer of
//! a Kafka idempotent batch.
//!
//! A message's `properties` bytes are opaque to the broker except for the names below, which
//! it sets on the copies it makes when a consumer rejects a message (`MessageReject`). Its own
//! properties are `NAME=VALUE` lines separated by `\n`; a producer may keep anything else in
//! the same bytes (other lines are left as they are, byte for byte), and a producer that wants
//! to read them back should use the same layout. Values the broker writes never contain `\n`.

/// How many times the message has been rejected: 1 on the first retry.
pub const RECONSUME_TIMES: &str = "RECONSUME_TIMES";
/// Topic the message was first produced to (not the retry topic).
pub const ORIGIN_TOPIC: &str = "ORIGIN_TOPIC";
/// Queue of [`ORIGIN_TOPIC`] the message was first produced to.
pub const ORIGIN_QUEUE: &str = "ORIGIN_QUEUE";
/// Queue offset of the first delivery in [`ORIGIN_QUEUE`].
pub const ORIGIN_OFFSET: &str = "ORIGIN_OFFSET";
/// The first delivery's message id: `<broker name>:<shard>:<commitlog offset>`, unique in a
/// broker group.
pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// Where a scheduled copy goes when it is due (`%RETRY%<group>`).
pub const REAL_TOPIC: &str = "REAL_TOPIC";
/// The delay level (1-based) the copy waited at.
pub const DELAY_LEVEL: &str = "DELAY_LEVEL";
/// When a scheduled copy is due, in ms since the Unix epoch.
pub const DUE_MS: &str = "DUE_MS";

/// On the first message of a batch from a Kafka idempotent producer:
/// `<producer id>:<epoch>:<base sequence>:<record count>`. A broker that restarted (or a new
/// master) rebuilds its duplicate windows from the partition's tail with it; Kafka consumers
/// never see it as a header, and a Kafka producer may not send it.
pub const KAFKA_PRODUCER: &str = "KAFKA_PRODUCER";

const SEPARATOR: u8 = b'\n';

/// The value of property `name`, if a line `name=value` holds it (the last one wins).
pub fn get<'a>(properties: &'a [u8], name: &str) -> Option<&'a str> {
    properties
        .split(|b| *b == SEPARATOR)
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            std::str::from_utf8(rest).ok()
        })
}

/// The value of property `name` as a number; `None` when absent or not a number.
pub fn get_u64(properties: &[u8], name: &str) -> Option<u64> {
    get(properties, name)?.parse().ok()
}

/// `properties` with each of `set` replacing any line of the same name, appended at the end in
/// the order given. Every other line stays as it was.
pub fn with(properties: &[u8], set: &[(&str, String)]) -> Vec<u8> {
    with_and_without(properties, set, &[])
}

/// [`with`], also dropping the lines named in `drop`.
pub fn with_and_without(properties: &[u8], set: &[(&str, String)], drop: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(properties.len() + 64 * set.len());
    if !properties.is_empty() {
        for line in properties.split(|b| *b == SEPARATOR) {
            let replaced = set.iter().map(|(name, _)| name).chain(drop).any(|name| {
                line.strip_prefix(name.as_bytes())
                    .is_some_and(|rest| rest.starts_with(b"="))
            });
            if !replaced && !line.is_empty() {
                out.extend_from_slice(line);
                out.push(SEPARATOR);
            }
        }
    }
    for (name, value) in set {
        debug_assert!(
            !name.contains(['=', '\n']) && !value.contains('\n'),
            "property {name}={value} would not parse back"
        );
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(SEPARATOR);
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_keeps_other_lines() {
        let user = b"TAGS=new\nRECONSUME_TIMES=1\nopaque";
        let out = with(user, &[(RECONSUME_TIMES, "2".into()), (DUE_MS, "9".into())]);
        assert_eq!(out, b"TAGS=new\nopaque\nRECONSUME_TIMES=2\nDUE_MS=9");
        assert_eq!(get_u64(&out, RECONSUME_TIMES), Some(2));
        assert_eq!(get(&out, "TAGS"), Some("new"));
        assert_eq!(
            get(&out, "RECONSUME"),
            None,
            "a prefix of a name is not the name"
        );
        assert_eq!(with(b"", &[(DUE_MS, "1".into())]), b"DUE_MS=1");
        assert_eq!(get_u64(b"DUE_MS=x", DUE_MS), None);
        let dropped = with_and_without(&out, &[(RECONSUME_TIMES, "3".into())], &[DUE_MS]);
        assert_eq!(dropped, b"TAGS=new\nopaque\nRECONSUME_TIMES=3");
    }
}
