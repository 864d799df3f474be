//! `reflex check/bench/run --backend onnxruntime` and `bench --backend all --record` as a user
//! runs them, with the ONNX Runtime library of the pip-installed `onnxruntime`, and without it
//! (`REFLEX_ONNXRUNTIME_LIB` pointing at a file that is not the library): then everything runs on
//! tract as before and `reflex check` says why ONNX Runtime was not used.

use reflex_models::reference::default_capture;
use reflex_testkit::bundles::write_tiny_bundle;
use reflex_testkit::cli::Cli;
use reflex_testkit::dirs::WorkDir;

fn reflex() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_reflex"))
}

/// The library loads here (CI: pip's onnxruntime); `false` skips where Python references are.
fn have_ort() -> bool {
    match reflex_runtime::infer::onnxruntime::library() {
        Ok(_) => true,
        Err(e) if reflex_testkit::python::skipped() => {
            eprintln!("REFLEX_SKIP_PY=1 and no ONNX Runtime library: skipped ({e})");
            false
        }
        Err(e) => panic!("{e}; REFLEX_SKIP_PY=1 skips this on machines without onnxruntime"),
    }
}

#[test]
fn check_reports_onnxruntime_and_auto_follows_the_recorded_winner() {
    if !have_ort() {
        return;
    }
    let dir = WorkDir::new("ort-cli");
    let bundle = dir.join("bundle");
    write_tiny_bundle(&bundle, default_capture());
    let out = reflex()
        .args([
            "check",
            "--threads",
            "1",
            "--backend",
            "onnxruntime",
            "--bundle",
        ])
        .arg(&bundle)
        .run()
        .success();
    let s = &out.stdout;
    assert!(
        s.contains("backend onnxruntime: available (onnxruntime 1.")
            && s.contains("C API 17")
            && s.contains("backend tract: available")
            && s.contains("backend tensorrt: not available"),
        "{s}"
    );
    assert!(
        s.contains("selected: onnxruntime 1.") && s.contains(", as asked"),
        "{s}"
    );
    // Without a record, auto takes ONNX Runtime by the documented default and says so.
    let out = reflex()
        .args(["check", "--threads", "1", "--bundle"])
        .arg(&bundle)
        .run()
        .success();
    assert!(
        out.stdout.contains("selected: auto: onnxruntime")
            && out
                .stdout
                .contains("no measured record for this board and model"),
        "{}",
        out.stdout
    );
    // Both CPU backends timed; the winner recorded next to the bundle; auto follows it.
    let out = reflex()
        .args([
            "bench",
            "--model-only",
            "--backend",
            "all",
            "--record",
            "--threads",
            "1",
            "--iterations",
            "20",
            "--json",
        ])
        .arg(dir.join("all.json"))
        .arg("--svg")
        .arg(dir.join("all.svg"))
        .arg("--bundle")
        .arg(&bundle)
        .run();
    let s = &out.stdout;
    assert!(
        s.contains("x the fastest") && s.contains("recorded "),
        "{s}\n{}",
        out.stderr
    );
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("backend-preference.json")).expect("record"),
    )
    .expect("json");
    let winner = rec["entries"][0]["winner"]
        .as_str()
        .expect("winner")
        .to_string();
    assert_eq!(rec["entries"][0]["threads"], 1);
    assert_eq!(
        rec["entries"][0]["medians_ms"].as_array().map(Vec::len),
        Some(2)
    );
    let out = reflex()
        .args(["check", "--threads", "1", "--bundle"])
        .arg(&bundle)
        .run()
        .success();
    assert!(
        out.stdout.contains(&format!("selected: auto: {winner}"))
            && out.stdout.contains(&format!(
                "{winner} measured fastest on this board for this model"
            )),
        "{}",
        out.stdout
    );
    // Another thread count has no record: the default again.
    let out = reflex()
        .args(["check", "--threads", "2", "--bundle"])
        .arg(&bundle)
        .run()
        .success();
    assert!(out.stdout.contains("no measured record"), "{}", out.stdout);
    // bench and run on ONNX Runtime, as asked.
    let out = reflex()
        .args([
            "bench",
            "--model-only",
            "--backend",
            "onnxruntime",
            "--iterations",
            "5",
            "--json",
        ])
        .arg(dir.join("ort.json"))
        .arg("--svg")
        .arg(dir.join("ort.svg"))
        .arg("--bundle")
        .arg(&bundle)
        .run();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ort.json")).expect("report"))
            .expect("json");
    assert_eq!(report["backend"], "onnxruntime", "{}", out.stdout);
}

