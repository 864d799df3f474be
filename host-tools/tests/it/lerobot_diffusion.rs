//! LeRobot 0.6.1 Diffusion Policy: the imported encoder and denoiser graphs and the Rust
//! schedulers against LeRobot itself.
//!
//! `tests/data/lerobot/diffusion/` was written by `scripts/lerobot/make_diffusion_reference.py`
//! (LeRobot 0.6.1, diffusers 0.39, torch 2.7.1): the checkpoint folder without its
//! `model.safetensors`, which is regenerated here from `state_dict.json` by
//! `reflex_testkit::lerobot_weights` (the same function the script filled the policy with), the
//! inputs and LeRobot's outputs. CI needs neither LeRobot nor torch.

use reflex_models::npy::{read_npy, write_npy, NpyArray};
use reflex_runtime::infer::diffusion::{
    DiffusionIo, EncoderDenoiserPolicy, NoiseSource, Scheduler, SchedulerKind,
};
use reflex_runtime::infer::policy::Policy;
use reflex_runtime::infer::session::Session;
use reflex_runtime::infer::tract::{TractOptions, TractSession};
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::{lerobot_weights, python};
use reflex_tools::lerobot::diffusion::{self, io, DiffusionImport};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

/// Largest absolute difference allowed against LeRobot's outputs (O(1) values).
const TOL: f32 = 1e-4;

fn data() -> PathBuf {
    python::repo_root().join("tests/data/lerobot/diffusion")
}

fn npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(&data().join(format!("{name}.npy"))).expect("reference .npy");
    (a.shape.clone(), a.data.to_f32())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
fn assert_close(what: &str, ours: &[f32], reference: &[f32]) {
    let d = max_diff(ours, reference);
    eprintln!("{what}: max |diff| {d:.2e}");
    assert!(d <= TOL, "{what}: differs from LeRobot by {d} (> {TOL})");
}

/// Writes `model.safetensors` for the tensors LeRobot's `state_dict()` listed, every float
/// filled by the shared deterministic function, integer ones 0.
fn write_checkpoint(dir: &Path, skip: Option<&str>, extra: Option<&str>) {
    write_listed(&data(), dir, skip, extra);
}

/// [`write_checkpoint`] for the listing in `listing_dir`.
fn write_checkpoint_from(listing_dir: &Path, dir: &Path) {
    write_listed(listing_dir, dir, None, None);
}

fn write_listed(listing_dir: &Path, dir: &Path, skip: Option<&str>, extra: Option<&str>) {
    let listing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(listing_dir.join("state_dict.json")).expect("state_dict.json"),
    )
    .expect("state_dict.json is JSON");
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = vec![];
    let entries = listing.as_object().expect("an object");
    for (key, v) in entries.iter().map(|(k, v)| (k.clone(), v)) {
        if Some(key.as_str()) == skip {
            continue;
        }
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let n: usize = shape.iter().product();
        match v["dtype"].as_str() {
            Some("float32") => {
                // pos_grid is kept as LeRobot built it (the generator script keeps it too).
                let values = if key.ends_with("pos_grid") {
                    spatial_grid(&shape)
                } else {
                    lerobot_weights::tensor(&key, &shape)
                };
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((key, shape, Dtype::F32, bytes));
            }
            Some("int64") => tensors.push((key, shape, Dtype::I64, vec![0; 8 * n])),
            other => panic!("{key}: dtype {other:?}"),
        }
    }
    if let Some(key) = extra {
        tensors.push((key.to_string(), vec![2], Dtype::F32, vec![0; 8]));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, d, b)| (k.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors"))
        .expect("write model.safetensors");
}

/// A stand-in for `SpatialSoftmax.pos_grid` (`[H*W, 2]`): the import recomputes the grid and
/// checks only that the buffer is expected, so its values do not matter.
fn spatial_grid(shape: &[usize]) -> Vec<f32> {
    vec![0.0; shape.iter().product()]
}

