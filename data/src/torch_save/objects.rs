//! What a pickle's [`Value`] tree means: plain Python values, torch tensors (rebuilt from
//! their storages), NumPy arrays and scalars, and `collections.OrderedDict`. Anything else is
//! kept as a description, so that a caller can say what a file holds instead of what it
//! lacks.

use std::collections::HashMap;

use super::pickle::{Call, Value};
use super::{Array, Dtype, PyObject};

/// Where a tensor's storage bytes come from (the zip entries of a `torch.save` archive, or
/// the records after the pickles of the legacy format).
pub trait Storages {
    /// The bytes of storage `key`: `numel` elements of `dtype`.
    fn storage(&mut self, key: &str, dtype: Dtype, numel: usize) -> Result<&[u8], String>;

    /// Accounts for `bytes` more bytes of rebuilt tensors; an error once they exceed what the
    /// file can legitimately hold (each tensor rebuilt from a storage is a copy).
    fn charge(&mut self, bytes: usize) -> Result<(), String>;
}

/// What the tensors rebuilt from a file of `file_len` bytes may add up to: every byte of
/// storage in two tensors (a parameter and a view of it), and some slack.
pub fn tensor_budget(file_len: usize) -> usize {
    file_len.saturating_mul(2).saturating_add(1 << 20)
}

/// A plain pickle refers to no storage.
pub struct NoStorages;

impl Storages for NoStorages {
    fn storage(&mut self, key: &str, _: Dtype, _: usize) -> Result<&[u8], String> {
        Err(format!(
            "a tensor storage ({key}) in a plain pickle: is this a torch.save file?"
        ))
    }

    fn charge(&mut self, _: usize) -> Result<(), String> {
        Ok(())
    }
}

/// Interprets `value`, fetching tensor storages from `storages`.
pub fn resolve(value: Value, storages: &mut dyn Storages) -> Result<PyObject, String> {
    Ok(match value {
        Value::None => PyObject::None,
        Value::Bool(b) => PyObject::Bool(b),
        Value::Int(i) => PyObject::Int(i),
        Value::BigInt(_) => PyObject::Other("an int wider than 64 bits".into()),
        Value::Float(f) => PyObject::Float(f),
        Value::Str(s) => PyObject::Str(s),
        Value::Bytes(b) => PyObject::Bytes(b),
        Value::List(items, _) | Value::Set(items, _) => {
            PyObject::List(resolve_all(items, storages)?)
        }
        Value::Tuple(items, _) => PyObject::Tuple(resolve_all(items, storages)?),
        Value::Dict(pairs, _) => PyObject::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| Ok((resolve(k, storages)?, resolve(v, storages)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Call(call, _) => resolve_call(*call, storages)?,
        other => PyObject::Other(other.kind()),
    })
}

fn resolve_all(items: Vec<Value>, storages: &mut dyn Storages) -> Result<Vec<PyObject>, String> {
    items.into_iter().map(|v| resolve(v, storages)).collect()
}

fn global_name(v: &Value) -> Option<(&str, &str)> {
    match v {
        Value::Global(m, n) => Some((m, n)),
        _ => None,
    }
}

fn is_numpy_core(module: &str, sub: &str) -> bool {
    // NumPy 1 pickles `numpy.core.*`, NumPy 2 `numpy._core.*`.
    module
        .strip_prefix("numpy.core.")
        .or_else(|| module.strip_prefix("numpy._core."))
        == Some(sub)
}

fn resolve_call(call: Call, storages: &mut dyn Storages) -> Result<PyObject, String> {
    let Some((module, name)) = global_name(&call.callable) else {
        return Ok(PyObject::Other(format!(
            "an object made by {}",
            call.callable.kind()
        )));
    };
    let args = call.args.items().unwrap_or(&[]);
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_tensor_v3") => {
            rebuild_tensor(args, storages).map(PyObject::Array)
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.first() {
                Some(data) => resolve(data.clone(), storages),
                None => Err("_rebuild_parameter without data".into()),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            [func, _type, inner_args, ..] => resolve_call(
                Call {
                    callable: func.clone(),
                    args: inner_args.clone(),
                    state: None,
                    list_items: Vec::new(),
                    dict_items: Vec::new(),
                },
                storages,
            ),
            _ => Err("_rebuild_from_type_v2 with too few arguments".into()),
        },
        ("collections", "OrderedDict" | "defaultdict") => {
            // An OrderedDict built with its items as an argument, or a defaultdict.
            let mut pairs = Vec::new();
            if let Some(Value::List(items, _)) = args.first() {
                for item in items {
                    match item.items() {
                        Some([k, v]) => pairs.push((k.clone(), v.clone())),
                        _ => return Err("an OrderedDict item that is not a pair".into()),
                    }
                }
            }
            pairs.extend(call.dict_items);
            Ok(PyObject::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| Ok((resolve(k, storages)?, resolve(v, storages)?)))
                    .collect::<Result<_, String>>()?,
            ))
        }
        (m, "scalar") if is_numpy_core(m, "multiarray") => numpy_scalar(args),
        (m, "_reconstruct") if is_numpy_core(m, "multiarray") => {
            let state = call
                .state
                .ok_or("a NumPy array without its state (BUILD)")?;
            numpy_array_from_state(&state).map(PyObject::Array)
        }
        (m, "_frombuffer") if is_numpy_core(m, "numeric") => match args {
            [Value::Bytes(buf), dtype, shape, order] => {
                let (dtype, little) = numpy_dtype(dtype)?;
                let shape = shape_of(shape)?;
                let fortran = order.as_str() == Some("F");
                array_from_bytes(buf, dtype, little, &shape, fortran).map(PyObject::Array)
            }
            _ => Err("numpy _frombuffer with unexpected arguments".into()),
        },
        ("copyreg", "_reconstructor") => {
            let class = args
                .first()
                .and_then(global_name)
                .map(|(m, n)| format!("{m}.{n}"))
                .unwrap_or_else(|| "an unknown class".into());
            Ok(PyObject::Other(format!("an object of class {class}")))
        }
        (m, n) => Ok(PyObject::Other(format!("an object made by {m}.{n}"))),
    }
}

