//! Attention rollout for ViT policies: where each camera's class token draws its information from.
//!
//! Method: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020), section 3:
//! per layer, the attention matrix averaged over heads, `A`, is mixed with the identity for the
//! residual connection and its rows renormalized, `Ã = (A + I) / 2` (rows sum to 1); the rollout
//! is the product over layers from the first, `R = Ã_L ... Ã_2 Ã_1`. Row 0 of `R` without its
//! first entry is how much the class token (the token a timm ViT reads its features from) draws
//! from each image patch, through every layer and residual path.
//!
//! The attention matrices are read from the policy's own graph: every ONNX `Softmax` whose
//! output is `[1, heads, T, T]` is made an extra graph output and the graph runs once in tract
//! on the bundle's preprocessing of the frame. Each such Softmax is assigned to the camera whose
//! graph input it depends on (so one ViT encoder per camera, shared or not, works), in graph
//! order, which is layer order. Tokens must be the class token followed by the patches in
//! row-major order (timm's `VisionTransformer`, the reference ViT-S/16 of
//! `reflex_models::onnx::vit`); a camera whose token count is not 1 + a grid of patches that
//! tiles the preprocessed image is reported as not rolled out, with the reason.

use anyhow::{bail, Context, Result};
use reflex_models::manifest::{CameraSpec, Manifest};
use reflex_models::Bundle;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{type_proto, ModelProto, TypeProto, ValueInfoProto};
use tract_onnx::prelude::*;

/// The rollout of one camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    pub camera: String,
    /// Attention layers found for this camera, and heads per layer.
    pub layers: usize,
    pub heads: usize,
    /// Tokens per layer (the class token and the patches).
    pub tokens: usize,
    /// Patch grid over the preprocessed image: `cols x rows`, `patch` pixels square.
    pub cols: usize,
    pub rows: usize,
    pub patch: usize,
    /// Row 0 of the rollout without its first entry: the class token's share of each patch,
    /// row-major `rows x cols`. With the class token's own share (`cls_self`) it sums to 1.
    pub patch_weights: Vec<f64>,
    pub cls_self: f64,
    /// The patch with the largest share: `(col, row)`, and its centre in capture pixels.
    pub peak_patch: [usize; 2],
    pub peak_pixel: [usize; 2],
}

/// A camera whose attention could not be rolled out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotRolledOut {
    pub camera: String,
    pub reason: String,
}

/// What [`attention_rollout`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rollouts {
    pub cameras: Vec<Rollout>,
    pub skipped: Vec<NotRolledOut>,
}

/// Per camera: the graph's attention Softmax outputs (tensor names, layer order).
fn attention_softmaxes(model: &ModelProto, m: &Manifest) -> Result<Vec<(usize, String)>> {
    let g = model.graph.as_ref().context("ONNX model has no graph")?;
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let cameras: HashMap<&str, usize> = m
        .cameras
        .iter()
        .enumerate()
        .map(|(i, c)| (c.onnx_input.as_str(), i))
        .collect();
    let mut found = vec![];
    for n in g.node.iter().filter(|n| n.op_type == "Softmax") {
        // The camera inputs this Softmax depends on, by a walk up the graph.
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = n.input.iter().map(String::as_str).collect();
        let mut cams = HashSet::new();
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            if let Some(&c) = cameras.get(t) {
                cams.insert(c);
            }
            if let Some(&p) = producer.get(t) {
                stack.extend(g.node[p].input.iter().map(String::as_str));
            }
        }
        if let ([&cam], Some(out)) = (cams.iter().collect::<Vec<_>>().as_slice(), n.output.first())
        {
            found.push((cam, out.clone()));
        }
    }
    Ok(found)
}

/// The patch side `s` such that the preprocessed `w x h` image is a grid of `patches` squares.
fn patch_grid(w: usize, h: usize, patches: usize) -> Option<(usize, usize, usize)> {
    (1..=w.min(h))
        .rev()
        .find(|&s| w.is_multiple_of(s) && h.is_multiple_of(s) && (w / s) * (h / s) == patches)
        .map(|s| (w / s, h / s, s))
}

