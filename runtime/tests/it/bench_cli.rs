//! `reflex bench`: report schema, SVG, verdict exit codes, `--compare`.

use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::cli::Cli;
use reflex_testkit::dirs::WorkDir;

fn reflex() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_reflex"))
}

fn check_schema(v: &serde_json::Value) {
    let obj = v.as_object().expect("object");
    assert_eq!(obj["schema"], "reflex-bench/1");
    for k in [
        "rate_hz",
        "period_ms",
        "margin",
        "tick_budget_ms",
        "latency_budget_ms",
        "duration_s",
        "throughput_hz",
        "inferences_per_s",
    ] {
        assert!(obj[k].is_f64(), "{k} must be a number: {}", obj[k]);
    }
    for k in [
        "ticks",
        "steps_per_inference",
        "missed_deadlines",
        "overruns",
    ] {
        assert!(obj[k].is_u64(), "{k} must be an integer");
    }
    for k in ["mode", "bundle", "backend", "backend_reason"] {
        assert!(obj[k].is_string(), "{k} must be a string");
    }
    assert!(obj["board"]["cpu_model"].is_string() && obj["board"]["cores"].is_u64());
    assert!(obj["periods_ms"].is_array());
    let v = &obj["verdict"];
    assert!(v["pass"].is_boolean() && v["reason"].is_string());
    let stages = obj["stages"].as_array().expect("stages");
    assert!(!stages.is_empty());
    for s in stages {
        for k in [
            "min_ms",
            "median_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
        ] {
            assert!(s[k].is_f64(), "{k}");
        }
        let f = |k: &str| s[k].as_f64().expect("number");
        let (min, med, p99, max) = (f("min_ms"), f("median_ms"), f("p99_ms"), f("max_ms"));
        assert!(min <= med && med <= p99 && p99 <= max, "{s}");
        assert!(s["n"].as_u64().expect("n") > 0);
    }
}

#[test]
fn bench_writes_a_valid_report_and_svg_and_exit_code_follows_the_verdict() {
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("bench-cli");
    let bundle = demo_bundle();
    let run = |extra: &[&str], json: &str, svg: &str| {
        reflex()
            .args(["bench", "--bundle"])
            .arg(bundle)
            .args(extra)
            .arg("--json")
            .arg(dir.join(json))
            .arg("--svg")
            .arg(dir.join(svg))
            .run()
    };
    // A generous rate: PASS, exit 0.
    let out = run(&["--iterations", "12", "--rate", "5"], "a.json", "a.svg");
    let stdout = &out.stdout;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(stdout.contains("VERDICT: PASS"), "{stdout}");
    for stage in ["preprocess", "inference", "end_to_end", "period"] {
        assert!(stdout.contains(stage), "{stdout}");
    }
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a.json")).expect("json"))
            .expect("parses");
    check_schema(&a);
    let svg = std::fs::read_to_string(dir.join("a.svg")).expect("svg");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(doc.descendants().filter(|n| n.has_tag_name("rect")).count() > 5);
    assert!(doc.descendants().any(|n| n.has_tag_name("polyline")));

    // Model-only at an impossible 1 kHz with a single-action budget: FAIL, exit 2, names inference.
    let out = run(
        &["--model-only", "--iterations", "5", "--rate", "1000"],
        "b.json",
        "b.svg",
    );
    let stdout = &out.stdout;
    assert_eq!(out.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("VERDICT: FAIL") && stdout.contains("inference"),
        "{stdout}"
    );
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).expect("json"))
            .expect("parses");
    check_schema(&b);
    assert_eq!(b["mode"], "model-only");
    assert_eq!(b["verdict"]["limiting_stage"], "inference");

    // Side by side.
    let out = reflex()
        .args(["bench", "--compare"])
        .arg(dir.join("a.json"))
        .arg(dir.join("b.json"))
        .run()
        .success();
    let stdout = &out.stdout;
    assert!(
        stdout.contains("inference") && stdout.contains("B/A"),
        "{stdout}"
    );
}
