//! One module per `reflex-tools` command: its `Args` (clap derive) and `run`, which calls the
//! library (`reflex_tools`).

pub mod deploy;
pub mod episode;
pub mod explain;
pub mod export;
pub mod import;
pub mod infer;
pub mod inspect;
pub mod parity;
pub mod quantize;
