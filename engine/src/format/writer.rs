//! Writing `.mscl` files.

use std::io::Write;
use std::path::Path;

use super::{
    align_up, keys, Dtype, Layout, TensorId, HEADER_BYTES, MAGIC, MAX_KEY_BYTES, MAX_VALUE_BYTES,
    TENSOR_ENTRY_BYTES, VERSION_MAJOR, VERSION_MINOR,
};
use crate::config::{AttentionKind, TileClassifierKind};
use crate::error::{Error, Result};
use crate::kernels::pack_panels;
use crate::statistics::EmbeddingStatistics;
use crate::weights::ModelWeights;

/// Builds the bytes of a `.mscl` file from [`ModelWeights`] and metadata.
///
/// ```
/// use msclam_engine::{format::ModelWriter, ModelConfig, ModelSize, ModelWeights};
/// let weights = ModelWeights::zeros(ModelConfig::ms_clam(ModelSize::Tiny));
/// let bytes = ModelWriter::new(&weights)
///     .metadata("embedder.name", "resnet50_trunc").unwrap()
///     .to_bytes().unwrap();
/// let model = msclam_engine::Model::from_bytes(&bytes).unwrap();
/// assert_eq!(model.metadata().get("embedder.name"), Some("resnet50_trunc"));
/// ```
#[derive(Debug, Clone)]
pub struct ModelWriter<'a> {
    weights: &'a ModelWeights,
    metadata: Vec<(String, String)>,
    matrix_dtype: Dtype,
    matrix_layout: Layout,
    statistics: Option<EmbeddingStatistics>,
}

struct PlannedTensor {
    id: TensorId,
    dtype: Dtype,
    layout: Layout,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    offset: usize,
    /// Per-row f32 scales (int8 only; empty otherwise) and where they go.
    scales: Vec<u8>,
    scale_offset: usize,
}

impl<'a> ModelWriter<'a> {
    /// A writer for `weights` with f32 matrices in the packed layout and a `tool.version` entry.
    pub fn new(weights: &'a ModelWeights) -> Self {
        ModelWriter {
            weights,
            metadata: vec![(
                keys::TOOL_VERSION.to_owned(),
                concat!("msclam-engine ", env!("CARGO_PKG_VERSION")).to_owned(),
            )],
            matrix_dtype: Dtype::F32,
            matrix_layout: Layout::Panel16,
            statistics: None,
        }
    }

