//! No `reflex-tools` command destroys what it did not write: user files planted in the output of
//! every writing command survive (the command fails, naming the path and the fix), `--out .` is
//! refused, a bundle is replaced only with `--force`, a killed export leaves the previous bundle
//! loadable (and the next export succeeds), and a failed export leaves nothing behind.

use reflex_models::manifest::{BackendKind, CaptureSpec, PixelFormat};
use reflex_models::npy::{write_npy, NpyArray};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
use reflex_models::output::PAUSE_ENV;
use reflex_models::Bundle;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn tools_in(cwd: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reflex-tools"));
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.args(args).output().expect("runs")
}

fn tools(args: &[&str]) -> Output {
    tools_in(None, args)
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "stdout:\n{out}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The command failed (exit code 1) and its message names `path`; returns the message.
fn refused(o: &Output, path: &Path) -> String {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "should fail: {e}");
    assert!(e.contains(s(path)), "names {}: {e}", path.display());
    e
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("overwrite")
}

fn dir(name: &str) -> PathBuf {
    let d = root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(&d);
    std::fs::create_dir_all(d.parent().expect("parent")).expect("mkdir");
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A small policy bundle (one 64x48 camera resized to 16x16 and averaged per channel, with the
/// state, into a chunk of 4 actions by one linear layer), built once: the source of the exports
/// and quantizations below (`--onnx DIR/policy.onnx --manifest DIR/policy.toml`).
fn tiny() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        const SIDE: usize = 16;
        const HORIZON: usize = 4;
        let arch = PolicyArch {
            encoder: EncoderKind::Resnet18,
            cameras: vec!["front".into()],
            shared_encoder: false,
            state_dim: 6,
            action_dim: 6,
            hidden: vec![],
            head: HeadKind::Chunk { horizon: HORIZON },
        };
        let capture = CaptureSpec {
            width: 64,
            height: 48,
            format: PixelFormat::Rgb24,
            fps: 30,
        };
        let mut m = reflex_models::reference::reference_manifest(&arch, "tiny", capture);
        m.cameras[0].preprocess.resize.width = SIDE as u32;
        m.cameras[0].preprocess.resize.height = SIDE as u32;
        m.models[0].backends = vec![BackendKind::Tract];
        let mut g = GraphBuilder::new("tiny");
        let image = g.input("image.front", &[1, 3, SIDE, SIDE]);
        let state = g.input("state", &[1, 6]);
        let pooled = g.node("pool", "GlobalAveragePool", &[&image], &[]);
        let flat = g.node("flat", "Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
        let features = g.node(
            "features",
            "Concat",
            &[&flat, &state],
            &[("axis", Attr::Int(1))],
        );
        let out = HORIZON * 6;
        let w: Vec<f32> = (0..9 * out)
            .map(|i| 0.05 * ((i * 37 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let w = g.initializer("head.weight", &[9, out], &w);
        let b = g.initializer("head.bias", &[out], &vec![0.0; out]);
        let y = g.node("head", "Gemm", &[&features, &w, &b], &[]);
        let shape = g.shape_const(&[1, HORIZON as i64, 6]);
        let action = g.node("action", "Reshape", &[&y, &shape], &[]);
        g.output(&action, &[1, HORIZON, 6]);
        let bytes = prost::Message::encode_to_vec(&g.finish());
        let d = dir("tiny-src");
        reflex_models::bundle::write_bundle(&d, &mut m, &[&bytes]).expect("tiny bundle");
        d
    })
}

/// `reflex-tools export` of the tiny bundle to `out`, with `extra` arguments.
fn export(out: &Path, extra: &[&str]) -> Output {
    let (onnx, tpl) = (tiny().join("policy.onnx"), tiny().join("policy.toml"));
    let mut args = vec![
        "export",
        "--onnx",
        s(&onnx),
        "--manifest",
        s(&tpl),
        "--out",
        s(out),
    ];
    args.extend(extra);
    tools(&args)
}

/// Every file under `d` with its bytes.
fn snapshot(d: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                m.insert(e.path(), std::fs::read(e.path()).expect("read"));
            }
        }
    }
    m
}

/// A folder of user files: `notes.txt` and `data/keep.bin`.
fn user_folder(name: &str) -> PathBuf {
    let d = dir(name);
    std::fs::create_dir_all(d.join("data")).expect("mkdir");
    std::fs::write(d.join("notes.txt"), "my notes").expect("write");
    std::fs::write(d.join("data/keep.bin"), [1u8, 2, 3]).expect("write");
    d
}

/// Names in `d` that look like reflex staging folders or temporary files.
fn staging_left(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".reflex-tmp-"))
        .collect()
}

