//! A Python pickle virtual machine (the binary opcodes of protocols 1 to 5, and protocol 0's
//! text opcodes for ints, floats, globals, containers and the memo, but not its quoted
//! strings, `S` and `V`) that builds a generic [`Value`] tree and never runs code: a class or function
//! named by the pickle (`GLOBAL`) stays a name, and calling it (`REDUCE`, `NEWOBJ`) stays a
//! record of the call, which [`super::objects`] interprets for the few torch, NumPy and
//! `collections` names it knows.
//!
//! `serde-pickle` does not fit here: it drops the arguments of calls to unknown globals and
//! refuses persistent ids, and a `torch.save` file is made of both.
//!
//! The memo behaves as Python's, which holds references: a value memoized while it is still
//! being built (a dict before its `SETITEMS`, a NumPy dtype before its `BUILD`) is read back
//! as it is when read, not as it was when memoized.
//!
//! Hostile input: every length is checked against the bytes left, values are nested at most
//! [`MAX_DEPTH`] deep, memo indices are keys (not a vector sized by them), and copies made by
//! memo lookups are charged to a budget proportional to the input, so that a small pickle
//! cannot build an exponentially large tree.

use std::collections::HashMap;

/// Deepest nesting of containers accepted (a `state_dict` is about 5 deep).
pub const MAX_DEPTH: u32 = 100;

/// A value built by the pickle machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A wider integer: its two's complement bytes, little-endian.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes`, `bytearray` or a Python 2 `str`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>, u32),
    /// A `tuple`.
    Tuple(Vec<Value>, u32),
    /// A `dict`, its pairs in insertion order.
    Dict(Vec<(Value, Value)>, u32),
    /// A `set` or `frozenset`.
    Set(Vec<Value>, u32),
    /// A class or function named by `module.name`, not resolved.
    Global(String, String),
    /// The result of calling `callable(*args)` (`REDUCE`, `NEWOBJ`), with the state given by
    /// `BUILD` and the items added by `APPEND(S)` / `SETITEM(S)`, if any.
    Call(Box<Call>, u32),
    /// A persistent id (`BINPERSID`): how `torch.save` refers to its tensor storages.
    PersistentId(Box<Value>, u32),
}

/// A recorded call of a global (see [`Value::Call`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// What was called (normally a [`Value::Global`]).
    pub callable: Value,
    /// Its positional arguments (a tuple).
    pub args: Value,
    /// The state passed by `BUILD`, if any.
    pub state: Option<Value>,
    /// Items appended by `APPEND` / `APPENDS`.
    pub list_items: Vec<Value>,
    /// Pairs set by `SETITEM` / `SETITEMS`.
    pub dict_items: Vec<(Value, Value)>,
}

impl Value {
    /// Nesting depth: 0 for scalars, 1 + the deepest child for containers.
    pub fn depth(&self) -> u32 {
        match self {
            Value::List(_, d)
            | Value::Tuple(_, d)
            | Value::Dict(_, d)
            | Value::Set(_, d)
            | Value::Call(_, d)
            | Value::PersistentId(_, d) => *d,
            _ => 0,
        }
    }

    /// A tuple of `items`.
    pub fn tuple(items: Vec<Value>) -> Result<Value, String> {
        let d = child_depth(items.iter())?;
        Ok(Value::Tuple(items, d))
    }

    /// The items of a tuple or list.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v, _) | Value::List(v, _) => Some(v),
            _ => None,
        }
    }

    /// A string's text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer (booleans count as 0 / 1).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(..) => "a list".into(),
            Value::Tuple(..) => "a tuple".into(),
            Value::Dict(..) => "a dict".into(),
            Value::Set(..) => "a set".into(),
            Value::Global(m, n) => format!("the global {m}.{n}"),
            Value::Call(c, _) => match &c.callable {
                Value::Global(m, n) => format!("an object made by {m}.{n}"),
                other => format!("an object made by {}", other.kind()),
            },
            Value::PersistentId(..) => "a persistent id".into(),
        }
    }

    /// Cost of a copy of this value, charged to the machine's budget.
    fn cost(&self) -> usize {
        1 + match self {
            Value::Str(s) => s.len(),
            Value::Bytes(b) | Value::BigInt(b) => b.len(),
            Value::Global(m, n) => m.len() + n.len(),
            Value::List(v, _) | Value::Tuple(v, _) | Value::Set(v, _) => {
                v.iter().map(Value::cost).sum()
            }
            Value::Dict(v, _) => v.iter().map(|(k, v)| k.cost() + v.cost()).sum(),
            Value::Call(c, _) => {
                c.callable.cost()
                    + c.args.cost()
                    + c.state.as_ref().map_or(0, Value::cost)
                    + c.list_items.iter().map(Value::cost).sum::<usize>()
                    + c.dict_items
                        .iter()
                        .map(|(k, v)| k.cost() + v.cost())
                        .sum::<usize>()
            }
            Value::PersistentId(v, _) => v.cost(),
            _ => 0,
        }
    }
}

