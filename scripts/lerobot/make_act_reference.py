"""Writes the LeRobot ACT reference the Rust tests compare against (LeRobot 0.6.1, CPU).

Builds an ACT policy with LeRobot's default sizes (ResNet-18, dim_model 512, 4 encoder layers,
1 decoder layer, chunk 100) for two cameras, fills every tensor with the deterministic function
of `weights.py` (which Rust reproduces bit for bit, so model.safetensors is not committed), saves
the checkpoint folder as LeRobot's training script does, and runs LeRobot itself on fixed inputs:
the preprocessor, `predict_action_chunk` (the normalized chunk) and the postprocessor (actions).

Only small files are written to OUT (default tests/data/lerobot/act): config.json, the processor
JSON files and statistics, `model_tensors.json` (name, shape, dtype of every tensor of
model.safetensors), the inputs and the expected outputs as .npy.

Run (a Python 3.12 venv with `pip install "lerobot[diffusion]==0.6.1"`):
    VENV/bin/python scripts/lerobot/make_act_reference.py [OUT]
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import weights  # noqa: E402

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.act.configuration_act import ACTConfig  # noqa: E402
from lerobot.policies.act.modeling_act import ACTPolicy  # noqa: E402
from lerobot.policies.act.processor_act import make_act_pre_post_processors  # noqa: E402

CAMERAS = ["top", "wrist"]
HEIGHT, WIDTH = 96, 128
STATE_DIM = ACTION_DIM = 6
REPO = Path(__file__).resolve().parents[2]


def stats(rng: np.random.Generator) -> dict:
    """Dataset-like statistics for every feature, plus a bookkeeping column as LeRobot writes."""
    out = {}
    for key, dim in [("observation.state", STATE_DIM), ("action", ACTION_DIM)]:
        mean = rng.uniform(-1.0, 1.0, dim)
        std = rng.uniform(0.2, 0.8, dim)
        out[key] = {
            "mean": mean,
            "std": std,
            "min": mean - 2.5 * std,
            "max": mean + 2.5 * std,
            "q01": mean - 2.3 * std,
            "q99": mean + 2.3 * std,
            "count": np.array([1000.0]),
        }
    for cam in CAMERAS:
        mean = rng.uniform(0.3, 0.6, (3, 1, 1))
        std = rng.uniform(0.15, 0.3, (3, 1, 1))
        out[f"observation.images.{cam}"] = {
            "mean": mean,
            "std": std,
            "min": np.zeros((3, 1, 1)),
            "max": np.ones((3, 1, 1)),
            "count": np.array([1000.0]),
        }
    out["timestamp"] = {"mean": np.array([10.0]), "std": np.array([5.0]), "min": np.array([0.0]),
                        "max": np.array([20.0]), "count": np.array([1000.0])}
    return {k: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()} for k, d in out.items()}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests/data/lerobot/act"
    rng = np.random.default_rng(13)
    torch.manual_seed(0)
    input_features = {
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
    }
    for cam in CAMERAS:
        input_features[f"observation.images.{cam}"] = PolicyFeature(
            type=FeatureType.VISUAL, shape=(3, HEIGHT, WIDTH)
        )
    config = ACTConfig(
        input_features=input_features,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        pretrained_backbone_weights=None,
        device="cpu",
    )
    policy = ACTPolicy(config)
    weights.fill(policy)
    policy.eval()
    dataset_stats = stats(rng)
    pre, post = make_act_pre_post_processors(config, dataset_stats)

    state = rng.uniform(-1.0, 1.0, STATE_DIM).astype(np.float32)
    images = {cam: rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for cam in CAMERAS}
    obs = {"observation.state": torch.from_numpy(state)}
    for cam, img in images.items():
        # What LeRobot's robot loop does with a camera frame: uint8 HWC -> float / 255 -> CHW.
        obs[f"observation.images.{cam}"] = torch.from_numpy(img).float().div(255.0).permute(2, 0, 1)
    with torch.no_grad():
        batch = pre(obs)
        chunk = policy.predict_action_chunk(batch)
        actions = post(chunk)

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy.save_pretrained(tmp)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
        for f in sorted(tmp.iterdir()):
            if f.name != "model.safetensors":
                shutil.copy(f, out / f.name)
        from safetensors import safe_open

        with safe_open(tmp / "model.safetensors", "pt") as st:
            tensors = [
                {"name": k, "shape": list(st.get_slice(k).get_shape()),
                 "dtype": str(st.get_slice(k).get_dtype())}
                for k in sorted(st.keys())
            ]
    (out / "model_tensors.json").write_text(json.dumps(tensors, indent=1) + "\n")
    np.save(out / "observation.state.npy", state[None])
    for cam, img in images.items():
        np.save(out / f"observation.images.{cam}.npy", img)
    np.save(out / "chunk_normalized.npy", chunk.numpy().astype(np.float32))
    np.save(out / "actions.npy", actions.numpy().astype(np.float32))
    print(f"wrote {out}: chunk {tuple(chunk.shape)}, |chunk| max {chunk.abs().max():.3f}, "
          f"actions[0,0] {actions[0, 0].numpy()}")


if __name__ == "__main__":
    main()
