//! Reading and validating `.mscl` files.

use std::ops::Range;

use super::{
    compute_checksum, stored_elements, Dtype, Layout, TensorId, ALIGNMENT, CHECKSUM_RANGE,
    HEADER_BYTES, MAGIC, MAX_KEY_BYTES, MAX_METADATA_ENTRIES, MAX_TENSOR_ENTRIES, MAX_VALUE_BYTES,
    TENSOR_ENTRY_BYTES, VERSION_MAJOR,
};
use crate::config::{AttentionKind, ModelConfig, TileClassifierKind};
use crate::error::{Error, Result};

/// One tensor's place in a validated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Which tensor this is.
    pub id: TensorId,
    /// Its element type.
    pub dtype: Dtype,
    /// Its element order.
    pub layout: Layout,
    /// Logical rows (output features).
    pub rows: usize,
    /// Logical columns (input features; 1 for vectors).
    pub cols: usize,
    /// Byte range of its data in the file.
    pub data: Range<usize>,
    /// Byte range of its per-row f32 scales ([`Dtype::Int8`] only; `rows` values).
    pub scales: Option<Range<usize>>,
}

/// The validated structure of a file: where everything is. Holds no weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFile {
    /// `(major, minor)` format version.
    pub version: (u16, u16),
    /// The architecture.
    pub config: ModelConfig,
    /// Every known tensor, indexed by [`TensorId::index`]; `None` where the architecture has none.
    pub tensors: [Option<TensorEntry>; TensorId::ALL.len()],
    /// Metadata entries as byte ranges `(key, value)` of valid UTF-8 without NUL in the file,
    /// sorted by key (bytewise).
    pub metadata: Vec<(Range<usize>, Range<usize>)>,
}

impl ParsedFile {
    /// The entry of a tensor the architecture requires. Only `None` for absent gate tensors.
    pub fn tensor(&self, id: TensorId) -> Option<&TensorEntry> {
        self.tensors[id.index()].as_ref()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// A byte range `[offset, offset + len)` that must lie inside a file of `file_len` bytes.
fn checked_range(offset: u64, len: u64, file_len: usize, what: &str) -> Result<Range<usize>> {
    let end = offset
        .checked_add(len)
        .filter(|end| *end <= file_len as u64)
        .ok_or_else(|| {
            Error::invalid_model(format!(
                "{what} (bytes {offset}..{offset}+{len}) lies outside the {file_len}-byte file"
            ))
        })?;
    Ok(offset as usize..end as usize)
}

/// Validates a complete file image and returns where everything is.
///
/// Checks, in this order: length of the header, magic, major version, declared file size,
/// checksum (so any changed byte is caught), then structure: dimensions, tensor table, each
/// tensor's dtype, layout, shape, alignment and bounds, that every weight is finite, and that
/// metadata is well-formed UTF-8.
pub fn parse(bytes: &[u8]) -> Result<ParsedFile> {
    if bytes.len() < HEADER_BYTES {
        // Say "bad magic" rather than "truncated" when even the magic is wrong.
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(bad_magic(bytes));
        }
        return Err(Error::Truncated {
            expected: HEADER_BYTES as u64,
            actual: bytes.len() as u64,
        });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(bad_magic(bytes));
    }
    let (major, minor) = (u16_at(bytes, 8), u16_at(bytes, 10));
    if major != VERSION_MAJOR {
        return Err(Error::UnsupportedVersion {
            major,
            minor,
            supported: VERSION_MAJOR,
        });
    }
    let declared = u64_at(bytes, 16);
    let actual = bytes.len() as u64;
    if declared > actual {
        return Err(Error::Truncated {
            expected: declared,
            actual,
        });
    }
    if declared < actual {
        return Err(Error::TrailingBytes {
            expected: declared,
            actual,
        });
    }
    let stored = u32_at(bytes, CHECKSUM_RANGE.start);
    let computed = compute_checksum(bytes);
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }

