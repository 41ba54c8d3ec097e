//! GGUF v3 writer, streaming: the header, metadata and tensor directory are written first, then
//! tensor data one tensor at a time, so a 7B model never has to be in memory at once.
//!
//! ```ignore
//! use qwen2_core::gguf::Value;
//! use qwen2_core::gguf_write::GgufWriter;
//! let mut w = GgufWriter::new();
//! w.set("general.architecture", Value::String("qwen2".into()));      // metadata (insertion order kept)
//! w.add_tensor("token_embd.weight", &[vocab, hidden], GgmlType::Q8_0)?; // HF row-major shape [rows, cols]
//! let mut out = w.create("model.gguf")?;  // writes header + directory to `model.gguf.tmp`
//! out.write_tensor("token_embd.weight", &bytes)?; // each tensor's encoded bytes, in declaration order
//! out.finish()?;                           // checks all tensors were written, renames .tmp -> final
//! ```
//!
//! `bytes` is the tensor in its on-disk encoding (`qwen2_kernels::quantize_row` per row for
//! quantized types, little-endian f32/f16/bf16 otherwise); its length is checked against the
//! declared shape and type. `write_tensor_chunk` lets a tensor be streamed in row chunks.
//! Alignment is `general.alignment` when set (must be a power of two), 32 otherwise. Dropping a
//! `GgufOutput` without `finish` (an error path) removes the `.tmp` file, so no half-written
//! output is ever left under the final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use qwen2_kernels::GgmlType;

use crate::error::{Error, Result};
use crate::gguf::Value;

const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor declared for writing.
#[derive(Debug, Clone)]
struct Decl {
    name: String,
    /// GGUF order (`dims[0]` contiguous).
    dims: Vec<u64>,
    ty: GgmlType,
    n_bytes: u64,
    offset: u64,
}

/// Collects metadata and tensor declarations; `create` starts the file.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<Decl>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata key (replacing an earlier value, keeping its position).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Declare a tensor; `shape` is row-major as HF writes it (`[rows, cols]`; 1 to 4 dims).
    /// Data must later be written in declaration order.
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType) -> Result<()> {
        if shape.is_empty() || shape.len() > 4 || shape.contains(&0) {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} must have 1 to 4 non-zero dimensions"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("tensor `{name}` declared twice")));
        }
        if ty.is_internal() {
            return Err(invalid(format!(
                "tensor `{name}`: {} is an in-memory format, not a GGUF type",
                ty.name()
            )));
        }
        let cols = shape[shape.len() - 1];
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let row_bytes = ty.row_bytes(cols).map_err(|e| {
            invalid(format!(
                "tensor `{name}` {shape:?} as {}: {e} (row length must be a multiple of {})",
                ty.name(),
                ty.block_size()
            ))
        })?;
        self.tensors.push(Decl {
            name: name.to_owned(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty,
            n_bytes: (row_bytes * rows) as u64,
            offset: 0,
        });
        Ok(())
    }

    fn alignment(&self) -> Result<u64> {
        match self.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
                _ => Err(invalid(format!(
                    "general.alignment = {v:?}, expected a power of two"
                ))),
            },
        }
    }

    /// Write header, metadata and tensor directory to `<path>.tmp`; the returned output takes
    /// tensor data and renames the file to `path` on `finish`.
    pub fn create(mut self, path: impl AsRef<Path>) -> Result<GgufOutput> {
        let path = path.as_ref().to_path_buf();
        let alignment = self.alignment()?;
        let mut offset = 0u64;
        for t in &mut self.tensors {
            t.offset = offset;
            offset = (offset + t.n_bytes).div_ceil(alignment) * alignment;
        }
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut header, k);
            header.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut header, v, k)?;
        }
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&t.offset.to_le_bytes());
        }
        pad(&mut header, alignment);

        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = GgufOutput {
            path,
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tensors: self.tensors,
            alignment,
            next: 0,
            written: 0,
            data_pos: 0,
        };
        out.write_raw(&header)?;
        Ok(out)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn pad(buf: &mut Vec<u8>, alignment: u64) {
    let len = buf.len() as u64;
    let target = len.div_ceil(alignment) * alignment;
    buf.resize(target as usize, 0);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
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

fn put_value(buf: &mut Vec<u8>, v: &Value, key: &str) -> Result<()> {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_str(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // GGUF arrays are homogeneous; an empty array is written as u8 elements (as gguf-py
            // does for lack of a better type).
            let elem = items.first().map(type_id).unwrap_or(0);
            if let Some(bad) = items.iter().find(|x| type_id(x) != elem) {
                return Err(invalid(format!(
                    "metadata `{key}`: array mixes element types ({:?} after type {elem})",
                    bad
                )));
            }
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(buf, x, key)?;
            }
        }
    }
    Ok(())
}

