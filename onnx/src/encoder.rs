//! A tile encoder: an ONNX image model (NCHW float32 input, one embedding per image out) run
//! by tract-onnx on one thread, fed with the interleaved 8-bit RGB tiles a scanner delivers.
//!
//! Each tile is `tile_size x tile_size x 3` bytes, row-major, channels interleaved R, G, B.
//! It is scaled to [0, 1], normalised per channel (`(v - mean) / std`), laid out as the
//! encoder's `[batch, 3, tile_size, tile_size]` input in the channel order it expects, and run
//! in batches of [`EncoderOptions::batch`] tiles (the plan is optimised for that batch; a last,
//! shorter batch is padded). The encoder's output `[batch, D]` (or `[batch, D, 1, 1]`) gives
//! the embeddings.
//!
//! tract allocates while it runs: unlike a session's push of embeddings, encoding is not
//! allocation-free. The encoder is one swappable stage: a scanner that runs its encoder
//! elsewhere (ONNX Runtime, TensorRT) pushes the embeddings itself.

use std::path::Path;

use msclam_engine::{Model, PushSummary, SlideSession};
use tract_onnx::prelude::*;

use crate::error::{OnnxError, Result};

/// The channel order the encoder's input expects (the tiles given are always RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue (PyTorch / torchvision models).
    Rgb,
    /// Blue, green, red (models trained on OpenCV-loaded images).
    Bgr,
}

/// How tiles are prepared for the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderOptions {
    /// Side of a tile in pixels (and of the encoder's square input).
    pub tile_size: usize,
    /// Per-channel mean subtracted from values scaled to [0, 1], in the encoder's channel
    /// order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation the values are divided by, in the encoder's order.
    pub std: [f32; 3],
    /// Channel order of the encoder's input.
    pub channel_order: ChannelOrder,
    /// Tiles per run of the encoder.
    pub batch: usize,
    /// The embedder's name; when set, it must equal the model's `embedder.name`.
    pub name: Option<String>,
}

impl Default for EncoderOptions {
    /// 224-pixel tiles, ImageNet normalisation, RGB, batches of 16 (CLAM's ResNet-50).
    fn default() -> Self {
        EncoderOptions {
            tile_size: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            channel_order: ChannelOrder::Rgb,
            batch: 16,
            name: None,
        }
    }
}

/// Largest encoder input of one run, in values (`batch x 3 x size x size`; 1 GiB of f32):
/// 1,024 tiles of 256 pixels, or 64 tiles of 1,024.
pub const MAX_INPUT_VALUES: usize = 1 << 28;

/// An ONNX tile encoder loaded and optimised by tract (see the module documentation).
pub struct TileEncoder {
    plan: Arc<TypedSimplePlan>,
    options: EncoderOptions,
    dim: usize,
    /// The input of one run, `batch x 3 x S x S`.
    input: Vec<f32>,
    /// `1 / (255 * std)` and `-mean / std` per input channel of the encoder.
    scale: [f32; 3],
    shift: [f32; 3],
}

impl std::fmt::Debug for TileEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileEncoder")
            .field("options", &self.options)
            .field("dim", &self.dim)
            .finish()
    }
}

impl TileEncoder {
    /// Loads the ONNX encoder at `path` and optimises it for batches of `options.batch`
    /// tiles of `options.tile_size` pixels.
    pub fn load(path: impl AsRef<Path>, options: EncoderOptions) -> Result<TileEncoder> {
        let path = path.as_ref();
        let load_error = |e: TractError| OnnxError::Load {
            path: path.display().to_string(),
            reason: format!("{e:#}"),
        };
        Self::check_options(&options)?;
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(load_error)?;
        Self::prepare(model, options).map_err(load_error)
    }

    /// [`TileEncoder::load`] from the bytes of an ONNX file; errors name it `name`.
    pub fn from_bytes(bytes: &[u8], name: &str, options: EncoderOptions) -> Result<TileEncoder> {
        let load_error = |e: TractError| OnnxError::Load {
            path: name.to_owned(),
            reason: format!("{e:#}"),
        };
        Self::check_options(&options)?;
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(load_error)?;
        Self::prepare(model, options).map_err(load_error)
    }

    fn check_options(options: &EncoderOptions) -> Result<()> {
        let (s, b) = (options.tile_size, options.batch);
        if s == 0 || s > 4096 || b == 0 || b > 1024 || b * 3 * s * s > MAX_INPUT_VALUES {
            return Err(OnnxError::InvalidArgument(format!(
                "tile size {s} and batch {b}: the tile size must be 1 to 4096 pixels, the batch 1 \
                 to 1024 tiles, and batch x 3 x size x size at most {MAX_INPUT_VALUES} values"
            )));
        }
        if options.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || options.mean.iter().any(|m| !m.is_finite())
        {
            return Err(OnnxError::InvalidArgument(
                "the normalisation needs finite means and positive standard deviations".into(),
            ));
        }
        Ok(())
    }

