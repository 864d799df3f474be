//! `reflex-tools inspect`: its flags and help text; the work is [`reflex_tools::inspect`].

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory.
    pub bundle: PathBuf,
}

/// Print the bundle (see [`reflex_tools::inspect::inspect`]).
pub fn run(a: Args) -> Result<()> {
    reflex_tools::inspect::inspect(&a.bundle)
}