/// The depth of a container holding `children`.
fn child_depth<'a>(children: impl Iterator<Item = &'a Value>) -> Result<u32, String> {
    let d = children.map(Value::depth).max().unwrap_or(0) + 1;
    if d > MAX_DEPTH {
        return Err(format!("values nested more than {MAX_DEPTH} deep"));
    }
    Ok(d)
}

/// Runs the pickle at the start of `data`; returns the value and the number of bytes the
/// pickle took (up to and including its `STOP`), so that several pickles can follow each
/// other (as in the legacy `torch.save` format).
pub fn load(data: &[u8]) -> Result<(Value, usize), String> {
    let mut machine = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        links: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: data.len().saturating_mul(8).saturating_add(1 << 20),
    };
    let value = machine.run()?;
    Ok((value, machine.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// For each stack entry, the memo index it was memoized under while on the stack.
    links: Vec<Option<usize>>,
    marks: Vec<usize>,
    memo: HashMap<usize, Memo>,
    budget: usize,
}

/// A memo entry.
enum Memo {
    /// The value is still on the stack at this position (and may still change there).
    OnStack(usize),
    /// The value as it was when it left the stack.
    Value(Value),
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends early (byte {}, {n} more bytes wanted)",
                    self.pos
                )
            })?;
        let data: &'a [u8] = self.data;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn len8(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| format!("a length of {n} bytes"))
    }

    /// A text line (text opcodes), without its newline.
    fn line(&mut self) -> Result<&'a [u8], String> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a text line")?;
        let line = &rest[..n];
        self.pos += n + 1;
        Ok(line)
    }

    fn line_str(&mut self) -> Result<String, String> {
        let line = self.line()?;
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| "a text line that is not UTF-8".to_owned())
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
        self.links.push(None);
    }

    /// A value leaves the stack: a memo entry that points at it keeps a copy of it.
    fn leave(&mut self, value: &Value, link: Option<usize>) {
        if let Some(index) = link {
            self.memo.insert(index, Memo::Value(value.clone()));
        }
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("an opcode takes a value across a MARK".into());
        }
        let v = self.stack.pop().ok_or("the stack is empty")?;
        let link = self.links.pop().flatten();
        self.leave(&v, link);
        Ok(v)
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("an opcode takes a value across a MARK".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "the stack is empty".into())
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        let values = self.stack.split_off(mark);
        let links = self.links.split_off(mark);
        for (v, link) in values.iter().zip(links) {
            self.leave(v, link);
        }
        Ok(values)
    }

    fn memo_put(&mut self, index: usize) -> Result<(), String> {
        self.top()?;
        let top = self.stack.len() - 1;
        if let Some(previous) = self.links[top].replace(index) {
            // The same value memoized twice: the earlier index keeps a copy.
            let v = self.stack[top].clone();
            self.charge(&v)?;
            self.memo.insert(previous, Memo::Value(v));
        }
        // An index reused while its earlier value is still on the stack: unlink that one.
        if let Some(Memo::OnStack(at)) = self.memo.insert(index, Memo::OnStack(top)) {
            if at != top && self.links.get(at) == Some(&Some(index)) {
                self.links[at] = None;
            }
        }
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<(), String> {
        let v = match self.memo.get(&index) {
            Some(Memo::OnStack(at)) => self.stack[*at].clone(),
            Some(Memo::Value(v)) => v.clone(),
            None => return Err(format!("memo entry {index} is not set")),
        };
        self.charge(&v)?;
        self.push(v);
        Ok(())
    }

    fn charge(&mut self, v: &Value) -> Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(v.cost())
            .ok_or("the pickle copies more values than its size allows")?;
        Ok(())
    }

    fn int_bytes(bytes: &[u8]) -> Result<Value, String> {
        if bytes.len() > 8 {
            // Two's complement wider than 64 bits: an i64 if it is only sign extension.
            let (low, high) = bytes.split_at(8);
            let fill = if low[7] & 0x80 != 0 { 0xff } else { 0 };
            if high.iter().any(|&b| b != fill) {
                return Ok(Value::BigInt(bytes.to_vec()));
            }
            return Self::int_bytes(low);
        }
        if bytes.is_empty() {
            return Ok(Value::Int(0));
        }
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        let mut buf = [fill; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            self.step(op)
                .map_err(|e| format!("{e} (opcode 0x{op:02x} at byte {at})"))?;
            if op == b'.' {
                if !self.marks.is_empty() || self.stack.len() != 1 {
                    return Err(format!(
                        "STOP at byte {at} with {} values on the stack",
                        self.stack.len()
                    ));
                }
                self.links.clear();
                return self.stack.pop().ok_or_else(|| "the stack is empty".into());
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            0x80 => {
                let protocol = self.byte()?;
                if protocol > 5 {
                    return Err(format!("pickle protocol {protocol} is newer than 5"));
                }
            }
            0x95 => {
                self.u64()?;
            }
            b'.' => {}
            b'(' => self.marks.push(self.stack.len()),
            b')' => self.push(Value::Tuple(Vec::new(), 1)),
            b']' => self.push(Value::List(Vec::new(), 1)),
            b'}' => self.push(Value::Dict(Vec::new(), 1)),
            0x8f => self.push(Value::Set(Vec::new(), 1)),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::tuple(items)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::tuple(items)?);
            }
            b'l' => {
                let items = self.pop_mark()?;
                let d = child_depth(items.iter())?;
                self.push(Value::List(items, d));
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                let d = child_depth(pairs.iter().flat_map(|(k, v)| [k, v]))?;
                self.push(Value::Dict(pairs, d));
            }
            0x91 => {
                let items = self.pop_mark()?;
                let d = child_depth(items.iter())?;
                self.push(Value::Set(items, d));
            }
            b'a' => {
                let v = self.pop()?;
                append(self.top()?, vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                append(self.top()?, items)?;
            }
            0x90 => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::Set(set, d) => {
                        *d = (*d).max(child_depth(items.iter())?);
                        set.extend(items);
                    }
                    other => return Err(format!("ADDITEMS on {}", other.kind())),
                }
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                set_items(self.top()?, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                set_items(self.top()?, pairs)?;
            }
            b'q' => {
                let i = self.byte()? as usize;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.u32()? as usize;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = self.memo.len();
                self.memo_put(i)?;
            }
            b'p' => {
                let i = parse_index(&self.line_str()?)?;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.byte()? as usize;
                self.memo_get(i)?;
            }
            b'j' => {
                let i = self.u32()? as usize;
                self.memo_get(i)?;
            }
            b'g' => {
                let i = parse_index(&self.line_str()?)?;
                self.memo_get(i)?;
            }
            b'c' => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                self.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = self.take(n)?;
                let v = string(s)?;
                self.push(v);
            }
            0x8c => {
                let n = self.byte()? as usize;
                let s = self.take(n)?;
                let v = string(s)?;
                self.push(v);
            }
            0x8d => {
                let n = self.len8()?;
                let s = self.take(n)?;
                let v = string(s)?;
                self.push(v);
            }
            b'T' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b'U' | b'C' => {
                let n = self.byte()? as usize;
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b'B' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            0x8e | 0x96 => {
                let n = self.len8()?;
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap_or([0; 4]));
                self.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap_or([0; 2]));
                self.push(Value::Int(v as i64));
            }
            0x8a => {
                let n = self.byte()? as usize;
                let v = Self::int_bytes(self.take(n)?)?;
                self.push(v);
            }
            0x8b => {
                let n = self.u32()? as usize;
                let v = Self::int_bytes(self.take(n)?)?;
                self.push(v);
            }
            b'I' => {
                let line = self.line_str()?;
                let v = match line.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.parse().map_err(|_| format!("INT `{s}`"))?),
                };
                self.push(v);
            }
            b'L' => {
                let line = self.line_str()?;
                let s = line.strip_suffix('L').unwrap_or(&line);
                let v = s.parse().map_err(|_| format!("LONG `{line}`"))?;
                self.push(Value::Int(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap_or([0; 8]));
                self.push(Value::Float(v));
            }
            b'F' => {
                let line = self.line_str()?;
                let v = line.parse().map_err(|_| format!("FLOAT `{line}`"))?;
                self.push(Value::Float(v));
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = call(callable, args)?;
                self.push(v);
            }
            0x81 => {
                let args = self.pop()?;
                let class = self.pop()?;
                let v = call(class, args)?;
                self.push(v);
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                let v = call(class, args)?;
                self.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                let d = state.depth() + 1;
                if d > MAX_DEPTH {
                    return Err(format!("values nested more than {MAX_DEPTH} deep"));
                }
                match self.top()? {
                    Value::Call(c, depth) => {
                        c.state = Some(state);
                        *depth = (*depth).max(d);
                    }
                    // BUILD on a plain dict sets attributes (an OrderedDict's `_metadata`):
                    // nothing a dict keeps.
                    Value::Dict(..) => {}
                    other => return Err(format!("BUILD on {}", other.kind())),
                }
            }
            b'Q' => {
                let id = self.pop()?;
                let d = id.depth() + 1;
                if d > MAX_DEPTH {
                    return Err(format!("values nested more than {MAX_DEPTH} deep"));
                }
                self.push(Value::PersistentId(Box::new(id), d));
            }
            b'P' => {
                let id = self.line_str()?;
                self.push(Value::PersistentId(Box::new(Value::Str(id)), 1));
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.charge(&v)?;
                self.push(v);
            }
            0x97 | 0x98 => {
                return Err("out-of-band buffers (pickle protocol 5) are not supported".into())
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
        Ok(())
    }
}

