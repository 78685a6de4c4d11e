//! CLAM-SB and MS-CLAM PyTorch checkpoints (`s_<fold>_checkpoint.pt`, a `state_dict` written
//! by `torch.save`) converted to `.mscl` models, without Python or libtorch.
//!
//! The variant and the dimensions are inferred from the key names and shapes:
//!
//! | keys | meaning |
//! |---|---|
//! | `attention_net.0.{weight,bias}` | first layer, `H x D` |
//! | `attention_net.<i>.attention_{a,b}.0.*`, `.attention_c.*` | gated attention (`i` is 2, or 3 when the first block holds a Dropout) |
//! | `attention_net.<i>.module.0.*`, `.module.<j>.*` | plain attention (`j` is 2, or 3 with dropout) |
//! | `classifiers.{weight,bias}` | slide classifier, `C x H` |
//! | `instance_classifiers.<c>.*` | CLAM: one tile classifier per class |
//! | `instance_classifiers.network.0.*` | MS-CLAM: one tile classifier |
//!
//! Tolerated: a `module.` prefix (the whole model in `nn.DataParallel`), a `module.` segment
//! right after `attention_net.` (CLAM's old multi-GPU `relocate()`), and CLAM's SmoothTop1SVM
//! buffers (`instance_loss_fn.*`), which are not part of the network. Refused, with the reason:
//! CLAM-MB, a whole pickled module instead of a `state_dict`, unknown keys, missing keys and
//! wrong shapes.

use std::collections::BTreeMap;
use std::path::Path;

use msclam_engine::format::{keys, Dtype as MatrixDtype, ModelWriter};
use msclam_engine::{AttentionKind, ModelConfig, ModelWeights, TileClassifierKind};

use crate::error::{DataError, Result};
use crate::torch_save::{read_torch_save, Array, PyObject};

/// Which code base a checkpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeBase {
    /// mahmoodlab/CLAM's CLAM-SB: one tile classifier per class.
    ClamSb,
    /// paul-tourniaire/MS-CLAM: one tile classifier.
    MsClam,
}

/// Choices the checkpoint does not record.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Index of the tumor class (CLAM's Camelyon16 task: 1).
    pub tumor_class: usize,
    /// Tile probability at or above which a tile is in the tumor mask.
    pub threshold: f32,
    /// Name of the tile embedder the model was trained on (e.g. `resnet50_trunc`, `uni_v1`).
    pub embedder_name: String,
    /// Tile side in pixels, if known.
    pub tile_size_px: Option<u32>,
    /// Element type of the large matrices in the `.mscl` (f32 keeps the checkpoint's values).
    pub dtype: MatrixDtype,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            tumor_class: 1,
            threshold: 0.5,
            embedder_name: "unknown".into(),
            tile_size_px: None,
            dtype: MatrixDtype::F32,
        }
    }
}

/// A converted network and what was learnt on the way.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The weights, ready for the engine's writer.
    pub weights: ModelWeights,
    /// Where the checkpoint comes from.
    pub code_base: CodeBase,
    /// Keys that were present but are not part of the network (e.g. the SVM loss's buffers).
    pub ignored_keys: Vec<String>,
    /// Element type of the checkpoint's weights (e.g. `float32`).
    pub source_dtype: &'static str,
}

/// The `state_dict` inside a `torch.save` object: the object itself, or the value of a
/// `model` / `state_dict` / `model_state_dict` / `net` key of a dict.
fn find_state_dict(object: &PyObject) -> std::result::Result<Vec<(String, &Array)>, String> {
    fn as_state_dict(o: &PyObject) -> Option<Vec<(String, &Array)>> {
        let PyObject::Dict(pairs) = o else {
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in pairs {
            match (k, v) {
                (PyObject::Str(k), PyObject::Array(a)) => out.push((k.clone(), a)),
                _ => return None,
            }
        }
        (!out.is_empty()).then_some(out)
    }
    if let Some(sd) = as_state_dict(object) {
        return Ok(sd);
    }
    for key in ["model", "state_dict", "model_state_dict", "net"] {
        if let Some(sd) = object.get(key).and_then(as_state_dict) {
            return Ok(sd);
        }
    }
    Err(match object {
        PyObject::Other(what) => format!(
            "holds {what}, not a state_dict: in Python, load it and save \
             torch.save(model.state_dict(), path)"
        ),
        other => format!(
            "holds {}, not a state_dict (a dict of tensors, or a dict with one under \
             \"model\", \"state_dict\", \"model_state_dict\" or \"net\")",
            other.describe()
        ),
    })
}

/// Key names with the multi-GPU wrappers taken out.
fn normalise(key: &str) -> String {
    let key = key.strip_prefix("module.").unwrap_or(key);
    match key.strip_prefix("attention_net.module.") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            format!("attention_net.{rest}")
        }
        _ => key.to_owned(),
    }
}

