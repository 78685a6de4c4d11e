//! A loaded model: validated weights, used in place where the bytes allow it.

use std::ops::Range;
use std::path::Path;

use crate::aligned::{pad_to_line, Aligned, Block64};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::{self, Dtype, Layout, ParsedFile, TensorEntry, TensorId};
use crate::kernels::{
    pack_panels, pair_panels, quad_panels, quad_weight_sums, Int8Weights, Isa, PANEL_WIDTH,
};
use crate::statistics::StatisticsView;
use crate::weights::ModelWeights;

/// Refuses a path that is not a regular file (after symbolic links): opening a FIFO for
/// reading would block until a writer appears, and a device or a directory is never a model.
fn refuse_special_file(path: &Path) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory is not a model file)",
        )))
    }
}

/// Where the file's bytes live.
enum Storage {
    /// A read-only memory map of the file.
    Mapped(memmap2::Mmap),
    /// A 64-byte-aligned copy owned by the model.
    Owned { blocks: Vec<Block64>, len: usize },
    /// Bytes owned by someone else that outlive the model (flash, a static, a caller's buffer).
    Borrowed(&'static [u8]),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned { blocks, len } => &bytemuck::cast_slice::<Block64, u8>(blocks)[..*len],
            Storage::Borrowed(bytes) => bytes,
        }
    }

    fn owned_copy(bytes: &[u8]) -> Storage {
        let mut blocks = vec![Block64([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Block64, u8>(&mut blocks)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned {
            blocks,
            len: bytes.len(),
        }
    }
}

/// Where one tensor's f32 values live.
#[derive(Debug, Clone)]
enum TensorLoc {
    /// In place in the file's bytes (byte range).
    InPlace(Range<usize>),
    /// In the model's own arena (element range): converted from f16/bf16 or packed at load.
    Arena(Range<usize>),
}

/// How the model's memory is split between borrowed (mapped or caller-owned) bytes and memory
/// the model allocated itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelMemory {
    /// Bytes of the file (mapped, borrowed or copied).
    pub file_bytes: usize,
    /// Bytes of weights used in place from the file's bytes.
    pub in_place_bytes: usize,
    /// Bytes the model allocated for weights it had to convert or re-layout.
    pub converted_bytes: usize,
    /// Whether the file's bytes were copied into memory owned by the model.
    pub file_copied: bool,
}

/// A validated MS-CLAM model, ready for [`crate::SlideSession`]s.
///
/// `Model` is `Send + Sync` and immutable: share it between threads with an `Arc`, one
/// session per thread.
pub struct Model {
    storage: Storage,
    arena: Aligned<f32>,
    tensors: [Option<TensorLoc>; TensorId::ALL.len()],
    /// The large matrices in bf16 or f16 for the 16-bit kernels, when the file stores them so.
    bf16: Option<Bf16Matrices>,
    /// The large matrices stored as int8, in the int8 kernels' layout.
    int8: [Option<Int8Matrix>; 3],
    parsed: ParsedFile,
    memory: ModelMemory,
}

/// The three large matrices of a bf16 or f16 model as the 16-bit kernels read them.
struct Bf16Matrices {
    /// bf16 or f16.
    dtype: Dtype,
    /// Panel layout, bf16 bits: per matrix a range of `plain`.
    plain: Aligned<u16>,
    plain_ranges: [Range<usize>; 3],
    /// Pair-interleaved panels for the AVX-512 BF16 dot products (built only on CPUs that have
    /// them): per panel and pair of inputs `(2q, 2q + 1)`, 16 `u32`s holding both inputs'
    /// weights of one output.
    pairs: Aligned<u32>,
    pair_ranges: Option<[Range<usize>; 3]>,
}

/// One int8 matrix as the int8 kernels read it ([`Int8Weights`]).
struct Int8Matrix {
    quads: Aligned<i8>,
    weight_sums: Vec<i32>,
    /// Per output, padded to whole panels with zeros.
    scales: Vec<f32>,
}

impl Int8Matrix {
    /// The kernels' form of an int8 tensor of the file.
    fn build(entry: &TensorEntry, bytes: &[u8]) -> Int8Matrix {
        let raw: Vec<i8> = bytes[entry.data.clone()].iter().map(|b| *b as i8).collect();
        let panels = match entry.layout {
            Layout::Panel16 => raw,
            Layout::RowMajor => pack_panels_of(&raw, entry.rows, entry.cols),
        };
        let quads = quad_panels(&panels, entry.rows, entry.cols);
        let weight_sums = quad_weight_sums(&quads, entry.rows, entry.cols);
        let mut scales = read_scales(entry, bytes);
        scales.resize(crate::kernels::padded_rows(entry.rows), 0.0);
        Int8Matrix {
            quads: Aligned::copy_of(&quads),
            weight_sums,
            scales,
        }
    }

    fn bytes(&self) -> usize {
        self.quads.len() + 4 * (self.weight_sums.len() + self.scales.len())
    }
}

/// The per-row scales of an int8 tensor (empty for other dtypes).
fn read_scales(entry: &TensorEntry, bytes: &[u8]) -> Vec<f32> {
    entry.scales.as_ref().map_or(Vec::new(), |range| {
        bytes[range.clone()]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// Index of a large matrix among the three.
fn large_index(id: TensorId) -> usize {
    match id {
        TensorId::FcWeight => 0,
        TensorId::AttentionAWeight => 1,
        _ => 2,
    }
}

/// A large matrix's weights as a kernel reads them.
#[derive(Debug, Clone, Copy)]
pub enum MatrixWeights<'a> {
    /// f32 in panel layout.
    F32(&'a [f32]),
    /// bf16 bits in panel layout (widened to f32 in the kernel).
    Bf16(&'a [u16]),
    /// IEEE binary16 bits in panel layout (widened to f32 in the kernel).
    F16(&'a [u16]),
    /// bf16 pairs (see the model's pair layout), for AVX-512 BF16 dot products.
    Bf16Pairs(&'a [u32]),
    /// int8 with per-output scales, for the integer kernels.
    Int8(Int8Weights<'a>),
}

impl<'a> MatrixWeights<'a> {
    /// The output panels `panels` (of [`crate::kernels::PANEL_WIDTH`] outputs each) of a
    /// matrix of `in_dim` inputs: the weights of those outputs alone, which a kernel computes
    /// with the same operations as within the whole matrix. Each layout stores a panel's
    /// weights contiguously, panel after panel. `None` if the range lies outside the weights.
    pub fn panels(self, in_dim: usize, panels: Range<usize>) -> Option<Self> {
        use crate::kernels::PANEL_WIDTH;
        let cut = |per_panel: usize| {
            Some(panels.start.checked_mul(per_panel)?..panels.end.checked_mul(per_panel)?)
        };
        Some(match self {
            MatrixWeights::F32(w) => MatrixWeights::F32(w.get(cut(PANEL_WIDTH * in_dim)?)?),
            MatrixWeights::Bf16(w) => MatrixWeights::Bf16(w.get(cut(PANEL_WIDTH * in_dim)?)?),
            MatrixWeights::F16(w) => MatrixWeights::F16(w.get(cut(PANEL_WIDTH * in_dim)?)?),
            MatrixWeights::Bf16Pairs(w) => {
                MatrixWeights::Bf16Pairs(w.get(cut(PANEL_WIDTH * in_dim.div_ceil(2))?)?)
            }
            MatrixWeights::Int8(w) => {
                let quads = PANEL_WIDTH * in_dim.div_ceil(crate::kernels::QUAD) * 4;
                MatrixWeights::Int8(Int8Weights {
                    quads: w.quads.get(cut(quads)?)?,
                    weight_sums: w.weight_sums.get(cut(PANEL_WIDTH)?)?,
                    scales: w.scales.get(cut(PANEL_WIDTH)?)?,
                })
            }
        })
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.parsed.config)
            .field("version", &self.parsed.version)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

/// The weights as the kernels use them (large matrices panel-packed, the rest row-major).
pub(crate) struct WeightViews<'a> {
    pub fc_weight: MatrixWeights<'a>,
    pub fc_bias: &'a [f32],
    pub attention_a_weight: MatrixWeights<'a>,
    pub attention_a_bias: &'a [f32],
    pub attention_b: Option<(MatrixWeights<'a>, &'a [f32])>,
    pub attention_c_weight: &'a [f32],
    pub attention_c_bias: f32,
    pub classifier_weight: &'a [f32],
    pub classifier_bias: &'a [f32],
    /// The tumor tile classifier's "not tumor" and "tumor" rows and biases.
    pub tile_not_tumor: (&'a [f32], f32),
    pub tile_tumor: (&'a [f32], f32),
    /// For matrices read as 16 bits and widened in the kernels: the f32 copies of the same
    /// values (`fc`, `attention_a`, `attention_b`; empty otherwise). The kernels give the same
    /// result from either, so a pass may take whichever is faster for its block.
    pub widened: [&'a [f32]; 3],
}

impl Model {
    /// Memory-maps a `.mscl` file and validates it. Weights stored as f32 in the packed layout
    /// are used in place from the map.
    ///
    /// The file must not be truncated or rewritten in place while the model lives (replace
    /// model files by renaming a new file over them, as [`format::ModelWriter::write`] does);
    /// use [`Model::read`] where that cannot be guaranteed.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        refuse_special_file(path)?;
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let storage = if len == 0 {
            // Mapping an empty file fails on some systems; let the parser report it.
            Storage::owned_copy(&[])
        } else {
            // SAFETY: the mapping is read-only but shared with the file: if another process
            // truncated or rewrote the file in place while the model lives, reads would fault
            // (SIGBUS) or see changed bytes. That is excluded by this function's documented
            // contract: model files are replaced by renaming a new file over them (as
            // `ModelWriter::write` does), which leaves this mapping on the old file intact.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
            Storage::Mapped(map)
        };
        let model = Self::from_storage(storage)?;
        log::info!(
            "loaded model {} ({} bytes, {} in place, {} converted)",
            path.display(),
            model.memory.file_bytes,
            model.memory.in_place_bytes,
            model.memory.converted_bytes
        );
        Ok(model)
    }

    /// Reads a `.mscl` file into memory owned by the model (no memory map).
    pub fn read(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        refuse_special_file(path)?;
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Validates a file image and copies it into aligned memory owned by the model.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Self::from_storage(Storage::owned_copy(bytes))
    }

    /// Uses a file image that lives for the whole program (e.g. `include_bytes!` or firmware
    /// flash) without copying it: f32 weights in the packed layout are used in place when the
    /// bytes are 4-byte aligned.
    pub fn from_static(bytes: &'static [u8]) -> Result<Model> {
        Self::from_storage(Storage::Borrowed(bytes))
    }

    /// Like [`Model::from_static`] for bytes owned by the caller.
    ///
    /// # Safety
    /// `bytes` must stay valid and unmodified until the returned model (and every clone of an
    /// `Arc` holding it) is dropped.
    pub unsafe fn from_borrowed_bytes(bytes: &[u8]) -> Result<Model> {
        // SAFETY: the caller guarantees the bytes outlive the model; the 'static lifetime never
        // escapes the model (all accessors borrow from `&self`).
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        Self::from_storage(Storage::Borrowed(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Model> {
        let bytes = storage.bytes();
        let parsed = format::parse(bytes)?;
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>());
        let mut arena: Vec<f32> = Vec::new();
        let mut in_place_bytes = 0;
        let mut tensors: [Option<TensorLoc>; TensorId::ALL.len()] = Default::default();
        for entry in parsed.tensors.iter().flatten() {
            let usable_in_place = entry.dtype == Dtype::F32
                && aligned
                && cfg!(target_endian = "little")
                && (entry.layout == Layout::Panel16 || !entry.id.is_large_matrix());
            tensors[entry.id.index()] = Some(if usable_in_place {
                in_place_bytes += entry.data.len();
                TensorLoc::InPlace(entry.data.clone())
            } else {
                let mut values = decode(&bytes[entry.data.clone()], entry.dtype);
                if entry.dtype == Dtype::Int8 {
                    dequantize_rows(&mut values, entry, &read_scales(entry, bytes));
                }
                let values = if entry.id.is_large_matrix() && entry.layout == Layout::RowMajor {
                    pack_panels(&values, entry.rows, entry.cols)
                } else {
                    values
                };
                pad_to_line(&mut arena);
                let start = arena.len();
                arena.extend_from_slice(&values);
                TensorLoc::Arena(start..arena.len())
            });
        }
        let arena = Aligned::copy_of(&arena);
        let bf16 = Bf16Matrices::build(&parsed, bytes);
        let int8 = [
            TensorId::FcWeight,
            TensorId::AttentionAWeight,
            TensorId::AttentionBWeight,
        ]
        .map(|id| {
            parsed
                .tensor(id)
                .filter(|e| e.dtype == Dtype::Int8)
                .map(|e| Int8Matrix::build(e, bytes))
        });
        if !aligned {
            log::debug!("model bytes are not 4-byte aligned: weights were copied");
        }
        let bf16_bytes = bf16
            .as_ref()
            .map_or(0, |b| b.plain.len() * 2 + b.pairs.len() * 4);
        let memory = ModelMemory {
            file_bytes: bytes.len(),
            in_place_bytes,
            converted_bytes: arena.len() * 4
                + bf16_bytes
                + int8.iter().flatten().map(Int8Matrix::bytes).sum::<usize>(),
            file_copied: matches!(storage, Storage::Owned { .. }),
        };
        Ok(Model {
            storage,
            arena,
            tensors,
            bf16,
            int8,
            parsed,
            memory,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.parsed.config
    }

    /// `(major, minor)` format version of the file.
    pub fn format_version(&self) -> (u16, u16) {
        self.parsed.version
    }

    /// The tile probability at or above which a tile is in the tumor mask.
    pub fn threshold(&self) -> f32 {
        self.parsed.config.threshold
    }

    /// The file's metadata.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata { model: self }
    }

    /// Where the model's memory is.
    pub fn memory(&self) -> ModelMemory {
        self.memory
    }

    /// Element type of the large matrices (`fc`, `attention_a`, `attention_b`) in the file:
    /// f32, bf16 or f16 (16-bit types are read as such by the kernels and widened there), or
    /// int8 (integer kernels over inputs quantized per tile).
    pub fn weight_dtype(&self) -> Dtype {
        self.parsed
            .tensor(TensorId::FcWeight)
            .map_or(Dtype::F32, |e| e.dtype)
    }

    /// The network's parameters as stored, in PyTorch's row-major layout: 16-bit matrices
    /// widened to f32, int8 matrices multiplied by their row scales. What an exporter (ONNX)
    /// or the reference implementation needs; the engine itself never uses this copy.
    pub fn to_weights(&self) -> ModelWeights {
        let bytes = self.storage.bytes();
        let mut weights = ModelWeights::zeros(self.parsed.config);
        for entry in self.parsed.tensors.iter().flatten() {
            let Some(target) = weights.tensor_mut(entry.id) else {
                continue;
            };
            let raw = &bytes[entry.data.clone()];
            let mut values: Vec<f32> = match entry.dtype {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::Bf16 => raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::Int8 => raw.iter().map(|&b| b as i8 as f32).collect(),
            };
            if entry.layout == Layout::Panel16 {
                values = crate::kernels::unpack_panels(&values, entry.rows, entry.cols);
            }
            values.truncate(entry.rows * entry.cols);
            if let Some(scales) = &entry.scales {
                let scales = &bytes[scales.clone()];
                for (row, s) in values
                    .chunks_exact_mut(entry.cols.max(1))
                    .zip(scales.chunks_exact(4))
                {
                    let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            }
            *target = values;
        }
        weights
    }

    /// A tensor's structure (dtype, layout, shape) as stored in the file.
    pub fn tensor_entry(&self, id: TensorId) -> Option<&TensorEntry> {
        self.parsed.tensor(id)
    }

    /// A tensor's f32 values as the engine uses them (large matrices in panel layout).
    pub fn tensor_values(&self, id: TensorId) -> Option<&[f32]> {
        match self.tensors[id.index()].as_ref()? {
            TensorLoc::InPlace(range) => {
                Some(bytemuck::cast_slice(&self.storage.bytes()[range.clone()]))
            }
            TensorLoc::Arena(range) => Some(&self.arena[range.clone()]),
        }
    }

    /// The training embeddings' statistics, when the file carries them (format 1.1).
    pub fn embedding_statistics(&self) -> Option<StatisticsView<'_>> {
        let range = self.tensor_values(TensorId::EmbeddingDistanceRange)?;
        Some(StatisticsView {
            mean: self.tensor_values(TensorId::EmbeddingMean)?,
            scale: self.tensor_values(TensorId::EmbeddingScale)?,
            components: self.tensor_values(TensorId::EmbeddingComponents)?,
            component_terms: self.tensor_values(TensorId::EmbeddingComponentTerms)?,
            distance_range: [*range.first()?, *range.get(1)?],
        })
    }

    /// A large matrix for the kernels of `isa`: int8 for an int8 model; bf16 pairs when `pairs`
    /// is asked for and built, else 16-bit panels for a bf16 or f16 model (except for the
    /// portable kernels, which have no fast widening and read the f32 copy); else f32 panels.
    fn matrix(&self, id: TensorId, isa: Isa, pairs: bool) -> Option<MatrixWeights<'_>> {
        if let Some(m) = &self.int8[large_index(id)] {
            return Some(MatrixWeights::Int8(Int8Weights {
                quads: &m.quads,
                weight_sums: &m.weight_sums,
                scales: &m.scales,
            }));
        }
        if let Some(b) = self.bf16.as_ref().filter(|_| isa != Isa::Portable) {
            let i = large_index(id);
            if let (true, Some(ranges)) = (pairs, &b.pair_ranges) {
                return Some(MatrixWeights::Bf16Pairs(&b.pairs[ranges[i].clone()]));
            }
            let plain = &b.plain[b.plain_ranges[i].clone()];
            return Some(match b.dtype {
                Dtype::F16 => MatrixWeights::F16(plain),
                _ => MatrixWeights::Bf16(plain),
            });
        }
        self.tensor_values(id).map(MatrixWeights::F32)
    }

    /// Whether the bf16 dot-product kernels can run this model on this CPU.
    pub(crate) fn has_bf16_pairs(&self) -> bool {
        self.bf16.as_ref().is_some_and(|b| b.pair_ranges.is_some())
    }

    /// The weights for the kernels of `isa`; `pairs`: the bf16 pair layout where the model has
    /// one.
    pub(crate) fn weights(&self, isa: Isa, pairs: bool) -> WeightViews<'_> {
        // Every required tensor was checked present by the parser; an absent one yields an
        // empty slice, which the session never reaches (shapes were validated).
        let get = |id| self.tensor_values(id).unwrap_or(&[]);
        let config = &self.parsed.config;
        let h = config.hidden_dim;
        let t = config.tumor_tile_classifier();
        let tile_w = get(TensorId::TileClassifierWeight);
        let tile_b = get(TensorId::TileClassifierBias);
        let attention_b = match (
            self.matrix(TensorId::AttentionBWeight, isa, pairs),
            self.tensor_values(TensorId::AttentionBBias),
        ) {
            (Some(w), Some(b)) => Some((w, b)),
            _ => None,
        };
        let widened = [
            TensorId::FcWeight,
            TensorId::AttentionAWeight,
            TensorId::AttentionBWeight,
        ]
        .map(|id| match self.matrix(id, isa, pairs) {
            Some(MatrixWeights::Bf16(_) | MatrixWeights::F16(_)) => {
                self.tensor_values(id).unwrap_or(&[])
            }
            _ => &[],
        });
        WeightViews {
            widened,
            fc_weight: self
                .matrix(TensorId::FcWeight, isa, pairs)
                .unwrap_or(MatrixWeights::F32(&[])),
            fc_bias: get(TensorId::FcBias),
            attention_a_weight: self
                .matrix(TensorId::AttentionAWeight, isa, pairs)
                .unwrap_or(MatrixWeights::F32(&[])),
            attention_a_bias: get(TensorId::AttentionABias),
            attention_b,
            attention_c_weight: get(TensorId::AttentionCWeight),
            attention_c_bias: get(TensorId::AttentionCBias)
                .first()
                .copied()
                .unwrap_or(0.0),
            classifier_weight: get(TensorId::ClassifierWeight),
            classifier_bias: get(TensorId::ClassifierBias),
            tile_not_tumor: (
                tile_w.get(2 * t * h..(2 * t + 1) * h).unwrap_or(&[]),
                tile_b.get(2 * t).copied().unwrap_or(0.0),
            ),
            tile_tumor: (
                tile_w.get((2 * t + 1) * h..(2 * t + 2) * h).unwrap_or(&[]),
                tile_b.get(2 * t + 1).copied().unwrap_or(0.0),
            ),
        }
    }
}

impl Bf16Matrices {
    /// The bf16 forms of a file whose large matrices are bf16 (`None` otherwise).
    fn build(parsed: &ParsedFile, bytes: &[u8]) -> Option<Bf16Matrices> {
        let ids = [
            TensorId::FcWeight,
            TensorId::AttentionAWeight,
            TensorId::AttentionBWeight,
        ];
        let dtype = parsed.tensor(TensorId::FcWeight)?.dtype;
        if !matches!(dtype, Dtype::Bf16 | Dtype::F16) {
            return None;
        }
        let same = |id| parsed.tensor(id).is_some_and(|e| e.dtype == dtype);
        if !same(TensorId::AttentionAWeight) {
            return None;
        }
        let with_pairs = dtype == Dtype::Bf16 && bf16_dot_supported();
        let (mut plain, mut pairs) = (Vec::new(), Vec::new());
        let (mut plain_ranges, mut pair_ranges) =
            (std::array::from_fn(|_| 0..0), std::array::from_fn(|_| 0..0));
        for (i, id) in ids.into_iter().enumerate() {
            let Some(entry) = parsed.tensor(id) else {
                continue;
            };
            if entry.dtype != dtype {
                return None;
            }
            let raw: Vec<u16> = bytes[entry.data.clone()]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let panels = match entry.layout {
                Layout::Panel16 => raw,
                Layout::RowMajor => pack_panels_of(&raw, entry.rows, entry.cols),
            };
            pad_to_line(&mut plain);
            let start = plain.len();
            plain.extend_from_slice(&panels);
            plain_ranges[i] = start..plain.len();
            if with_pairs {
                pad_to_line(&mut pairs);
                let start = pairs.len();
                pairs.extend(pair_panels(&panels, entry.rows, entry.cols));
                pair_ranges[i] = start..pairs.len();
            }
        }
        Some(Bf16Matrices {
            dtype,
            plain: Aligned::copy_of(&plain),
            plain_ranges,
            pairs: Aligned::copy_of(&pairs),
            pair_ranges: with_pairs.then_some(pair_ranges),
        })
    }
}

/// Whether this CPU has the AVX-512 BF16 dot products (and AVX-512F).
pub(crate) fn bf16_dot_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bf16") && crate::Isa::Avx512.is_supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Multiplies int8 values (decoded to f32, in the entry's layout) by their row's scale.
fn dequantize_rows(values: &mut [f32], entry: &TensorEntry, scales: &[f32]) {
    for (i, v) in values.iter_mut().enumerate() {
        let row = match entry.layout {
            Layout::RowMajor => i / entry.cols.max(1),
            Layout::Panel16 => {
                (i / (entry.cols.max(1) * PANEL_WIDTH)) * PANEL_WIDTH + i % PANEL_WIDTH
            }
        };
        // Padding rows of the last panel hold zeros and have no scale.
        *v *= scales.get(row).copied().unwrap_or(0.0);
    }
}

/// [`pack_panels`] for the raw elements of 16-bit and int8 matrices.
fn pack_panels_of<T: Copy + Default>(row_major: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut packed = vec![T::default(); crate::kernels::padded_rows(rows) * cols];
    for row in 0..rows {
        let (p, j) = (row / PANEL_WIDTH, row % PANEL_WIDTH);
        for i in 0..cols {
            packed[(p * cols + i) * PANEL_WIDTH + j] = row_major[row * cols + i];
        }
    }
    packed
}

fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        // The integers; the caller multiplies by the scales.
        Dtype::Int8 => bytes.iter().map(|b| *b as i8 as f32).collect(),
    }
}

/// Read access to a model's key/value metadata.
#[derive(Clone, Copy)]
pub struct Metadata<'a> {
    model: &'a Model,
}

impl<'a> Metadata<'a> {
    fn text(&self, range: &Range<usize>) -> &'a str {
        // Validated as UTF-8 by the parser.
        std::str::from_utf8(&self.model.storage.bytes()[range.clone()]).unwrap_or("")
    }

    /// The value stored under `key`, if any (a binary search: entries are in key order).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let bytes = self.model.storage.bytes();
        let entries = &self.model.parsed.metadata;
        let i = entries
            .binary_search_by(|(k, _)| bytes[k.clone()].cmp(key.as_bytes()))
            .ok()?;
        Some(self.text(&entries[i].1))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.model.parsed.metadata.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th entry as `(key, value)`, in key order (bytewise; the file order of files
    /// written by [`crate::format::ModelWriter`]).
    pub fn entry(&self, i: usize) -> Option<(&'a str, &'a str)> {
        let (k, v) = self.model.parsed.metadata.get(i)?;
        Some((self.text(k), self.text(v)))
    }

    /// All entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let this = *self;
        (0..self.len()).filter_map(move |i| this.entry(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelConfig, ModelSize, ModelWeights};

    /// Each stored dtype reaches the kernels as itself (not as widened f32 copies).
    #[test]
    fn large_matrices_reach_the_kernels_in_their_stored_dtype() {
        let mut weights = ModelWeights::zeros(ModelConfig::ms_clam(ModelSize::Tiny));
        weights
            .fc_weight
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 17) as f32 * 0.01 - 0.08);
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Int8] {
            let bytes = format::ModelWriter::new(&weights)
                .matrix_dtype(dtype)
                .to_bytes()
                .unwrap();
            let model = Model::from_bytes(&bytes).unwrap();
            assert_eq!(model.weight_dtype(), dtype);
            let kind = |w: MatrixWeights<'_>| match w {
                MatrixWeights::F32(_) => Dtype::F32,
                MatrixWeights::F16(_) => Dtype::F16,
                MatrixWeights::Bf16(_) | MatrixWeights::Bf16Pairs(_) => Dtype::Bf16,
                MatrixWeights::Int8(_) => Dtype::Int8,
            };
            let views = model.weights(Isa::Avx2Fma, false);
            assert_eq!(kind(views.fc_weight), dtype);
            assert_eq!(kind(views.attention_a_weight), dtype);
            assert_eq!(kind(views.attention_b.unwrap().0), dtype);
        }
    }

    /// `to_weights` gives back what the writer was given: exactly for f32 in either layout,
    /// within the type's rounding for 16-bit and int8 matrices.
    #[test]
    fn stored_weights_come_back_row_major() {
        let mut weights = ModelWeights::zeros(ModelConfig::clam_sb(ModelSize::Tiny));
        let mut x = 0.37f32;
        for (id, _) in TensorId::ALL.iter().zip(0..) {
            if let Some(t) = weights.tensor_mut(*id) {
                for v in t.iter_mut() {
                    x = (x * 3.7 + 0.11).fract();
                    *v = x - 0.5;
                }
            }
        }
        for (dtype, layout, tolerance) in [
            (Dtype::F32, Layout::Panel16, 0.0),
            (Dtype::F32, Layout::RowMajor, 0.0),
            (Dtype::F16, Layout::Panel16, 0.5 / 1024.0),
            (Dtype::Bf16, Layout::RowMajor, 0.5 / 128.0),
            (Dtype::Int8, Layout::Panel16, 0.5 / 127.0 * 0.5 + 1e-7),
        ] {
            let bytes = format::ModelWriter::new(&weights)
                .matrix_dtype(dtype)
                .matrix_layout(layout)
                .to_bytes()
                .unwrap();
            let back = Model::from_bytes(&bytes).unwrap().to_weights();
            assert_eq!(back.config, weights.config);
            for ((name, want, _), (_, got, _)) in weights.tensors().iter().zip(back.tensors()) {
                assert_eq!(want.len(), got.len(), "{name}");
                for (w, g) in want.iter().zip(got) {
                    assert!((w - g).abs() <= tolerance, "{dtype:?} {name}: {w} vs {g}");
                }
            }
        }
    }
}