fn string(bytes: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(bytes)
        .map(|s| Value::Str(s.to_owned()))
        .map_err(|_| "a str that is not UTF-8".to_owned())
}

fn parse_index(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("memo index `{s}`"))
}

/// Pairs up `k1, v1, k2, v2, ...`.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of values for a dict".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
    let d = child_depth(items.iter())?;
    match target {
        Value::List(list, depth) => {
            *depth = (*depth).max(d);
            list.extend(items);
        }
        Value::Call(c, depth) => {
            *depth = (*depth).max(d);
            c.list_items.extend(items);
        }
        other => return Err(format!("APPEND on {}", other.kind())),
    }
    Ok(())
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> Result<(), String> {
    let d = child_depth(items.iter().flat_map(|(k, v)| [k, v]))?;
    match target {
        Value::Dict(dict, depth) => {
            *depth = (*depth).max(d);
            dict.extend(items);
        }
        Value::Call(c, depth) => {
            *depth = (*depth).max(d);
            c.dict_items.extend(items);
        }
        other => return Err(format!("SETITEM on {}", other.kind())),
    }
    Ok(())
}

/// `callable(*args)`: `collections.OrderedDict()` and the few builtins that build plain
/// values become those values; anything else is recorded.
fn call(callable: Value, args: Value) -> Result<Value, String> {
    if let Value::Global(module, name) = &callable {
        let items = args.items().unwrap_or(&[]);
        match (module.as_str(), name.as_str(), items) {
            ("collections", "OrderedDict", []) => return Ok(Value::Dict(Vec::new(), 1)),
            ("_codecs", "encode", [Value::Str(s), Value::Str(enc)]) if enc == "latin1" => {
                // Python 3 pickles `bytes` at protocol 2 as `_codecs.encode(text, 'latin1')`.
                let bytes = s
                    .chars()
                    .map(|c| u8::try_from(c as u32))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| "a latin1 string with a character above 255".to_owned())?;
                return Ok(Value::Bytes(bytes));
            }
            ("__builtin__" | "builtins", "bytes" | "bytearray", []) => {
                return Ok(Value::Bytes(Vec::new()))
            }
            ("__builtin__" | "builtins", "bytearray" | "bytes", [Value::Bytes(b)]) => {
                return Ok(Value::Bytes(b.clone()))
            }
            ("__builtin__" | "builtins", "set" | "frozenset", [v]) => {
                if let Some(items) = v.items() {
                    let d = child_depth(items.iter())?;
                    return Ok(Value::Set(items.to_vec(), d));
                }
            }
            _ => {}
        }
    }
    let d = callable.depth().max(args.depth()) + 1;
    if d > MAX_DEPTH {
        return Err(format!("values nested more than {MAX_DEPTH} deep"));
    }
    Ok(Value::Call(
        Box::new(Call {
            callable,
            args,
            state: None,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        }),
        d,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Byte strings below are what CPython 3.11's `pickle.dumps` writes (protocol noted).

    #[test]
    fn a_list_of_ints_protocol_4() {
        // pickle.dumps([1, 300, -2, 70000, 2**40], protocol=4)
        let bytes = b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01M,\x01J\xfe\xff\xff\xffJp\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01e.";
        let (v, used) = load(bytes).unwrap();
        assert_eq!(used, bytes.len());
        let items: Vec<i64> = v
            .items()
            .unwrap()
            .iter()
            .filter_map(Value::as_int)
            .collect();
        assert_eq!(items, [1, 300, -2, 70000, 1 << 40]);
    }

    #[test]
    fn text_protocol_0() {
        // pickle.dumps([1, 'a'], protocol=0)
        let bytes = b"(lp0\nI1\naVa\np1\na.";
        // `V` (raw-unicode text) is not supported: the error names the opcode.
        let err = load(bytes).unwrap_err();
        assert!(err.contains("0x56"), "{err}");
        let (v, _) = load(b"(lp0\nI1\naI-7\na.").unwrap();
        let items: Vec<i64> = v
            .items()
            .unwrap()
            .iter()
            .filter_map(Value::as_int)
            .collect();
        assert_eq!(items, [1, -7]);
    }

    #[test]
    fn memo_copies_are_bounded() {
        // A list appended to itself through the memo, doubling each time.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..60 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let err = load(&p).unwrap_err();
        assert!(
            err.contains("copies more") || err.contains("nested"),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 200));
        p.extend(std::iter::repeat_n(b'a', 199));
        p.push(b'.');
        assert!(load(&p).unwrap_err().contains("nested"));
    }

    #[test]
    fn persistent_id_chains_are_bounded() {
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(b'Q', 200_000));
        p.push(b'.');
        assert!(load(&p).unwrap_err().contains("nested"));
    }

    #[test]
    fn long_global_names_are_charged_when_copied() {
        // A 1 MB global name memoized, then fetched again and again.
        let mut p = b"\x80\x02c".to_vec();
        p.extend(std::iter::repeat_n(b'm', 1 << 20));
        p.extend_from_slice(b"\nx\nq\x00");
        for _ in 0..1000 {
            p.extend_from_slice(b"h\x00");
        }
        p.push(b'.');
        assert!(load(&p).unwrap_err().contains("copies more"));
    }

    #[test]
    fn a_huge_memo_index_costs_nothing() {
        let (v, _) = load(b"\x80\x02Nr\xff\xff\xff\xffj\xff\xff\xff\xff0.").unwrap();
        assert_eq!(v, Value::None);
    }

    #[test]
    fn memoized_containers_are_read_back_as_finished() {
        // pickle.dumps(([1, 2], ...)) where the list is memoized before its APPENDS and then
        // referenced again: x = [1, 2]; pickle.dumps((x, x), protocol=2)
        let bytes = b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86q\x01.";
        let (v, _) = load(bytes).unwrap();
        let items = v.items().unwrap();
        assert_eq!(items[0], items[1]);
        assert_eq!(items[1].items().unwrap().len(), 2);
    }

    #[test]
    fn truncated_and_unbalanced_pickles_are_errors() {
        assert!(load(b"").is_err());
        assert!(load(b"\x80\x02]").is_err());
        assert!(load(b"\x80\x02X\xff\xff\xff\xff").is_err());
        assert!(load(b"\x80\x02(.").is_err());
        assert!(load(b"\x80\x02NN.").is_err());
        assert!(load(b"\x80\x02a.").is_err());
        assert!(load(b"\x80\x02h\x05.").is_err());
    }
}
