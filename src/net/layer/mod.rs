//! One recurrent layer over T steps: the input projection of all steps as one GEMM, then per
//! step one recurrent GEMM plus the cell's fused step; backward mirrors it and ends with one
//! GEMM per weight gradient.

mod norm;
mod pair;
mod proj;
mod rows;
mod units;
pub(crate) mod wavefront;

use pair::project;
pub(crate) use pair::{backward_pair, forward_pair};
use rows::*;
use units::*;

use crate::cell::{BackStep, CellKind, Step};
use crate::float::Float;
use crate::kernels::team::{self, Shared};
use crate::kernels::{self, Mat, MatMut, Operand, Precision, parts};
use crate::net::plan::{Split, UNIT_ALIGN};
use crate::net::workspace::LayerCache;
use crate::net::zoneout;
use crate::net::{LayerParams, NetConfig};

/// Where a layer's input comes from.
pub(crate) enum LayerInput<'a, F> {
    /// (T·B, I) rows: the dense input or the layer below's hidden states.
    Rows(&'a [F]),
    /// Token ids (T·B) into a (V, G·H) table holding the biases + embedding · W_ihᵀ.
    Table { table: &'a [F], tokens: &'a [u32] },
}

/// The sizes of one pass through a layer: what every loop over steps, rows and units reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub cell: CellKind,
    /// H.
    pub h: usize,
    /// The width of h, the state: P with a projection (`layer/proj.rs`), else H.
    pub hp: usize,
    /// G·H, the width of the gates.
    pub gh: usize,
    /// B, the batch rows.
    pub b: usize,
    /// A LayerNorm-LSTM (`layer/norm.rs`).
    pub norm: bool,
    /// T, the steps of this pass.
    pub steps: usize,
    pub threads: usize,
    /// The precision of the pass's products (`Plan::precision`).
    pub precision: Precision,
}

impl Dims {
    pub(crate) fn new(cfg: &NetConfig, steps: usize, b: usize, threads: usize, precision: Precision) -> Self {
        let (h, hp, gh) = (cfg.hidden, cfg.state_width(), cfg.cell.gates() * cfg.hidden);
        Dims { cell: cfg.cell, h, hp, gh, b, norm: cfg.layer_norm, steps, threads, precision }
    }
}

/// One layer's part of a pass as its plan made it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass<'a> {
    pub dims: Dims,
    pub split: Split,
    /// Read W_hh through its transpose in the cache (see `Plan::w_hh_t_forward` / `_backward`).
    pub w_hh_t: bool,
    /// Each row's length (empty: every row runs all T steps).
    pub lengths: &'a [usize],
}

/// What a layer's backward pass reads below it, and where it sends dL/dx (if anywhere).
pub(crate) struct Below<'a, F> {
    pub x: LayerInput<'a, F>,
    pub dx: Option<&'a mut [F]>,
}

/// The gradient carried from step to step: dL/d(state after the last step) on entry, dL/d(initial
/// state) on return, (B, H) each (`dc_next` empty without a cell state); and, when asked, the
/// per-step norms of dL/dh_t.
pub(crate) struct Carry<'a, F> {
    pub dh_next: &'a mut [F],
    pub dc_next: &'a mut [F],
    pub dh_norms: Option<&'a mut [F]>,
}

