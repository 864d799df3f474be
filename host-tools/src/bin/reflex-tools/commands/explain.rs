//! `reflex-tools explain`: its flags and help text; the work is [`reflex_tools::explain`].

use anyhow::Result;
use reflex_tools::explain::{explain, ExplainArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    long_about = "What does the policy look at, and how brittle is it?\n\n\
    On one frame of a recorded episode: an occlusion heatmap per camera and action group (a \
    neutral patch slides over the frame; heat = how far the actions move, in their units), and a \
    robustness sweep (brightness, contrast, colour temperature, blur, shifts at growing strength \
    against the action change, sweep.svg); for a ViT policy, the attention rollout of each \
    camera's class token (Abnar & Zuidema 2020) over the frame, rollout-CAMERA.png. A JSON file \
    beside every picture holds the numbers."
)]
pub struct Args {
    /// The bundle folder (its `policy.toml`, model and preprocessing).
    #[arg(long)]
    pub bundle: PathBuf,
    /// A recorded episode folder (as `reflex run --camera replay:DIR` plays).
    #[arg(long)]
    pub episode: PathBuf,
    /// Frame index in the episode.
    #[arg(long, default_value_t = 0)]
    pub frame: usize,
    /// Occlusion patch side in capture pixels [default: an eighth of the frame's shorter side].
    #[arg(long)]
    pub patch: Option<usize>,
    /// Occlusion patch step in capture pixels [default: half the patch].
    #[arg(long)]
    pub stride: Option<usize>,
    /// Output folder for the PNGs, SVG and JSON.
    #[arg(long, default_value = "explain")]
    pub out: PathBuf,
}

/// Explain and list what was written (see [`reflex_tools::explain::explain`]).
pub fn run(a: Args) -> Result<()> {
    let written = explain(&ExplainArgs {
        bundle: a.bundle,
        episode: a.episode,
        frame: a.frame,
        patch: a.patch.unwrap_or(0),
        stride: a.stride.unwrap_or(0),
        out: a.out,
    })?;
    for p in written
        .frames
        .iter()
        .chain(&written.occlusion)
        .chain(&written.rollout)
        .chain([&written.sweep])
        .chain(&written.json)
    {
        println!("wrote {}", p.display());
    }
    Ok(())
}
