//! `reflex-tools inspect`: a bundle's manifest, graph I/O, parameter count and FLOPs.

use anyhow::Result;
use reflex_models::manifest::MANIFEST_FILE;
use reflex_models::Bundle;
use std::path::Path;
use tract_onnx::prelude::*;

/// Parameters (initializer elements) and multiply-accumulates of a typed model, from tract's own
/// cost model, so it works for any ONNX file, not only the reference architectures.
pub fn graph_cost(model: &TypedModel) -> Result<(u64, u64)> {
    let mut macs = 0u64;
    let mut params = 0u64;
    for node in model.nodes() {
        if let Some(c) = node.op_as::<tract_onnx::tract_core::ops::konst::Const>() {
            params += c.val().len() as u64;
            continue;
        }
        let inputs: Vec<&TypedFact> = node
            .inputs
            .iter()
            .map(|o| model.outlet_fact(*o))
            .collect::<TractResult<_>>()?;
        for (cost, n) in node.op.cost(&inputs)? {
            if let tract_onnx::tract_core::ops::Cost::FMA(_) = cost {
                macs += n.to_i64().unwrap_or(0) as u64;
            }
        }
    }
    Ok((params, macs))
}

/// Load the bundle at `path` and print its manifest (TOML), graph inputs/outputs with shapes,
/// parameters and FLOPs on stdout. Errors: the bundle does not load ([`Bundle::load`]).
pub fn inspect(path: &Path) -> Result<()> {
    let b = Bundle::load(path)?;
    println!("# {}\n", b.dir.join(MANIFEST_FILE).display());
    println!("{}", b.manifest.to_toml()?);
    println!("# graph {}", b.policy_path.display());
    let typed = reflex_runtime::infer::tract::load_typed(&b.policy_path)?;
    let io = reflex_runtime::infer::tract::typed_io(&typed, &b.policy_path)?;
    for t in &io.inputs {
        println!("input  {} {:?}", t.name, t.shape);
    }
    for t in &io.outputs {
        println!("output {} {:?}", t.name, t.shape);
    }
    let decluttered = typed.into_decluttered()?;
    let (params, macs) = graph_cost(&decluttered)?;
    println!(
        "parameters: {params} ({:.2} M, after BatchNorm folding)\nFLOPs: {:.2} G ({:.2} G multiply-accumulates)",
        params as f64 / 1e6,
        2.0 * macs as f64 / 1e9,
        macs as f64 / 1e9
    );
    Ok(())
}