/// Forward over the pass's steps, filling `cache` (hs[0] and cs[0] hold the initial state).
pub(crate) fn forward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    cache: &mut LayerCache<F>,
    hproj: &mut [F],
    x: LayerInput<'_, F>,
) {
    if pass.dims.hp != pass.dims.h {
        return proj::forward(pass, lp, p, cache, x);
    }
    if pass.dims.norm {
        return norm::forward(pass, lp, p, cache, x);
    }
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bgh) = (b * h, b * gh);
    let (b_hh, lengths) = (&p[lp.b_hh..lp.b_hh + gh], pass.lengths);
    if pass.w_hh_t {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
    }
    // Input projections of all T steps at once: gates (T·B, G·H) = bias + X · W_ihᵀ. Token
    // input reads its rows of the folded table instead, step by step just before each step's
    // recurrent GEMM (while they are hot in cache, not in one pass over all of `gates`).
    let table = match x {
        LayerInput::Rows(x) => {
            project(&pass.dims, lp, p, cache, x);
            None
        }
        LayerInput::Table { table, tokens } => Some(TableRows { table, tokens, b, gh }),
    };

    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    let w_hh_t = if pass.w_hh_t { Mat::rows(&cache.w_hh_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() }; // (H, G·H)
    // bf16: W_hhᵀ packed once for every step's product (held apart from the cache meanwhile).
    let mut packed = std::mem::take(&mut cache.w_hh_pack);
    let bf16 = pass.dims.precision == Precision::Bf16;
    if bf16 {
        kernels::pack_b(&mut packed, w_hh_t);
    }
    let w_hh_t = operand(bf16, &packed, w_hh_t);
    let lstm = cell.has_cell_state();
    match pass.split {
        Split::Whole | Split::Tiles => {
            let gemm_threads = if pass.split == Split::Tiles { threads } else { 1 };
            for t in 0..steps {
                let (past, future) = cache.hs.split_at_mut((t + 1) * bh);
                let (c_prev, c) = if lstm {
                    let (c_past, c_future) = cache.cs.split_at_mut((t + 1) * bh);
                    (&c_past[t * bh..], &mut c_future[..bh])
                } else {
                    (&[][..], &mut [][..])
                };
                if let Some(tr) = &table {
                    tr.fill(t, 0, &mut cache.gates[t * bgh..(t + 1) * bgh]);
                }
                let mut rows = FwdRows {
                    g: &mut cache.gates[t * bgh..(t + 1) * bgh],
                    h_prev: &past[t * bh..],
                    h: &mut future[..bh],
                    c_prev,
                    c,
                    aux: if cache.aux.is_empty() { &mut [][..] } else { &mut cache.aux[t * bh..(t + 1) * bh] },
                    hproj: &mut hproj[..],
                    zh: step_of(&cache.zone_h, t, bh),
                    zc: step_of(&cache.zone_c, t, bh),
                };
                forward_rows(cell, h, b_hh, w_hh_t, &mut rows, gemm_threads, Ended { lengths, t, r0: 0 });
            }
        }
        Split::Rows(parts) => {
            // Each part owns its batch rows for the whole pass: the parts never wait.
            let (bufs, w_t) = FwdBufs::new(cache, hproj);
            let w_hh_t =
                operand(bf16, &packed, if pass.w_hh_t { Mat::rows(w_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() });
            team::run(
                threads,
                parts,
                steps,
                |_| false,
                |part, t| {
                    let (r0, r1) = parts::range(b, parts, 1, part);
                    // SAFETY: this part touches only rows [r0, r1) of each step (and of the (B, ·)
                    // scratch), every other part only other rows (see `FwdBufs::rows`).
                    let mut rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                    if let Some(tr) = &table {
                        tr.fill(t, r0, rows.g);
                    }
                    forward_rows(cell, h, b_hh, w_hh_t, &mut rows, 1, Ended { lengths, t, r0 });
                },
            );
        }
        Split::Units(parts) => {
            // Each part owns units [u0, u1) of every row: its G row blocks of W_hh stay in its
            // core's cache. Step t needs all of h_{t−1}, so the parts meet before each step. (A
            // wavefront of one layer: the same driver runs stacked layers at once.)
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let wave = wavefront::Wave { dims: pass.dims, units: parts, chunk: steps, w_hh_t: pass.w_hh_t, lengths };
            wavefront::forward_steps(lps, p, caches, hproj, table.as_ref(), wave);
        }
    }
    cache.w_hh_pack = packed;
}

/// Token input's pre-activation rows: row (t, r) of `gates` starts as the folded table's row of
/// token (t, r), which already holds the biases.
struct TableRows<'a, F> {
    table: &'a [F],    // (V, G·H)
    tokens: &'a [u32], // (T, B)
    b: usize,
    gh: usize,
}

impl<F: Copy> TableRows<'_, F> {
    /// The table row of token (t, r).
    fn row(&self, t: usize, r: usize) -> &[F] {
        let tok = self.tokens[t * self.b + r] as usize;
        &self.table[tok * self.gh..(tok + 1) * self.gh]
    }

    /// Fills `g`, rows r0, r0 + 1, … of step t, with their table rows.
    fn fill(&self, t: usize, r0: usize, g: &mut [F]) {
        for (k, row) in g.chunks_exact_mut(self.gh).enumerate() {
            row.copy_from_slice(self.row(t, r0 + k));
        }
    }
}