/// Converts a loaded checkpoint (see the module documentation).
pub fn weights_from_checkpoint(
    object: &PyObject,
    options: &ConvertOptions,
) -> std::result::Result<Converted, String> {
    let state_dict = find_state_dict(object)?;
    let mut tensors: BTreeMap<String, &Array> = BTreeMap::new();
    let mut ignored_keys = Vec::new();
    for (key, array) in state_dict {
        let name = normalise(&key);
        if name.starts_with("instance_loss_fn.") {
            ignored_keys.push(key);
            continue;
        }
        if tensors.insert(name.clone(), array).is_some() {
            return Err(format!(
                "two keys name {name} once the module. wrappers are removed"
            ));
        }
    }
    if tensors.contains_key("classifiers.0.weight") {
        return Err(
            "a CLAM-MB checkpoint (one slide classifier per class, classifiers.<c>.*): only \
             CLAM-SB and MS-CLAM are supported"
                .into(),
        );
    }
    let mut taken: Vec<String> = Vec::new();
    let mut take = |name: &str| -> std::result::Result<&Array, String> {
        let array = tensors
            .get(name)
            .copied()
            .ok_or_else(|| format!("the checkpoint has no {name}"))?;
        if !array.dtype.is_float() {
            return Err(format!("{name} holds {}, not floats", array.dtype.name()));
        }
        taken.push(name.to_owned());
        Ok(array)
    };
    let fc_weight = take("attention_net.0.weight")?;
    let [h, d] = dims2(fc_weight, "attention_net.0.weight")?;
    let fc_bias = take("attention_net.0.bias")?;
    // The attention network's index in `attention_net` (2, or 3 after a Dropout).
    let index = tensors
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("attention_net.")?;
            let (i, tail) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            (i > 0 && (tail.starts_with("attention_") || tail.starts_with("module."))).then_some(i)
        })
        .min()
        .ok_or(
            "no attention network (attention_net.<i>.attention_a / .module) in the checkpoint",
        )?;
    let prefix = format!("attention_net.{index}");
    let gated = tensors.contains_key(&format!("{prefix}.attention_a.0.weight"));
    let (a_weight, a_bias, b, c_weight, c_bias) = if gated {
        (
            take(&format!("{prefix}.attention_a.0.weight"))?,
            take(&format!("{prefix}.attention_a.0.bias"))?,
            Some((
                take(&format!("{prefix}.attention_b.0.weight"))?,
                take(&format!("{prefix}.attention_b.0.bias"))?,
            )),
            take(&format!("{prefix}.attention_c.weight"))?,
            take(&format!("{prefix}.attention_c.bias"))?,
        )
    } else {
        // The output layer is the last Linear of `module`: index 2, or 3 after a Dropout.
        let last = (2..=3)
            .rev()
            .find(|j| tensors.contains_key(&format!("{prefix}.module.{j}.weight")))
            .ok_or_else(|| format!("no attention output layer ({prefix}.module.2 or .3)"))?;
        (
            take(&format!("{prefix}.module.0.weight"))?,
            take(&format!("{prefix}.module.0.bias"))?,
            None,
            take(&format!("{prefix}.module.{last}.weight"))?,
            take(&format!("{prefix}.module.{last}.bias"))?,
        )
    };
    let [k, h_a] = dims2(a_weight, "the attention layer")?;
    expect(h_a == h, "the attention layer's input", h, h_a)?;
    let [outputs, k_c] = dims2(c_weight, "the attention output layer")?;
    if outputs != 1 {
        return Err(format!(
            "the attention output layer has {outputs} outputs: a CLAM-MB checkpoint (only \
             CLAM-SB and MS-CLAM are supported)"
        ));
    }
    expect(k_c == k, "the attention output layer's input", k, k_c)?;
    let classifier_weight = take("classifiers.weight")?;
    let [c, h_c] = dims2(classifier_weight, "classifiers.weight")?;
    expect(h_c == h, "classifiers.weight's input", h, h_c)?;
    let classifier_bias = take("classifiers.bias")?;
    let (code_base, tile_arrays) = if tensors.contains_key("instance_classifiers.network.0.weight")
    {
        (
            CodeBase::MsClam,
            vec![(
                take("instance_classifiers.network.0.weight")?,
                take("instance_classifiers.network.0.bias")?,
            )],
        )
    } else {
        let mut arrays = Vec::with_capacity(c);
        for class in 0..c {
            arrays.push((
                take(&format!("instance_classifiers.{class}.weight"))?,
                take(&format!("instance_classifiers.{class}.bias"))?,
            ));
        }
        (CodeBase::ClamSb, arrays)
    };
    let unknown: Vec<&String> = tensors.keys().filter(|k| !taken.contains(k)).collect();
    if !unknown.is_empty() {
        return Err(format!(
            "keys that are not part of a CLAM-SB or MS-CLAM network: {}",
            unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let config = ModelConfig {
        input_dim: d,
        hidden_dim: h,
        attention_dim: k,
        attention: if gated {
            AttentionKind::Gated
        } else {
            AttentionKind::Plain
        },
        num_classes: c,
        tile_classifier: match code_base {
            CodeBase::MsClam => TileClassifierKind::SingleBinary,
            CodeBase::ClamSb => TileClassifierKind::PerClass,
        },
        tumor_class: options.tumor_class,
        threshold: options.threshold,
    };
    config.validate().map_err(|e| e.to_string())?;
    let (mut tile_w, mut tile_b) = (Vec::new(), Vec::new());
    for (i, (w, b)) in tile_arrays.iter().enumerate() {
        let [two, h_t] = dims2(w, "a tile classifier")?;
        if two != 2 || h_t != h {
            return Err(format!(
                "tile classifier {i} has shape [{two}, {h_t}], expected [2, {h}]"
            ));
        }
        tile_w.extend(w.to_f32());
        tile_b.extend(vector(b, 2, "a tile classifier's bias")?);
    }
    let (b_weight, b_bias) = match b {
        Some((w, bias)) => {
            let [k_b, h_b] = dims2(w, "the attention gate")?;
            if (k_b, h_b) != (k, h) {
                return Err(format!(
                    "the attention gate has shape [{k_b}, {h_b}], expected [{k}, {h}]"
                ));
            }
            (w.to_f32(), vector(bias, k, "the attention gate's bias")?)
        }
        None => (Vec::new(), Vec::new()),
    };
    let weights = ModelWeights {
        config,
        fc_weight: fc_weight.to_f32(),
        fc_bias: vector(fc_bias, h, "attention_net.0.bias")?,
        attention_a_weight: a_weight.to_f32(),
        attention_a_bias: vector(a_bias, k, "the attention layer's bias")?,
        attention_b_weight: b_weight,
        attention_b_bias: b_bias,
        attention_c_weight: c_weight.to_f32(),
        attention_c_bias: vector(c_bias, 1, "the attention output's bias")?,
        classifier_weight: classifier_weight.to_f32(),
        classifier_bias: vector(classifier_bias, c, "classifiers.bias")?,
        tile_classifier_weight: tile_w,
        tile_classifier_bias: tile_b,
    };
    // Shapes again, and every value finite.
    weights.validate().map_err(|e| e.to_string())?;
    Ok(Converted {
        weights,
        code_base,
        ignored_keys,
        source_dtype: fc_weight.dtype.name(),
    })
}

fn dims2(a: &Array, name: &str) -> std::result::Result<[usize; 2], String> {
    match a.shape.as_slice() {
        &[rows, cols] => Ok([rows, cols]),
        other => Err(format!("{name} has shape {other:?}, expected a matrix")),
    }
}

fn vector(a: &Array, n: usize, name: &str) -> std::result::Result<Vec<f32>, String> {
    if a.shape != [n] {
        return Err(format!("{name} has shape {:?}, expected [{n}]", a.shape));
    }
    Ok(a.to_f32())
}

fn expect(ok: bool, what: &str, want: usize, got: usize) -> std::result::Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what} has {got} features, expected {want}"))
    }
}

