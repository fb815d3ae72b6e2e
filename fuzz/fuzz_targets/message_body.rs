#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| ringmq_fuzzing::message_body(std::hint::black_box(data))
);