/// Abnar & Zuidema's rollout of `layers` attention tensors `[heads, t, t]` (row-major): row 0
/// of `Ã_L ... Ã_1`, `Ã = (mean over heads + I) / 2`.
pub fn rollout_row0(layers: &[Vec<f32>], heads: usize, t: usize) -> Vec<f64> {
    let mut r = vec![0f64; t * t];
    for i in 0..t {
        r[i * t + i] = 1.0;
    }
    let mut a = vec![0f64; t * t];
    let mut next = vec![0f64; t * t];
    for att in layers {
        a.fill(0.0);
        for h in 0..heads {
            for (k, v) in a.iter_mut().enumerate() {
                *v += f64::from(att[h * t * t + k]);
            }
        }
        for i in 0..t {
            let row = &mut a[i * t..(i + 1) * t];
            for v in row.iter_mut() {
                *v /= heads as f64;
            }
            row[i] += 1.0;
            let sum: f64 = row.iter().sum();
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
        // next = a . r
        next.fill(0.0);
        for i in 0..t {
            for k in 0..t {
                let aik = a[i * t + k];
                if aik == 0.0 {
                    continue;
                }
                for j in 0..t {
                    next[i * t + j] += aik * r[k * t + j];
                }
            }
        }
        std::mem::swap(&mut r, &mut next);
    }
    r[..t].to_vec()
}

/// The capture pixel at the centre of patch `(col, row)`: through the resize back to the crop
/// (or the whole frame).
fn patch_centre(cam: &CameraSpec, col: usize, row: usize, patch: usize) -> [usize; 2] {
    let p = &cam.preprocess;
    let c = cam.crop_or_full();
    let (rw, rh) = (p.resize.width as f64, p.resize.height as f64);
    let cx = (col as f64 + 0.5) * patch as f64 * f64::from(c.width) / rw + f64::from(c.x);
    let cy = (row as f64 + 0.5) * patch as f64 * f64::from(c.height) / rh + f64::from(c.y);
    [cx as usize, cy as usize]
}

/// The rollout as a heat map over the capture frame (`width x height`, row-major): each pixel
/// inside the crop takes its patch's weight, pixels outside the crop 0.
pub fn capture_heat(cam: &CameraSpec, r: &Rollout) -> Vec<f64> {
    let (w, h) = (cam.capture.width as usize, cam.capture.height as usize);
    let p = &cam.preprocess;
    let c = cam.crop_or_full();
    let (x0, y0, cw, ch) = (
        c.x as usize,
        c.y as usize,
        c.width as usize,
        c.height as usize,
    );
    let (rw, rh) = (p.resize.width as usize, p.resize.height as usize);
    let mut heat = vec![0f64; w * h];
    for y in y0..(y0 + ch).min(h) {
        let ry = ((y - y0) * rh / ch).min(rh - 1) / r.patch;
        for x in x0..(x0 + cw).min(w) {
            let rx = ((x - x0) * rw / cw).min(rw - 1) / r.patch;
            heat[y * w + x] = r.patch_weights[ry.min(r.rows - 1) * r.cols + rx.min(r.cols - 1)];
        }
    }
    heat
}

/// Attention rollout of the bundle's policy on one observation: `images` are the preprocessed
/// CHW tensors per camera (manifest order, the policy's input sizes) and `state` the normalized
/// state. A policy without attention (ResNet-18) gives no cameras and no skipped ones.
///
/// Errors: the policy file unreadable or not ONNX, the graph not runnable by tract with the
/// attention outputs added; the file is named.
pub fn attention_rollout(bundle: &Bundle, images: &[Vec<f32>], state: &[f32]) -> Result<Rollouts> {
    let m = &bundle.manifest;
    let path = &bundle.policy_path;
    let what = || format!("attention rollout of {}", path.display());
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut model: ModelProto = prost::Message::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", path.display()))?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    crate::quantize::graph::inline_external_data(&mut model, dir).with_context(what)?;
    let softmaxes = attention_softmaxes(&model, m)?;
    if softmaxes.is_empty() {
        return Ok(Rollouts::default());
    }
    let g = model.graph.as_mut().context("ONNX model has no graph")?;
    let original_outputs = g.output.len();
    for (_, name) in &softmaxes {
        g.output.push(ValueInfoProto {
            name: name.clone(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: tract_onnx::pb::tensor_proto::DataType::Float as i32,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let encoded = prost::Message::encode_to_vec(&model);
    let plan = tract_onnx::onnx()
        .model_for_read(&mut encoded.as_slice())
        .and_then(|mut im| {
            // Fix the inputs to the shapes reflex feeds (a dynamic batch axis in a user's export).
            for (i, outlet) in im.input_outlets()?.to_vec().iter().enumerate() {
                let name = im.node(outlet.node).name.clone();
                let shape: Vec<usize> =
                    if let Some(c) = m.cameras.iter().find(|c| c.onnx_input == name) {
                        let p = &c.preprocess;
                        vec![
                            1,
                            p.color.channels(),
                            p.resize.height as usize,
                            p.resize.width as usize,
                        ]
                    } else {
                        vec![1, state.len()]
                    };
                im.set_input_fact(i, f32::fact(shape).into())?;
            }
            im.into_optimized()?.into_runnable()
        })
        .with_context(what)?;
    let mut inputs = TVec::new();
    for outlet in plan.model().input_outlets()? {
        let name = &plan.model().node(outlet.node).name;
        let t = match m.cameras.iter().position(|c| &c.onnx_input == name) {
            Some(i) => {
                let p = &m.cameras[i].preprocess;
                let shape = [
                    1,
                    p.color.channels(),
                    p.resize.height as usize,
                    p.resize.width as usize,
                ];
                Tensor::from_shape(&shape, &images[i])?
            }
            None if m.state.onnx_input.as_deref() == Some(name.as_str()) => {
                Tensor::from_shape(&[1, state.len()], state)?
            }
            None => bail!(
                "{}: graph input `{name}` is neither a camera nor the state",
                path.display()
            ),
        };
        inputs.push(t.into_tvalue());
    }
    let outputs = plan.run(inputs).with_context(what)?;

    let mut out = Rollouts::default();
    for (ci, cam) in m.cameras.iter().enumerate() {
        let mut layers = vec![];
        let mut dims = None;
        let mut reason = None;
        for (k, (c, name)) in softmaxes.iter().enumerate() {
            if *c != ci {
                continue;
            }
            let t = &outputs[original_outputs + k];
            let shape = t.shape().to_vec();
            match shape.as_slice() {
                [1, h, a, b] if a == b => {
                    if dims.is_some_and(|d| d != (*h, *a)) {
                        reason = Some(format!(
                            "Softmax `{name}` is {shape:?}, unlike the layers before it"
                        ));
                        break;
                    }
                    dims = Some((*h, *a));
                    layers.push(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec());
                }
                _ => {} // Not self-attention probabilities (a classifier's Softmax).
            }
        }
        let Some((heads, tokens)) = dims else {
            continue;
        };
        let p = &cam.preprocess;
        let (rw, rh) = (p.resize.width as usize, p.resize.height as usize);
        let grid = patch_grid(rw, rh, tokens - 1);
        let (Some((cols, rows, patch)), None) = (grid, &reason) else {
            out.skipped.push(NotRolledOut {
                camera: cam.name.clone(),
                reason: reason.unwrap_or_else(|| {
                    format!(
                        "{tokens} tokens per layer are not the class token and a grid of patches over the {rw}x{rh} image"
                    )
                }),
            });
            continue;
        };
        let row0 = rollout_row0(&layers, heads, tokens);
        let patch_weights = row0[1..].to_vec();
        let peak = patch_weights
            .iter()
            .enumerate()
            .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        let peak_patch = [peak % cols, peak / cols];
        out.cameras.push(Rollout {
            camera: cam.name.clone(),
            layers: layers.len(),
            heads,
            tokens,
            cols,
            rows,
            patch,
            cls_self: row0[0],
            patch_weights,
            peak_patch,
            peak_pixel: patch_centre(cam, peak_patch[0], peak_patch[1], patch),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_of_identity_attention_stays_on_the_class_token() {
        // Every token attends only to itself: the class token keeps everything.
        let t = 5;
        let mut att = vec![0f32; 2 * t * t];
        for h in 0..2 {
            for i in 0..t {
                att[h * t * t + i * t + i] = 1.0;
            }
        }
        let r = rollout_row0(&[att.clone(), att], 2, t);
        assert_eq!(r, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rollout_mixes_with_the_residual_and_stays_a_distribution() {
        // One layer, one head, the class token attending to token 3 only:
        // Ã row 0 = (e3 + e0) / 2.
        let t = 4;
        let mut att = vec![0f32; t * t];
        att[3] = 1.0;
        for i in 1..t {
            att[i * t + i] = 1.0;
        }
        let r = rollout_row0(&[att.clone()], 1, t);
        assert_eq!(r, vec![0.5, 0.0, 0.0, 0.5]);
        // Two layers: token 3 keeps its own (identity) row, so the class token's row becomes
        // Ã·Ã row 0 = 0.5 (0.5 e0 + 0.5 e3) + 0.5 e3.
        let r = rollout_row0(&[att.clone(), att], 1, t);
        assert_eq!(r, vec![0.25, 0.0, 0.0, 0.75]);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn patch_grids() {
        assert_eq!(patch_grid(224, 224, 196), Some((14, 14, 16)));
        assert_eq!(patch_grid(256, 128, 32), Some((8, 4, 32)));
        assert_eq!(patch_grid(224, 224, 197), None);
    }
}
