#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| ringmq_fuzzing::client_response(std::hint::black_box(data))
);
