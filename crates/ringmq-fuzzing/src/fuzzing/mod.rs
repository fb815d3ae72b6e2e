mod client;
mod protocol;
mod replication;
mod seeds;
mod store;

pub use client::client_response;
pub use protocol::{frame, frame_structured, message_body};
pub use replication::{ha_handshake, ha_stream};
pub use seeds::{seeds, Seed};
pub use store::{commitlog_record, store_files};

/// One fuzz target: its name (the binary and directory name) and its check.
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

/// Every fuzz target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        check: frame,
    },
    Target {
        name: "frame_structured",
        check: frame_structured,
    },
    Target {
        name: "message_body",
        check: message_body,
    },
    Target {
        name: "ha_handshake",
        check: ha_handshake,
    },
    Target {
        name: "ha_stream",
        check: ha_stream,
    },
    Target {
        name: "commitlog_record",
        check: commitlog_record,
    },
    Target {
        name: "store_files",
        check: store_files,
    },
    Target {
        name: "client_response",
        check: client_response,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Reads structure from the front of a fuzz input; an exhausted input reads as zeros, so every
/// input builds something and the fuzzer's mutations stay local.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.bytes(N);
        out[..head.len()].copy_from_slice(head);
        out
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// One of `choices`, picked by the next byte.
    pub(crate) fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.u8() as usize % choices.len()]
    }
    pub(crate) fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Decodes `$body` with `$ty::decode`; on success encodes the value, decodes that again and
/// asserts the value survived. With `canonical`, the encoding must also equal the input.
macro_rules! round_trip {
    ($body:expr, $ty:ty, canonical: $canonical:expr) => {{
        let body: &[u8] = $body;
        if let Ok(value) = std::hint::black_box(<$ty>::decode(body)) {
            let mut encoded = Vec::new();
            value.encode(&mut encoded);
            let again = <$ty>::decode(&encoded).unwrap_or_else(|e| {
                panic!("{}: re-encoded value does not decode: {e}", stringify!($ty))
            });
            assert_eq!(
                again,
                value,
                "{}: round trip changed the value",
                stringify!($ty)
            );
            if $canonical {
                assert_eq!(
                    encoded,
                    body,
                    "{}: encoding is not canonical",
                    stringify!($ty)
                );
            }
        }
    }};
}
pub(crate) use round_trip;