    // From here on every byte is as the writer wrote it; what remains are files written by a
    // faulty or foreign writer (the checksum was computed over bad content).
    let header_bytes = u32_at(bytes, 12) as usize;
    if header_bytes != HEADER_BYTES {
        return Err(Error::invalid_model(format!(
            "header size is {header_bytes}; version {major}.x headers are {HEADER_BYTES} bytes"
        )));
    }
    let flags = u32_at(bytes, 28);
    if flags != 0 {
        return Err(Error::invalid_model(format!(
            "unknown header flags {flags:#x}"
        )));
    }
    if let Some(at) = first_non_zero(bytes, &[50..52, 88..HEADER_BYTES]) {
        return Err(Error::invalid_model(format!(
            "reserved header byte {at} is not zero"
        )));
    }
    let attention = match bytes[48] {
        0 => AttentionKind::Plain,
        1 => AttentionKind::Gated,
        other => {
            return Err(Error::invalid_model(format!(
                "unknown attention kind code {other}"
            )))
        }
    };
    let tile_classifier = match bytes[49] {
        0 => TileClassifierKind::SingleBinary,
        1 => TileClassifierKind::PerClass,
        other => {
            return Err(Error::invalid_model(format!(
                "unknown tile classifier kind code {other}"
            )))
        }
    };
    let config = ModelConfig {
        input_dim: u32_at(bytes, 32) as usize,
        hidden_dim: u32_at(bytes, 36) as usize,
        attention_dim: u32_at(bytes, 40) as usize,
        attention,
        num_classes: u16_at(bytes, 44) as usize,
        tile_classifier,
        tumor_class: u16_at(bytes, 46) as usize,
        threshold: f32::from_le_bytes([bytes[52], bytes[53], bytes[54], bytes[55]]),
    };
    config.validate()?;

    let tensor_count = u32_at(bytes, 56) as u64;
    if tensor_count > MAX_TENSOR_ENTRIES as u64 {
        return Err(Error::invalid_model(format!(
            "{tensor_count} tensor table entries; at most {MAX_TENSOR_ENTRIES} are allowed"
        )));
    }
    let metadata_count = u32_at(bytes, 60) as usize;
    let table = checked_range(
        u64_at(bytes, 64),
        tensor_count.saturating_mul(TENSOR_ENTRY_BYTES as u64),
        bytes.len(),
        "tensor table",
    )?;
    if table.start < HEADER_BYTES {
        return Err(Error::invalid_model("tensor table overlaps the header"));
    }
    if !table.start.is_multiple_of(ALIGNMENT) {
        return Err(Error::invalid_model(format!(
            "tensor table starts at byte {}, which is not a multiple of {ALIGNMENT}",
            table.start
        )));
    }
    // Every byte range the file declares, to check that they neither overlap nor leave
    // anything but alignment padding between them (on the stack: loading allocates only what
    // the model keeps).
    let mut sections = Sections::default();
    sections.push(0..HEADER_BYTES, Section::Header);
    sections.push(table.clone(), Section::Table);

