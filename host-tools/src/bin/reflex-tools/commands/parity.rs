//! `reflex-tools parity`: its flags and help text; the work is [`reflex_tools::parity`].

use anyhow::{bail, Result};
use reflex_tools::parity::{parity, summary, ParityArgs, DEFAULT_TOLERANCE};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    long_about = "Compare the bundle's preprocessing with your training dataloader.\n\n\
    For each raw frame in --frames (PNG/JPEG at the camera's capture size) and the tensor your \
    dataloader produced from it in --tensors (same file name, .npy, CHW or HWC float, e.g. \
    `np.save(f\"{stem}.npy\", tensor.numpy())`), run the bundle's preprocessing and report the \
    max/mean difference per channel. When they differ, the usual mistakes (RGB/BGR, crop offset \
    or size, nearest/bilinear, antialias, 0-255 vs 0-1, mean/std missing or twice, HWC/CHW, \
    uint8 resize) are tried one by one and the one that explains the difference is named. \
    Writes parity.json and a difference PNG per differing frame into --out. Exit status 1 when \
    any frame differs."
)]
pub struct Args {
    /// The bundle folder (its `policy.toml`, model and preprocessing).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Folder of raw frames (.png/.jpg at the capture size, before crop and resize).
    #[arg(long)]
    pub frames: PathBuf,
    /// Folder of the dataloader's tensors, one `STEM.npy` per frame `STEM.png`.
    #[arg(long)]
    pub tensors: PathBuf,
    /// The bundle camera the frames come from (needed when the bundle has several).
    #[arg(long)]
    pub camera: Option<String>,
    /// Where parity.json and the difference PNGs go.
    #[arg(long, default_value = "parity")]
    pub out: PathBuf,
    /// Largest difference that still counts as a match, in normalized units.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    pub tolerance: f32,
}

/// Compare and report (see [`reflex_tools::parity::parity`]).
pub fn run(a: Args) -> Result<()> {
    let args = ParityArgs {
        bundle: a.bundle,
        frames: a.frames,
        tensors: a.tensors,
        camera: a.camera,
        out: a.out,
        tolerance: a.tolerance,
    };
    let results = parity(&args)?;
    print!("{}", summary(&results, args.tolerance));
    let bad = results.iter().filter(|r| !r.matches).count();
    println!("report: {}", args.out.join("parity.json").display());
    if bad > 0 {
        bail!(
            "{bad} of {} frame(s) differ from the dataloader's tensors (difference images in {})",
            results.len(),
            args.out.display()
        );
    }
    println!("all {} frame(s) match", results.len());
    Ok(())
}
