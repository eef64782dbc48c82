//! Benchmarks of rxen. `cargo bench -p rxen-bench` runs `benches/loopback.rs`:
//! shared-ring round trips between two loopback domain processes, beside a
//! plain SPSC queue between the same processes, and the cost of one event
//! channel notification.

pub mod spsc;
pub mod xs;
