//! `reflex-tools infer`: its flags and help text; the work is [`reflex_tools::infer`].

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub bundle: PathBuf,
    /// NAME=FILE.npy, one per graph input (names as `inspect` lists them).
    #[arg(long = "input", required = true)]
    pub inputs: Vec<String>,
    /// Output .npy file (the action output), or an existing folder to get every output as
    /// `NAME.npy`. An existing file is not overwritten unless --force is given.
    #[arg(long)]
    pub output: PathBuf,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

/// Run the network on the inputs (see [`reflex_tools::infer::infer`]).
pub fn run(a: Args) -> Result<()> {
    reflex_tools::infer::infer(&a.bundle, &a.inputs, &a.output, a.force)
}