    let mut tensors: [Option<TensorEntry>; TensorId::ALL.len()] = Default::default();
    for (index, entry) in bytes[table].chunks_exact(TENSOR_ENTRY_BYTES).enumerate() {
        let code = u16_at(entry, 0);
        if let Some(at) = first_non_zero(entry, &[12..16, 48..TENSOR_ENTRY_BYTES]) {
            return Err(Error::invalid_model(format!(
                "reserved byte {at} of tensor table entry {index} is not zero"
            )));
        }
        let Some(id) = TensorId::from_code(code) else {
            // Its bytes still belong to the file: they count as sections.
            let what = format!("data of the tensor with unknown id {code}");
            let data = checked_range(u64_at(entry, 16), u64_at(entry, 24), bytes.len(), &what)?;
            sections.push(data, Section::Data(code));
            let what = format!("scales of the tensor with unknown id {code}");
            let scales = checked_range(u64_at(entry, 32), u64_at(entry, 40), bytes.len(), &what)?;
            sections.push(scales, Section::Scales(code));
            log::warn!(
                "ignoring tensor with unknown id {code} (written by a newer minor version?)"
            );
            continue;
        };
        let name = id.name();
        if tensors[id.index()].is_some() {
            return Err(Error::invalid_model(format!("tensor {name} appears twice")));
        }
        let dtype = Dtype::from_code(entry[2]).ok_or(Error::UnsupportedDtype {
            tensor: name,
            dtype: entry[2],
        })?;
        let layout = Layout::from_code(entry[3]).ok_or_else(|| {
            Error::invalid_model(format!(
                "tensor {name} has unknown layout code {}",
                entry[3]
            ))
        })?;
        let (rows, cols) = (u32_at(entry, 4) as usize, u32_at(entry, 8) as usize);
        let Some(expected) = id.shape(&config) else {
            return Err(Error::invalid_model(format!(
                "tensor {name} is present but the header says attention is plain (ungated)"
            )));
        };
        if (rows, cols) != expected {
            return Err(Error::invalid_model(format!(
                "tensor {name} is {rows} x {cols}, but the header's dimensions \
                 (D={}, H={}, K={}, C={}) require {} x {}",
                config.input_dim,
                config.hidden_dim,
                config.attention_dim,
                config.num_classes,
                expected.0,
                expected.1
            )));
        }
        if layout == Layout::Panel16 && !id.is_large_matrix() {
            return Err(Error::invalid_model(format!(
                "tensor {name} may only be stored row-major"
            )));
        }
        if dtype.has_scales() && !id.is_large_matrix() {
            return Err(Error::invalid_model(format!(
                "tensor {name} is {}; only the large matrices may be",
                dtype.name()
            )));
        }
        let scales = if dtype.has_scales() {
            let what = format!("scales of tensor {name}");
            let scales = checked_range(u64_at(entry, 32), u64_at(entry, 40), bytes.len(), &what)?;
            if scales.len() != 4 * rows {
                return Err(Error::invalid_model(format!(
                    "tensor {name} has {} bytes of scales; {rows} rows need {}",
                    scales.len(),
                    4 * rows
                )));
            }
            if !scales.start.is_multiple_of(4) {
                return Err(Error::invalid_model(format!(
                    "tensor {name}'s scales start at byte {}, which is not a multiple of 4",
                    scales.start
                )));
            }
            let bad = bytes[scales.clone()].chunks_exact(4).position(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                !(v.is_finite() && v >= 0.0)
            });
            if let Some(row) = bad {
                return Err(Error::invalid_model(format!(
                    "tensor {name} has a negative or non-finite scale for row {row}"
                )));
            }
            Some(scales)
        } else {
            if u64_at(entry, 32) != 0 || u64_at(entry, 40) != 0 {
                return Err(Error::invalid_model(format!(
                    "tensor {name} declares scales, which {} does not use",
                    dtype.name()
                )));
            }
            None
        };
        let data = checked_range(u64_at(entry, 16), u64_at(entry, 24), bytes.len(), name)?;
        let expected_bytes = stored_elements(layout, rows, cols)
            .and_then(|e| e.checked_mul(dtype.size()))
            .ok_or_else(|| {
                Error::invalid_model(format!(
                    "tensor {name} ({rows} x {cols}) is too large for this platform"
                ))
            })?;
        if data.len() != expected_bytes {
            return Err(Error::invalid_model(format!(
                "tensor {name} has {} bytes of data; {rows} x {cols} {dtype:?} in {layout:?} \
                 layout needs {expected_bytes}",
                data.len()
            )));
        }
        if !data.start.is_multiple_of(ALIGNMENT) {
            return Err(Error::invalid_model(format!(
                "tensor {name} starts at byte {}, which is not a multiple of {ALIGNMENT}",
                data.start
            )));
        }
        if let Some(i) = first_non_finite(&bytes[data.clone()], dtype) {
            return Err(Error::invalid_model(format!(
                "tensor {name} has a non-finite weight at element {i}"
            )));
        }
        sections.push(data.clone(), Section::Data(code));
        if let Some(scales) = &scales {
            sections.push(scales.clone(), Section::Scales(code));
        }
        tensors[id.index()] = Some(TensorEntry {
            id,
            dtype,
            layout,
            rows,
            cols,
            data,
            scales,
        });
    }
    for id in TensorId::ALL {
        if id.shape(&config).is_some() && !id.is_optional() && tensors[id.index()].is_none() {
            return Err(Error::invalid_model(format!(
                "required tensor {} is missing",
                id.name()
            )));
        }
    }
    check_embedding_statistics(bytes, &tensors)?;

    let metadata_region = checked_range(
        u64_at(bytes, 72),
        u64_at(bytes, 80),
        bytes.len(),
        "metadata section",
    )?;
    if !metadata_region.start.is_multiple_of(ALIGNMENT) {
        return Err(Error::invalid_model(format!(
            "metadata section starts at byte {}, which is not a multiple of {ALIGNMENT}",
            metadata_region.start
        )));
    }
    sections.push(metadata_region.clone(), Section::Metadata);
    sections.check(bytes)?;
    let metadata = parse_metadata(bytes, metadata_region, metadata_count)?;

    Ok(ParsedFile {
        version: (major, minor),
        config,
        tensors,
        metadata,
    })
}

