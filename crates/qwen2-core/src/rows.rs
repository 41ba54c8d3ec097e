//! Row roles (issue 5, batch invariance): every activation row of a forward pass is either a
//! prompt row or a decode row, and its role — never the number of rows sharing the pass —
//! picks the matmul kernel. Both kernels compute each row independently of the others, so a
//! request's numerics do not depend on its batch mates, on how its prompt was chunked, or on
//! a prefix-cache hit that leaves only a few prompt rows to prefill.

use std::ops::Range;

use qwen2_kernels::{matmul_decode, matmul_decode_many, matmul_prompt, QMatRef};

use crate::error::Result;

/// Which kernel path a row takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRole {
    /// A prompt (prefill) row: the GEMM over dequantized f32 panels with f32 activations,
    /// for any number of rows, one included (a prompt remainder after a prefix-cache hit).
    Prompt,
    /// A sampled token fed back in: the per-row `vec_dot` path (activations quantized to the
    /// weight type's `vec_dot_type`), which streams each weight byte once.
    Decode,
}

impl RowRole {
    /// The role `Qwen2::forward` gives a call that does not name one: a single token is a
    /// decode step, more tokens are prompt rows. Callers that feed a one-token prompt (or
    /// its remainder) pass `RowRole::Prompt` explicitly (`forward_as`).
    pub fn by_count(n_tokens: usize) -> RowRole {
        if n_tokens == 1 {
            RowRole::Decode
        } else {
            RowRole::Prompt
        }
    }
}

/// The rows of one pass as contiguous runs of one role (a batch's segments in order, adjacent
/// segments of the same role merged, so each linear layer runs one matmul per run).
#[derive(Debug, Clone, Default)]
pub(crate) struct RoleRuns {
    runs: Vec<(RowRole, Range<usize>)>,
}

impl RoleRuns {
    /// Segments of `(role, rows)` in row order; empty segments are skipped.
    pub(crate) fn from_segments(segs: impl IntoIterator<Item = (RowRole, usize)>) -> Self {
        let mut runs: Vec<(RowRole, Range<usize>)> = Vec::new();
        let mut r0 = 0;
        for (role, n) in segs {
            if n == 0 {
                continue;
            }
            match runs.last_mut() {
                Some((last, range)) if *last == role => range.end += n,
                _ => runs.push((role, r0..r0 + n)),
            }
            r0 += n;
        }
        RoleRuns { runs }
    }

    /// Total rows.
    pub(crate) fn len(&self) -> usize {
        self.runs.last().map_or(0, |(_, r)| r.end)
    }

    /// The role of row `row` (`row < len()`).
    pub(crate) fn role_of(&self, row: usize) -> RowRole {
        self.runs
            .iter()
            .find(|(_, r)| r.contains(&row))
            .map_or(RowRole::Prompt, |(role, _)| *role)
    }

    /// `out[t] = W x[t]` for every row, one kernel call per run, each by its role.
    pub(crate) fn matmul(&self, w: &QMatRef, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (k, m) = (w.cols, w.rows);
        for (role, r) in &self.runs {
            let n = r.len();
            let (xs, os) = (&x[r.start * k..r.end * k], &mut out[r.start * m..r.end * m]);
            match role {
                RowRole::Prompt => matmul_prompt(w, xs, n, os)?,
                RowRole::Decode => matmul_decode(w, xs, n, os)?,
            }
        }
        Ok(())
    }

    /// `outs[i][t] = ws[i] x[t]` for matrices that read the same rows (a layer's q/k/v, or
    /// gate/up). Decode runs take one kernel call per group of matrices of one type and width
    /// (one activation quantization, one parallel section: `matmul_decode_many`), prompt runs
    /// one call per matrix. Every output is bitwise what [`RoleRuns::matmul`] gives.
    pub(crate) fn matmul_many(
        &self,
        ws: &[QMatRef],
        x: &[f32],
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let k = ws.first().map_or(0, |w| w.cols);
        let mut done = vec![false; ws.len()];
        for (role, r) in &self.runs {
            let (n, xs) = (r.len(), &x[r.start * k..r.end * k]);
            match role {
                RowRole::Prompt => {
                    for (w, o) in ws.iter().zip(outs.iter_mut()) {
                        let m = w.rows;
                        matmul_prompt(w, xs, n, &mut o[r.start * m..r.end * m])?;
                    }
                }
                RowRole::Decode => {
                    done.fill(false);
                    for i in 0..ws.len() {
                        if done[i] {
                            continue;
                        }
                        // Matrix i and the later ones of its type and width.
                        let group: Vec<usize> = (i..ws.len())
                            .filter(|&j| ws[j].ty == ws[i].ty && ws[j].cols == ws[i].cols)
                            .collect();
                        let gw: Vec<QMatRef> = group.iter().map(|&j| ws[j]).collect();
                        let mut go: Vec<&mut [f32]> = outs
                            .iter_mut()
                            .enumerate()
                            .filter(|(j, _)| group.contains(j))
                            .map(|(j, o)| {
                                let m = ws[j].rows;
                                &mut o[r.start * m..r.end * m]
                            })
                            .collect();
                        matmul_decode_many(&gw, xs, n, &mut go)?;
                        for &j in &group {
                            done[j] = true;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_segments_of_one_role_merge() {
        use RowRole::*;
        let r = RoleRuns::from_segments([(Decode, 1), (Decode, 1), (Prompt, 0), (Prompt, 5)]);
        assert_eq!(r.runs, vec![(Decode, 0..2), (Prompt, 2..7)]);
        assert_eq!(r.len(), 7);
        assert_eq!(r.role_of(1), Decode);
        assert_eq!(r.role_of(2), Prompt);
        assert_eq!(RoleRuns::from_segments([]).len(), 0);
    }
}
