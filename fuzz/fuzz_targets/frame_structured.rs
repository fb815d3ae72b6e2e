#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| ringmq_fuzzing::frame_structured(std::hint::black_box(data))
);
