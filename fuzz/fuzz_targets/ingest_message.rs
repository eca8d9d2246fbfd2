//! Arbitrary bytes decoded as a `StreamInventoryRequest` and validated as the collector
//! does; the body is `portolan_core::fuzz::ingest_message`, which the stable test suite
//! also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portolan_core::fuzz::ingest_message(data);
});
