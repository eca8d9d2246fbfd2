//! Inventories and deltas built from arbitrary bytes: `apply(a, diff(a, b)) == b`, and
//! `apply` never panics on an inconsistent delta. The body is
//! `portolan_core::fuzz::delta_laws`, which the stable test suite also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portolan_core::fuzz::delta_laws(data);
});