    fn prepare(model: InferenceModel, options: EncoderOptions) -> TractResult<TileEncoder> {
        let (b, s) = (options.batch, options.tile_size);
        let plan = model
            .with_input_fact(0, f32::fact([b, 3, s, s]).into())?
            .into_optimized()?
            .into_runnable()?;
        let output = plan.model().output_fact(0)?;
        let shape = output
            .shape
            .as_concrete()
            .ok_or_else(|| TractError::msg("the encoder's output shape is not fixed"))?
            .to_vec();
        if shape.first() != Some(&b) || shape.len() < 2 {
            return Err(TractError::msg(format!(
                "the encoder's output has shape {shape:?}; expected [batch, D] or [batch, D, 1, 1]"
            )));
        }
        let dim: usize = shape[1..].iter().product();
        if shape[2..].iter().any(|&d| d != 1) {
            return Err(TractError::msg(format!(
                "the encoder's output has shape {shape:?}; expected [batch, D] or [batch, D, 1, 1]"
            )));
        }
        let scale = [0, 1, 2].map(|c| 1.0 / (255.0 * options.std[c]));
        let shift = [0, 1, 2].map(|c| -options.mean[c] / options.std[c]);
        let mut input = Vec::new();
        input
            .try_reserve_exact(b * 3 * s * s)
            .map_err(|_| TractError::msg("no memory for the encoder's input batch"))?;
        input.resize(b * 3 * s * s, 0.0);
        Ok(TileEncoder {
            plan,
            input,
            options,
            dim,
            scale,
            shift,
        })
    }

    /// Dimension D of the embeddings.
    pub fn output_dim(&self) -> usize {
        self.dim
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &EncoderOptions {
        &self.options
    }

    /// Bytes of one RGB tile.
    pub fn tile_bytes(&self) -> usize {
        self.options.tile_size * self.options.tile_size * 3
    }

    /// Checks that this encoder produces what `model` was trained on: the same dimension and,
    /// when both are named, the same embedder (a model whose `embedder.name` is `unknown`,
    /// `msclam convert`'s default, is not checked by name).
    pub fn check_model(&self, model: &Model) -> Result<()> {
        let want = model.config().input_dim;
        if self.dim != want {
            return Err(OnnxError::Dimension {
                encoder: self.dim,
                model: want,
            });
        }
        let model_name = model.metadata().get("embedder.name");
        if let (Some(mine), Some(theirs)) = (self.options.name.as_deref(), model_name) {
            if mine != theirs && theirs != "unknown" {
                return Err(OnnxError::Mismatch(format!(
                    "the encoder is {mine}; the model was trained on {theirs} embeddings"
                )));
            }
        }
        Ok(())
    }

    /// Embeds `rgb` (whole tiles, see the module documentation) into `out` (`n x D`, resized).
    pub fn encode(&mut self, rgb: &[u8], out: &mut Vec<f32>) -> Result<()> {
        let tile = self.tile_bytes();
        if !rgb.len().is_multiple_of(tile) {
            return Err(OnnxError::InvalidArgument(format!(
                "{} bytes of RGB are not whole tiles of {tile} bytes ({}x{}x3)",
                rgb.len(),
                self.options.tile_size,
                self.options.tile_size
            )));
        }
        let n = rgb.len() / tile;
        out.clear();
        out.reserve(n * self.dim);
        let (b, s) = (self.options.batch, self.options.tile_size);
        for batch in rgb.chunks(b * tile) {
            let tiles = batch.len() / tile;
            self.fill_input(batch);
            self.input[tiles * 3 * s * s..].fill(0.0);
            let input = Tensor::from_shape(&[b, 3, s, s], &self.input)
                .map_err(|e| OnnxError::Run(e.to_string()))?;
            let result = self
                .plan
                .run(tvec!(input.into_tvalue()))
                .map_err(|e| OnnxError::Run(format!("{e:#}")))?;
            let values = result[0]
                .view()
                .as_slice::<f32>()
                .map_err(|e| OnnxError::Run(e.to_string()))?;
            out.extend_from_slice(&values[..tiles * self.dim]);
        }
        Ok(())
    }

    /// Interleaved RGB bytes to the planar, normalised input.
    fn fill_input(&mut self, rgb: &[u8]) {
        let s2 = self.options.tile_size * self.options.tile_size;
        let source = match self.options.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        for (tile, pixels) in rgb.chunks_exact(s2 * 3).enumerate() {
            let planes = &mut self.input[tile * 3 * s2..(tile + 1) * 3 * s2];
            for (c, plane) in planes.chunks_exact_mut(s2).enumerate() {
                let (scale, shift, from) = (self.scale[c], self.shift[c], source[c]);
                for (v, px) in plane.iter_mut().zip(pixels.chunks_exact(3)) {
                    *v = px[from] as f32 * scale + shift;
                }
            }
        }
    }

    /// Embeds `rgb` and pushes the embeddings into `session` (whose model this encoder must
    /// fit, [`TileEncoder::check_model`]). `embeddings` is the caller's buffer, reused between
    /// calls.
    pub fn push(
        &mut self,
        session: &mut SlideSession<'_>,
        rgb: &[u8],
        coordinates: Option<&[[u32; 2]]>,
        embeddings: &mut Vec<f32>,
    ) -> Result<PushSummary> {
        self.encode_for(session.model(), rgb, coordinates, embeddings)?;
        Ok(session.push(embeddings, coordinates)?)
    }

    /// The checks and the encoding of [`TileEncoder::push`], without the push: `embeddings`
    /// receives what to push into a session of `model`.
    pub fn encode_for(
        &mut self,
        model: &Model,
        rgb: &[u8],
        coordinates: Option<&[[u32; 2]]>,
        embeddings: &mut Vec<f32>,
    ) -> Result<()> {
        self.check_model(model)?;
        if let Some(c) = coordinates {
            let n = rgb.len() / self.tile_bytes().max(1);
            if c.len() != n {
                return Err(OnnxError::InvalidArgument(format!(
                    "{} coordinates for {n} tiles",
                    c.len()
                )));
            }
        }
        self.encode(rgb, embeddings)
    }
}
