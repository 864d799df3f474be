//! A LeRobot checkpoint's `config.json` (LeRobot 0.6.1, `PreTrainedConfig.save_pretrained`): the
//! policy type, its input and output features, the normalization mode per feature type and, for
//! ACT, the architecture fields the graph needs.
//!
//! Only what reflex uses is read; every value reflex cannot reproduce exactly (another backbone, a
//! pre-norm transformer, an environment-state feature, ...) is refused with the field named, so a
//! policy is never run differently from how it was trained.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the config file in a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";

/// LeRobot's `FeatureType` (`lerobot/configs/types.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FeatureType {
    State,
    Visual,
    Env,
    Action,
    Reward,
    Language,
}

/// LeRobot's `NormalizationMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormalizationMode {
    MinMax,
    MeanStd,
    Identity,
    Quantiles,
    Quantile10,
}

/// One entry of `input_features` / `output_features` (`PolicyFeature`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Feature {
    #[serde(rename = "type")]
    pub kind: FeatureType,
    /// `[dim]` for state and action, `[3, H, W]` for images.
    pub shape: Vec<usize>,
}

/// The fields shared by every policy type.
#[derive(Debug, Clone, Deserialize)]
struct Common {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    input_features: BTreeMap<String, Feature>,
    #[serde(default)]
    output_features: BTreeMap<String, Feature>,
    #[serde(default)]
    normalization_mapping: BTreeMap<String, NormalizationMode>,
}

/// A checkpoint's `config.json`, read.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// `type`: `act` or `diffusion`.
    pub kind: String,
    /// `input_features`, by key (`observation.state`, `observation.images.<camera>`).
    pub input_features: BTreeMap<String, Feature>,
    /// `output_features` (`action`).
    pub output_features: BTreeMap<String, Feature>,
    /// `normalization_mapping`: feature type name (`VISUAL`, `STATE`, `ACTION`) -> mode.
    pub normalization_mapping: BTreeMap<String, NormalizationMode>,
    /// The whole file, for the policy-specific fields.
    pub raw: serde_json::Value,
}

/// The ACT fields (`ACTConfig`, `lerobot/policies/act/configuration_act.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActConfig {
    pub n_obs_steps: usize,
    /// Actions per inference: the `[1, chunk_size, action_dim]` output.
    pub chunk_size: usize,
    /// Actions executed per inference (LeRobot's action queue length).
    pub n_action_steps: usize,
    /// Temporal ensembling coefficient `m` (weights `exp(-m i)`, `i = 0` the oldest); `None` off.
    pub temporal_ensemble_coeff: Option<f64>,
    pub dim_model: usize,
    pub n_heads: usize,
    pub dim_feedforward: usize,
    pub n_encoder_layers: usize,
    pub n_decoder_layers: usize,
    pub latent_dim: usize,
    /// Whether the checkpoint has the (training-only) VAE encoder: at inference the latent is
    /// zero either way.
    pub use_vae: bool,
}

