//! The `[diffusion]` section of `policy.toml`: parsed, written back, and every bad value refused
//! naming its field; bundles without it (every `policy` bundle) stay as they were.

use reflex_models::bundle::{parse_manifest, validate_manifest};
use reflex_models::manifest::{
    ActionOutput, BetaSchedule, DiffusionSpec, Manifest, ModelRole, PredictionType, SchedulerKind,
    SchedulerSpec, Variance,
};
use reflex_models::reference::{default_capture, demo_arch, reference_manifest};
use std::path::Path;

/// A manifest with an encoder + denoiser pair and LeRobot's test settings: n_obs_steps 2,
/// horizon 16 (output: 15 steps), DDPM-100.
fn diffusion_manifest() -> Manifest {
    let mut m = reference_manifest(&demo_arch(), "diffusion", default_capture());
    let mut enc = m.models[0].clone();
    enc.role = ModelRole::Encoder;
    enc.file = "encoder.onnx".into();
    let mut den = enc.clone();
    den.role = ModelRole::Denoiser;
    den.file = "denoiser.onnx".into();
    m.models = vec![enc, den];
    m.action.output = ActionOutput::Chunk { horizon: 15 };
    m.control.steps_per_inference = 8;
    m.diffusion = Some(DiffusionSpec {
        n_obs_steps: 2,
        horizon: 16,
        seed: 7,
        scheduler: SchedulerSpec {
            kind: SchedulerKind::Ddpm,
            num_train_timesteps: 100,
            num_inference_steps: 100,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            variance: Variance::FixedSmall,
        },
        features_output: "features".into(),
        sample_input: "sample".into(),
        timestep_input: "timestep".into(),
        global_cond_input: "global_cond".into(),
    });
    m
}

fn d(m: &mut Manifest) -> &mut DiffusionSpec {
    m.diffusion.as_mut().expect("[diffusion]")
}

fn refused(m: &Manifest) -> String {
    validate_manifest(m, Path::new("b/policy.toml"))
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn the_diffusion_section_round_trips_and_validates() {
    let m = diffusion_manifest();
    validate_manifest(&m, Path::new("b/policy.toml")).expect("valid");
    let text = m.to_toml().expect("toml");
    assert!(text.contains("[diffusion.scheduler]"), "{text}");
    assert!(text.contains("kind = \"DDPM\""), "{text}");
    assert!(
        text.contains("beta_schedule = \"squaredcos_cap_v2\""),
        "{text}"
    );
    assert!(text.contains("variance = \"fixed_small\""), "{text}");
    let back = parse_manifest(&text, Path::new("b/policy.toml")).expect("parses");
    assert_eq!(back, m);
    // The tensor names, the seed and the variance have defaults.
    let short = text
        .lines()
        .filter(|l| {
            ![
                "features_output",
                "sample_input",
                "timestep_input",
                "global_cond_input",
            ]
            .iter()
            .any(|k| l.starts_with(k))
                && !l.starts_with("seed")
                && !l.starts_with("variance")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let back = parse_manifest(&short, Path::new("b/policy.toml")).expect("parses");
    let d = back.diffusion.expect("section");
    assert_eq!((d.seed, d.sample_input.as_str()), (0, "sample"));
    assert_eq!(d.scheduler.variance, Variance::FixedSmall);
}

#[test]
fn a_policy_bundle_without_the_section_is_unchanged() {
    let m = reference_manifest(&demo_arch(), "plain", default_capture());
    let text = m.to_toml().expect("toml");
    assert!(!text.contains("diffusion"), "{text}");
    let back = parse_manifest(&text, Path::new("b/policy.toml")).expect("parses");
    assert_eq!(back.diffusion, None);
    validate_manifest(&back, Path::new("b/policy.toml")).expect("valid");
}

#[test]
fn bad_diffusion_settings_are_refused_naming_the_field() {
    let base = diffusion_manifest();
    let with = |f: &dyn Fn(&mut Manifest)| {
        let mut m = base.clone();
        f(&mut m);
        refused(&m)
    };

    let e = with(&|m| m.diffusion = None);
    assert!(
        e.contains("field `diffusion`") && e.contains("missing"),
        "{e}"
    );
    let e = with(&|m| {
        m.models.truncate(1);
        m.models[0].role = ModelRole::Policy;
    });
    assert!(
        e.contains("field `diffusion`") && e.contains("remove it"),
        "{e}"
    );
    let e = with(&|m| d(m).n_obs_steps = 0);
    assert!(e.contains("`diffusion.n_obs_steps`"), "{e}");
    let e = with(&|m| d(m).horizon = 1);
    assert!(e.contains("`diffusion.horizon`"), "{e}");
    let e = with(&|m| m.action.output = ActionOutput::Chunk { horizon: 16 });
    assert!(
        e.contains("`action.output`") && e.contains("horizon = 15"),
        "{e}"
    );
    let e = with(&|m| d(m).scheduler.num_inference_steps = 0);
    assert!(
        e.contains("`diffusion.scheduler.num_inference_steps`"),
        "{e}"
    );
    let e = with(&|m| d(m).scheduler.num_inference_steps = 101);
    assert!(
        e.contains("`diffusion.scheduler.num_inference_steps`")
            && e.contains("1..=num_train_timesteps = 100"),
        "{e}"
    );
    let e = with(&|m| d(m).scheduler.num_train_timesteps = 0);
    assert!(
        e.contains("`diffusion.scheduler.num_train_timesteps`"),
        "{e}"
    );
    let e = with(&|m| d(m).scheduler.beta_start = f64::NAN);
    assert!(e.contains("`diffusion.scheduler.beta_start`"), "{e}");
    let e = with(&|m| {
        d(m).scheduler.beta_schedule = BetaSchedule::Linear;
        d(m).scheduler.beta_end = 1e-5;
    });
    assert!(e.contains("`diffusion.scheduler.beta_end`"), "{e}");
    let e = with(&|m| d(m).scheduler.clip_sample_range = 0.0);
    assert!(e.contains("`diffusion.scheduler.clip_sample_range`"), "{e}");
    let e = with(&|m| d(m).timestep_input = "sample".into());
    assert!(e.contains("`diffusion.sample_input`"), "{e}");
    let e = with(&|m| d(m).features_output = String::new());
    assert!(e.contains("`diffusion.features_output`"), "{e}");
    let e = with(&|m| m.control.steps_per_inference = 16);
    assert!(e.contains("`control.steps_per_inference`"), "{e}");

    // Unknown keys and values in the section are parse errors naming them.
    let text = base.to_toml().expect("toml");
    let e = parse_manifest(
        &text.replace("kind = \"DDPM\"", "kind = \"PNDM\""),
        Path::new("b/policy.toml"),
    )
    .expect_err("unknown scheduler")
    .to_string();
    assert!(
        e.contains("PNDM") && e.contains("expected `DDPM` or `DDIM`"),
        "{e}"
    );
    let e = parse_manifest(
        &text.replace("n_obs_steps = 2", "n_obs_steps = 2\nn_obs = 3"),
        Path::new("b/policy.toml"),
    )
    .expect_err("unknown field")
    .to_string();
    assert!(e.contains("n_obs"), "{e}");
}
