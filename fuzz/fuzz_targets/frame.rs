//! The frame codec: header, batches, connection entries and id lists (`rcluster::fuzzing::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rcluster::fuzzing::frame(data));