fn int_arg(v: &Value, what: &str) -> Result<i64, String> {
    v.as_int()
        .ok_or_else(|| format!("{what} is {}, not an int", v.kind()))
}

fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
    let items = v
        .items()
        .ok_or_else(|| format!("a shape that is {}", v.kind()))?;
    items
        .iter()
        .map(|d| {
            let d = int_arg(d, "a dimension")?;
            usize::try_from(d).map_err(|_| format!("a negative dimension {d}"))
        })
        .collect()
}

/// The element type of every storage the tensors in `value` use, by key.
pub fn storage_types(value: &Value) -> Result<HashMap<String, Dtype>, String> {
    fn walk(v: &Value, out: &mut HashMap<String, Dtype>) -> Result<(), String> {
        match v {
            Value::PersistentId(id, _) => {
                if let Some([tag, class, key, ..]) = id.items() {
                    if tag.as_str() == Some("storage") {
                        let dtype = global_name(class)
                            .and_then(|(_, n)| storage_dtype(n))
                            .ok_or_else(|| format!("a storage of {}", class.kind()))?;
                        let key = match key {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                            other => return Err(format!("a storage key that is {}", other.kind())),
                        };
                        match out.get(&key) {
                            Some(d) if *d != dtype => {
                                return Err(format!("storage {key} used with two element types"))
                            }
                            Some(_) => {}
                            None => {
                                out.insert(key, dtype);
                            }
                        }
                    }
                }
            }
            Value::List(items, _) | Value::Tuple(items, _) | Value::Set(items, _) => {
                for i in items {
                    walk(i, out)?;
                }
            }
            Value::Dict(pairs, _) => {
                for (k, v) in pairs {
                    walk(k, out)?;
                    walk(v, out)?;
                }
            }
            Value::Call(c, _) => {
                walk(&c.args, out)?;
                if let Some(s) = &c.state {
                    walk(s, out)?;
                }
                for i in &c.list_items {
                    walk(i, out)?;
                }
                for (k, v) in &c.dict_items {
                    walk(k, out)?;
                    walk(v, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = HashMap::new();
    walk(value, &mut out)?;
    Ok(out)
}

fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        _ => return None,
    })
}

/// Largest number of elements of one rebuilt array, whatever its strides claim.
const MAX_ELEMENTS: usize = 1 << 31;

fn rebuild_tensor(args: &[Value], storages: &mut dyn Storages) -> Result<Array, String> {
    let [storage, offset, size, stride, ..] = args else {
        return Err("a tensor rebuilt with too few arguments".into());
    };
    let Value::PersistentId(id, _) = storage else {
        return Err(format!("a tensor whose storage is {}", storage.kind()));
    };
    let fields = id.items().unwrap_or(&[]);
    let (class, key, numel) = match fields {
        [tag, class, key, _location, numel, rest @ ..] if tag.as_str() == Some("storage") => {
            if rest.first().is_some_and(|v| *v != Value::None) {
                return Err(
                    "a tensor on a view of a storage (legacy format) is not supported".into(),
                );
            }
            (class, key, numel)
        }
        _ => return Err("a storage reference that is not ('storage', type, key, ...)".into()),
    };
    let (_, class_name) =
        global_name(class).ok_or_else(|| format!("a storage type that is {}", class.kind()))?;
    let dtype = storage_dtype(class_name)
        .ok_or_else(|| format!("tensors of {class_name} are not supported"))?;
    let key = match key {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("a storage key that is {}", other.kind())),
    };
    let numel = usize::try_from(int_arg(numel, "a storage size")?)
        .map_err(|_| "a negative storage size".to_owned())?;
    let offset = usize::try_from(int_arg(offset, "a storage offset")?)
        .map_err(|_| "a negative storage offset".to_owned())?;
    let shape = shape_of(size)?;
    let strides = shape_of(stride).map_err(|e| format!("strides: {e}"))?;
    if strides.len() != shape.len() {
        return Err(format!(
            "{} strides for {} dimensions",
            strides.len(),
            shape.len()
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("a shape {shape:?} with too many elements"))?;
    if count > numel {
        return Err(format!(
            "a tensor of {count} elements over a storage of {numel} (expanded views are not \
             supported)"
        ));
    }
    storages.charge(count.saturating_mul(dtype.size()))?;
    let bytes = storages.storage(&key, dtype, numel)?;
    gather(bytes, dtype, true, &shape, &strides, offset).map_err(|e| format!("storage {key}: {e}"))
}

/// Copies the strided view `(shape, strides, offset)` of `bytes` (elements of `dtype`) into
/// a row-major array, converting to little-endian.
fn gather(
    bytes: &[u8],
    dtype: Dtype,
    little: bool,
    shape: &[usize],
    strides: &[usize],
    offset: usize,
) -> Result<Array, String> {
    let size = dtype.size();
    let numel = bytes.len() / size;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&c| c <= MAX_ELEMENTS)
        .ok_or_else(|| format!("a shape {shape:?} with too many elements"))?;
    if count > 0 {
        // The furthest element the view reads must lie in the storage.
        let last = shape
            .iter()
            .zip(strides)
            .try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))
            .ok_or("strides overflow")?;
        if last >= numel {
            return Err(format!(
                "the view (shape {shape:?}, strides {strides:?}, offset {offset}) reads past the \
                 storage's {numel} elements"
            ));
        }
    }
    let mut data = Vec::with_capacity(count * size);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let at = offset
            + index
                .iter()
                .zip(strides)
                .map(|(&i, &s)| i * s)
                .sum::<usize>();
        let element = &bytes[at * size..(at + 1) * size];
        if little {
            data.extend_from_slice(element);
        } else {
            data.extend(element.iter().rev());
        }
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(Array {
        dtype,
        shape: shape.to_vec(),
        data,
    })
}