/// Fills each (G·H) row of `dst` with the biases that join the input projection: b_ih + b_hh,
/// or b_ih alone for the GRU, which keeps b_hh on the recurrent side (it sits inside
/// r ⊙ (W_hn h + b_hn)).
pub(crate) fn fill_input_bias<F: Float>(cell: CellKind, b_ih: &[F], b_hh: &[F], dst: &mut [F]) {
    kernels::fill_rows(dst, b_ih);
    if !cell.recurrent_apart() {
        for row in dst.chunks_exact_mut(b_hh.len()) {
            kernels::add_into(row, b_hh);
        }
    }
}

/// Whether row `r` has ended before step `t` (`lengths` empty: no row ends).
fn ended(lengths: &[usize], t: usize, r: usize) -> bool {
    lengths.get(r).is_some_and(|&len| t >= len)
}

/// Of rows [r0, r0 + rows), how many from r0 on a step t must compute: up to the last one still
/// running. The rows after it have ended and only hold their state, so the step's products
/// skip them — all the padding when the rows are sorted by length, longest first, as the
/// `fit` loop's batches are (cuDNN's packed layout).
fn live_rows(lengths: &[usize], t: usize, r0: usize, rows: usize) -> usize {
    if lengths.is_empty() {
        return rows;
    }
    (0..rows).rev().find(|&k| !ended(lengths, t, r0 + k)).map_or(0, |k| k + 1)
}

/// The first `n` elements of `v` (`v` itself if the cell does not use the buffer: empty).
fn head<F>(v: &[F], n: usize) -> &[F] {
    if v.is_empty() { v } else { &v[..n] }
}

/// [`head`], mutable.
fn head_mut<F>(v: &mut [F], n: usize) -> &mut [F] {
    if v.is_empty() { v } else { &mut v[..n] }
}

/// Backward (BPTT) over the steps of the last forward pass.
///
/// On entry `cache.dh` (T, B, H) holds dL/dh_t from above. For t = T−1 … 0 the gradient from
/// the future is added (`dh_t += dh_next`), the cell turns it into pre-activation gradients,
/// and `dh_next = dpre_t · W_hh` (+ the GRU's direct term) carries it one step back. After the
/// loop every weight gradient is one GEMM over all T·B rows (see [`weight_grads`]).
pub(crate) fn backward<F: Float>(
    pass: &Pass<'_>,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    below: Below<'_, F>,
    carry: Carry<'_, F>,
) {
    if pass.dims.hp != pass.dims.h {
        return proj::backward(pass, lp, p, grads, cache, below, carry);
    }
    if pass.dims.norm {
        return norm::backward(pass, lp, p, grads, cache, below, carry);
    }
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let (bh, bgh, lengths) = (b * h, b * gh, pass.lengths);
    let Carry { dh_next, dc_next, mut dh_norms } = carry;
    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    // bf16: W_hh packed once for every step's dh_{t−1} product.
    let mut packed = std::mem::take(&mut cache.w_hh_pack);
    let bf16 = pass.dims.precision == Precision::Bf16;
    if bf16 {
        kernels::pack_b(&mut packed, Mat::rows(w_hh, gh, h));
    }
    let w_op = if bf16 { Operand::Packed(&packed) } else { Operand::Plain(Mat::rows(w_hh, gh, h)) };
    match pass.split {
        Split::Whole | Split::Tiles => {
            let gemm_threads = if pass.split == Split::Tiles { threads } else { 1 };
            for t in (0..steps).rev() {
                let dh_t = &mut cache.dh[t * bh..(t + 1) * bh];
                kernels::add_into(dh_t, dh_next);
                if let Some(norms) = dh_norms.as_deref_mut() {
                    let total: f64 = dh_t.chunks_exact(h).map(|r| kernels::sum_sq(r).sqrt()).sum();
                    norms[t] = F::of(total / b as f64);
                }
                let rows = BwdRows {
                    dh: &cache.dh[t * bh..(t + 1) * bh],
                    g: &mut cache.gates[t * bgh..(t + 1) * bgh],
                    dgh: if cell.recurrent_apart() { &mut cache.dgates_h[t * bgh..(t + 1) * bgh] } else { &mut [][..] },
                    h_prev: &cache.hs[t * bh..(t + 1) * bh],
                    h: &cache.hs[(t + 1) * bh..(t + 2) * bh],
                    c_prev: step_of(&cache.cs, t, bh),
                    aux: step_of(&cache.aux, t, bh),
                    dc: &mut dc_next[..],
                    dh_next: &mut dh_next[..],
                    zh: step_of(&cache.zone_h, t, bh),
                    zc: step_of(&cache.zone_c, t, bh),
                    zdh: &mut cache.zone_dh[..],
                    zdc: &mut cache.zone_dc[..],
                };
                backward_rows(cell, h, gh, w_op, rows, gemm_threads, Ended { lengths, t, r0: 0 });
            }
        }
        Split::Rows(parts) => {
            let (bufs, _) = BwdBufs::new(cache, dh_next, dc_next);
            team::run(
                threads,
                parts,
                steps,
                |_| false,
                |part, k| {
                    let (r0, r1) = parts::range(b, parts, 1, part);
                    // SAFETY: as in `forward`: rows [r0, r1) of every buffer belong to this half.
                    let t = steps - 1 - k;
                    let rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                    backward_rows(cell, h, gh, w_op, rows, 1, Ended { lengths, t, r0 });
                },
            );
        }
        Split::Units(parts) => {
            // Per step, the cell's backward step for each part's units, then (after every part's
            // dpre_t is in) dh_next for its units, a GEMM over all of dpre_t: a wavefront of one
            // layer (net/layer/wavefront.rs).
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let wave = wavefront::Wave { dims: pass.dims, units: parts, chunk: steps, w_hh_t: pass.w_hh_t, lengths };
            wavefront::backward_steps(lps, p, caches, dh_next, dc_next, wave);
        }
    }
    cache.w_hh_pack = packed;
    weight_grads(&pass.dims, lp, p, grads, cache, below);
}

