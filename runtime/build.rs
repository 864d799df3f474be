//! Compiles the TensorRT shim (`shim/tensorrt_shim.cpp`) with `cc`, only with the `tensorrt`
//! feature: the default build needs no C++ compiler headers for TensorRT or CUDA.
//!
//! Headers: `TENSORRT_INCLUDE_DIR` (must hold `NvInferRuntime.h`), else JetPack's
//! `/usr/include/aarch64-linux-gnu`, else `/usr/include/x86_64-linux-gnu`, else `/usr/include`.
//! CUDA's `cuda_runtime_api.h`: `CUDA_INCLUDE_DIR`, else `/usr/local/cuda/include`, else the
//! stand-in in `shim/nocuda/` (the two opaque handle types TensorRT's runtime API uses).
//! No headers found: one error saying where it looked and which variable to set.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "tensorrt")]
    tensorrt::build();
}

#[cfg(feature = "tensorrt")]
mod tensorrt {
    use std::path::{Path, PathBuf};

    fn env_dir(name: &str) -> Option<PathBuf> {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// `NV_TENSORRT_MAJOR.MINOR.PATCH.BUILD` from `NvInferVersion.h`.
    fn header_version(include: &Path) -> String {
        let text = std::fs::read_to_string(include.join("NvInferVersion.h")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("#define") && w.next() == Some(name))
                        .then(|| w.next().map(str::to_string))
                        .flatten()
                })
                .unwrap_or_else(|| "?".into())
        };
        [
            "NV_TENSORRT_MAJOR",
            "NV_TENSORRT_MINOR",
            "NV_TENSORRT_PATCH",
            "NV_TENSORRT_BUILD",
        ]
        .map(field)
        .join(".")
    }

    pub fn build() {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let candidates: Vec<PathBuf> = match env_dir("TENSORRT_INCLUDE_DIR") {
            Some(d) => vec![d],
            None => [
                "/usr/include/aarch64-linux-gnu",
                "/usr/include/x86_64-linux-gnu",
                "/usr/include",
            ]
            .map(PathBuf::from)
            .to_vec(),
        };
        let Some(trt) = candidates
            .iter()
            .find(|d| d.join("NvInferRuntime.h").is_file())
        else {
            let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            eprintln!(
                "error: the `tensorrt` feature needs TensorRT's headers (NvInferRuntime.h), found \
                 in none of: {}. Set TENSORRT_INCLUDE_DIR to the folder holding them (JetPack: \
                 /usr/include/aarch64-linux-gnu; this repository's CI: \
                 ../shared/third_party/tensorrt-10.3/include), or build without `--features \
                 tensorrt`.",
                looked.join(", ")
            );
            std::process::exit(1);
        };
        let cuda = env_dir("CUDA_INCLUDE_DIR")
            .or_else(|| Some(PathBuf::from("/usr/local/cuda/include")))
            .filter(|d| d.join("cuda_runtime_api.h").is_file())
            .unwrap_or_else(|| manifest.join("shim/nocuda"));
        println!("cargo:rerun-if-changed=shim/tensorrt_shim.cpp");
        println!("cargo:rerun-if-changed=shim/nocuda/cuda_runtime_api.h");
        println!(
            "cargo:rustc-env=REFLEX_TRT_HEADER_VERSION={}",
            header_version(trt)
        );
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(manifest.join("shim/tensorrt_shim.cpp"))
            // System includes: warnings inside NVIDIA's headers (unused parameters, deprecated
            // members) are not ours to fix; the shim's own code keeps every warning.
            .flag("-isystem")
            .flag(trt.as_os_str())
            .flag("-isystem")
            .flag(cuda.as_os_str())
            .compile("reflex_tensorrt_shim");
    }
}