/// The embedding statistics are all there or all absent, f32, the scales and weights positive,
/// the distance range `0 <= low <= high`.
fn check_embedding_statistics(
    bytes: &[u8],
    tensors: &[Option<TensorEntry>; TensorId::ALL.len()],
) -> Result<()> {
    let ids = [
        TensorId::EmbeddingMean,
        TensorId::EmbeddingScale,
        TensorId::EmbeddingDistanceRange,
        TensorId::EmbeddingComponents,
        TensorId::EmbeddingComponentTerms,
    ];
    let present = ids.map(|id| tensors[id.index()].as_ref());
    if present.iter().all(Option::is_none) {
        return Ok(());
    }
    for (id, entry) in ids.iter().zip(present) {
        let Some(entry) = entry else {
            return Err(Error::invalid_model(format!(
                "the embedding statistics are incomplete: {} is missing",
                id.name()
            )));
        };
        if entry.dtype != Dtype::F32 {
            return Err(Error::invalid_model(format!(
                "tensor {} must be f32",
                id.name()
            )));
        }
        let values = bytes[entry.data.clone()]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let valid = match id {
            TensorId::EmbeddingScale => values.clone().all(|v| v > 0.0),
            // (offset, weight) rows: the weights positive.
            TensorId::EmbeddingComponentTerms => values.clone().skip(1).step_by(2).all(|v| v > 0.0),
            TensorId::EmbeddingDistanceRange => {
                let v: [f32; 2] = std::array::from_fn(|i| values.clone().nth(i).unwrap_or(-1.0));
                0.0 <= v[0] && v[0] <= v[1]
            }
            _ => true,
        };
        if !valid {
            return Err(Error::invalid_model(format!(
                "tensor {} has values out of range",
                id.name()
            )));
        }
    }
    Ok(())
}

/// The offset of the first non-zero byte of `bytes` within `ranges`.
fn first_non_zero(bytes: &[u8], ranges: &[Range<usize>]) -> Option<usize> {
    ranges
        .iter()
        .flat_map(|r| r.clone())
        .find(|&at| bytes[at] != 0)
}

/// A part of a file that a reader is told about: only these and alignment padding may be in it.
#[derive(Debug, Clone, Copy, Default)]
enum Section {
    #[default]
    Header,
    Table,
    Metadata,
    /// A tensor's data, by tensor id code.
    Data(u16),
    /// A tensor's scales, by tensor id code.
    Scales(u16),
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tensor = |code: u16| TensorId::from_code(code).map(TensorId::name);
        match *self {
            Section::Header => f.write_str("the header"),
            Section::Table => f.write_str("the tensor table"),
            Section::Metadata => f.write_str("the metadata section"),
            Section::Data(code) => match tensor(code) {
                Some(name) => write!(f, "the data of tensor {name}"),
                None => write!(f, "the data of the tensor with unknown id {code}"),
            },
            Section::Scales(code) => match tensor(code) {
                Some(name) => write!(f, "the scales of tensor {name}"),
                None => write!(f, "the scales of the tensor with unknown id {code}"),
            },
        }
    }
}

/// The sections of a file: header, table, metadata and up to two per table entry.
struct Sections {
    list: [(Range<usize>, Section); 3 + 2 * MAX_TENSOR_ENTRIES],
    len: usize,
}

impl Default for Sections {
    fn default() -> Self {
        Sections {
            list: std::array::from_fn(|_| (0..0, Section::Header)),
            len: 0,
        }
    }
}