/// The shared-weight gradients of a layer after its time loop, accumulated over all steps: one
/// GEMM each over the T·B rows of pre-activation gradients; `below.dx` (T·B, I), when given,
/// receives dL/dx. (A LayerNorm-LSTM's `layer/norm.rs` has summed its biases already and left
/// its two sides' pre-norm gradients in `gates` and `dgates_h`.)
pub(crate) fn weight_grads<F: Float>(
    dims: &Dims,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &LayerCache<F>,
    below: Below<'_, F>,
) {
    let Dims { cell, h, hp, gh, b, norm, steps, threads, precision } = *dims;
    let n = steps * b;
    let dpre_x = &cache.gates[..n * gh]; // (T·B, G·H)
    let dpre_h = if cell.recurrent_apart() || norm { &cache.dgates_h[..n * gh] } else { dpre_x };
    let (g_lo, g_hi) = grads.split_at_mut(lp.w_hh);
    if let LayerInput::Rows(x) = below.x {
        kernels::gemm_at(
            precision,
            MatMut::rows(&mut g_lo[lp.w_ih..lp.w_ih + gh * lp.input], gh, lp.input),
            Mat::rows(dpre_x, n, gh).t(),
            Mat::rows(x, n, lp.input),
            true,
            threads,
        );
    }
    // dW_hh (G·H, P) += dpreᵀ · h_{t−1} over all steps (P = H without a projection).
    kernels::gemm_at(
        precision,
        MatMut::rows(&mut g_hi[..gh * hp], gh, hp),
        Mat::rows(dpre_h, n, gh).t(),
        Mat::rows(&cache.hs[..n * hp], n, hp),
        true,
        threads,
    );
    if hp != h {
        // dW_hr (P, H) += dhᵀ · m over all steps.
        kernels::gemm_at(
            precision,
            MatMut::rows(&mut grads[lp.w_hr..lp.w_hr + hp * h], hp, h),
            Mat::rows(&cache.dh[..n * hp], n, hp).t(),
            Mat::rows(&cache.ms[..n * h], n, h),
            true,
            threads,
        );
    }
    if !norm {
        kernels::add_col_sums(&mut grads[lp.b_ih..lp.b_ih + gh], dpre_x, n, gh);
        kernels::add_col_sums(&mut grads[lp.b_hh..lp.b_hh + gh], dpre_h, n, gh);
    }
    if let Some(dx) = below.dx {
        kernels::gemm_at(
            precision,
            MatMut::rows(dx, n, lp.input),
            Mat::rows(dpre_x, n, gh),
            Mat::rows(&p[lp.w_ih..], gh, lp.input),
            false,
            threads,
        );
    }
}

/// W_hh (or its transpose) as the per-step products read it: packed bf16, or the view itself.
fn operand<'a, F>(bf16: bool, packed: &'a kernels::bf16::PackedB, w: Mat<'a, F>) -> Operand<'a, F> {
    if bf16 { Operand::Packed(packed) } else { Operand::Plain(w) }
}