    /// Adds (or replaces) a metadata entry. Keys are 1 to 255 bytes, values at most 16 MiB,
    /// neither with a NUL character (C reads them as NUL-terminated strings).
    pub fn metadata(mut self, key: &str, value: &str) -> Result<Self> {
        if key.contains('\0') || value.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "metadata entry {key:?} contains a NUL character"
            )));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::invalid_argument(format!(
                "metadata key {key:?} must be 1 to {MAX_KEY_BYTES} bytes"
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::invalid_argument(format!(
                "metadata value for {key:?} is {} bytes; at most {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        let full = self.metadata.len() >= super::MAX_METADATA_ENTRIES;
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None if full => {
                return Err(Error::invalid_argument(format!(
                    "at most {} metadata entries",
                    super::MAX_METADATA_ENTRIES
                )))
            }
            None => self.metadata.push((key.to_owned(), value.to_owned())),
        }
        Ok(self)
    }

    /// Element type of the three large matrices (`fc`, `attention_a`, `attention_b`); the
    /// vectors and small matrices are always f32. Default f32. [`Dtype::Int8`] quantizes each
    /// matrix row symmetrically (scale = largest magnitude / 127, round to nearest even).
    pub fn matrix_dtype(mut self, dtype: Dtype) -> Self {
        self.matrix_dtype = dtype;
        self
    }

    /// Layout of the three large matrices. Default [`Layout::Panel16`] (used in place at load);
    /// [`Layout::RowMajor`] files are valid too and are packed when loaded.
    pub fn matrix_layout(mut self, layout: Layout) -> Self {
        self.matrix_layout = layout;
        self
    }

    /// Stores the training embeddings' statistics (format 1.1), so that sessions can count the
    /// tiles that do not look like the training data (see [`crate::statistics`]).
    pub fn embedding_statistics(mut self, statistics: EmbeddingStatistics) -> Self {
        self.statistics = Some(statistics);
        self
    }

    /// The complete file image.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let w = self.weights;
        w.validate()?;
        let config = &w.config;

        // Plan every tensor's bytes.
        let mut tensors: Vec<PlannedTensor> = Vec::new();
        for (id, (name, data, (rows, cols))) in TensorId::ALL
            .iter()
            .filter(|id| id.shape(config).is_some() && !id.is_optional())
            .zip(w.tensors())
        {
            debug_assert_eq!(id.name(), name);
            let (dtype, layout) = if id.is_large_matrix() {
                (self.matrix_dtype, self.matrix_layout)
            } else {
                (Dtype::F32, Layout::RowMajor)
            };
            let (values, scales) = if dtype == Dtype::Int8 {
                quantize_rows(data, rows, cols)
            } else {
                (data.to_vec(), Vec::new())
            };
            let ordered = match layout {
                Layout::RowMajor => values,
                Layout::Panel16 => pack_panels(&values, rows, cols),
            };
            let bytes = encode(&ordered, dtype);
            let scales: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            if matches!(dtype, Dtype::F16 | Dtype::Bf16) && decode_has_non_finite(&bytes, dtype) {
                return Err(Error::invalid_argument(format!(
                    "{name} has values outside the range of {dtype:?}; store it as F32"
                )));
            }
            tensors.push(PlannedTensor {
                id: *id,
                dtype,
                layout,
                rows,
                cols,
                data: bytes,
                offset: 0,
                scales,
                scale_offset: 0,
            });
        }

        if let Some(stats) = &self.statistics {
            stats.validate(config.input_dim)?;
            for (id, values) in [
                (TensorId::EmbeddingMean, &stats.mean[..]),
                (TensorId::EmbeddingScale, &stats.scale[..]),
                (TensorId::EmbeddingDistanceRange, &stats.distance_range[..]),
                (TensorId::EmbeddingComponents, &stats.components[..]),
                (
                    TensorId::EmbeddingComponentTerms,
                    &stats.component_terms[..],
                ),
            ] {
                let (rows, cols) = id.shape(config).unwrap_or((values.len(), 1));
                tensors.push(PlannedTensor {
                    id,
                    dtype: Dtype::F32,
                    layout: Layout::RowMajor,
                    rows,
                    cols,
                    data: encode(values, Dtype::F32),
                    offset: 0,
                    scales: Vec::new(),
                    scale_offset: 0,
                });
            }
        }

        // Lay out the sections.
        let table_offset = HEADER_BYTES;
        let metadata_offset = align_up(table_offset + tensors.len() * TENSOR_ENTRY_BYTES);
        let mut metadata = Vec::new();
        // In key order, the order readers list them in.
        let mut entries: Vec<&(String, String)> = self.metadata.iter().collect();
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in entries {
            metadata.extend_from_slice(&(k.len() as u32).to_le_bytes());
            metadata.extend_from_slice(k.as_bytes());
            metadata.extend_from_slice(&(v.len() as u32).to_le_bytes());
            metadata.extend_from_slice(v.as_bytes());
        }
        let mut cursor = align_up(metadata_offset + metadata.len());
        let mut file_bytes = metadata_offset + metadata.len();
        for t in &mut tensors {
            t.offset = cursor;
            file_bytes = t.offset + t.data.len();
            cursor = align_up(file_bytes);
            if !t.scales.is_empty() {
                t.scale_offset = cursor;
                file_bytes = t.scale_offset + t.scales.len();
                cursor = align_up(file_bytes);
            }
        }

        let mut out = vec![0u8; file_bytes];
        // Header.
        out[0..8].copy_from_slice(&MAGIC);
        put_u16(&mut out, 8, VERSION_MAJOR);
        // Minor 1 adds the embedding statistics; files without them stay 1.0.
        let minor = if self.statistics.is_some() {
            VERSION_MINOR
        } else {
            0
        };
        put_u16(&mut out, 10, minor);
        put_u32(&mut out, 12, HEADER_BYTES as u32);
        put_u64(&mut out, 16, file_bytes as u64);
        // 24..28 checksum, written last; 28..32 flags = 0.
        put_u32(&mut out, 32, config.input_dim as u32);
        put_u32(&mut out, 36, config.hidden_dim as u32);
        put_u32(&mut out, 40, config.attention_dim as u32);
        put_u16(&mut out, 44, config.num_classes as u16);
        put_u16(&mut out, 46, config.tumor_class as u16);
        out[48] = match config.attention {
            AttentionKind::Plain => 0,
            AttentionKind::Gated => 1,
        };
        out[49] = match config.tile_classifier {
            TileClassifierKind::SingleBinary => 0,
            TileClassifierKind::PerClass => 1,
        };
        out[52..56].copy_from_slice(&config.threshold.to_le_bytes());
        put_u32(&mut out, 56, tensors.len() as u32);
        put_u32(&mut out, 60, self.metadata.len() as u32);
        put_u64(&mut out, 64, table_offset as u64);
        put_u64(&mut out, 72, metadata_offset as u64);
        put_u64(&mut out, 80, metadata.len() as u64);

        // Tensor table.
        for (i, t) in tensors.iter().enumerate() {
            let e = table_offset + i * TENSOR_ENTRY_BYTES;
            put_u16(&mut out, e, t.id as u16);
            out[e + 2] = t.dtype.code();
            out[e + 3] = t.layout.code();
            put_u32(&mut out, e + 4, t.rows as u32);
            put_u32(&mut out, e + 8, t.cols as u32);
            put_u64(&mut out, e + 16, t.offset as u64);
            put_u64(&mut out, e + 24, t.data.len() as u64);
            if !t.scales.is_empty() {
                put_u64(&mut out, e + 32, t.scale_offset as u64);
                put_u64(&mut out, e + 40, t.scales.len() as u64);
            }
            // 48..64 reserved.
        }
        out[metadata_offset..metadata_offset + metadata.len()].copy_from_slice(&metadata);
        for t in &tensors {
            out[t.offset..t.offset + t.data.len()].copy_from_slice(&t.data);
            out[t.scale_offset..t.scale_offset + t.scales.len()].copy_from_slice(&t.scales);
        }
        super::reseal(&mut out);
        Ok(out)
    }

    /// Writes the file atomically: to a temporary file beside `path`, flushed to disk, then
    /// renamed over `path`. A reader never sees a half-written model.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp_name);
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io_err)?;
        log::info!("wrote model {} ({} bytes)", path.display(), bytes.len());
        Ok(())
    }
}

/// Symmetric per-row int8 quantization of a row-major `rows x cols` matrix: each row's scale
/// is its largest magnitude over 127 (1 for an all-zero row) and `q = round(w / scale)`, so
/// `|w - q x scale| <= scale / 2`. Returns the integers as f32 (exact) and the scales.
fn quantize_rows(values: &[f32], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(cols.max(1)).take(rows) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|v| (v / scale).round_ties_even().clamp(-127.0, 127.0)),
        );
    }
    (q, scales)
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        Dtype::Bf16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        // Integers held exactly as f32 by `quantize_rows`.
        Dtype::Int8 => values.iter().for_each(|v| out.push(*v as i8 as u8)),
    }
    out
}

fn decode_has_non_finite(bytes: &[u8], dtype: Dtype) -> bool {
    bytes.chunks_exact(2).any(|c| {
        let raw = [c[0], c[1]];
        match dtype {
            Dtype::F16 => !half::f16::from_le_bytes(raw).is_finite(),
            _ => !half::bf16::from_le_bytes(raw).is_finite(),
        }
    })
}

fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
