//! Files written by Python's `torch.save` and `pickle.dump`, read without Python or libtorch.
//!
//! - `torch.save` archives: the zip format (PyTorch 1.6 and later: `<name>/data.pkl`, the
//!   tensor storages as `<name>/data/<key>`) and the legacy format before it (a sequence of
//!   pickles followed by the raw storages). Tensors of float32, float16, bfloat16, float64 and
//!   the integer and bool types, any shape, strides and storage offset; `state_dict`s
//!   (`OrderedDict`), nested dicts (`{"model": state_dict, ...}`), lists and tuples.
//! - plain pickles (tile labels): Python lists and tuples of ints, NumPy integer scalars
//!   (`numpy.int64`) and NumPy arrays (`pickle.dump(np.where(mask)[0], f)`), NumPy 1 and 2,
//!   any pickle protocol up to 5 (in-band buffers).
//!
//! Nothing in a file is ever executed: classes and functions it names are only recognised
//! ([`objects`]); anything unknown is reported by name.

mod objects;
pub mod pickle;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// Element type of an [`Array`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float32.
    F32,
    /// float64.
    F64,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// uint16 (NumPy only).
    U16,
    /// uint32 (NumPy only).
    U32,
    /// uint64 (NumPy only).
    U64,
    /// bool, one byte.
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
    }

    /// The type's name as PyTorch spells it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::Bool => "bool",
        }
    }
}

/// An n-dimensional array (a torch tensor or a NumPy array), row-major, little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The raw little-endian bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn elements<const N: usize>(&self) -> impl Iterator<Item = [u8; N]> + '_ {
        self.data
            .chunks_exact(N)
            .map(|c| c.try_into().unwrap_or([0; N]))
    }

    /// The elements as f64 (every type converts exactly, except u64/i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            Dtype::F32 => self
                .elements::<4>()
                .map(|b| f32::from_le_bytes(b) as f64)
                .collect(),
            Dtype::F64 => self.elements::<8>().map(f64::from_le_bytes).collect(),
            Dtype::F16 => self
                .elements::<2>()
                .map(|b| half::f16::from_le_bytes(b).to_f64())
                .collect(),
            Dtype::BF16 => self
                .elements::<2>()
                .map(|b| half::bf16::from_le_bytes(b).to_f64())
                .collect(),
            Dtype::I64 => self
                .elements::<8>()
                .map(|b| i64::from_le_bytes(b) as f64)
                .collect(),
            Dtype::U64 => self
                .elements::<8>()
                .map(|b| u64::from_le_bytes(b) as f64)
                .collect(),
            Dtype::I32 => self
                .elements::<4>()
                .map(|b| i32::from_le_bytes(b) as f64)
                .collect(),
            Dtype::U32 => self
                .elements::<4>()
                .map(|b| u32::from_le_bytes(b) as f64)
                .collect(),
            Dtype::I16 => self
                .elements::<2>()
                .map(|b| i16::from_le_bytes(b) as f64)
                .collect(),
            Dtype::U16 => self
                .elements::<2>()
                .map(|b| u16::from_le_bytes(b) as f64)
                .collect(),
            Dtype::I8 => self.data.iter().map(|&b| b as i8 as f64).collect(),
            Dtype::U8 | Dtype::Bool => self.data.iter().map(|&b| b as f64).collect(),
        }
    }

    /// The elements as f32 (float64 rounded to nearest).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self.elements::<4>().map(f32::from_le_bytes).collect(),
            Dtype::F16 => self
                .elements::<2>()
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            Dtype::BF16 => self
                .elements::<2>()
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
            _ => self.to_f64().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The elements as i64, for integer and bool arrays; `None` for floating-point arrays or
    /// a uint64 above `i64::MAX`.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        Some(match self.dtype {
            Dtype::I64 => self.elements::<8>().map(i64::from_le_bytes).collect(),
            Dtype::U64 => self
                .elements::<8>()
                .map(|b| i64::try_from(u64::from_le_bytes(b)).ok())
                .collect::<Option<_>>()?,
            Dtype::I32 => self
                .elements::<4>()
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
            Dtype::U32 => self
                .elements::<4>()
                .map(|b| u32::from_le_bytes(b) as i64)
                .collect(),
            Dtype::I16 => self
                .elements::<2>()
                .map(|b| i16::from_le_bytes(b) as i64)
                .collect(),
            Dtype::U16 => self
                .elements::<2>()
                .map(|b| u16::from_le_bytes(b) as i64)
                .collect(),
            Dtype::I8 => self.data.iter().map(|&b| b as i8 as i64).collect(),
            Dtype::U8 | Dtype::Bool => self.data.iter().map(|&b| b as i64).collect(),
            _ => return None,
        })
    }
}

