//! Qwen2-MoE's sparse block, as transformers' `Qwen2MoeSparseMoeBlock` computes it:
//!
//! ```text
//! p      = softmax(router · x)                       over num_experts, in f32
//! top    = the num_experts_per_tok largest p         (renormalised to sum 1 if norm_topk_prob)
//! y      = Σ_{e ∈ top} p_e · down_e(silu(gate_e x) ⊙ up_e x)
//!        + sigmoid(shared_expert_gate · x) · shared_expert(x)
//! ```
//!
//! Experts are views into the file's stacked (GGUF) or per-expert (safetensors) tensors, so a
//! token reads only the bytes of the experts it picked. A prefill groups its rows by expert:
//! the rows routed to expert e are gathered, go through one matmul per projection, and are
//! scattered back with their routing weight. Every matmul runs by row role (`rows.rs`): an
//! expert's gathered rows keep their roles, so a row's numerics never depend on which other
//! rows picked the same expert.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{convert, Linear, Precision};
use crate::ops;
use crate::rows::RoleRuns;
use crate::weights::{Tensor, WeightSource};

/// One routed expert: `[I, H]` gate and up, `[H, I]` down.
struct Expert {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

pub(crate) struct SparseMoe {
    /// `[num_experts, H]` in f32 whatever the file holds: routing decisions are discrete, so
    /// they are taken on unquantized activations and weights.
    router: Tensor,
    experts: Vec<Expert>,
    shared_gate: Linear,
    shared_up: Linear,
    shared_down: Linear,
    /// `shared_expert_gate`, `[H]` in f32.
    shared_expert_gate: Vec<f32>,
    top_k: usize,
    norm_topk_prob: bool,
    hidden: usize,
    moe_ff: usize,
    shared_ff: usize,
}

impl SparseMoe {
    pub(crate) fn load(
        cfg: &Config,
        src: &WeightSource,
        layer: usize,
        p: Precision,
    ) -> Result<Self> {
        let m = cfg.moe.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "layer {layer} is sparse but the config has no MoE settings"
            ))
        })?;
        let (h, ne, ff) = (cfg.hidden_size, m.num_experts, m.moe_intermediate_size);
        let pre = format!("model.layers.{layer}.mlp");
        let router = src.get(&format!("{pre}.gate.weight"), &[ne, h])?.to_f32()?;
        let experts = (0..ne)
            .map(|e| {
                let get = |proj: &str, out: usize, inp: usize| {
                    convert(src.expert(layer, e, ne, proj, out, inp)?, p)
                };
                Ok(Expert {
                    gate: get("gate_proj", ff, h)?,
                    up: get("up_proj", ff, h)?,
                    down: get("down_proj", h, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sff = m.shared_expert_intermediate_size;
        let lin = |n: &str, out: usize, inp: usize| {
            Linear::load(src, &format!("{pre}.shared_expert.{n}"), out, inp, false, p)
        };
        Ok(SparseMoe {
            router,
            experts,
            shared_gate: lin("gate_proj", sff, h)?,
            shared_up: lin("up_proj", sff, h)?,
            shared_down: lin("down_proj", h, sff)?,
            shared_expert_gate: src
                .get(&format!("{pre}.shared_expert_gate.weight"), &[1, h])?
                .to_f32_vec()?,
            top_k: m.num_experts_per_tok,
            norm_topk_prob: m.norm_topk_prob,
            hidden: h,
            moe_ff: ff,
            shared_ff: sff,
        })
    }

    /// The top-k experts of each of the `n` rows of `x` and their weights, as
    /// `[(expert, weight); top_k]` per row.
    fn route(&self, x: &[f32], rows: &RoleRuns) -> Result<Vec<(usize, f32)>> {
        let ne = self.experts.len();
        let mut probs = vec![0f32; rows.len() * ne];
        rows.matmul(&self.router.as_mat()?, x, &mut probs)?;
        let mut picks = Vec::with_capacity(rows.len() * self.top_k);
        let mut order: Vec<usize> = (0..ne).collect();
        for row in probs.chunks_exact_mut(ne) {
            ops::softmax(row);
            // torch.topk order: largest first; equal values keep the lower index first.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let top = &order[..self.top_k];
            let sum: f32 = top.iter().map(|&e| row[e]).sum();
            let scale = if self.norm_topk_prob { 1.0 / sum } else { 1.0 };
            picks.extend(top.iter().map(|&e| (e, row[e] * scale)));
        }
        Ok(picks)
    }

    /// `out[t] = MoE(x[t])` for the rows of `x` (`[n, H]` each), each by its role.
    pub(crate) fn forward(&self, x: &[f32], rows_in: &RoleRuns, out: &mut [f32]) -> Result<()> {
        let (h, ff) = (self.hidden, self.moe_ff);
        let n = rows_in.len();
        let picks = self.route(x, rows_in)?;

        // Rows per expert, in token order: (token, weight).
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for (i, &(e, w)) in picks.iter().enumerate() {
            routed[e].push((i / self.top_k, w));
        }

        out.fill(0.0);
        let mut xs = Vec::new();
        let (mut gate, mut up, mut y) = (Vec::new(), Vec::new(), Vec::new());
        // Ascending expert order, as transformers' index_add_ loop.
        for (expert, rows) in self.experts.iter().zip(&routed) {
            let m = rows.len();
            if m == 0 {
                continue;
            }
            xs.clear();
            for &(t, _) in rows {
                xs.extend_from_slice(&x[t * h..(t + 1) * h]);
            }
            gate.resize(m * ff, 0.0);
            up.resize(m * ff, 0.0);
            y.resize(m * h, 0.0);
            // Gathered in token order, so the roles still form contiguous runs.
            let runs = RoleRuns::from_segments(rows.iter().map(|&(t, _)| (rows_in.role_of(t), 1)));
            runs.matmul(&expert.gate.as_mat()?, &xs, &mut gate)?;
            runs.matmul(&expert.up.as_mat()?, &xs, &mut up)?;
            ops::silu_mul(&mut gate, &up);
            runs.matmul(&expert.down.as_mat()?, &gate, &mut y)?;
            for (&(t, w), yr) in rows.iter().zip(y.chunks_exact(h)) {
                for (o, v) in out[t * h..(t + 1) * h].iter_mut().zip(yr) {
                    *o += w * v;
                }
            }
        }

        // Shared expert, for every row, scaled by its sigmoid gate.
        let sff = self.shared_ff;
        let mut sg = vec![0f32; n * sff];
        let mut su = vec![0f32; n * sff];
        self.shared_gate.forward(x, rows_in, &mut sg)?;
        self.shared_up.forward(x, rows_in, &mut su)?;
        ops::silu_mul(&mut sg, &su);
        let mut shared = vec![0f32; n * h];
        self.shared_down.forward(&sg, rows_in, &mut shared)?;
        for t in 0..n {
            let xr = &x[t * h..(t + 1) * h];
            let g: f32 = xr
                .iter()
                .zip(&self.shared_expert_gate)
                .map(|(a, b)| a * b)
                .sum();
            let s = 1.0 / (1.0 + (-g).exp());
            for (o, v) in out[t * h..(t + 1) * h]
                .iter_mut()
                .zip(&shared[t * h..(t + 1) * h])
            {
                *o += s * v;
            }
        }
        Ok(())
    }
}