#[test]
fn user_files_survive_every_writing_command() {
    let src = tiny();
    let folder = user_folder("user-folder");
    let before = snapshot(&folder);
    let intact = || assert_eq!(snapshot(&folder), before, "user files changed");

    // export --out: refused with or without --force.
    for force in [&[][..], &["--force"][..]] {
        let e = refused(&export(&folder, force), &folder);
        assert!(
            e.contains("not a reflex bundle") && e.contains("choose an empty or new folder"),
            "{e}"
        );
        intact();
    }
    // A bundle folder with a user's file in it is not a bundle any more.
    let b = dir("bundle-with-notes");
    ok(&export(&b, &[]));
    std::fs::write(b.join("notes.txt"), "mine").expect("write");
    let e = refused(&export(&b, &["--force"]), &b);
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(
        std::fs::read_to_string(b.join("notes.txt")).expect("kept"),
        "mine"
    );

    // quantize --out, --save-held-out, --report: each refused before any work.
    let q = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--bundle",
            s(src),
            "--precision",
            "fp16",
            "--held-out",
            "2",
            "--latency-runs",
            "1",
            "--out",
            s(out),
        ];
        args.extend(extra);
        tools(&args)
    };
    let fresh = dir("quantize-fresh");
    for force in [&[][..], &["--force"][..]] {
        refused(&q(&folder, force), &folder);
        intact();
        let mut extra = vec!["--save-held-out", s(&folder)];
        extra.extend(force);
        refused(&q(&fresh, &extra), &folder);
        intact();
        assert!(!fresh.exists(), "nothing written to --out");
    }
    let user_file = folder.join("notes.txt");
    let e = refused(&q(&fresh, &["--report", s(&user_file)]), &user_file);
    assert!(e.contains("--force"), "{e}");
    intact();
    assert!(!fresh.exists());

    // infer --output: an existing file, or an existing file in an output folder.
    let img = dir("img.npy");
    let st = dir("state.npy");
    write_npy(&img, &NpyArray::f32(&[1, 3, 16, 16], vec![0.5; 768])).expect("npy");
    write_npy(&st, &NpyArray::f32(&[1, 6], vec![0.1; 6])).expect("npy");
    let infer = |out: &Path, extra: &[&str]| {
        let (i, s2) = (
            format!("image.front={}", s(&img)),
            format!("state={}", s(&st)),
        );
        let mut args = vec![
            "infer",
            "--bundle",
            s(src),
            "--input",
            &i,
            "--input",
            &s2,
            "--output",
            s(out),
        ];
        args.extend(extra);
        tools(&args)
    };
    let user_npy = folder.join("data/keep.bin");
    let e = refused(&infer(&user_npy, &[]), &user_npy);
    assert!(e.contains("--force"), "{e}");
    intact();
    std::fs::write(folder.join("action.npy"), "user tensor").expect("write");
    let before_dir = snapshot(&folder);
    refused(&infer(&folder, &[]), &folder.join("action.npy"));
    assert_eq!(snapshot(&folder), before_dir);
    // --force replaces exactly the files named, nothing else.
    ok(&infer(&folder, &["--force"]));
    let after = snapshot(&folder);
    assert_ne!(after[&folder.join("action.npy")], b"user tensor");
    assert_eq!(after.len(), before_dir.len());
    assert!(staging_left(&folder).is_empty());
}

#[test]
fn out_dot_and_ancestors_are_refused() {
    // In a folder of its own: tests run in parallel, and their staging folders come and go.
    let cwd = user_folder("dot/cwd");
    let before = snapshot(&cwd);
    let (onnx, tpl) = (tiny().join("policy.onnx"), tiny().join("policy.toml"));
    for out in [".", "..", "./", "/"] {
        for force in [false, true] {
            let mut args = vec![
                "export",
                "--onnx",
                s(&onnx),
                "--manifest",
                s(&tpl),
                "--out",
                out,
            ];
            if force {
                args.push("--force");
            }
            let o = tools_in(Some(&cwd), &args);
            let e = String::from_utf8_lossy(&o.stderr).to_string();
            assert_eq!(o.status.code(), Some(1), "--out {out}: {e}");
            assert!(
                e.contains("current folder") || e.contains("root folder"),
                "--out {out}: {e}"
            );
            assert_eq!(snapshot(&cwd), before, "--out {out}");
        }
    }
    assert!(staging_left(cwd.parent().expect("parent")).is_empty());
}