/// A Python value read from a pickle, with tensors and NumPy arrays rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub enum PyObject {
    /// `None`.
    None,
    /// A bool (also a NumPy bool).
    Bool(bool),
    /// An int (also a NumPy integer scalar).
    Int(i64),
    /// A float (also a NumPy float scalar).
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A list or set.
    List(Vec<PyObject>),
    /// A tuple.
    Tuple(Vec<PyObject>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(PyObject, PyObject)>),
    /// A torch tensor or a NumPy array.
    Array(Array),
    /// Anything else, described (e.g. "an object of class models.model_clam.CLAM_SB").
    Other(String),
}

impl PyObject {
    /// A short description of the value's kind, for error messages.
    pub fn describe(&self) -> String {
        match self {
            PyObject::None => "None".into(),
            PyObject::Bool(_) => "a bool".into(),
            PyObject::Int(_) => "an int".into(),
            PyObject::Float(_) => "a float".into(),
            PyObject::Str(_) => "a str".into(),
            PyObject::Bytes(_) => "bytes".into(),
            PyObject::List(_) => "a list".into(),
            PyObject::Tuple(_) => "a tuple".into(),
            PyObject::Dict(_) => "a dict".into(),
            PyObject::Array(a) => format!("a {} array of shape {:?}", a.dtype.name(), a.shape),
            PyObject::Other(what) => what.clone(),
        }
    }

    /// The value for string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&PyObject> {
        match self {
            PyObject::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, PyObject::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Parses a plain pickle (`pickle.dump`), e.g. a tile-label list.
pub fn parse_pickle(bytes: &[u8]) -> std::result::Result<PyObject, String> {
    let (value, _) = pickle::load(bytes)?;
    objects::resolve(value, &mut objects::NoStorages)
}

/// Parses the bytes of a `torch.save` file (zip or legacy format).
pub fn parse_torch_save(bytes: &[u8]) -> std::result::Result<PyObject, String> {
    if bytes.starts_with(b"PK\x03\x04") {
        parse_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        parse_legacy(bytes)
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        Err("a tar archive (the torch.save format of PyTorch before 0.4) is not supported".into())
    } else {
        Err("not a torch.save file (neither a zip archive nor a pickle)".into())
    }
}

/// Reads a `torch.save` file; errors name the file.
pub fn read_torch_save(path: &Path) -> Result<PyObject> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_torch_save(&bytes).map_err(|e| DataError::file(path, e))
}

/// Reads an `N x D` feature tensor (as CLAM's `pt_files/` hold) as row-major f32 with D.
pub fn read_features(path: &Path) -> Result<(Vec<f32>, usize)> {
    match read_torch_save(path)? {
        PyObject::Array(a) if a.shape.len() == 2 && a.dtype.is_float() => {
            let d = a.shape[1];
            Ok((a.to_f32(), d))
        }
        other => Err(DataError::file(
            path,
            format!(
                "holds {}, expected an N x D floating-point tensor",
                other.describe()
            ),
        )),
    }
}

/// Storages of a zip archive: `<prefix>/data/<key>` entries.
struct ZipStorages<'a> {
    archive: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
    prefix: String,
    loaded: HashMap<String, Vec<u8>>,
    /// Bytes of the whole file: no storage of a torch.save archive (stored, not compressed)
    /// is larger.
    file_len: usize,
    /// Bytes of tensors that may still be rebuilt ([`objects::tensor_budget`]).
    budget: usize,
}

impl objects::Storages for ZipStorages<'_> {
    fn storage(
        &mut self,
        key: &str,
        dtype: Dtype,
        numel: usize,
    ) -> std::result::Result<&[u8], String> {
        let want = numel
            .checked_mul(dtype.size())
            .filter(|&w| w <= self.file_len)
            .ok_or_else(|| {
                format!(
                    "storage {key}: {numel} {} elements do not fit in the file",
                    dtype.name()
                )
            })?;
        if !self.loaded.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let entry = self
                .archive
                .by_name(&name)
                .map_err(|e| format!("storage {name}: {e}"))?;
            if entry.size() != want as u64 {
                return Err(format!(
                    "storage {name} holds {} bytes; its tensors say {numel} {} elements ({want} \
                     bytes)",
                    entry.size(),
                    dtype.name()
                ));
            }
            let mut bytes = Vec::with_capacity(want);
            entry
                .take(want as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("storage {name}: {e}"))?;
            if bytes.len() != want {
                return Err(format!(
                    "storage {name} holds {} bytes, not the {want} its entry says",
                    bytes.len()
                ));
            }
            self.loaded.insert(key.to_owned(), bytes);
        }
        let bytes = &self.loaded[key];
        if bytes.len() != want {
            return Err(format!("storage {key} is used with two different sizes"));
        }
        Ok(bytes)
    }

    fn charge(&mut self, bytes: usize) -> std::result::Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or("the tensors rebuilt add up to more than the file can hold")?;
        Ok(())
    }
}

fn read_entry(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    if entry.size() > limit {
        return Err(format!("{name} is larger than the file"));
    }
    let mut bytes = Vec::new();
    entry
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(bytes)
}