impl PolicyConfig {
    /// Reads `DIR/config.json`. Errors: a missing or unreadable file, invalid JSON, a missing
    /// `type`, or malformed features (each naming the file).
    pub fn load(dir: &Path) -> Result<PolicyConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a LeRobot checkpoint folder, e.g. outputs/train/RUN/checkpoints/last/pretrained_model, has one)",
                path.display()
            )
        })?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let common: Common = serde_json::from_value(raw.clone()).with_context(|| {
            format!(
                "{}: `type`, `input_features`, `output_features` or `normalization_mapping` is malformed",
                path.display()
            )
        })?;
        Ok(PolicyConfig {
            path,
            kind: common.kind,
            input_features: common.input_features,
            output_features: common.output_features,
            normalization_mapping: common.normalization_mapping,
            raw,
        })
    }

    fn field(&self, name: &str) -> Result<&serde_json::Value> {
        self.raw
            .get(name)
            .with_context(|| format!("{}: field `{name}` is missing", self.path.display()))
    }

    /// An unsigned integer field.
    pub fn usize(&self, name: &str) -> Result<usize> {
        let v = self.field(name)?;
        v.as_u64().map(|n| n as usize).with_context(|| {
            format!(
                "{}: field `{name}` = {v}: expected a non-negative integer",
                self.path.display()
            )
        })
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Result<bool> {
        let v = self.field(name)?;
        v.as_bool().with_context(|| {
            format!(
                "{}: field `{name}` = {v}: expected true or false",
                self.path.display()
            )
        })
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Result<&str> {
        let v = self.field(name)?;
        v.as_str().with_context(|| {
            format!(
                "{}: field `{name}` = {v}: expected a string",
                self.path.display()
            )
        })
    }

    /// A number field that may be `null` (or absent).
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.raw.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).with_context(|| {
                format!(
                    "{}: field `{name}` = {v}: expected a number or null",
                    self.path.display()
                )
            }),
        }
    }

    /// Refuses `field` unless it holds `expected` (a value reflex reproduces), naming both.
    fn require(&self, name: &str, expected: serde_json::Value, why: &str) -> Result<()> {
        let v = self.field(name)?;
        if *v != expected {
            bail!(
                "{}: field `{name}` = {v} is not supported ({why}; supported: {expected})",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The normalization mode of feature type `kind` (`VISUAL`, `STATE`, `ACTION`); LeRobot
    /// treats an absent entry as IDENTITY.
    pub fn mode(&self, kind: FeatureType) -> NormalizationMode {
        let key = match kind {
            FeatureType::State => "STATE",
            FeatureType::Visual => "VISUAL",
            FeatureType::Env => "ENV",
            FeatureType::Action => "ACTION",
            FeatureType::Reward => "REWARD",
            FeatureType::Language => "LANGUAGE",
        };
        self.normalization_mapping
            .get(key)
            .copied()
            .unwrap_or(NormalizationMode::Identity)
    }

    /// The ACT architecture, every field reflex's graph depends on checked. Errors: a missing or
    /// mistyped field, or a value the graph does not reproduce, each naming the field.
    pub fn act(&self) -> Result<ActConfig> {
        self.require(
            "vision_backbone",
            "resnet18".into(),
            "the graph has torchvision's ResNet-18",
        )?;
        self.require(
            "replace_final_stride_with_dilation",
            false.into(),
            "layer4 keeps its stride",
        )?;
        self.require(
            "pre_norm",
            false.into(),
            "the transformer layers are post-norm, LeRobot's default",
        )?;
        self.require(
            "feedforward_activation",
            "relu".into(),
            "the feed-forward blocks use ReLU",
        )?;
        let c = ActConfig {
            n_obs_steps: self.usize("n_obs_steps")?,
            chunk_size: self.usize("chunk_size")?,
            n_action_steps: self.usize("n_action_steps")?,
            temporal_ensemble_coeff: self.opt_f64("temporal_ensemble_coeff")?,
            dim_model: self.usize("dim_model")?,
            n_heads: self.usize("n_heads")?,
            dim_feedforward: self.usize("dim_feedforward")?,
            n_encoder_layers: self.usize("n_encoder_layers")?,
            n_decoder_layers: self.usize("n_decoder_layers")?,
            latent_dim: self.usize("latent_dim")?,
            use_vae: self.bool("use_vae")?,
        };
        let p = self.path.display();
        if c.n_obs_steps != 1 {
            bail!(
                "{p}: field `n_obs_steps` = {}: ACT takes one observation (1)",
                c.n_obs_steps
            );
        }
        if c.chunk_size == 0 || c.n_action_steps == 0 || c.n_action_steps > c.chunk_size {
            bail!(
                "{p}: fields `n_action_steps` = {} and `chunk_size` = {}: need 1 <= n_action_steps <= chunk_size",
                c.n_action_steps,
                c.chunk_size
            );
        }
        if c.n_heads == 0
            || !c.dim_model.is_multiple_of(c.n_heads)
            || !c.dim_model.is_multiple_of(2)
        {
            bail!(
                "{p}: fields `dim_model` = {} and `n_heads` = {}: dim_model must be even and a multiple of n_heads",
                c.dim_model,
                c.n_heads
            );
        }
        if c.temporal_ensemble_coeff.is_some() && c.n_action_steps != 1 {
            bail!(
                "{p}: field `temporal_ensemble_coeff` is set with `n_action_steps` = {}: LeRobot needs n_action_steps = 1 with temporal ensembling",
                c.n_action_steps
            );
        }
        Ok(c)
    }
}
