//! `reflex bench`: report schema, SVG, verdict exit codes, `--compare`.

use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::tract::TractOptions;
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

/// The plot of a pipeline report: well-formed; a bar histogram per stage with axes, tick labels,
/// counts, p50/p99 markers and budgets; the period timeline with its time scale.
fn check_svg(svg: &str, report: &serde_json::Value) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(doc.descendants().filter(|n| n.has_tag_name("rect")).count() > 5);
    assert!(doc.descendants().any(|n| n.has_tag_name("polyline")));
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    let has = |f: &dyn Fn(&str) -> bool| texts.iter().any(|t| f(t));
    let count = |f: &dyn Fn(&str) -> bool| texts.iter().filter(|t| f(t)).count();
    assert!(
        has(&|t| t.starts_with("reflex bench:") && t.ends_with("PASS")),
        "{texts:?}"
    );
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .filter(|s| *s != "period")
        .collect();
    assert!(
        stages.contains(&"end_to_end") && stages.contains(&"send"),
        "{stages:?}"
    );
    for st in &stages {
        // One histogram per stage, its caption giving n and the percentiles.
        let caption = format!("{st}: n ");
        assert!(
            has(&|t| t.starts_with(&caption) && t.contains("p99")),
            "{st}: {texts:?}"
        );
    }
    // Axes: described, with numeric tick labels.
    assert!(
        count(&|t| t.starts_with("count")) >= stages.len(),
        "{texts:?}"
    );
    assert!(
        count(&|t| t.starts_with("latency (")) >= stages.len(),
        "{texts:?}"
    );
    assert!(
        count(&|t| t.parse::<f64>().is_ok()) >= 4 * stages.len(),
        "{texts:?}"
    );
    // Markers: p50 and p99 in every histogram; the budgets.
    assert!(
        count(&|t| t.starts_with("p50 ")) >= stages.len(),
        "{texts:?}"
    );
    assert!(
        count(&|t| t.starts_with("p99 ")) >= 2 * stages.len(),
        "{texts:?}"
    );
    assert!(has(&|t| t.starts_with("tick budget")), "{texts:?}");
    assert!(
        has(&|t| t.starts_with("frame-to-command budget")),
        "{texts:?}"
    );
    // The timeline: a time axis and the nominal period.
    assert!(has(
        &|t| t.starts_with("time since the first timed tick (s)")
    ));
    assert!(has(&|t| t == "period (ms)") && has(&|t| t.starts_with("nominal ")));
    // Bars: at least one per histogram, none of zero width.
    let bars: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#4682B4"))
        .collect();
    assert!(bars.len() > stages.len(), "{} bars", bars.len());
    for b in &bars {
        let w: f64 = b
            .attribute("width")
            .and_then(|w| w.parse().ok())
            .expect("width");
        assert!(w >= 1.0, "a bar of width {w}");
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
    // 12 ticks make a handful of end-to-end samples: the verdict says how few.
    assert!(
        stdout.contains("note: the verdict rests on") && stdout.contains("end_to_end sample(s)"),
        "{stdout}"
    );
    for stage in ["preprocess", "inference", "end_to_end", "period"] {
        assert!(stdout.contains(stage), "{stdout}");
    }
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a.json")).expect("json"))
            .expect("parses");
    check_schema(&a);
    let svg = std::fs::read_to_string(dir.join("a.svg")).expect("svg");
    check_svg(&svg, &a);

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
    let svg = std::fs::read_to_string(dir.join("b.svg")).expect("svg");
    let doc = roxmltree::Document::parse(&svg).expect("the model-only SVG is well-formed XML");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    assert!(
        texts.iter().any(|t| t.starts_with("inference: n "))
            && texts.iter().any(|t| t.ends_with("FAIL")),
        "{texts:?}"
    );
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
    assert!(
        stdout.contains("warning: a pipeline report against a model-only one"),
        "{stdout}"
    );
}

#[test]
fn bench_model_only_reports_the_network_output_on_its_fixed_inputs() {
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("bench-output");
    let bundle = demo_bundle();
    // Either verdict (exit 0 or 2): only the report's contents matter here.
    let report = |extra: &[&str], name: &str| -> serde_json::Value {
        let json = dir.join(format!("{name}.json"));
        let out = reflex()
            .args(["bench", "--bundle"])
            .arg(bundle)
            .args(extra)
            .args(["--warmup", "1", "--iterations", "2", "--json"])
            .arg(&json)
            .arg("--svg")
            .arg(dir.join(format!("{name}.svg")))
            .run();
        assert!(matches!(out.code(), Some(0 | 2)), "{out}");
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses")
    };
    // The pipeline report has no model output.
    let pipeline = report(&["--rate", "20"], "pipeline");
    assert_eq!(pipeline["mode"], "pipeline");
    assert!(
        pipeline.get("model_output").is_none(),
        "{}",
        pipeline["model_output"]
    );
    // Model-only: the output of tract on a zero image and zero state, as it runs in-process.
    let b = report(&["--model-only"], "model");
    assert_eq!(b["mode"], "model-only");
    let reported: Vec<f32> = b["model_output"]
        .as_array()
        .expect("model_output")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    let loaded = Bundle::load(bundle).expect("bundle");
    let mut policy = SinglePassPolicy::tract(&loaded, TractOptions { threads: 1 }).expect("tract");
    policy.camera_input(0).fill(0.0);
    if let Some(s) = policy.state_input() {
        s.fill(0.0);
    }
    policy.run().expect("run");
    let expected = policy.output();
    let m = &loaded.manifest;
    assert_eq!(
        expected.len(),
        m.action.output.horizon() * m.action.names.len()
    );
    assert_eq!(reported.len(), expected.len());
    for (i, (r, e)) in reported.iter().zip(expected).enumerate() {
        assert!(
            (r - e).abs() <= 1e-5,
            "output {i}: reported {r}, in-process {e}"
        );
    }
    // Not a constant: the network's features reach the head.
    assert!(expected.iter().any(|v| (v - expected[0]).abs() > 1e-3));
}