/// A GGUF file being written: tensor data goes in declaration order.
pub struct GgufOutput {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    tensors: Vec<Decl>,
    alignment: u64,
    /// Index of the tensor being written.
    next: usize,
    /// Bytes of that tensor written so far.
    written: u64,
    /// Bytes written into the data section.
    data_pos: u64,
}

impl GgufOutput {
    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("file is open until finish");
        f.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))
    }

    /// The name, HF-order shape and type of the next tensor expected, if any.
    pub fn next_tensor(&self) -> Option<(&str, Vec<usize>, GgmlType)> {
        self.tensors.get(self.next).map(|t| {
            (
                t.name.as_str(),
                t.dims.iter().rev().map(|&d| d as usize).collect(),
                t.ty,
            )
        })
    }

    /// Write a whole tensor's encoded bytes.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.written != 0 {
            return Err(invalid(format!(
                "write_tensor(`{name}`) while a chunked tensor is half written"
            )));
        }
        self.write_tensor_chunk(name, bytes)?;
        if self.written != 0 {
            let t = &self.tensors[self.next];
            return Err(invalid(format!(
                "tensor `{name}`: got {} bytes, expected {} for {} {:?}",
                bytes.len(),
                t.n_bytes,
                t.ty.name(),
                t.dims
            )));
        }
        Ok(())
    }

    /// Write part of a tensor (e.g. a block of rows); the tensor is complete once its declared
    /// size has been written.
    pub fn write_tensor_chunk(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(invalid(format!(
                "tensor `{name}`: every declared tensor was already written"
            )));
        };
        if t.name != name {
            return Err(invalid(format!(
                "tensor `{name}` written out of order: `{}` is next",
                t.name
            )));
        }
        let (n_bytes, offset) = (t.n_bytes, t.offset);
        if self.written + bytes.len() as u64 > n_bytes {
            return Err(invalid(format!(
                "tensor `{name}`: {} bytes written, more than the {n_bytes} declared",
                self.written + bytes.len() as u64
            )));
        }
        if self.written == 0 && self.data_pos < offset {
            let padding = vec![0u8; (offset - self.data_pos) as usize];
            self.write_raw(&padding)?;
            self.data_pos = offset;
        }
        self.write_raw(bytes)?;
        self.written += bytes.len() as u64;
        self.data_pos += bytes.len() as u64;
        if self.written == n_bytes {
            self.written = 0;
            self.next += 1;
        }
        Ok(())
    }

    /// Check every tensor was written, pad the end, flush, fsync and rename into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(invalid(format!(
                "GGUF {}: tensor `{}` (and {} after it) not written",
                self.path.display(),
                t.name,
                self.tensors.len() - self.next - 1
            )));
        }
        let end = self.data_pos.div_ceil(self.alignment) * self.alignment;
        let padding = vec![0u8; (end - self.data_pos) as usize];
        self.write_raw(&padding)?;
        let mut w = self.file.take().expect("file is open until finish");
        w.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.path.clone())
    }
}

