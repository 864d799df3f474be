//! `reflex check`: validate a bundle and print what it expects.

use super::Outcome;
use crate::args::BundleArg;
use crate::open::load_bundle;
use anyhow::Result;
use reflex_runtime::can::codec::Codec;
use reflex_runtime::control::plan::feed_check;
use reflex_runtime::infer::select::{select_backend, survey, BackendChoice};
use reflex_runtime::infer::tensorrt::{self, ThisMachine};
use reflex_runtime::infer::tract::TractOptions;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArg,
}

pub fn run(a: Args) -> Result<Outcome> {
    let t = Instant::now();
    let b = load_bundle(&a.bundle.bundle)?;
    let m = &b.manifest;
    println!("bundle {}", b.dir.display());
    println!("  name: {}  format_version: {}", m.name, m.format_version);
    for f in &m.models {
        let backends: Vec<&str> = f.backends.iter().map(|b| b.as_str()).collect();
        println!(
            "  model {:?}: {} ({}, backends: {})",
            f.role,
            f.file,
            f.precision.as_str(),
            backends.join(", ")
        );
    }
    for s in survey(&b, TractOptions::default()) {
        match &s.status {
            Ok(how) => println!("  backend {}: available ({how})", s.backend.as_str()),
            Err(why) => println!("  backend {}: not available: {why}", s.backend.as_str()),
        }
    }
    // Every TensorRT condition, in the order selection checks them (the first failing one is
    // the reason above).
    for c in tensorrt::probe(&b, &ThisMachine).conditions {
        match &c.verdict {
            Ok(found) => println!("    tensorrt {}: yes: {found}", c.what),
            Err(why) => println!("    tensorrt {}: no: {why}", c.what),
        }
    }
    println!(
        "  control: {} Hz, {} step(s) per inference, ensembling {:?}, latency compensation {}",
        m.control.rate_hz,
        m.control.steps_per_inference,
        m.control.temporal_ensemble_m,
        m.control.latency_compensation
    );
    for c in &m.cameras {
        println!(
            "  camera {}: {}x{} {} -> {} [1,{},{},{}]",
            c.name,
            c.capture.width,
            c.capture.height,
            c.capture.format.as_str(),
            c.onnx_input,
            c.preprocess.color.channels(),
            c.preprocess.resize.height,
            c.preprocess.resize.width
        );
    }
    println!(
        "  state: {} ({})",
        m.state.names.join(", "),
        m.state.normalization.kind_str()
    );
    println!(
        "  action: {} -> {} {:?} ({}), limits: {}",
        m.action.names.join(", "),
        m.action.onnx_output,
        m.action.output,
        m.action.normalization.kind_str(),
        if m.action.limits.is_some() {
            "yes"
        } else {
            "NONE"
        }
    );
    // The motor protocol is checked too (a DBC file's mapping and ranges), so that a bundle that
    // cannot drive its robot fails here and not at the first command.
    let codec = Codec::from_bundle(&b)?;
    println!("  can: {}", codec.describe());
    if codec.protocol() != "per-joint" {
        match codec.feedback(&m.state.names, 0) {
            Ok(_) => println!("  state from the bus (--state can:IFACE): every state dimension"),
            Err(e) => println!("  state from the bus (--state can:IFACE): not available: {e}"),
        }
    }
    // Can the plan stay fed at this machine's inference latency (slowest of 3 runs after one)?
    match select_backend(&b, BackendChoice::Auto, TractOptions::default()) {
        Ok((mut backend, _)) => {
            backend.run()?;
            let mut latency_s = 0f64;
            for _ in 0..3 {
                let t = Instant::now();
                backend.run()?;
                latency_s = latency_s.max(t.elapsed().as_secs_f64());
            }
            let h = m.action.output.horizon();
            let feed = feed_check(&m.control, h, m.control.rate_hz, latency_s);
            let warn = if feed.fed() { "" } else { "WARNING: " };
            println!("  {warn}{}", feed.message);
        }
        Err(e) => println!("  plan feed: not measured ({e})"),
    }
    // Last: OK only once every check above passed (the CAN protocol's included).
    println!(
        "bundle {} OK ({:.0} ms)",
        b.dir.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(Outcome::Success)
}
