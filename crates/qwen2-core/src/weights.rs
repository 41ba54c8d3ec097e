//! Weights addressed by Hugging Face names, whatever file they came from.
//!
//! GGUF names are translated by one table at this boundary (llama.cpp's `llama-arch.cpp`
//! naming), so the model code only ever says `model.layers.3.self_attn.q_proj.weight`.
//! Tensors stay in the file's own format (quantized blocks, bf16, f16, f32) and are read from
//! the memory map without copying; `--exact` converts them to f32 once at load.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use qwen2_kernels::{GgmlType, QMatRef};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};

#[derive(Clone)]
enum Data {
    Gguf {
        file: Arc<GgufFile>,
        start: usize,
        len: usize,
    },
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

/// One weight: its format, its HF-order shape (`[rows, cols]` for a matrix) and its bytes.
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {} {:?})",
            self.name,
            self.ty.name(),
            self.shape
        )
    }
}

impl Tensor {
    /// A tensor owning f32 values (used for `--exact` and tests).
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            name: name.into(),
            ty: GgmlType::F32,
            shape,
            data: Data::Owned(Arc::new(bytes)),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Gguf { file, start, len } => &file.raw()[*start..*start + *len],
            Data::Mapped { map, start, len } => &map[*start..*start + *len],
            Data::Owned(v) => v,
        }
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rows × cols view for matmul; 1-D tensors are one row.
    pub fn as_mat(&self) -> Result<QMatRef<'_>> {
        let cols = *self.shape.last().unwrap_or(&0);
        let rows = self.n_elements().checked_div(cols).unwrap_or(0);
        Ok(QMatRef::new(self.ty, rows, cols, self.bytes())?)
    }

    /// Dequantize one row into `out` (`out.len()` = cols).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let m = self.as_mat()?;
        if row >= m.rows {
            return Err(Error::Invalid(format!(
                "row {row} of `{}` requested, it has {} rows",
                self.name, m.rows
            )));
        }
        qwen2_kernels::dequantize_row(self.ty, m.row(row), out)?;
        Ok(())
    }

    /// All values as f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let m = self.as_mat()?;
        let mut out = vec![0f32; m.rows * m.cols];
        if m.cols > 0 {
            out.par_chunks_mut(m.cols)
                .enumerate()
                .try_for_each(|(r, o)| qwen2_kernels::dequantize_row(self.ty, m.row(r), o))?;
        }
        Ok(out)
    }

    /// Rows `[row0, row0 + rows)` of matrix `index` of a 3-D tensor `[n, r, cols]`, as a
    /// `[rows, cols]` tensor sharing this one's mapped bytes (a stacked expert: no copy, and only
    /// the bytes of the experts a token picks are ever touched).
    pub fn sub_matrix(
        &self,
        name: impl Into<String>,
        index: usize,
        row0: usize,
        rows: usize,
    ) -> Result<Tensor> {
        let name = name.into();
        let &[n, r, cols] = self.shape.as_slice() else {
            return Err(Error::Invalid(format!(
                "`{}` has shape {:?}, expected 3 dimensions [n, rows, cols]",
                self.name, self.shape
            )));
        };
        if index >= n || row0 + rows > r {
            return Err(Error::Invalid(format!(
                "matrix {index} rows {row0}..{} of `{}` requested, its shape is {:?}",
                row0 + rows,
                self.name,
                self.shape
            )));
        }
        let row_bytes = self.ty.row_bytes(cols)?;
        let off = (index * r + row0) * row_bytes;
        let len = rows * row_bytes;
        let data = match &self.data {
            Data::Gguf { file, start, .. } => Data::Gguf {
                file: file.clone(),
                start: start + off,
                len,
            },
            Data::Mapped { map, start, .. } => Data::Mapped {
                map: map.clone(),
                start: start + off,
                len,
            },
            Data::Owned(v) => Data::Owned(Arc::new(v[off..off + len].to_vec())),
        };
        Ok(Tensor {
            name,
            ty: self.ty,
            shape: vec![rows, cols],
            data,
        })
    }

    /// The matrix in the kernels' faster in-memory layout when its format has one (Q5_0 ->
    /// Q5_0R8, Q4_K -> Q4KR, same values and size: see `qwen2_kernels::repack_row`), else
    /// itself. Rows are
    /// repacked in parallel into an owned buffer, and the source pages of a GGUF map are
    /// released afterwards so resident memory does not grow by the copy.
    pub fn repacked(self) -> Result<Tensor> {
        let (Some(to), &[rows, cols]) = (qwen2_kernels::repacked_type(self.ty), &self.shape[..])
        else {
            return Ok(self);
        };
        let rb = self.ty.row_bytes(cols)?;
        let src = self.bytes();
        if rows == 0 || rb == 0 || src.len() != rows * rb {
            return Ok(self);
        }
        // An anonymous map on huge pages where the kernel grants them on request
        // (transparent huge pages in "madvise" mode): on 4 KiB pages the page faults and
        // zeroing of fresh memory were most of the 7B shape's load (~3 GB of Q4_K: 4 s).
        let mut out = memmap2::MmapMut::map_anon(src.len())
            .map_err(|e| Error::io(format!("anonymous map for {}", self.name), e))?;
        #[cfg(target_os = "linux")]
        let _ = out.advise(memmap2::Advice::HugePage); // a hint: 4 KiB pages work too
        out.par_chunks_mut(rb)
            .zip(src.par_chunks(rb))
            .try_for_each(|(d, s)| qwen2_kernels::repack_row(self.ty, cols, s, d).map(|_| ()))?;
        if let Data::Gguf { file, start, len } = &self.data {
            file.release(*start, *len);
        }
        let len = out.len();
        let map = out
            .make_read_only()
            .map_err(|e| Error::io(format!("anonymous map for {}", self.name), e))?;
        Ok(Tensor {
            ty: to,
            data: Data::Mapped {
                map: Arc::new(map),
                start: 0,
                len,
            },
            ..self
        })
    }

    /// The same tensor converted to f32 (the reference path).
    pub fn to_f32(&self) -> Result<Tensor> {
        if self.ty == GgmlType::F32 {
            return Ok(self.clone());
        }
        Ok(Tensor::from_f32(
            self.name.clone(),
            self.shape.clone(),
            &self.to_f32_vec()?,
        ))
    }
}