impl Drop for GgufOutput {
    fn drop(&mut self) {
        // Not finished: remove the partial file so no half-written output is left behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    fn sample_meta(w: &mut GgufWriter) {
        w.set("general.architecture", Value::String("qwen2".into()));
        w.set("qwen2.block_count", Value::U32(2));
        w.set("some.i64", Value::I64(-5));
        w.set("some.f64", Value::F64(0.25));
        w.set("some.bool", Value::Bool(true));
        w.set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        );
        w.set("empty", Value::Array(vec![]));
    }

    #[test]
    fn round_trip_metadata_and_tensors() {
        let dir = std::env::temp_dir().join(format!("qwen2-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rt.gguf");
        let mut w = GgufWriter::new();
        sample_meta(&mut w);
        w.add_tensor("a", &[3, 5], GgmlType::F32).unwrap();
        w.add_tensor("b", &[2, 32], GgmlType::Q8_0).unwrap();
        w.add_tensor("c", &[7], GgmlType::F16).unwrap();
        let a: Vec<u8> = (0..15).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let b: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
        let c: Vec<u8> = (0..14).map(|i| i as u8 ^ 0x5a).collect();
        let mut out = w.create(&path).unwrap();
        assert!(tmp_path(&path).exists() && !path.exists());
        out.write_tensor("a", &a).unwrap();
        out.write_tensor_chunk("b", &b[..34]).unwrap();
        out.write_tensor_chunk("b", &b[34..]).unwrap();
        out.write_tensor("c", &c).unwrap();
        out.finish().unwrap();
        assert!(!tmp_path(&path).exists());

        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture"), Some("qwen2"));
        assert_eq!(g.get("qwen2.block_count"), Some(&Value::U32(2)));
        assert_eq!(g.get("some.i64"), Some(&Value::I64(-5)));
        assert_eq!(g.get("some.f64"), Some(&Value::F64(0.25)));
        assert_eq!(g.get("some.bool"), Some(&Value::Bool(true)));
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens").unwrap(),
            ["a", "bc"]
        );
        assert_eq!(g.get("empty"), Some(&Value::Array(vec![])));
        assert_eq!(g.tensors["a"].shape(), [3, 5]);
        assert_eq!(g.tensors["b"].ty, GgmlType::Q8_0);
        assert_eq!(g.tensor_data(&g.tensors["a"]), &a[..]);
        assert_eq!(g.tensor_data(&g.tensors["b"]), &b[..]);
        assert_eq!(g.tensor_data(&g.tensors["c"]), &c[..]);
        for t in g.tensors.values() {
            assert_eq!(t.offset % 32, 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_leave_no_output() {
        let dir = std::env::temp_dir().join(format!("qwen2-gguf-write-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gguf");
        let mut w = GgufWriter::new();
        assert!(w.add_tensor("q", &[2, 33], GgmlType::Q4K).is_err());
        assert!(w.add_tensor("r", &[2, 32], GgmlType::Q5_0R8).is_err());
        w.add_tensor("a", &[4], GgmlType::F32).unwrap();
        w.add_tensor("b", &[4], GgmlType::F32).unwrap();
        assert!(w.add_tensor("a", &[4], GgmlType::F32).is_err());
        let mut out = w.create(&path).unwrap();
        assert!(out.write_tensor("b", &[0; 16]).is_err(), "out of order");
        assert!(out.write_tensor("a", &[0; 12]).is_err(), "short");
        let mut out2 = GgufWriter::new();
        out2.add_tensor("a", &[4], GgmlType::F32).unwrap();
        drop(out);
        assert!(!tmp_path(&path).exists() && !path.exists());
        let mut out = out2.create(&path).unwrap();
        out.write_tensor("a", &[0; 16]).unwrap();
        out.finish().unwrap();
        assert!(path.exists());
        let mut w = GgufWriter::new();
        w.add_tensor("a", &[4], GgmlType::F32).unwrap();
        let out = w.create(&path).unwrap();
        let e = out.finish().unwrap_err().to_string();
        assert!(e.contains("not written"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
