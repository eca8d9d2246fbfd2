//! End-to-end tests of Portolan live in `e2e/`: `cargo nextest run -p portolan-e2e`.
//! They run the real binaries (build them first: `cargo build --workspace --bins`), a real
//! ClickHouse server and hosts in network namespaces, so they need root.
