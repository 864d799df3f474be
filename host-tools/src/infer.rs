//! `reflex-tools infer`: a bundle's raw network on .npy tensors (no pre/post-processing), the
//! outputs written as .npy, for parity checks against PyTorch.

use anyhow::{bail, Context, Result};
use reflex_models::npy;
use reflex_models::output::{self, Replace};
use reflex_models::Bundle;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// Run the bundle at `path` on `inputs` (`NAME=FILE.npy`, one per graph input, f32 with the
/// input's exact shape) and write the action output to `output`, or every output as
/// `NAME.npy` when `output` is an existing folder; an existing file is replaced only with
/// `force`. Errors name the `--input`, file or shape at fault; nothing is written then.
pub fn infer(path: &Path, inputs: &[String], output: &Path, force: bool) -> Result<()> {
    let b = Bundle::load(path)?;
    let plan = b.policy_model.clone().into_optimized()?.into_runnable()?;
    let mut values: Vec<Option<TValue>> = vec![None; b.io.inputs.len()];
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input {spec}: expected NAME=FILE.npy"))?;
        let ix =
            b.io.inputs
                .iter()
                .position(|(n, _)| n == name)
                .with_context(|| {
                    format!(
                        "--input {name}: not a graph input (inputs: {})",
                        b.io.inputs
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
        let arr = npy::read_npy(Path::new(file)).with_context(|| format!("reading {file}"))?;
        let want = &b.io.inputs[ix].1;
        if arr.shape != *want {
            bail!(
                "{file}: shape {:?}, input `{name}` needs {want:?}",
                arr.shape
            );
        }
        values[ix] = Some(Tensor::from_shape(&arr.shape, &arr.data.to_f32())?.into_tvalue());
    }
    let missing: Vec<&str> =
        b.io.inputs
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|((n, _), _)| n.as_str())
            .collect();
    if !missing.is_empty() {
        bail!("no --input for {}", missing.join(", "));
    }
    // Data files: who wrote an existing one cannot be told, so only --force replaces it.
    let replace = if force { Replace::Any } else { Replace::No };
    let targets: Vec<PathBuf> = if output.is_dir() {
        b.io.outputs
            .iter()
            .map(|(name, _)| output.join(format!("{name}.npy")))
            .collect()
    } else {
        vec![output.to_path_buf()]
    };
    for t in &targets {
        output::check_file(t, replace, &output::ANY_FILE)?;
    }
    let outs = plan.run(values.into_iter().flatten().collect())?;
    let write = |p: &Path, t: &TValue| -> Result<()> {
        let data = t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let bytes = npy::encode_npy(&npy::NpyArray::f32(t.shape(), data))
            .with_context(|| format!("encoding {}", p.display()))?;
        output::write_file(p, &bytes, replace, &output::ANY_FILE)?;
        Ok(())
    };
    if output.is_dir() {
        for ((name, _), t) in b.io.outputs.iter().zip(outs.iter()) {
            let p = output.join(format!("{name}.npy"));
            write(&p, t)?;
            println!("{name} {:?} -> {}", t.shape(), p.display());
        }
    } else {
        let ix =
            b.io.outputs
                .iter()
                .position(|(n, _)| *n == b.manifest.action.onnx_output)
                .unwrap_or(0);
        write(output, &outs[ix])?;
        println!(
            "{} {:?} -> {}",
            b.io.outputs[ix].0,
            outs[ix].shape(),
            output.display()
        );
    }
    Ok(())
}
