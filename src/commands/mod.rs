//! The product's command-line commands (argument structs and their implementations); `main.rs` only wires them to
//! clap, and the lab's commands (`bench`, `quality`) live in `crate::lab`.

pub mod doctor;
pub mod stylize;
