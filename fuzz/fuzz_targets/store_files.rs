#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringmq_fuzzing::store_files(std::hint::black_box(data)));
