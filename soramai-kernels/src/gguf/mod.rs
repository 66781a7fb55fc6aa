//! GGUF v2/v3: a validating reader over a memory map (tensors borrowed zero-copy) and a writer.
//!
//! Every count, offset, size, string length and type tag is checked before it is used: a count is
//! bounded by the bytes that remain (so a hostile count cannot trigger a huge allocation), sizes
//! use checked arithmetic, tensor data must lie inside the file, aligned, and without overlap.

mod writer;

pub use writer::GgufWriter;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, io_err};
use crate::quant::GgmlType;

/// The file magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Default tensor-data alignment.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays accepted.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f32.
    F32(f32),
    /// f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub(crate) fn type_tag(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// Where a tensor lives in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Dimensions, innermost first (GGML order: `dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset from the start of the file.
    pub offset: usize,
    /// Byte length.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes behind a GGUF file: a read-only memory map or an owned buffer.
#[derive(Debug)]
pub enum Storage {
    /// A memory-mapped file.
    Mmap(memmap2::Mmap),
    /// Bytes in memory (a customer's model decrypted into memory): zeroed when dropped.
    Owned(Vec<u8>),
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Owned(v) = self {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file.
#[derive(Debug, Clone)]
pub struct Gguf {
    storage: Arc<Storage>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Tensor-data alignment.
    pub alignment: u64,
    /// Where the tensor-data section starts.
    pub data_offset: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Gguf { offset: self.pos as u64, reason: reason.into() }
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated: need {n} bytes, {} remain", self.remaining())));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.arr().map(u64::from_le_bytes)
    }
    /// A count of items, each at least `min_size` bytes, bounded by what remains.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let fits =
            usize::try_from(n).ok().filter(|n| n.checked_mul(min_size.max(1)).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| Error::Gguf {
            offset: at as u64,
            reason: format!("{what} count {n} exceeds the {} bytes that remain", self.remaining()),
        })
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let at = self.pos;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| Error::Gguf { offset: at as u64, reason: "string is not valid UTF-8".into() })
    }
    fn value(&mut self, tag: u32, depth: usize) -> Result<Value> {
        Ok(match tag {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool byte {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(self.err(format!("unknown array element type {t}"))),
                };
                let n = self.count(min, "array")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(self.err(format!("unknown value type {t}"))),
        })
    }
}

impl Gguf {
    /// Memory-maps and parses a file.
    #[allow(unsafe_code)]
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file under it is outside what any mmap-based loader can defend against; every parsed
        // offset is still bounds-checked against the length seen here.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        Self::parse(Arc::new(Storage::Mmap(map)))
    }

    /// Parses bytes held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Arc::new(Storage::Owned(bytes)))
    }

    /// A header parsed from a file's first bytes (see [`Gguf::parse_prefix`]): for header checks
    /// only, never for a model, since its tensors' bytes lie past the prefix.
    pub(crate) fn header(prefix: Vec<u8>, file_len: u64) -> Result<Self> {
        if (prefix.len() as u64) > file_len || usize::try_from(file_len).is_err() {
            return Err(Error::Gguf { offset: 0, reason: format!("a file of {file_len} bytes cannot be read here") });
        }
        Self::parse_prefix(Arc::new(Storage::Owned(prefix)), file_len)
    }

    fn parse(storage: Arc<Storage>) -> Result<Self> {
        let file_len = storage.len() as u64;
        Self::parse_prefix(storage, file_len)
    }

    /// Parses a file's header from its first bytes, `storage`, checking every tensor against a
    /// file of `file_len` bytes. With a prefix shorter than the file, tensor bytes past it must
    /// never be read: only [`Gguf::header`] builds such a value, for checks that read no tensor data.
    fn parse_prefix(storage: Arc<Storage>, file_len: u64) -> Result<Self> {
        let b: &[u8] = &storage;
        let mut c = Cursor { b, pos: 0 };
        if c.take(4)? != MAGIC {
            return Err(c.err("not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("unsupported GGUF version {version}")));
        }
        // A tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes.
        let n_tensors = c.count(24, "tensor")?;
        // A key-value pair takes at least 8 (key) + 4 (type) + 1 bytes.
        let n_kv = c.count(13, "metadata")?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let at = c.pos;
            let key = c.string()?;
            let tag = c.u32()?;
            let v = c.value(tag, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::Gguf { offset: at as u64, reason: format!("duplicate key {key:?}") });
            }
            metadata.push((key, v));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two up to 65536"))),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let at = c.pos as u64;
            let name = c.string()?;
            let nd = c.u32()?;
            if nd == 0 || nd > MAX_DIMS {
                return Err(c.err(format!("tensor {name:?} has {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64()?);
            }
            let ty = GgmlType::from_tag(c.u32()?)
                .map_err(|e| Error::Gguf { offset: at, reason: format!("tensor {name:?}: {e}") })?;
            let off = c.u64()?;
            raw.push((at, name, dims, ty, off));
        }
        // A file without tensors may end right after its metadata, before any padding.
        let data_offset = (c.pos as u64)
            .checked_next_multiple_of(alignment)
            .map(|d| if n_tensors == 0 { d.min(file_len) } else { d })
            .filter(|&d| d <= file_len)
            .ok_or_else(|| c.err("tensor data section starts past the end of the file"))?;
        let data_len = file_len - data_offset;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for (at, name, dims, ty, off) in raw {
            let bad = |reason: String| Error::Gguf { offset: at, reason: format!("tensor {name:?}: {reason}") };
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad("element count overflows".into()))?;
            if dims.first().is_some_and(|&d0| d0 % ty.block_len() as u64 != 0) {
                return Err(bad(format!("row length {} is not a multiple of the {ty} block", dims[0])));
            }
            let len = ty.bytes_for(elements).ok_or_else(|| bad("byte size overflows".into()))?;
            if off % alignment != 0 {
                return Err(bad(format!("offset {off} is not aligned to {alignment}")));
            }
            let end = off.checked_add(len).ok_or_else(|| bad("offset + size overflows".into()))?;
            if end > data_len {
                return Err(bad(format!("data [{off}, {end}) runs past the {data_len}-byte data section")));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("duplicate tensor name".into()));
            }
            // Bounded by the file length (checked to fit in usize by the caller of a prefix parse).
            tensors.push(TensorInfo { name, dims, ty, offset: (data_offset + off) as usize, len: len as usize });
        }
        let mut spans: Vec<(usize, usize, usize)> = tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.len > 0)
            .map(|(i, t)| (t.offset, t.offset + t.len, i))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                let t = &tensors[w[1].2];
                return Err(Error::Gguf {
                    offset: t.offset as u64,
                    reason: format!("tensor {:?} overlaps another", t.name),
                });
            }
        }
        Ok(Gguf {
            storage,
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset: data_offset as usize,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A metadata value that must be a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| Error::Metadata(format!("{key} is not an unsigned integer"))),
        }
    }

    /// A metadata value that must be a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Error::Metadata(format!("{key} is not a string"))),
        }
    }

    /// A tensor's description.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes, borrowed from the map.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.storage[t.offset..t.offset + t.len]
    }

    /// The shared storage, for views that outlive this struct.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// A tensor dequantized to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| Error::Tensor { name: name.into(), reason: "missing".into() })?;
        let mut out = vec![0f32; t.elements() as usize];
        crate::quant::dequantize(t.ty, self.tensor_bytes(t), &mut out)?;
        Ok(out)
    }
}
