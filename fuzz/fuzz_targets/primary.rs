//! A real primary fed datagrams, with fds, by fake workers (`rcluster::fuzzing::primary`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rcluster::fuzzing::primary(data));
