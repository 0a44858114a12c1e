//! The bounded GGUF reader: every count and length is checked against the bytes that remain,
//! so a truncated or hostile file ends in [`GgufError`], never a panic or a huge allocation.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use crate::{DEFAULT_ALIGNMENT, GgmlType, GgufError, MAGIC, Result, Value};

/// Nested arrays deeper than this are refused (llama.cpp writes depth 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// Tensors of more dimensions than this are refused (GGML's own limit).
const MAX_DIMS: u32 = 4;

/// One tensor record from the file's header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header: metadata in file order and tensor records.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub alignment: u64,
}

impl GgufFile {
    /// Parses a whole GGUF file held in memory, checking that every tensor lies inside it.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4).map_err(|_| GgufError::NotGguf)? != MAGIC {
            return Err(GgufError::NotGguf);
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // Each key/value takes at least 12 bytes and each tensor record at least 28: refuse
        // counts the file cannot possibly hold before allocating for them.
        if n_kv > c.remaining() / 12 || n_tensors > c.remaining() / 28 {
            return Err(corrupt(format!(
                "header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c
                .value(ty, 0)
                .map_err(|e| corrupt(format!("metadata `{key}`: {e}")))?;
            if !keys.insert(key.clone()) {
                return Err(corrupt(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(corrupt("general.alignment is not a power of two".into())),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let ty_id = c.u32()?;
            let offset = c.u64()?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnsupportedType {
                name: name.clone(),
                ty: ty_id,
            })?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| corrupt(format!("tensor `{name}` has an overflowing shape")))?;
            let size = ty.byte_size(elements).ok_or_else(|| {
                corrupt(format!(
                    "tensor `{name}`: {elements} elements is not a whole number of {ty} blocks"
                ))
            })?;
            if offset % alignment != 0 {
                return Err(corrupt(format!("tensor `{name}` is not aligned")));
            }
            if !names.insert(name.clone()) {
                return Err(corrupt(format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            if end.is_none_or(|end| end > file_len) {
                return Err(corrupt(format!(
                    "tensor `{}` extends past the end of the file ({file_len} bytes)",
                    t.name
                )));
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        })
    }

    /// Looks up a metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Looks up a tensor record by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| missing(key))?
            .as_str()
            .ok_or_else(|| wrong_type(key, "a string"))
    }

    /// A required non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .ok_or_else(|| missing(key))?
            .as_u64()
            .ok_or_else(|| wrong_type(key, "a non-negative integer"))
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .ok_or_else(|| missing(key))?
            .as_f64()
            .ok_or_else(|| wrong_type(key, "a number"))
    }
}

/// A GGUF file mapped into memory, with its parsed header.
pub struct MappedGguf {
    pub header: GgufFile,
    map: std::sync::Arc<memmap2::Mmap>,
}

impl MappedGguf {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() < 4 {
            return Err(GgufError::NotGguf);
        }
        // SAFETY: the map is read-only; a concurrent writer could change bytes under us, which
        // GGUF readers (llama.cpp included) accept. Every slice taken is bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let header = GgufFile::parse(&map)?;
        Ok(Self {
            header,
            map: std::sync::Arc::new(map),
        })
    }

    /// The raw bytes of a tensor, exactly as stored.
    pub fn data(&self, tensor: &TensorInfo) -> &[u8] {
        &self.map[self.range(tensor)]
    }

    /// The whole mapping, to keep tensor bytes alive beyond this value (with [`Self::range`]).
    pub fn shared_map(&self) -> std::sync::Arc<memmap2::Mmap> {
        self.map.clone()
    }

    /// Where a tensor's bytes lie in the mapping.
    pub fn range(&self, tensor: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.header.data_offset + tensor.offset) as usize;
        start..start + tensor.size as usize
    }

    /// The raw bytes of the tensor called `name`.
    pub fn data_by_name(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self
            .header
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        Ok((t, self.data(t)))
    }
}

fn corrupt(msg: String) -> GgufError {
    GgufError::Corrupt(msg)
}

fn missing(key: &str) -> GgufError {
    GgufError::Metadata {
        key: key.into(),
        problem: "missing".into(),
    }
}

fn wrong_type(key: &str, want: &str) -> GgufError {
    GgufError::Metadata {
        key: key.into(),
        problem: format!("not {want}"),
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() - self.pos {
            return Err(corrupt(format!(
                "needed {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > self.remaining() {
            return Err(corrupt(format!(
                "a string of {len} bytes runs past the end of the file"
            )));
        }
        let raw = self.take(len as usize)?;
        String::from_utf8(raw.to_vec()).map_err(|_| corrupt("a string is not valid UTF-8".into()))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(corrupt(format!("boolean byte {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(corrupt("arrays nested too deeply".into()));
                }
                let elem_ty = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte.
                if n > self.remaining() {
                    return Err(corrupt(format!(
                        "an array of {n} elements runs past the end of the file"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(corrupt(format!("unknown value type {other}"))),
        })
    }
}
