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

/// The small files of a LeRobot Diffusion Policy checkpoint folder (everything but
/// `model.safetensors`).
pub const DIFFUSION_FOLDER_FILES: [&str; 5] = [
    "config.json",
    "policy_preprocessor.json",
    "policy_postprocessor.json",
    "policy_preprocessor_step_3_normalizer_processor.safetensors",
    "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
];

/// `tests/data/lerobot/diffusion`: the Diffusion folder's small files (reduced U-Net,
/// `down_dims = [64, 128]`, two 64x72 cameras), its tensor listing `state_dict.json`, inputs and
/// LeRobot's outputs.
pub fn diffusion_data() -> PathBuf {
    crate::python::repo_root().join("tests/data/lerobot/diffusion")
}

/// The complete Diffusion checkpoint folder in `dst` (created): [`DIFFUSION_FOLDER_FILES`] plus
/// `model.safetensors` with every tensor `state_dict.json` lists: floats from
/// [`crate::lerobot_weights::tensor`] (the spatial softmax's `pos_grid` buffer, which the import
/// recomputes, as zeros), int64 `num_batches_tracked` counters as 0. About 4 MB.
///
/// Panics naming the file that could not be read or written.
pub fn diffusion_folder(dst: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for f in DIFFUSION_FOLDER_FILES {
        let (from, to) = (diffusion_data().join(f), dst.join(f));
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
    let list = diffusion_data().join("state_dict.json");
    let text = std::fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("reading {}: {e}", list.display()));
    let listing: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = vec![];
    for (key, v) in &listing {
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .expect("tensor shape")
            .iter()
            .map(|d| d.as_u64().expect("dimension") as usize)
            .collect();
        let n: usize = shape.iter().product();
        match v["dtype"].as_str() {
            Some("float32") => {
                let values = if key.ends_with("pos_grid") {
                    vec![0.0f32; n]
                } else {
                    crate::lerobot_weights::tensor(key, &shape)
                };
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((key.clone(), shape, Dtype::F32, bytes));
            }
            Some("int64") => tensors.push((key.clone(), shape, Dtype::I64, vec![0; 8 * n])),
            other => panic!("{}: {key}: dtype {other:?}", list.display()),
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, d, b)| {
            (
                k.clone(),
                TensorView::new(*d, s.clone(), b).expect("tensor view"),
            )
        })
        .collect();
    let out = dst.join("model.safetensors");
    safetensors::serialize_to_file(views, &None, &out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