/// A copy of the reference folder with a regenerated checkpoint; `edit` changes config.json.
fn folder(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> (WorkDir, serde_json::Value) {
    let dir = WorkDir::new(name);
    for f in std::fs::read_dir(data()).expect("reference dir") {
        let f = f.expect("entry").path();
        let n = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if n.ends_with(".json") || n.ends_with(".safetensors") {
            std::fs::copy(&f, dir.join(n)).expect("copy");
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("json");
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    (dir, config)
}

fn import(name: &str) -> (WorkDir, DiffusionImport) {
    let (dir, config) = folder(name, |_| {});
    write_checkpoint(&dir, None, None);
    let out = dir.join("bundle");
    std::fs::create_dir_all(&out).expect("out dir");
    let imported = diffusion::import(&dir, &config, &out).expect("import");
    (dir, imported)
}

fn session(path: &Path) -> TractSession {
    TractSession::prepare(path, TractOptions { threads: 1 }).expect("tract prepares the graph")
}

fn set(s: &mut TractSession, name: &str, values: &[f32]) {
    let i = s
        .input_index(name)
        .unwrap_or_else(|| panic!("input {name}"));
    s.input_mut(i).copy_from_slice(values);
}

fn get(s: &TractSession, name: &str) -> Vec<f32> {
    let i = s
        .output_index(name)
        .unwrap_or_else(|| panic!("output {name}"));
    s.output(i).to_vec()
}

#[test]
fn lerobot_weights_match_python_values() {
    // Printed by `python3 scripts/lerobot/weights.py`.
    for (name, shape, i, expected) in [
        ("a", &[4][..], 0, -0.012826907448470592f64),
        (
            "diffusion.unet.final_conv.1.weight",
            &[2, 64, 1],
            5,
            -0.009238974191248417,
        ),
        ("x.running_var", &[8], 3, 1.4387065172195435),
        ("x.running_mean", &[8], 7, -0.06251029670238495),
        ("model.action_head.bias", &[14], 2, -0.03511195629835129),
    ] {
        let got = lerobot_weights::tensor(name, shape)[i];
        assert_eq!(f64::from(got), expected, "{name}[{i}]");
    }
}

/// Encoder per step, one denoiser call, DDPM with LeRobot's recorded noise and DDIM-10, all
/// within 1e-4 of LeRobot; the graphs pass `onnx.checker` and ONNX Runtime agrees.
#[test]
fn diffusion_import_matches_lerobot() {
    let (dir, imp) = import("diffusion_lerobot");
    let d = &imp.dims;
    assert_eq!(
        (imp.n_obs_steps, imp.horizon, imp.n_action_steps),
        (2, 16, 8)
    );
    assert_eq!(d.cameras, ["top", "wrist"]);
    assert_eq!((d.state_dim, d.action_dim, d.step_features), (5, 4, 133));
    assert_eq!(d.crop, [4, 4, 56, 63]);

    // Encoder, one observation step at a time.
    let (_, state) = npy("state");
    let images: Vec<(String, Vec<f32>)> = d
        .cameras
        .iter()
        .map(|c| (c.clone(), npy(&format!("image_{c}")).1))
        .collect();
    let (_, features) = npy("features");
    let mut enc = session(&imp.encoder);
    let pixels = d.image_shape.iter().product::<usize>();
    let mut ort_args: Vec<String> = vec![];
    for s in 0..imp.n_obs_steps {
        ort_args.push(imp.encoder.display().to_string());
        for (cam, img) in &images {
            let step = &img[s * pixels..(s + 1) * pixels];
            set(&mut enc, &format!("{}{cam}", io::IMAGE_PREFIX), step);
            let f = dir.join(format!("image_{cam}_{s}.npy"));
            write_npy(&f, &NpyArray::f32(&[1, 3, 64, 72], step.to_vec())).expect("npy");
            ort_args.push(format!("{}{cam}={}", io::IMAGE_PREFIX, f.display()));
        }
        let st = &state[s * d.state_dim..(s + 1) * d.state_dim];
        set(&mut enc, io::STATE, st);
        let f = dir.join(format!("state_{s}.npy"));
        write_npy(&f, &NpyArray::f32(&[1, d.state_dim], st.to_vec())).expect("npy");
        ort_args.push(format!("{}={}", io::STATE, f.display()));
        ort_args.push(dir.join(format!("ort_encoder_{s}")).display().to_string());
        ort_args.push("--and".into());
        enc.run().expect("encoder runs");
        let ours = get(&enc, io::FEATURES);
        let n = d.step_features;
        assert_close(
            &format!("encoder step {s}"),
            &ours,
            &features[s * n..(s + 1) * n],
        );
    }

    // One denoiser call on LeRobot's global_cond.
    let mut den = session(&imp.denoiser);
    let (_, sample) = npy("denoise_sample");
    let (_, timestep) = npy("denoise_timestep");
    set(&mut den, io::SAMPLE, &sample);
    set(&mut den, io::TIMESTEP, &timestep);
    set(&mut den, io::GLOBAL_COND, &features);
    den.run().expect("denoiser runs");
    let (_, expected) = npy("denoise_output");
    assert_close(
        "denoiser step (t = 37)",
        &get(&den, io::PREDICTION),
        &expected,
    );
    let gc = dir.join("global_cond.npy");
    write_npy(&gc, &NpyArray::f32(&[1, d.global_cond], features.clone())).expect("npy");
    ort_args.extend([
        imp.denoiser.display().to_string(),
        format!(
            "{}={}",
            io::SAMPLE,
            data().join("denoise_sample.npy").display()
        ),
        format!(
            "{}={}",
            io::TIMESTEP,
            data().join("denoise_timestep.npy").display()
        ),
        format!("{}={}", io::GLOBAL_COND, gc.display()),
        dir.join("ort_denoiser").display().to_string(),
    ]);

    // DDPM, 100 steps, with the noise LeRobot drew at each step.
    let spec = imp.scheduler.clone();
    assert_eq!(spec.kind, SchedulerKind::Ddpm);
    let ddpm = Scheduler::new(spec.clone()).expect("scheduler");
    let (_, initial) = npy("ddpm_initial_noise");
    let (noise_shape, noise) = npy("ddpm_step_noise");
    assert_eq!(noise_shape[0], ddpm.timesteps().len() - 1);
    let n = initial.len();
    let mut x = initial.clone();
    let mut out = vec![0.0; n];
    for (i, &t) in ddpm.timesteps().iter().enumerate() {
        set(&mut den, io::SAMPLE, &x);
        set(&mut den, io::TIMESTEP, &[t as f32]);
        den.run().expect("denoiser runs");
        out.copy_from_slice(den.output(0));
        let z = if ddpm.needs_noise(i) {
            &noise[i * n..(i + 1) * n]
        } else {
            &[][..]
        };
        ddpm.step(i, &out, &mut x, z);
    }
    assert_close("DDPM-100 sample", &x, &npy("ddpm_sample").1);
    let a = d.action_dim;
    let start = imp.n_obs_steps - 1;
    let executed = &x[start * a..(start + imp.n_action_steps) * a];
    assert_close("DDPM executed actions", executed, &npy("ddpm_actions").1);

    // DDIM, 10 steps, the same initial noise: deterministic.
    let mut ddim_spec = spec;
    ddim_spec.kind = SchedulerKind::Ddim;
    ddim_spec.num_inference_steps = 10;
    let ddim = Scheduler::new(ddim_spec).expect("scheduler");
    let mut x = initial;
    for (i, &t) in ddim.timesteps().iter().enumerate() {
        set(&mut den, io::SAMPLE, &x);
        set(&mut den, io::TIMESTEP, &[t as f32]);
        den.run().expect("denoiser runs");
        out.copy_from_slice(den.output(0));
        ddim.step(i, &out, &mut x, &[]);
    }
    assert_close("DDIM-10 sample", &x, &npy("ddim10_sample").1);

    // onnx.checker (full) and ONNX Runtime on the same inputs.
    if python::reference("ort_run.py", &ort_args, "numpy onnx onnxruntime").is_none() {
        return;
    }
    for s in 0..imp.n_obs_steps {
        let ort =
            read_npy(&dir.join(format!("ort_encoder_{s}/{}.npy", io::FEATURES))).expect("ort");
        let n = d.step_features;
        assert_close(
            &format!("ONNX Runtime encoder step {s}"),
            &ort.data.to_f32(),
            &features[s * n..(s + 1) * n],
        );
    }
    let ort = read_npy(&dir.join(format!("ort_denoiser/{}.npy", io::PREDICTION))).expect("ort");
    assert_close("ONNX Runtime denoiser", &ort.data.to_f32(), &expected);
}

#[test]
fn diffusion_import_refuses_bad_folders() {
    let refused = |name: &str,
                   edit: &dyn Fn(&mut serde_json::Value),
                   skip: Option<&str>,
                   extra: Option<&str>|
     -> String {
        let (dir, config) = folder(name, |c| edit(c));
        write_checkpoint(&dir, skip, extra);
        let out = dir.join("bundle");
        std::fs::create_dir_all(&out).expect("out dir");
        let e = diffusion::import(&dir, &config, &out).expect_err("must be refused");
        format!("{e:#}")
    };
    let none = |_: &mut serde_json::Value| {};
    let e = refused(
        "diffusion_sched",
        &|c| c["noise_scheduler_type"] = "PNDM".into(),
        None,
        None,
    );
    assert!(
        e.contains("config.json") && e.contains("`noise_scheduler_type`") && e.contains("PNDM"),
        "{e}"
    );
    let e = refused(
        "diffusion_backbone",
        &|c| c["vision_backbone"] = "resnet34".into(),
        None,
        None,
    );
    assert!(
        e.contains("`vision_backbone`") && e.contains("resnet34"),
        "{e}"
    );
    let e = refused(
        "diffusion_resize",
        &|c| c["resize_shape"] = serde_json::json!([96, 96]),
        None,
        None,
    );
    assert!(e.contains("`resize_shape`"), "{e}");
    let e = refused(
        "diffusion_beta",
        &|c| c["beta_schedule"] = "scaled_linear".into(),
        None,
        None,
    );
    assert!(e.contains("`beta_schedule`"), "{e}");
    let key = "diffusion.unet.mid_modules.1.conv2.block.1.weight";
    let e = refused("diffusion_missing", &none, Some(key), None);
    assert!(
        e.contains("model.safetensors") && e.contains(key) && e.contains("missing"),
        "{e}"
    );
    let e = refused(
        "diffusion_extra",
        &none,
        None,
        Some("diffusion.unet.extra.weight"),
    );
    assert!(
        e.contains("model.safetensors") && e.contains("diffusion.unet.extra.weight"),
        "{e}"
    );
    // A config whose U-Net is wider than the checkpoint's: the first mismatched tensor is named.
    let e = refused(
        "diffusion_shape",
        &|c| c["down_dims"] = serde_json::json!([64, 256]),
        None,
        None,
    );
    assert!(
        e.contains("model.safetensors") && e.contains("has shape"),
        "{e}"
    );
}

/// LeRobot's noise, replayed in order (and again from the start when used up).
struct Replay {
    values: Vec<f32>,
    at: usize,
}

impl NoiseSource for Replay {
    fn fill(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.values[self.at % self.values.len()];
            self.at += 1;
        }
    }
}

/// The runtime's policy on the imported graphs, fed as the control loop feeds it (the last
/// `n_obs_steps` observations in one run): the history, the DDPM loop and the executed slice give
/// LeRobot's actions.
#[test]
fn diffusion_policy_on_imported_graphs_matches_lerobot_actions() {
    let (_dir, imp) = import("diffusion_policy");
    let d = &imp.dims;
    let cams: Vec<String> = d
        .cameras
        .iter()
        .map(|c| format!("{}{c}", io::IMAGE_PREFIX))
        .collect();
    let cam_refs: Vec<&str> = cams.iter().map(String::as_str).collect();
    let pio = DiffusionIo {
        cameras: &cam_refs,
        state: Some(io::STATE),
        features: io::FEATURES,
        sample: io::SAMPLE,
        timestep: io::TIMESTEP,
        global_cond: io::GLOBAL_COND,
        prediction: io::PREDICTION,
        n_obs_steps: imp.n_obs_steps,
        action_dim: d.action_dim,
    };
    // One inference draws the initial sample then the noise of steps with t > 0: exactly the
    // recording, so the replay restarts in step with every run.
    let mut noise = npy("ddpm_initial_noise").1;
    noise.extend(npy("ddpm_step_noise").1);
    let mut policy = EncoderDenoiserPolicy::new(
        session(&imp.encoder),
        session(&imp.denoiser),
        &pio,
        imp.scheduler.clone(),
        Replay {
            values: noise,
            at: 0,
        },
    )
    .expect("policy");
    let (_, state) = npy("state");
    let images: Vec<Vec<f32>> = d
        .cameras
        .iter()
        .map(|c| npy(&format!("image_{c}")).1)
        .collect();
    let pixels = d.image_shape.iter().product::<usize>();
    // LeRobot's queues hold the last n_obs_steps observations; one run takes them all (the
    // earlier ones through the past inputs).
    let current = imp.n_obs_steps - 1;
    for s in 0..imp.n_obs_steps {
        for (c, img) in images.iter().enumerate() {
            let dst = if s == current {
                policy.camera_input(c)
            } else {
                policy.past_camera_input(s, c).expect("past camera input")
            };
            dst.copy_from_slice(&img[s * pixels..(s + 1) * pixels]);
        }
        let dst = if s == current {
            policy.state_input()
        } else {
            policy.past_state_input(s)
        };
        dst.expect("state input")
            .copy_from_slice(&state[s * d.state_dim..(s + 1) * d.state_dim]);
    }
    policy.run().expect("policy runs");
    let t = policy.timings();
    eprintln!(
        "encoder {:.1} ms, denoiser {:.2} ms/step x {}",
        t.encoder.as_secs_f64() * 1e3,
        t.per_denoiser_step().as_secs_f64() * 1e3,
        t.denoiser_calls
    );
    assert_close("policy sample", policy.sample(), &npy("ddpm_sample").1);
    let executed = &policy.output()[..imp.n_action_steps * d.action_dim];
    assert_close("policy executed actions", executed, &npy("ddpm_actions").1);
}

/// The other encoder forms against LeRobot: GroupNorm in the backbone (`use_group_norm`) and one
/// encoder shared by both cameras (`use_separate_rgb_encoder_per_camera = false`).
#[test]
fn diffusion_groupnorm_shared_encoder_matches_lerobot() {
    let variant = data().with_file_name("diffusion_groupnorm_shared");
    let dir = WorkDir::new("diffusion_groupnorm_shared");
    std::fs::copy(variant.join("config.json"), dir.join("config.json")).expect("config");
    std::fs::copy(variant.join("state_dict.json"), dir.join("state_dict.json")).expect("listing");
    write_checkpoint_from(&variant, &dir);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("json");
    let imp = diffusion::import(&dir, &config, &dir).expect("import");
    let d = &imp.dims;
    let (_, state) = npy("state");
    let features = read_npy(&variant.join("features.npy"))
        .expect("features")
        .data
        .to_f32();
    let pixels = d.image_shape.iter().product::<usize>();
    let mut enc = session(&imp.encoder);
    for s in 0..imp.n_obs_steps {
        for c in &d.cameras {
            let img = npy(&format!("image_{c}")).1;
            set(
                &mut enc,
                &format!("{}{c}", io::IMAGE_PREFIX),
                &img[s * pixels..(s + 1) * pixels],
            );
        }
        set(
            &mut enc,
            io::STATE,
            &state[s * d.state_dim..(s + 1) * d.state_dim],
        );
        enc.run().expect("encoder runs");
        let n = d.step_features;
        assert_close(
            &format!("GroupNorm shared encoder step {s}"),
            &get(&enc, io::FEATURES),
            &features[s * n..(s + 1) * n],
        );
    }
}

/// `reflex-tools import lerobot` on the Diffusion folder (weights regenerated), into `name`.
fn import_cli(folder: &Path, out: &Path) -> reflex_testkit::cli::Run {
    reflex_testkit::cli::Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(["import", "lerobot"])
        .args([folder.to_str().expect("utf8"), "--out"])
        .args([out.to_str().expect("utf8")])
        .args(["--rate", "10", "--capture-format", "rgb24"])
        .run()
}

/// The whole way a user takes: the folder imported by the command into a bundle, the bundle
/// loaded and its policy prepared from the manifest alone, LeRobot's raw uint8 frames and raw
/// state through the bundle's preprocessing and normalization into the current and past inputs, the
/// DDPM loop fed LeRobot's recorded noise: the executed actions match LeRobot's, normalized and
/// through the postprocessor.
#[test]
fn imported_diffusion_bundle_runs_like_lerobot() {
    use reflex_models::manifest::{ActionOutput, ModelRole, PixelFormat};
    use reflex_runtime::preprocess::Preprocessor;
    let dir = WorkDir::new("diffusion_bundle");
    let folder = dir.join("pretrained_model");
    reflex_testkit::lerobot::diffusion_folder(&folder);
    let out = dir.join("bundle");
    let run = import_cli(&folder, &out);
    assert!(run.status.success(), "{run}");
    let bundle = reflex_models::Bundle::load(&out).expect("the imported bundle loads");
    let m = &bundle.manifest;
    let roles: Vec<ModelRole> = m.models.iter().map(|f| f.role).collect();
    assert_eq!(roles, [ModelRole::Encoder, ModelRole::Denoiser]);
    let d = m.diffusion.as_ref().expect("[diffusion]");
    assert_eq!((d.n_obs_steps, d.horizon), (2, 16));
    assert_eq!(d.scheduler.kind, SchedulerKind::Ddpm);
    assert_eq!(d.scheduler.num_inference_steps, 100);
    assert_eq!(m.action.output, ActionOutput::Chunk { horizon: 15 });
    assert_eq!(m.control.steps_per_inference, 8);
    assert_eq!(m.cameras.len(), 2);

    let mut noise = npy("ddpm_initial_noise").1;
    noise.extend(npy("ddpm_step_noise").1);
    let mut policy = EncoderDenoiserPolicy::tract(
        &bundle,
        TractOptions { threads: 1 },
        Replay {
            values: noise,
            at: 0,
        },
    )
    .expect("the policy prepares from the bundle");
    let (_, raw_state) = npy("raw_state");
    let sd = m.state.names.len();
    for s in 0..d.n_obs_steps {
        for (c, cam) in m.cameras.iter().enumerate() {
            let a = read_npy(&data().join(format!("raw_image_{}.npy", cam.name))).expect("npy");
            let reflex_models::npy::NpyData::U8(pixels) = &a.data else {
                panic!("raw_image_{}: expected uint8", cam.name)
            };
            let frame = pixels.len() / d.n_obs_steps;
            let mut p = Preprocessor::new(cam).expect("preprocessor");
            let dst = if s + 1 == d.n_obs_steps {
                policy.camera_input(c)
            } else {
                policy.past_camera_input(s, c).expect("past camera input")
            };
            p.run(
                &pixels[s * frame..(s + 1) * frame],
                cam.capture.width,
                cam.capture.height,
                PixelFormat::Rgb24,
                dst,
            )
            .expect("preprocess");
        }
        let st = if s + 1 == d.n_obs_steps {
            policy.state_input()
        } else {
            policy.past_state_input(s)
        }
        .expect("state input");
        for i in 0..sd {
            st[i] = m
                .state
                .normalization
                .affine(i)
                .normalize(raw_state[s * sd + i]);
        }
    }
    policy.run().expect("policy runs");
    let a = m.action.names.len();
    let executed = &policy.output()[..m.control.steps_per_inference * a];
    assert_close(
        "imported bundle, executed actions",
        executed,
        &npy("ddpm_actions").1,
    );
    let actions: Vec<f32> = executed
        .iter()
        .enumerate()
        .map(|(k, &y)| m.action.normalization.affine(k % a).unnormalize(y))
        .collect();
    assert_close(
        "imported bundle, postprocessed actions",
        &actions,
        &npy("ddpm_actions_unnormalized").1,
    );

    // The runtime's own selection builds the same policy with seeded noise.
    let (mut seeded, sel) = reflex_runtime::infer::select::select_backend(
        &bundle,
        reflex_runtime::infer::select::BackendChoice::Auto,
        TractOptions { threads: 1 },
    )
    .expect("selection prepares the diffusion policy");
    assert!(sel.to_string().contains("tract"), "{sel}");
    seeded.run().expect("runs");
    assert_eq!(seeded.output().len(), 15 * a);
    assert!(seeded.output().iter().all(|v| v.is_finite()));
    let t = seeded
        .diffusion_timings()
        .expect("encoder + denoiser timings");
    assert_eq!(t.denoiser_calls, 100);
}

#[test]
fn diffusion_folders_with_bad_stats_or_weights_are_refused_naming_file_and_key() {
    use reflex_models::onnx::{save_safetensors, NamedTensor};
    let dir = WorkDir::new("diffusion_refused");
    let folder = dir.join("pretrained_model");
    reflex_testkit::lerobot::diffusion_folder(&folder);
    let refused = |what: &str| -> String {
        let out = dir.join(format!("out_{what}"));
        let run = import_cli(&folder, &out);
        assert!(!run.status.success(), "{what}: should be refused\n{run}");
        assert!(
            !out.exists(),
            "{what}: a refused import wrote {}",
            out.display()
        );
        run.stderr.clone()
    };

    // The statistics of another policy: a 7-dimensional state.
    let f = "policy_preprocessor_step_3_normalizer_processor.safetensors";
    let good = std::fs::read(folder.join(f)).expect("stats");
    let mut tensors = vec![];
    for (key, n) in [
        ("observation.state.min", 7),
        ("observation.state.max", 7),
        ("action.min", 4),
        ("action.max", 4),
        ("observation.images.top.mean", 3),
        ("observation.images.top.std", 3),
        ("observation.images.wrist.mean", 3),
        ("observation.images.wrist.std", 3),
    ] {
        tensors.push(NamedTensor {
            key: key.into(),
            shape: vec![n],
            data: vec![0.5; n],
        });
    }
    save_safetensors(&folder.join(f), &tensors).expect("write stats");
    let e = refused("stats");
    assert!(e.contains(f) && e.contains("`observation.state.m"), "{e}");
    std::fs::write(folder.join(f), good).expect("restore stats");

    // Weights missing: no file, then a checkpoint lacking a tensor.
    let weights = folder.join("model.safetensors");
    let full = std::fs::read(&weights).expect("weights");
    std::fs::remove_file(&weights).expect("rm");
    let e = refused("no_weights");
    assert!(e.contains("model.safetensors"), "{e}");
    save_safetensors(
        &weights,
        &[NamedTensor {
            key: "diffusion.unet.final_conv.1.bias".into(),
            shape: vec![4],
            data: vec![0.0; 4],
        }],
    )
    .expect("write");
    let e = refused("few_weights");
    assert!(
        e.contains("model.safetensors") && e.contains("is missing"),
        "{e}"
    );
    std::fs::write(&weights, full).expect("restore weights");

    // An unknown policy type.
    let p = folder.join("config.json");
    let text = std::fs::read_to_string(&p).expect("config");
    std::fs::write(
        &p,
        text.replace("\"type\": \"diffusion\"", "\"type\": \"vqbet\""),
    )
    .expect("write");
    let e = refused("type");
    assert!(
        e.contains("config.json") && e.contains("`type` = \"vqbet\""),
        "{e}"
    );
}

/// `reflex-tools quantize --precision fp16` converts both models of an imported diffusion
/// bundle; the report compares the whole policy (encoder, history, K denoiser steps with the
/// same seeded noise) fp32 against fp16 in action units, and int8 is refused with the fix.
#[test]
fn quantize_fp16_converts_both_models_of_a_diffusion_bundle() {
    use reflex_models::manifest::{ModelRole, Precision, MANIFEST_FILE};
    let dir = WorkDir::new("diffusion_fp16");
    let folder = dir.join("pretrained_model");
    reflex_testkit::lerobot::diffusion_folder(&folder);
    let out = dir.join("bundle");
    let run = import_cli(&folder, &out);
    assert!(run.status.success(), "{run}");
    // DDIM-10 keeps the accuracy run short.
    let mut m = reflex_models::Bundle::load(&out).expect("bundle").manifest;
    let d = m.diffusion.as_mut().expect("[diffusion]");
    d.scheduler.kind = SchedulerKind::Ddim;
    d.scheduler.num_inference_steps = 10;
    std::fs::write(out.join(MANIFEST_FILE), m.to_toml().expect("toml")).expect("write");
    let tools = |args: &[&str]| {
        reflex_testkit::cli::Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
            .args(args)
            .run()
    };
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let q = dir.join("fp16");
    let run = tools(&[
        "quantize",
        "--bundle",
        &s(&out),
        "--precision",
        "fp16",
        "--held-out",
        "3",
        "--latency-runs",
        "1",
        "--max-error",
        "0.05",
        "--out",
        &s(&q),
    ]);
    assert!(run.status.success(), "{run}");
    let b = reflex_models::Bundle::load(&q).expect("the fp16 bundle loads");
    for role in [ModelRole::Encoder, ModelRole::Denoiser] {
        let f = b.manifest.models_with_role(role).next().expect("model");
        assert_eq!(f.precision, Precision::Fp16, "{f:?}");
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(q.join("quantization-report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["gate_passed"], true, "{report}");
    assert_eq!(
        report["graph"]["measured_file"],
        "encoder.onnx + denoiser.onnx"
    );
    let q8 = dir.join("int8");
    let run = tools(&[
        "quantize",
        "--bundle",
        &s(&out),
        "--precision",
        "int8",
        "--out",
        &s(&q8),
    ]);
    assert!(!run.status.success(), "{run}");
    assert!(
        run.stderr.contains("encoder + denoiser") && run.stderr.contains("--precision fp16"),
        "{run}"
    );
    assert!(!q8.exists());
}
