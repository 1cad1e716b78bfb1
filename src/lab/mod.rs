//! The measuring lab, apart from the product: the performance bench (`fuchun bench`: evaluation speed, memory, the
//! schedule, warm starts, camera streams; the side-by-side run against PyTorch), the quality bench (`fuchun
//! quality`: measures computed outside the optimiser's network on a fixed set of content/style pairs), the CPU's
//! measured peak and the synthetic clips. Nothing in the product (engine, transfer, daemon, stylize) depends on it.

pub mod bench;
pub mod bench_args;
mod child;
pub mod clip;
pub mod kiosk_bench;
pub mod pairs;
pub mod peak;
pub mod peers;
pub mod quality;
pub mod quality_bench;
mod report;
pub mod stream_bench;