#[test]
fn an_existing_bundle_is_replaced_only_with_force() {
    let out = dir("replace/bundle");
    ok(&export(&out, &["--name", "first"]));
    let e = refused(&export(&out, &["--name", "second"]), &out);
    assert!(
        e.contains("already holds a reflex bundle") && e.contains("use --force"),
        "{e}"
    );
    assert_eq!(Bundle::load(&out).expect("kept").manifest.name, "first");
    ok(&export(&out, &["--name", "second", "--force"]));
    assert_eq!(Bundle::load(&out).expect("new").manifest.name, "second");
    // An empty folder needs no --force: nothing is lost.
    let empty = dir("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    ok(&export(&empty, &[]));
    Bundle::load(&empty).expect("bundle");
    assert!(
        staging_left(&root()).is_empty(),
        "{:?}",
        staging_left(&root())
    );
}

/// Starts `export --force --name NAME` paused by the test hook at `point`, then kills it with
/// SIGKILL there (the hook prints a line on stderr, then sleeps: the kill lands while the
/// process is stopped at that exact point).
fn kill_export_at(out: &Path, name: &str, point: &str) {
    let (onnx, tpl) = (tiny().join("policy.onnx"), tiny().join("policy.toml"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(["export", "--onnx", s(&onnx), "--manifest", s(&tpl)])
        .args(["--name", name, "--force", "--out", s(out)])
        .env(PAUSE_ENV, point)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("stderr");
        assert!(n > 0, "export ended before the hook: {seen}");
        seen.push_str(&line);
        if line.contains(&format!("paused at {point}")) {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    // Reaped, so its pid is gone and the next run sees the staging folder as stale.
    child.wait().expect("wait");
}

#[test]
fn a_killed_export_leaves_the_previous_bundle_intact() {
    let parent = dir("killed");
    let out = parent.join("bundle");
    ok(&export(&out, &["--name", "first"]));
    let files = snapshot(&out);

    // Killed with the new bundle complete in its staging folder, before any rename.
    kill_export_at(&out, "second", "staged");
    assert_eq!(snapshot(&out), files);
    assert_eq!(Bundle::load(&out).expect("loads").manifest.name, "first");
    assert_eq!(staging_left(&parent).len(), 1, "the killed run's staging");

    // Killed between the two renames: the previous bundle sits in the staging folder. The next
    // run puts it back before anything else: without --force it is then refused, intact.
    kill_export_at(&out, "second", "moved-aside");
    assert!(!out.exists());
    let e = refused(&export(&out, &["--name", "third"]), &out);
    assert!(e.contains("already holds a reflex bundle"), "{e}");
    assert_eq!(snapshot(&out), files);
    assert_eq!(Bundle::load(&out).expect("loads").manifest.name, "first");
    assert!(staging_left(&parent).is_empty(), "stale staging removed");

    // And the next export succeeds despite another stale staging folder.
    kill_export_at(&out, "second", "staged");
    ok(&export(&out, &["--name", "third", "--force"]));
    assert_eq!(Bundle::load(&out).expect("loads").manifest.name, "third");
    assert!(
        staging_left(&parent).is_empty(),
        "{:?}",
        staging_left(&parent)
    );
}

#[test]
fn a_failed_export_leaves_nothing_behind() {
    // A DBC bundle whose protocol file is nowhere: caught when the bundle is loaded back.
    let tpl_dir = dir("dbc-template");
    std::fs::create_dir_all(&tpl_dir).expect("mkdir");
    let text = std::fs::read_to_string(tiny().join("policy.toml")).expect("template");
    let mut m: toml::Table = text.parse().expect("toml");
    let mut can = toml::Table::new();
    can.insert("protocol".into(), "dbc".into());
    can.insert("file".into(), "arm.dbc".into());
    can.insert("sha256".into(), "0".repeat(64).into());
    let actions: toml::Table = [
        "shoulder_pan",
        "shoulder_lift",
        "elbow_flex",
        "wrist_flex",
        "wrist_roll",
        "gripper",
    ]
    .iter()
    .map(|n| (n.to_string(), toml::Value::from(format!("Cmd.{n}"))))
    .collect();
    can.insert("actions".into(), actions.into());
    m.insert("can".into(), can.into());
    let tpl = tpl_dir.join("policy.toml");
    std::fs::write(&tpl, toml::to_string(&m).expect("toml")).expect("write");
    let parent = dir("failed");
    let out = parent.join("new").join("bundle");
    let o = tools(&[
        "export",
        "--onnx",
        s(&tiny().join("policy.onnx")),
        "--manifest",
        s(&tpl),
        "--out",
        s(&out),
    ]);
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("arm.dbc"), "{e}");
    assert!(!parent.join("new").exists(), "nothing left behind");
    assert!(!parent.exists() || staging_left(&parent).is_empty());
}
