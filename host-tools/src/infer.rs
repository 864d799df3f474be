//! `reflex-tools infer`: a bundle's raw network on .npy tensors (no pre/post-processing), the
//! outputs written as .npy, for parity checks against PyTorch.

use anyhow::{bail, Context, Result};
use reflex_models::npy;
use reflex_models::output::{self, Replace};
use reflex_models::Bundle;
use std::path::{Path, PathBuf};

/// Run the bundle at `path` on `inputs` (`NAME=FILE.npy`, one per graph input, f32 with the
/// input's exact shape) and write the action output to `output`, or every output as
/// `NAME.npy` when `output` is an existing folder; an existing file is replaced only with
/// `force`. Errors name the `--input`, file or shape at fault; nothing is written then.
pub fn infer(path: &Path, inputs: &[String], output: &Path, force: bool) -> Result<()> {
    use reflex_runtime::infer::session::Session;
    let b = Bundle::load(path)?;
    let mut session = reflex_runtime::infer::tract::TractSession::prepare(
        &b.policy_path,
        reflex_runtime::infer::tract::TractOptions { threads: 1 },
    )?;
    let mut given = vec![false; session.inputs().len()];
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input {spec}: expected NAME=FILE.npy"))?;
        let ix = session.input_index(name).with_context(|| {
            format!(
                "--input {name}: not a graph input (inputs: {})",
                session
                    .inputs()
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let arr = npy::read_npy(Path::new(file)).with_context(|| format!("reading {file}"))?;
        let want = &session.inputs()[ix].shape;
        if arr.shape != *want {
            bail!(
                "{file}: shape {:?}, input `{name}` needs {want:?}",
                arr.shape
            );
        }
        session.input_mut(ix).copy_from_slice(&arr.data.to_f32());
        given[ix] = true;
    }
    let missing: Vec<&str> = session
        .inputs()
        .iter()
        .zip(&given)
        .filter(|(_, g)| !**g)
        .map(|(t, _)| t.name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!("no --input for {}", missing.join(", "));
    }
    // Data files: who wrote an existing one cannot be told, so only --force replaces it.
    let replace = if force { Replace::Any } else { Replace::No };
    let targets: Vec<PathBuf> = if output.is_dir() {
        session
            .outputs()
            .iter()
            .map(|t| output.join(format!("{}.npy", t.name)))
            .collect()
    } else {
        vec![output.to_path_buf()]
    };
    for t in &targets {
        output::check_file(t, replace, &output::ANY_FILE)?;
    }
    session.run()?;
    let write = |p: &Path, i: usize| -> Result<()> {
        let shape = &session.outputs()[i].shape;
        let bytes = npy::encode_npy(&npy::NpyArray::f32(shape, session.output(i).to_vec()))
            .with_context(|| format!("encoding {}", p.display()))?;
        output::write_file(p, &bytes, replace, &output::ANY_FILE)?;
        Ok(())
    };
    if output.is_dir() {
        for (i, t) in session.outputs().iter().enumerate() {
            let p = output.join(format!("{}.npy", t.name));
            write(&p, i)?;
            println!("{} {:?} -> {}", t.name, t.shape, p.display());
        }
    } else {
        let ix = session
            .output_index(&b.manifest.action.onnx_output)
            .unwrap_or(0);
        write(output, ix)?;
        let t = &session.outputs()[ix];
        println!("{} {:?} -> {}", t.name, t.shape, output.display());
    }
    Ok(())
}
