"""Writes the LeRobot 0.6.1 Diffusion Policy reference under tests/data/lerobot/diffusion/.

Run with a LeRobot 0.6.1 venv (Python 3.12):

    PYENV_VERSION=3.12.1 python3.12 -m venv /work/venv-lerobot
    /work/venv-lerobot/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
    /work/venv-lerobot/bin/pip install "lerobot[diffusion]==0.6.1"
    /work/venv-lerobot/bin/python scripts/lerobot/make_diffusion_reference.py

A Diffusion policy with two cameras, a reduced U-Net (`down_dims=(64, 128)`), BatchNorm ResNet-18
encoders (`use_group_norm=False`, `pretrained_backbone_weights=None`), every tensor filled by
`weights.py` (the function Rust's `reflex_testkit::lerobot_weights` reproduces bit for bit).
Only small files are written: the checkpoint folder without `model.safetensors` (the tests
regenerate it from `state_dict.json`), the inputs and LeRobot's outputs as .npy:

- `raw_image_<camera>.npy` (uint8 [n_obs, H, W, 3]) and `raw_state.npy` ([n_obs, S]): the
  observation history, oldest first, as the robot gives it;
- `image_<camera>.npy` ([n_obs, 3, H, W]) and `state.npy` ([n_obs, S]): the same after LeRobot's
  preprocessor (pixels / 255, then its normalizer), what the model sees;
- `features.npy` ([n_obs, D]): `_prepare_global_conditioning` reshaped per step (the encoder);
- `denoise_sample.npy` ([1, horizon, A]), `denoise_timestep.npy` ([1]), `denoise_output.npy`:
  one U-Net call;
- `ddpm_initial_noise.npy`, `ddpm_step_noise.npy` ([K-1, 1, horizon, A], the noise DDPM drew at
  each step with t > 0, in order), `ddpm_sample.npy` (the whole denoised sample) and
  `ddpm_actions.npy` (`generate_actions`: the executed slice, normalized), `ddpm_actions_unnormalized.npy`
  (after LeRobot's postprocessor);
- `ddim10_sample.npy`: the same initial noise, DDIM with 10 steps.

`../diffusion_groupnorm_shared/` is the same policy with `use_group_norm=True` and one encoder
shared by both cameras (config, tensor listing, `features.npy` on the same inputs);
`../diffusion_default/` is LeRobot's default size (config and tensor listing only), for the
speed benchmark.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import weights  # noqa: E402

import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402
from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.diffusion import (  # noqa: E402
    DiffusionConfig,
    DiffusionPolicy,
    make_diffusion_pre_post_processors,
)

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "lerobot" / "diffusion"
CAMERAS = ["top", "wrist"]
IMAGE = (3, 64, 72)
STATE, ACTION = 5, 4
N_OBS, HORIZON, N_ACTION = 2, 16, 8


def config(**overrides) -> DiffusionConfig:
    feats = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE) for c in CAMERAS}
    feats["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(STATE,))
    kw = dict(
        input_features=feats,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION,))},
        n_obs_steps=N_OBS,
        horizon=HORIZON,
        n_action_steps=N_ACTION,
        crop_shape=(56, 63),
        pretrained_backbone_weights=None,
        use_group_norm=False,
        down_dims=(64, 128),
        kernel_size=5,
        n_groups=8,
        diffusion_step_embed_dim=32,
        use_film_scale_modulation=True,
        noise_scheduler_type="DDPM",
        num_train_timesteps=100,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        device="cpu",
    )
    kw.update(overrides)
    return DiffusionConfig(**kw)


def stats() -> dict:
    rng = np.random.default_rng(7)
    s = {}
    for c in CAMERAS:
        s[f"observation.images.{c}"] = {
            "mean": rng.uniform(0.3, 0.6, (3, 1, 1)),
            "std": rng.uniform(0.15, 0.3, (3, 1, 1)),
            "min": np.zeros((3, 1, 1)),
            "max": np.ones((3, 1, 1)),
        }
    for key, n in [("observation.state", STATE), ("action", ACTION)]:
        lo = rng.uniform(-2.0, -0.5, n)
        s[key] = {
            "mean": rng.uniform(-0.2, 0.2, n),
            "std": rng.uniform(0.5, 1.0, n),
            "min": lo,
            "max": lo + rng.uniform(1.0, 3.0, n),
        }
    return {k: {st: torch.tensor(v, dtype=torch.float32) for st, v in d.items()} for k, d in s.items()}


def save(name: str, array) -> None:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    np.save(OUT / f"{name}.npy", np.ascontiguousarray(array))


def write_default_size() -> None:
    """LeRobot's default Diffusion Policy (PushT: one 96x96 camera cropped to 84x84, 2-D state and
    action, `down_dims=(512, 1024, 2048)`): only its config.json and tensor listing, for the speed
    benchmark (`host-tools/benches/lerobot_diffusion.rs`), which regenerates the weights."""
    out = OUT.parent / "diffusion_default"
    out.mkdir(parents=True, exist_ok=True)
    cfg = DiffusionConfig(
        input_features={
            "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        crop_shape=(84, 84),
        pretrained_backbone_weights=None,
        device="cpu",
    )
    policy = DiffusionPolicy(cfg)
    cfg._save_pretrained(out)
    keys = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in policy.state_dict().items()
    }
    (out / "state_dict.json").write_text(json.dumps(keys, indent=1) + "\n")


def write_variant(batch) -> None:
    """The other encoder forms: GroupNorm backbone, one encoder shared by both cameras. Only the
    config, the tensor listing and the encoder's features on the same normalized inputs."""
    out = OUT.parent / "diffusion_groupnorm_shared"
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(use_group_norm=True, use_separate_rgb_encoder_per_camera=False)
    policy = DiffusionPolicy(cfg)
    weights.fill(policy, keep=("pos_grid",))
    policy.eval()
    cfg._save_pretrained(out)
    keys = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in policy.state_dict().items()
    }
    (out / "state_dict.json").write_text(json.dumps(keys, indent=1) + "\n")
    with torch.no_grad():
        features = policy.diffusion._prepare_global_conditioning(batch)
    np.save(out / "features.npy", features.reshape(N_OBS, -1).numpy())


