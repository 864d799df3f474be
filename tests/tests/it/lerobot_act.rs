//! End to end with an imported LeRobot ACT checkpoint (two cameras, default sizes): the folder of
//! `tests/data/lerobot/act` through `reflex-tools import lerobot`, then the control loop on real
//! tract over a replayed episode, and `reflex run` as a user starts it.

use reflex_models::Bundle;
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_runtime::infer::policy::SinglePassPolicy;
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::cli::{workspace_bin, Cli};
use reflex_testkit::counting;
use reflex_testkit::rig::tick_replayed_episode;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// The ACT checkpoint imported once per run (camera frames as YUYV, as UVC cameras send them),
/// and a 3-second synthetic episode for its two cameras and state.
fn act() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = reflex_testkit::dirs::fixture_dir("lerobot_act");
        let folder = root.join("pretrained_model");
        reflex_testkit::lerobot::act_folder(&folder);
        let bundle = root.join("act_bundle");
        Cli::new(workspace_bin("reflex-tools", "reflex-tools"))
            .args(["import", "lerobot", s(&folder), "--out", s(&bundle)])
            .args(["--rate", "30", "--capture-format", "yuyv"])
            .run()
            .success();
        // The weights are not needed past the import (207 MB).
        let _ = std::fs::remove_file(folder.join("model.safetensors"));
        let m = Bundle::load(&bundle).expect("bundle").manifest;
        let episode = root.join("episode");
        generate_synthetic_episode(&m, &episode, 3.0, 30).expect("episode");
        (bundle, episode)
    })
}

#[test]
fn act_runs_two_cameras_on_a_replayed_episode_and_its_ticks_allocate_only_inside_inference() {
    let (bundle_dir, episode) = act();
    let bundle = Bundle::load(bundle_dir).expect("bundle");
    let m = &bundle.manifest;
    assert_eq!(m.cameras.len(), 2);
    // Single-threaded tract keeps every allocation on this (counted) thread.
    let backend = SinglePassPolicy::tract(&bundle, TractOptions { threads: 1 }).expect("tract");
    // A chunk of 100 steps at 30 Hz, executed whole (n_action_steps = 100): an inference every
    // ~3 s of loop time. 250 ticks cover two and more.
    let t = tick_replayed_episode(m, episode, backend, 5, 250);
    counting::assert_installed();
    assert!(
        t.inferences >= 2,
        "{} inferences, {:?}",
        t.inferences,
        t.counters
    );
    assert!(
        t.fresh >= 240,
        "{} fresh commands, {:?}",
        t.fresh,
        t.counters
    );
    assert_eq!(
        t.other_allocs, 0,
        "ticks that do not run the network allocate nothing (two cameras, chunk of 100)"
    );
}

#[test]
fn reflex_run_runs_the_imported_act_bundle_on_replayed_cameras() {
    let _real_time = reflex_testkit::serial::real_time();
    let (bundle, episode) = act();
    let ep = s(episode);
    let out = Cli::new(workspace_bin("reflex", "reflex-runtime"))
        .args(["run", "--bundle", s(bundle)])
        .args(["--camera", &format!("top=replay:{ep}")])
        .args(["--camera", &format!("wrist=replay:{ep}")])
        .args(["--can", "null", "--allow-unlimited", "--duration", "3"])
        .run()
        .success();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("inference"), "{text}");
}