impl Sections {
    /// Records a section (the table's length bounds how many there are: 3 + 2 per entry, at
    /// most [`MAX_TENSOR_ENTRIES`] entries, which is the list's size).
    fn push(&mut self, range: Range<usize>, section: Section) {
        debug_assert!(
            self.len < self.list.len(),
            "more sections than the table allows"
        );
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = (range, section);
            self.len += 1;
        }
    }

    /// Checks that the sections (each inside the file) do not overlap, and that every byte of
    /// the file belongs to one of them but for zero padding shorter than [`ALIGNMENT`] before
    /// a section: the file ends with its last section.
    fn check(&mut self, bytes: &[u8]) -> Result<()> {
        let list = &mut self.list[..self.len];
        list.sort_unstable_by_key(|(r, _)| (r.start, r.end));
        let mut end = 0usize;
        let mut previous = Section::Header;
        for (range, what) in list.iter().filter(|(r, _)| !r.is_empty()) {
            if range.start < end {
                return Err(Error::invalid_model(format!(
                    "{what} (bytes {}..{}) overlaps {previous}",
                    range.start, range.end
                )));
            }
            let gap = end..range.start;
            if gap.len() >= ALIGNMENT {
                return Err(Error::invalid_model(format!(
                    "bytes {}..{} before {what} belong to no section",
                    gap.start, gap.end
                )));
            }
            if let Some(at) = first_non_zero(bytes, &[gap]) {
                return Err(Error::invalid_model(format!(
                    "padding byte {at} before {what} is not zero"
                )));
            }
            end = range.end;
            previous = *what;
        }
        if end != bytes.len() {
            return Err(Error::invalid_model(format!(
                "bytes {end}..{} after {previous}, the last section, belong to no section",
                bytes.len()
            )));
        }
        Ok(())
    }
}

fn bad_magic(bytes: &[u8]) -> Error {
    let mut found = [0u8; 8];
    found.copy_from_slice(&bytes[..8]);
    Error::BadMagic { found }
}

fn first_non_finite(data: &[u8], dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|c| !half::f16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::Bf16 => data
            .chunks_exact(2)
            .position(|c| !half::bf16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::Int8 => None,
    }
}

fn parse_metadata(
    bytes: &[u8],
    region: Range<usize>,
    count: usize,
) -> Result<Vec<(Range<usize>, Range<usize>)>> {
    let mut cursor = region.start;
    let mut read_field = |what: &str, max: usize| -> Result<Range<usize>> {
        if cursor + 4 > region.end {
            return Err(Error::invalid_model(format!(
                "metadata section ends inside a {what} length"
            )));
        }
        let len = u32_at(bytes, cursor) as usize;
        if len > max || cursor + 4 + len > region.end {
            return Err(Error::invalid_model(format!(
                "metadata {what} of {len} bytes does not fit the metadata section"
            )));
        }
        let range = cursor + 4..cursor + 4 + len;
        if std::str::from_utf8(&bytes[range.clone()]).is_err() {
            return Err(Error::invalid_model(format!(
                "metadata {what} is not UTF-8"
            )));
        }
        if bytes[range.clone()].contains(&0) {
            return Err(Error::invalid_model(format!(
                "metadata {what} contains a NUL byte"
            )));
        }
        cursor = range.end;
        Ok(range)
    };
    if count > MAX_METADATA_ENTRIES {
        return Err(Error::invalid_model(format!(
            "{count} metadata entries; at most {MAX_METADATA_ENTRIES} are allowed"
        )));
    }
    let mut entries: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(count);
    for _ in 0..count {
        let key = read_field("key", MAX_KEY_BYTES)?;
        let value = read_field("value", MAX_VALUE_BYTES)?;
        if key.is_empty() {
            return Err(Error::invalid_model("metadata has an empty key"));
        }
        entries.push((key, value));
    }
    if cursor != region.end {
        return Err(Error::invalid_model(
            "metadata section has bytes after its last entry",
        ));
    }
    // In key order (bytewise), so that duplicates are neighbours and lookups binary searches.
    entries.sort_unstable_by(|a, b| bytes[a.0.clone()].cmp(&bytes[b.0.clone()]));
    if let Some(pair) = entries
        .windows(2)
        .find(|pair| bytes[pair[0].0.clone()] == bytes[pair[1].0.clone()])
    {
        return Err(Error::invalid_model(format!(
            "metadata key {:?} appears twice",
            String::from_utf8_lossy(&bytes[pair[0].0.clone()])
        )));
    }
    Ok(entries)
}