/// HF name → GGUF name (qwen2 layout).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // Qwen2-MoE: router, shared expert and its gate. The routed experts are stacked in
        // GGUF (`ffn_{gate,up,down}_exps`), see `WeightSource::expert`.
        "mlp.gate" => "ffn_gate_inp",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Where weights come from.
pub enum WeightSource {
    Gguf(Arc<GgufFile>),
    /// HF name → (file map, byte range, dtype, shape).
    Safetensors {
        dir: PathBuf,
        tensors: BTreeMap<String, Tensor>,
    },
}

impl WeightSource {
    pub fn from_gguf(file: Arc<GgufFile>) -> Self {
        WeightSource::Gguf(file)
    }

    /// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn from_safetensors_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let j: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Safetensors {
                    path: index.clone(),
                    msg: format!("index is not valid JSON: {e}"),
                })?;
            let map = j
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors {
                    path: index.clone(),
                    msg: "index has no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            names.sort();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains("..") {
                    return Err(Error::Safetensors {
                        path: index.clone(),
                        msg: format!("shard name `{n}` must be a plain file name"),
                    });
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::Safetensors {
                    path: dir.to_path_buf(),
                    msg: "no model.safetensors or model.safetensors.index.json in this directory"
                        .into(),
                });
            }
            vec![single]
        };
        let mut tensors = BTreeMap::new();
        for path in files {
            load_safetensors_file(&path, &mut tensors)?;
        }
        Ok(WeightSource::Safetensors {
            dir: dir.to_path_buf(),
            tensors,
        })
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            WeightSource::Gguf(g) => gguf_name(hf_name).is_some_and(|n| g.tensors.contains_key(&n)),
            WeightSource::Safetensors { tensors, .. } => tensors.contains_key(hf_name),
        }
    }

    /// The tensor named `hf_name`, checked against `shape` (HF order).
    pub fn get(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match self {
            WeightSource::Gguf(g) => {
                let gname = gguf_name(hf_name).ok_or_else(|| Error::MissingTensor {
                    name: hf_name.into(),
                    hint: " (no GGUF name is known for it)".into(),
                })?;
                let info = g.tensors.get(&gname).ok_or_else(|| Error::MissingTensor {
                    name: gname.clone(),
                    hint: format!(" (GGUF name of {hf_name}) in {}", g.path.display()),
                })?;
                gguf_tensor(hf_name.to_string(), g, info)
            }
            WeightSource::Safetensors { dir, tensors } => tensors
                .get(hf_name)
                .cloned()
                .ok_or_else(|| Error::MissingTensor {
                    name: hf_name.into(),
                    hint: format!(" in the safetensors of {}", dir.display()),
                })?,
        };
        // A `[1, n]` weight (Qwen2-MoE's shared_expert_gate) may be stored 1-D, as llama.cpp does.
        if shape.len() == 2 && shape[0] == 1 && t.shape == shape[1..] {
            return Ok(Tensor {
                shape: shape.to_vec(),
                ..t
            });
        }
        check_shape(hf_name, &t, shape)?;
        Ok(t)
    }

    /// Routed expert `e` of layer `layer`: its `proj` ("gate_proj", "up_proj" or "down_proj")
    /// as an `[out, inp]` view, from whichever layout the file has:
    /// - the hub's per-expert `model.layers.N.mlp.experts.E.{proj}.weight` (what
    ///   transformers' `save_pretrained` writes, 4.x and 5.x alike);
    /// - transformers 5's in-memory fused `mlp.experts.gate_up_proj` `[n, 2·I, H]` (gate rows
    ///   first) and `mlp.experts.down_proj` `[n, H, I]`;
    /// - GGUF's stacked `blk.N.ffn_{gate,up,down}_exps.weight` `[n, out, inp]`.
    pub fn expert(
        &self,
        layer: usize,
        e: usize,
        n_experts: usize,
        proj: &str,
        out: usize,
        inp: usize,
    ) -> Result<Tensor> {
        let pre = format!("model.layers.{layer}.mlp.experts");
        let hf = format!("{pre}.{e}.{proj}.weight");
        match self {
            WeightSource::Gguf(_) => self
                .stacked_experts(layer, n_experts, proj, out, inp)?
                .sub_matrix(hf, e, 0, out),
            WeightSource::Safetensors { dir, tensors } => {
                if let Some(t) = tensors.get(&hf) {
                    check_shape(&hf, t, &[out, inp])?;
                    return Ok(t.clone());
                }
                let (fused, rows, row0) = match proj {
                    "gate_proj" => (format!("{pre}.gate_up_proj"), 2 * out, 0),
                    "up_proj" => (format!("{pre}.gate_up_proj"), 2 * out, out),
                    _ => (format!("{pre}.{proj}"), out, 0),
                };
                let t = tensors.get(&fused).ok_or_else(|| Error::MissingTensor {
                    name: hf.clone(),
                    hint: format!(
                        " (nor the fused `{fused}` of transformers 5) in the safetensors of {}: \
                         layer {layer} needs all {n_experts} experts",
                        dir.display()
                    ),
                })?;
                check_shape(&fused, t, &[n_experts, rows, inp])?;
                t.sub_matrix(hf, e, row0, out)
            }
        }
    }

    /// A GGUF's stacked `blk.{layer}.ffn_{gate,up,down}_exps.weight` `[n_experts, out, inp]`
    /// as stored (safetensors keep experts apart: see `expert`).
    pub fn stacked_experts(
        &self,
        layer: usize,
        n_experts: usize,
        proj: &str,
        out: usize,
        inp: usize,
    ) -> Result<Tensor> {
        let short = proj.trim_end_matches("_proj");
        let gname = format!("blk.{layer}.ffn_{short}_exps.weight");
        let WeightSource::Gguf(g) = self else {
            return Err(Error::MissingTensor {
                name: gname,
                hint: " (stacked experts exist only in GGUF files)".into(),
            });
        };
        let info = g.tensors.get(&gname).ok_or_else(|| Error::MissingTensor {
            name: gname.clone(),
            hint: format!(
                " (the stacked `{proj}` of the {n_experts} experts of layer {layer}) in {}",
                g.path.display()
            ),
        })?;
        let stacked = gguf_tensor(gname.clone(), g, info);
        check_shape(&gname, &stacked, &[n_experts, out, inp])?;
        Ok(stacked)
    }

    /// Every tensor name, in HF naming where known.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightSource::Gguf(g) => g.tensors.keys().cloned().collect(),
            WeightSource::Safetensors { tensors, .. } => tensors.keys().cloned().collect(),
        }
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        return Err(Error::ShapeMismatch {
            name: name.into(),
            expected: shape.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

fn load_safetensors_file(path: &Path, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let err = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map; every range below was validated by `read_metadata` against the
    // map's length.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..])
        .map_err(|e| err(format!("invalid header: {e}")))?;
    let data_start = 8 + header_len;
    for (name, info) in meta.tensors() {
        use safetensors::Dtype;
        let ty = match info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(err(format!(
                    "tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16"
                )))
            }
        };
        let (s, e) = info.data_offsets;
        let len = e - s;
        let shape = info.shape.clone();
        let start = data_start + s;
        if start + len > map.len() {
            return Err(err(format!(
                "tensor `{name}` runs past the end of the file"
            )));
        }
        out.insert(
            name.clone(),
            Tensor {
                name: name.clone(),
                ty,
                shape,
                data: Data::Mapped {
                    map: map.clone(),
                    start,
                    len,
                },
            },
        );
    }
    Ok(())
}

