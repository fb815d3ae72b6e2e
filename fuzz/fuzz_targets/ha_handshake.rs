#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| ringmq_fuzzing::ha_handshake(std::hint::black_box(data))
);