fn parse_zip(bytes: &[u8]) -> std::result::Result<PyObject, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let names: Vec<String> = archive
        .file_names_raw()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if names.iter().any(|n| n.ends_with("/constants.pkl")) {
        return Err(
            "a TorchScript archive (torch.jit.save): save the model's state_dict with torch.save"
                .into(),
        );
    }
    let pickles: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let [pickle_name] = pickles.as_slice() else {
        return Err(format!(
            "a zip archive with {} top-level data.pkl entries, expected one (a torch.save file)",
            pickles.len()
        ));
    };
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    let limit = bytes.len() as u64;
    if names.contains(&format!("{prefix}byteorder")) {
        let order = read_entry(&mut archive, &format!("{prefix}byteorder"), limit)?;
        if order != b"little" {
            return Err(format!(
                "tensors stored {}-endian are not supported",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pickle_bytes = read_entry(&mut archive, pickle_name, limit)?;
    let (value, _) = pickle::load(&pickle_bytes).map_err(|e| format!("{pickle_name}: {e}"))?;
    let mut storages = ZipStorages {
        archive,
        prefix,
        loaded: HashMap::new(),
        file_len: bytes.len(),
        budget: objects::tensor_budget(bytes.len()),
    };
    objects::resolve(value, &mut storages)
}

/// The legacy format's first pickle: the magic number 0x1950a86a20f9469cfc6c as
/// little-endian two's complement bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Storages of the legacy format: after the pickles, for each key of the key list in order,
/// its element count (u64) and its bytes.
struct LegacyStorages<'a> {
    rest: &'a [u8],
    /// Each key's byte range.
    ranges: HashMap<String, (usize, usize)>,
    /// Bytes of tensors that may still be rebuilt ([`objects::tensor_budget`]).
    budget: usize,
}

impl objects::Storages for LegacyStorages<'_> {
    fn storage(
        &mut self,
        key: &str,
        dtype: Dtype,
        numel: usize,
    ) -> std::result::Result<&[u8], String> {
        let &(start, end) = self
            .ranges
            .get(key)
            .ok_or_else(|| format!("storage {key} is not in the file's storage list"))?;
        if end - start != numel.saturating_mul(dtype.size()) {
            return Err(format!(
                "storage {key} holds {} bytes, its tensors say {numel} {} elements",
                end - start,
                dtype.name()
            ));
        }
        Ok(&self.rest[start..end])
    }

    fn charge(&mut self, bytes: usize) -> std::result::Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or("the tensors rebuilt add up to more than the file can hold")?;
        Ok(())
    }
}

fn parse_legacy(bytes: &[u8]) -> std::result::Result<PyObject, String> {
    let mut at = 0;
    let mut next = |what: &str| -> std::result::Result<pickle::Value, String> {
        let (v, used) = pickle::load(&bytes[at..]).map_err(|e| format!("{what}: {e}"))?;
        at += used;
        Ok(v)
    };
    if next("the file's first pickle")? != pickle::Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err("a pickle without torch's magic number: not a torch.save file".into());
    }
    let protocol = next("the protocol version")?;
    if protocol.as_int() != Some(1001) {
        return Err(format!(
            "legacy torch.save protocol {}, expected 1001",
            protocol.kind()
        ));
    }
    // {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {...}}
    let sys_info = next("the system information")?;
    if let pickle::Value::Dict(pairs, _) = &sys_info {
        let big_endian = pairs
            .iter()
            .any(|(k, v)| k.as_str() == Some("little_endian") && *v == pickle::Value::Bool(false));
        if big_endian {
            return Err(
                "a torch.save file written on a big-endian machine is not supported".into(),
            );
        }
    }
    let value = next("the data")?;
    let keys = next("the storage list")?;
    let keys: Vec<String> = keys
        .items()
        .ok_or("a storage list that is not a list")?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_owned)
                .ok_or("a storage key that is not a str")
        })
        .collect::<std::result::Result<_, _>>()?;
    // The records carry element counts, not byte sizes: each storage's element type comes
    // from the tensors that use it.
    let types = objects::storage_types(&value)?;
    let rest = &bytes[at..];
    let mut ranges = HashMap::with_capacity(keys.len().min(types.len()));
    let mut cursor = 0usize;
    for key in keys {
        let dtype = *types
            .get(&key)
            .ok_or_else(|| format!("storage {key} is listed but no tensor uses it"))?;
        let count = rest
            .get(cursor..cursor + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| format!("the file ends before storage {key}"))?;
        let start = cursor + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .and_then(|len| start.checked_add(len))
            .filter(|&e| e <= rest.len())
            .ok_or_else(|| format!("the file ends inside storage {key}"))?;
        ranges.insert(key, (start, end));
        cursor = end;
    }
    objects::resolve(
        value,
        &mut LegacyStorages {
            rest,
            ranges,
            budget: objects::tensor_budget(bytes.len()),
        },
    )
}
