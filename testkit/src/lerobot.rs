//! The LeRobot reference checkpoints of `tests/data/lerobot/` (written by
//! `scripts/lerobot/make_*_reference.py` from LeRobot 0.6.1 itself), completed with their
//! `model.safetensors`: the repository keeps only the list of tensors (`model_tensors.json`) and
//! every value comes from [`crate::lerobot_weights`], bit for bit what the script filled the
//! policy with.

use reflex_models::onnx::{save_safetensors, NamedTensor};
use std::path::{Path, PathBuf};

/// The small files of a LeRobot ACT checkpoint folder (everything but `model.safetensors`).
pub const ACT_FOLDER_FILES: [&str; 5] = [
    "config.json",
    "policy_preprocessor.json",
    "policy_postprocessor.json",
    "policy_preprocessor_step_3_normalizer_processor.safetensors",
    "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
];

/// `tests/data/lerobot/act`: the ACT folder's small files, inputs and LeRobot's outputs.
pub fn act_data() -> PathBuf {
    crate::python::repo_root().join("tests/data/lerobot/act")
}

/// Copies [`ACT_FOLDER_FILES`] into `dst` (created): a folder without weights, for tests that
/// edit a file and expect a refusal before the weights are read.
///
/// Panics naming the file that could not be copied.
pub fn act_small_folder(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for f in ACT_FOLDER_FILES {
        let (from, to) = (act_data().join(f), dst.join(f));
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
}

/// The complete ACT checkpoint folder in `dst`: [`act_small_folder`] plus `model.safetensors`
/// regenerated from `model_tensors.json` (about 207 MB: keep `dst` under the target dir).
///
/// Panics on a malformed tensor list or a write error.
pub fn act_folder(dst: &Path) {
    act_small_folder(dst);
    write_checkpoint(
        &act_data().join("model_tensors.json"),
        &dst.join("model.safetensors"),
    );
}

/// Writes `out` (safetensors, f32) with every tensor `list` (`[{name, shape, dtype}]`, as the
/// reference scripts write it) names, valued by [`crate::lerobot_weights::tensor`].
pub fn write_checkpoint(list: &Path, out: &Path) {
    let text =
        std::fs::read_to_string(list).unwrap_or_else(|e| panic!("reading {}: {e}", list.display()));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let tensors: Vec<NamedTensor> = list
        .iter()
        .map(|t| {
            let key = t["name"].as_str().expect("tensor name").to_string();
            assert_eq!(t["dtype"], "F32", "{key}: only f32 tensors are generated");
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .expect("tensor shape")
                .iter()
                .map(|d| d.as_u64().expect("dimension") as usize)
                .collect();
            let data = crate::lerobot_weights::tensor(&key, &shape);
            NamedTensor { key, shape, data }
        })
        .collect();
    save_safetensors(out, &tensors).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
