//! `reflex-tools quantize`: its flags and help text are [`reflex_tools::quantize::QuantizeArgs`]
//! (the quantizer's options, shared with its library code); the work is
//! [`reflex_tools::quantize::run`].

use anyhow::Result;

pub use reflex_tools::quantize::QuantizeArgs as Args;

/// Quantize the bundle (see [`reflex_tools::quantize::run`]).
pub fn run(a: Args) -> Result<()> {
    reflex_tools::quantize::run(a)
}