#[test]
fn without_the_library_everything_runs_on_tract_and_check_says_why() {
    let dir = WorkDir::new("ort-cli-missing");
    let bundle = dir.join("bundle");
    write_tiny_bundle(&bundle, default_capture());
    let fake = dir.join("libonnxruntime.so.1.32.0");
    std::fs::write(&fake, b"not a library").expect("file");
    let out = reflex()
        .env("REFLEX_ONNXRUNTIME_LIB", &fake)
        .args(["check", "--threads", "1", "--bundle"])
        .arg(&bundle)
        .run()
        .success();
    let s = &out.stdout;
    assert!(
        s.contains("backend onnxruntime: not available: library libonnxruntime not found: REFLEX_ONNXRUNTIME_LIB=")
            && s.contains("libonnxruntime.so.1.32.0")
            && s.contains("selected: auto: tract on 1 thread(s) (tensorrt: ")
            && s.contains("onnxruntime: library libonnxruntime not found"),
        "{s}"
    );
    let out = reflex()
        .env("REFLEX_ONNXRUNTIME_LIB", &fake)
        .args([
            "bench",
            "--model-only",
            "--backend",
            "onnxruntime",
            "--bundle",
        ])
        .arg(&bundle)
        .run()
        .failure();
    assert!(
        out.stderr
            .contains("backend onnxruntime: not usable: library libonnxruntime not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn run_on_onnxruntime_drives_the_loop_from_a_replayed_camera() {
    if !have_ort() {
        return;
    }
    let dir = WorkDir::new("ort-cli-run");
    let bundle = dir.join("bundle");
    let manifest = write_tiny_bundle(&bundle, default_capture());
    reflex_runtime::camera::replay::generate_synthetic_episode(
        &manifest,
        &dir.join("episode"),
        2.0,
        30,
    )
    .expect("episode");
    let log = dir.join("run.log");
    let out = reflex()
        .env("RUST_LOG", "info")
        .args([
            "run",
            "--backend",
            "onnxruntime",
            "--threads",
            "1",
            "--duration",
            "0.5",
            "--bundle",
        ])
        .arg(&bundle)
        .arg("--camera")
        .arg(format!("front=replay:{}", dir.join("episode").display()))
        .arg("--can")
        .arg(format!("candump:{}", log.display()))
        .run()
        .success();
    let both = format!("{}{}", out.stdout, out.stderr);
    assert!(
        both.contains("backend: onnxruntime 1.") && both.contains(", as asked"),
        "{both}"
    );
    let frames = std::fs::read_to_string(&log).expect("candump log");
    assert!(frames.lines().count() >= 6, "{frames}");
    // The optimized graph was kept next to the bundle, keyed by the model's sha256.
    let cached: Vec<_> = std::fs::read_dir(bundle.join("engines/onnxruntime"))
        .expect("cache dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0].starts_with(&format!("{}.ort-1.", manifest.models[0].sha256)),
        "{cached:?}"
    );
}

#[test]
fn the_optimized_graph_is_cached_by_model_sha256_and_gives_the_same_outputs() {
    use reflex_runtime::infer::onnxruntime::{CacheUse, OptimizedCache, OrtOptions, OrtSession};
    use reflex_runtime::infer::session::Session;
    if !have_ort() {
        return;
    }
    let dir = WorkDir::new("ort-cache");
    let bundle = dir.join("bundle");
    let manifest = write_tiny_bundle(&bundle, default_capture());
    let model = bundle.join(&manifest.models[0].file);
    let cache = OptimizedCache {
        dir: dir.join("cache"),
        model_sha256: manifest.models[0].sha256.clone(),
    };
    let opts = OrtOptions {
        threads: 1,
        cache: Some(cache),
    };
    let outputs = |s: &mut OrtSession| {
        for i in 0..s.inputs().len() {
            for (k, v) in s.input_mut(i).iter_mut().enumerate() {
                *v = (k % 13) as f32 * 0.05 - 0.3;
            }
        }
        s.run().expect("run");
        (0..s.outputs().len())
            .map(|i| s.output(i).to_vec())
            .collect::<Vec<_>>()
    };
    let mut plain = OrtSession::prepare(
        &model,
        OrtOptions {
            threads: 1,
            cache: None,
        },
    )
    .expect("no cache");
    assert_eq!(plain.cache, CacheUse::Off);
    let mut first = OrtSession::prepare(&model, opts.clone()).expect("first");
    let CacheUse::Written(file) = first.cache.clone() else {
        panic!("expected the graph written: {:?}", first.cache);
    };
    assert!(file.is_file(), "{}", file.display());
    let mut second = OrtSession::prepare(&model, opts.clone()).expect("second");
    assert_eq!(second.cache, CacheUse::Loaded(file.clone()));
    println!(
        "prepare: {:.1} ms optimizing and writing, {:.1} ms from the cached graph",
        first.prepare_ms, second.prepare_ms
    );
    let want = outputs(&mut plain);
    assert_eq!(outputs(&mut first), want);
    assert_eq!(outputs(&mut second), want);
    // A damaged cached graph is not used: optimized again and rewritten.
    std::fs::write(&file, b"not a model").expect("damage");
    let mut third = OrtSession::prepare(&model, opts).expect("third");
    assert_eq!(third.cache, CacheUse::Written(file.clone()));
    assert_eq!(outputs(&mut third), want);
    // No staging file left behind.
    let left: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn check_parity_compares_onnxruntime_with_tract_in_action_units() {
    if !have_ort() {
        return;
    }
    let dir = WorkDir::new("ort-cli-parity");
    let bundle = dir.join("bundle");
    let manifest = write_tiny_bundle(&bundle, default_capture());
    let out = reflex()
        .args([
            "check",
            "--parity",
            "--backend",
            "onnxruntime",
            "--threads",
            "1",
            "--bundle",
        ])
        .arg(&bundle)
        .run()
        .success();
    let s = &out.stdout;
    assert!(
        s.contains("parity: onnxruntime vs tract on 4 seeded inputs, action units (tolerance: default for fp32: 0.001"),
        "{s}"
    );
    for (name, unit) in manifest.action.names.iter().zip(&manifest.action.units) {
        let line = s
            .lines()
            .find(|l| l.trim_start().starts_with(name.as_str()) && l.contains("max |diff|"))
            .unwrap_or_else(|| panic!("no parity line for {name}:\n{s}"));
        assert!(
            line.contains(&format!(" {unit} ")) && line.ends_with("OK"),
            "{line}"
        );
    }
    // tract selected: nothing to compare, said so.
    let out = reflex()
        .args(["check", "--parity", "--backend", "tract", "--bundle"])
        .arg(&bundle)
        .run()
        .success();
    assert!(
        out.stdout
            .contains("parity: tract selected, the reference itself"),
        "{}",
        out.stdout
    );
}