/// Converts the checkpoint at `checkpoint` and writes the `.mscl` model to `out` (atomically);
/// errors name the checkpoint.
pub fn convert_file(checkpoint: &Path, out: &Path, options: &ConvertOptions) -> Result<Converted> {
    let object = read_torch_save(checkpoint)?;
    let converted =
        weights_from_checkpoint(&object, options).map_err(|e| DataError::file(checkpoint, e))?;
    let source = checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let summary = serde_json::json!({
        "converted_from": source,
        "code_base": match converted.code_base {
            CodeBase::ClamSb => "CLAM-SB",
            CodeBase::MsClam => "MS-CLAM",
        },
        "source_dtype": converted.source_dtype,
        "ignored_keys": converted.ignored_keys,
    });
    let mut writer = ModelWriter::new(&converted.weights)
        .matrix_dtype(options.dtype)
        .metadata(keys::EMBEDDER_NAME, &options.embedder_name)?
        .metadata(
            keys::EMBEDDER_DIM,
            &converted.weights.config.input_dim.to_string(),
        )?
        .metadata(keys::TRAINING_SUMMARY, &summary.to_string())?
        .metadata(
            keys::TOOL_VERSION,
            concat!("msclam convert ", env!("CARGO_PKG_VERSION")),
        )?;
    if let Some(px) = options.tile_size_px {
        writer = writer.metadata(keys::TILE_SIZE_PX, &px.to_string())?;
    }
    writer.write(out)?;
    Ok(converted)
}
