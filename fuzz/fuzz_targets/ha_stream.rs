#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmq_fuzzing::ha_stream(std::hint::black_box(data)));
