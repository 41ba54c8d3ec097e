//! GGUF v2/v3 reader: header, every metadata value type, tensor directory, mmap'd data.
//!
//! Every length and offset read from the file is checked against the file size before any slice
//! is taken, so a truncated or hostile file is an error, never a panic or an out-of-bounds read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use qwen2_kernels::GgmlType;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative values are rejected).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the data section.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous (column) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Shape in the row-major order HF uses: `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
    bytes: Storage,
}

/// The file's bytes: mapped from disk, or owned (tests, fuzzing).
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "file truncated: needed {n} bytes for {what} at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count that must fit in what is left of the file, given a minimum element size, so a
    /// corrupt count cannot make us allocate terabytes.
    fn count(&mut self, min_elem: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_elem.max(1) as u64) > left {
            return Err(format!(
                "{what} = {n} at offset {} cannot fit in the {left} bytes left in the file (corrupt or truncated)",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        // GGUF strings are UTF-8, but a few converters wrote invalid bytes in token tables;
        // keep them readable rather than failing the whole file.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata `{key}`: invalid bool byte {b}")),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(format!("metadata `{key}`: arrays nested too deeply"));
                }
                let elem_ty = self.u32(key)?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(format!("metadata `{key}`: unknown array element type {t}")),
                };
                let n = self.count(min, key)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(format!(
                    "metadata `{key}`: unknown value type {t} (supported 0..=12)"
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; we never hand out references that outlive `self`, and
        // every slice into it is bounds-checked. (A file truncated by another process while
        // mapped can still SIGBUS; that is the standard mmap caveat every engine accepts.)
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, Storage::Mapped(mmap))
    }

    /// Parse a GGUF image held in memory; `name` is used in error messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Storage) -> Result<Self> {
        let err = |msg: String| Error::Gguf {
            path: path.clone(),
            msg,
        };
        let mut c = Cursor {
            buf: &bytes[..],
            pos: 0,
        };
        let magic = c.take(4, "magic").map_err(err)?;
        if magic != MAGIC {
            return Err(err(format!(
                "not a GGUF file: magic is {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(magic)
            )));
        }
        let version = c.u32("version").map_err(err)?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 {
                " (this looks like a big-endian GGUF; only little-endian is supported)"
            } else {
                ""
            };
            return Err(err(format!(
                "unsupported GGUF version {version}; supported: 2, 3{hint}"
            )));
        }
        // A tensor info is at least 8 (name len) + 4 + 8 + 4 + 8 bytes; a kv at least 8 + 4 + 1.
        let n_tensors = c.count(32, "tensor count").map_err(err)?;
        let n_kv = c.count(13, "metadata count").map_err(err)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key").map_err(err)?;
            let ty = c.u32(&key).map_err(err)?;
            let v = c.value(ty, &key, 0).map_err(err)?;
            metadata.insert(key, v);
        }

        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name").map_err(err)?;
            let n_dims = c.u32(&name).map_err(err)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(err(format!(
                    "tensor `{name}`: {n_dims} dimensions (expected 1 to 4)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name).map_err(err)?);
            }
            let ty_id = c.u32(&name).map_err(err)?;
            let ty = GgmlType::from_u32(ty_id).map_err(|e| err(format!("tensor `{name}`: {e}")))?;
            let offset = c.u64(&name).map_err(err)?;
            infos.push((name, dims, ty, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(err(format!(
                        "general.alignment = {v:?}, expected a power of two"
                    )))
                }
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        if data_start > file_len {
            return Err(err(format!(
                "file truncated: tensor data should start at {data_start}, file has {file_len} bytes"
            )));
        }
        let data_len = file_len - data_start;

        let mut tensors = BTreeMap::new();
        for (name, dims, ty, offset) in infos {
            let cols = dims[0];
            let rows: u64 = dims[1..]
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| err(format!("tensor `{name}`: dimensions {dims:?} overflow")))?;
            if cols == 0 || rows == 0 {
                return Err(err(format!("tensor `{name}`: empty dimensions {dims:?}")));
            }
            let row_bytes = ty.row_bytes(cols as usize).map_err(|e| {
                err(format!(
                    "tensor `{name}` {dims:?}: {e} (row length must be a multiple of {})",
                    ty.block_size()
                ))
            })? as u64;
            let n_bytes = row_bytes
                .checked_mul(rows)
                .ok_or_else(|| err(format!("tensor `{name}`: size overflows")))?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "tensor `{name}`: offset {offset} is not aligned to {alignment}"
                )));
            }
            match offset.checked_add(n_bytes) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(err(format!(
                        "tensor `{name}` ({} {dims:?}, {n_bytes} bytes at data offset {offset}) runs past the end of the file \
                         (data section is {data_len} bytes): the file is truncated or corrupt",
                        ty.name()
                    )))
                }
            }
            if tensors.contains_key(&name) {
                return Err(err(format!("duplicate tensor name `{name}`")));
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    ty,
                    offset,
                    n_bytes: n_bytes as usize,
                },
            );
        }

        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            bytes,
        })
    }

    /// The bytes of a tensor (bounds were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let (start, len) = self.tensor_range(info);
        &self.bytes[start..start + len]
    }

    /// Byte range of a tensor within the file.
    pub fn tensor_range(&self, info: &TensorInfo) -> (usize, usize) {
        (self.data_start + info.offset as usize, info.n_bytes)
    }

    /// The whole file image.
    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Drop the pages wholly inside bytes `[start, start + len)` from this process's resident
    /// set (a tensor that was copied elsewhere at load, e.g. repacked), so the copy does not
    /// double the model's memory. Best effort and always safe to read afterwards: the map is
    /// a read-only view of the file, so a later read faults the same bytes back in. No-op for
    /// an in-memory image.
    pub fn release(&self, start: usize, len: usize) {
        const PAGE: usize = 4096;
        let Storage::Mapped(m) = &self.bytes else {
            return;
        };
        let (lo, hi) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
        if hi <= lo || hi > m.len() {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only, file-backed shared map only discards this
        // process's page-table entries: nothing was written through the map, so every later
        // access (through any outstanding slice) reads the unchanged file contents again.
        // A failure only means the pages stay resident.
        let _ =
            unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// The string array at `key`, or an error naming the key.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Gguf {
                path: self.path.clone(),
                msg: format!("metadata `{key}` is missing or not an array"),
            })?;
        arr.iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| Error::Gguf {
                    path: self.path.clone(),
                    msg: format!("metadata `{key}` holds a non-string element"),
                })
            })
            .collect()
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid GGUF: one F32 tensor of 4 values.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"qwen2");
        let name = b"t";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn open_bytes(bytes: &[u8]) -> Result<GgufFile> {
        GgufFile::from_bytes("<test>", bytes.to_vec())
    }

    #[test]
    fn reads_a_valid_file() {
        let g = open_bytes(&tiny_gguf()).unwrap();
        assert_eq!(g.architecture(), Some("qwen2"));
        let t = &g.tensors["t"];
        let data = g.tensor_data(t);
        assert_eq!(data.len(), 16);
        assert_eq!(f32::from_le_bytes(data[12..16].try_into().unwrap()), 4.0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for len in 0..full.len() {
            let r = open_bytes(&full[..len]);
            assert!(r.is_err(), "truncated to {len} bytes was accepted");
        }
    }

    #[test]
    fn wrong_magic_and_version() {
        let mut b = tiny_gguf();
        b[0] = b'X';
        let e = open_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
        let mut b = tiny_gguf();
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        let e = open_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("unsupported GGUF version 7"), "{e}");
    }

    #[test]
    fn offset_past_eof_and_absurd_counts() {
        let mut b = tiny_gguf();
        // tensor offset field is the 8 bytes before the padding; find it by layout.
        let off_pos = 4 + 4 + 8 + 8 + (8 + 20 + 4 + 8 + 5) + (8 + 1 + 4 + 8 + 4);
        b[off_pos..off_pos + 8].copy_from_slice(&4096u64.to_le_bytes());
        let e = open_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("offset 4096") || e.contains("aligned"), "{e}");
        let mut b = tiny_gguf();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = open_bytes(&b).unwrap_err().to_string();
        assert!(e.contains("cannot fit"), "{e}");
    }

    #[test]
    fn random_corruption_never_panics() {
        let full = tiny_gguf();
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..2000 {
            let mut b = full.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len();
                b[i] = (state >> 32) as u8;
            }
            let _ = open_bytes(&b);
        }
    }
}
