//! Command-line commands (argument structs and their implementations); `main.rs` only wires them to clap.

pub mod bench;
pub mod doctor;
pub mod frames;
pub mod peers;
pub mod quality;
pub mod stream_bench;
pub mod stylize;
