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