/// Tensor `info` of GGUF file `file` under `name`, its bytes borrowed from the file's mapping.
fn gguf_tensor(name: String, file: &Arc<GgufFile>, info: &TensorInfo) -> Tensor {
    let (start, len) = file.tensor_range(info);
    Tensor {
        name,
        ty: info.ty,
        shape: info.shape(),
        data: Data::Gguf {
            file: file.clone(),
            start,
            len,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q5_0_tensor(name: &str, shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 263) as f32 - 131.0) / 97.0)
            .collect();
        let mut q = vec![0u8; GgmlType::Q5_0.row_bytes(n).unwrap()];
        qwen2_kernels::quantize_row(GgmlType::Q5_0, &x, &mut q).unwrap();
        Tensor {
            name: name.into(),
            ty: GgmlType::Q5_0,
            shape,
            data: Data::Owned(Arc::new(q)),
        }
    }

    #[test]
    fn repacked_matrices_keep_their_values_bitwise() {
        let t = q5_0_tensor("w", vec![5, 896]);
        let r = t.clone().repacked().unwrap();
        assert_eq!(r.ty, GgmlType::Q5_0R8);
        assert_eq!(
            (r.shape.clone(), r.bytes().len()),
            (t.shape.clone(), t.bytes().len())
        );
        assert_ne!(r.bytes(), t.bytes());
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(r.to_f32_vec().unwrap()), bits(t.to_f32_vec().unwrap()));
        let (mut a, mut b) = (vec![0f32; 896], vec![0f32; 896]);
        r.row_to_f32(3, &mut a).unwrap();
        t.row_to_f32(3, &mut b).unwrap();
        assert_eq!(bits(a), bits(b));
        // Vectors and formats without a repacked layout are returned as they are.
        let v = q5_0_tensor("v", vec![896]).repacked().unwrap();
        assert_eq!(v.ty, GgmlType::Q5_0);
        let f = Tensor::from_f32("f", vec![2, 32], &[0.5; 64])
            .repacked()
            .unwrap();
        assert_eq!(f.ty, GgmlType::F32);
    }

    #[test]
    fn gguf_names() {
        let cases = [
            (
                "model.layers.3.self_attn.q_proj.bias",
                Some("blk.3.attn_q.bias"),
            ),
            (
                "model.layers.23.mlp.down_proj.weight",
                Some("blk.23.ffn_down.weight"),
            ),
            ("lm_head.weight", Some("output.weight")),
            (
                "model.layers.5.mlp.gate.weight",
                Some("blk.5.ffn_gate_inp.weight"),
            ),
            (
                "model.layers.5.mlp.shared_expert.down_proj.weight",
                Some("blk.5.ffn_down_shexp.weight"),
            ),
            (
                "model.layers.5.mlp.shared_expert_gate.weight",
                Some("blk.5.ffn_gate_inp_shexp.weight"),
            ),
            // Routed experts are stacked in GGUF: `WeightSource::expert` addresses them.
            ("model.layers.5.mlp.experts.3.up_proj.weight", None),
            ("model.layers.x.mlp.up_proj.weight", None),
            ("model.layers.1.mlp.foo.weight", None),
        ];
        for (hf, want) in cases {
            assert_eq!(gguf_name(hf).as_deref(), want, "{hf}");
        }
    }
}