/// A row-major (or column-major, `fortran`) buffer of `shape`.
fn array_from_bytes(
    buf: &[u8],
    dtype: Dtype,
    little: bool,
    shape: &[usize],
    fortran: bool,
) -> Result<Array, String> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&c| c <= MAX_ELEMENTS)
        .ok_or_else(|| format!("a shape {shape:?} with too many elements"))?;
    if buf.len() != count * dtype.size() {
        return Err(format!(
            "an array of shape {shape:?} ({}) with {} bytes of data",
            dtype.name(),
            buf.len()
        ));
    }
    if count == 0 {
        return Ok(Array {
            dtype,
            shape: shape.to_vec(),
            data: Vec::new(),
        });
    }
    // Every dimension is at least 1 here, and their product fits: no stride overflows.
    let mut strides = vec![1usize; shape.len()];
    if fortran {
        for i in 1..shape.len() {
            strides[i] = strides[i - 1] * shape[i - 1].max(1);
        }
    } else {
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1].max(1);
        }
    }
    gather(buf, dtype, little, shape, &strides, 0)
}

/// A NumPy dtype object: `dtype('i8', False, True)` with its BUILD state
/// `(3, '<', ...)`; returns the element type and whether it is little-endian.
fn numpy_dtype(v: &Value) -> Result<(Dtype, bool), String> {
    let Value::Call(call, _) = v else {
        return Err(format!("a NumPy dtype that is {}", v.kind()));
    };
    if global_name(&call.callable).map(|(_, n)| n) != Some("dtype") {
        return Err(format!("a NumPy dtype that is {}", v.kind()));
    }
    let code = call
        .args
        .items()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or("a NumPy dtype without its type code")?;
    let dtype = match code {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "f2" => Dtype::F16,
        "i8" => Dtype::I64,
        "i4" => Dtype::I32,
        "i2" => Dtype::I16,
        "i1" => Dtype::I8,
        "u1" => Dtype::U8,
        "u2" => Dtype::U16,
        "u4" => Dtype::U32,
        "u8" => Dtype::U64,
        "b1" => Dtype::Bool,
        other => return Err(format!("NumPy arrays of dtype `{other}` are not supported")),
    };
    // The byte order is the second field of the dtype's state.
    let order = call
        .state
        .as_ref()
        .and_then(Value::items)
        .and_then(|s| s.get(1))
        .and_then(Value::as_str)
        .ok_or("a NumPy dtype without its byte order")?;
    Ok((dtype, order != ">"))
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: a NumPy integer, float or bool.
fn numpy_scalar(args: &[Value]) -> Result<PyObject, String> {
    let [dtype, Value::Bytes(bytes)] = args else {
        return Err("a NumPy scalar with unexpected arguments".into());
    };
    let (dtype, little) = numpy_dtype(dtype)?;
    let array = array_from_bytes(bytes, dtype, little, &[], false)?;
    Ok(if dtype.is_float() {
        PyObject::Float(array.to_f64()[0])
    } else if dtype == Dtype::Bool {
        PyObject::Bool(array.data[0] != 0)
    } else {
        PyObject::Int(
            array
                .to_i64()
                .and_then(|v| v.first().copied())
                .ok_or("a NumPy integer above 2^63")?,
        )
    })
}

/// The BUILD state of `_reconstruct`: `(version, shape, dtype, is_fortran, data)`.
fn numpy_array_from_state(state: &Value) -> Result<Array, String> {
    let items = state
        .items()
        .ok_or("a NumPy array state that is not a tuple")?;
    let [_version, shape, dtype, fortran, data] = items else {
        return Err(format!(
            "a NumPy array state of {} fields, expected 5",
            items.len()
        ));
    };
    let shape = shape_of(shape)?;
    let (dtype, little) = numpy_dtype(dtype)?;
    let fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
    match data {
        Value::Bytes(buf) => array_from_bytes(buf, dtype, little, &shape, fortran),
        other => Err(format!(
            "a NumPy array whose data is {} (object arrays are not supported)",
            other.kind()
        )),
    }
}