def main() -> None:
    write_default_size()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = config()
    policy = DiffusionPolicy(cfg)
    weights.fill(policy, keep=("pos_grid",))
    policy.eval()
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats())

    policy.save_pretrained(OUT)
    pre.save_pretrained(OUT)
    post.save_pretrained(OUT)
    (OUT / "model.safetensors").unlink()
    sd = policy.state_dict()
    keys = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in sd.items()
    }
    (OUT / "state_dict.json").write_text(json.dumps(keys, indent=1) + "\n")

    # The observation history, as the robot gives it.
    rng = np.random.default_rng(11)
    raw_images = {c: rng.integers(0, 256, (N_OBS, IMAGE[1], IMAGE[2], 3), dtype=np.uint8) for c in CAMERAS}
    raw_state = rng.uniform(-1.5, 1.5, (N_OBS, STATE)).astype(np.float32)
    for c in CAMERAS:
        save(f"raw_image_{c}", raw_images[c])
    save("raw_state", raw_state)

    normalized = []
    for s in range(N_OBS):
        obs = {
            f"observation.images.{c}": torch.from_numpy(raw_images[c][s]).permute(2, 0, 1).float() / 255.0
            for c in CAMERAS
        }
        obs["observation.state"] = torch.from_numpy(raw_state[s])
        normalized.append(pre(obs))
    batch = {
        key: torch.stack([n[key] for n in normalized], dim=1)  # [1, n_obs, ...]
        for key in normalized[0]
        if key.startswith("observation.")
    }
    for c in CAMERAS:
        save(f"image_{c}", batch[f"observation.images.{c}"][0])
    save("state", batch["observation.state"][0])
    batch["observation.images"] = torch.stack(
        [batch[f"observation.images.{c}"] for c in CAMERAS], dim=-4
    )

    write_variant(batch)
    model = policy.diffusion
    with torch.no_grad():
        global_cond = model._prepare_global_conditioning(batch)
        save("features", global_cond.reshape(N_OBS, -1))

        gen = torch.Generator().manual_seed(3)
        sample = torch.randn((1, HORIZON, ACTION), generator=gen)
        timestep = torch.tensor([37])
        save("denoise_sample", sample)
        save("denoise_timestep", timestep.float())
        save("denoise_output", model.unet(sample, timestep, global_cond=global_cond))

        # DDPM with every drawn noise recorded.
        initial = torch.randn((1, HORIZON, ACTION), generator=gen)
        drawn = []
        original = ddpm_module.randn_tensor

        def recording(*args, **kwargs):
            t = original(*args, **kwargs)
            drawn.append(t.clone())
            return t

        ddpm_module.randn_tensor = recording
        try:
            torch.manual_seed(5)
            full = model.conditional_sample(1, global_cond=global_cond, noise=initial.clone())
            drawn_full = list(drawn)
            drawn.clear()
            torch.manual_seed(5)
            actions = model.generate_actions(batch, noise=initial.clone())
        finally:
            ddpm_module.randn_tensor = original
        assert len(drawn_full) == cfg.num_train_timesteps - 1, len(drawn_full)
        assert all(torch.equal(a, b) for a, b in zip(drawn, drawn_full))
        save("ddpm_initial_noise", initial)
        save("ddpm_step_noise", torch.stack(drawn_full))
        save("ddpm_sample", full)
        save("ddpm_actions", actions)
        assert torch.allclose(actions, full[:, N_OBS - 1 : N_OBS - 1 + N_ACTION])
        save("ddpm_actions_unnormalized", post(actions))

        ddim_cfg = config(noise_scheduler_type="DDIM", num_inference_steps=10)
        ddim = DiffusionPolicy(ddim_cfg)
        ddim.load_state_dict(policy.state_dict())
        ddim.eval()
        save("ddim10_sample", ddim.diffusion.conditional_sample(1, global_cond=global_cond, noise=initial.clone()))
        (OUT / "ddim10_config.json").write_text(
            json.dumps({"noise_scheduler_type": "DDIM", "num_inference_steps": 10}, indent=1) + "\n"
        )

    import diffusers
    import lerobot

    (OUT / "VERSIONS").write_text(
        f"lerobot {lerobot.__version__}\ndiffusers {diffusers.__version__}\ntorch {torch.__version__}\n"
        f"numpy {np.__version__}\n"
    )
    print("wrote", OUT)


if __name__ == "__main__":
    main()
