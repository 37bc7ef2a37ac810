//! One recurrent layer over T steps: the input projection of all steps as one GEMM, then per
//! step one recurrent GEMM plus the cell's fused step; backward mirrors it and ends with one
//! GEMM per weight gradient.

mod rows;
mod units;
pub(crate) mod wavefront;

use rows::*;
use units::*;

use crate::cell::{BackStep, CellKind, Step};
use crate::float::Float;
use crate::kernels::team::{self, Shared};
use crate::kernels::{self, Mat, MatMut, parts};
use crate::net::workspace::LayerCache;
use crate::net::{LayerParams, NetConfig};

/// Where a layer's input comes from.
pub(crate) enum LayerInput<'a, F> {
    /// (T·B, I) rows: the dense input or the layer below's hidden states.
    Rows(&'a [F]),
    /// Token ids (T·B) into a (V, G·H) table holding the biases + embedding · W_ihᵀ.
    Table { table: &'a [F], tokens: &'a [u32] },
}

/// Forward over `steps` steps, filling `cache` (hs[0] and cs[0] hold the initial state).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<F: Float>(
    cfg: &NetConfig,
    lp: &LayerParams,
    p: &[F],
    cache: &mut LayerCache<F>,
    hproj: &mut [F],
    x: LayerInput<'_, F>,
    steps: usize,
    b: usize,
    threads: usize,
    lengths: &[usize],
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    let split = plan_with(b, gh, h, lengths);
    // W_hhᵀ (H, G·H), transposed once per pass: the GEMM crate would otherwise repack W_hh at
    // every step. A single step gains nothing from it, so it reads W_hh as it is; so does a
    // single row split by units (see `UnitWeights`).
    let transposed = steps > 1 && !(b == 1 && matches!(split, Split::Units(_)));
    if transposed {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
    }
    // Input projections of all T steps at once: gates (T·B, G·H) = bias + X · W_ihᵀ. Token
    // input reads its rows of the folded table instead, step by step just before each step's
    // recurrent GEMM (while they are hot in cache, not in one pass over all of `gates`).
    let table = match x {
        LayerInput::Rows(x) => {
            let gates = &mut cache.gates[..n * gh];
            fill_input_bias(cell, b_ih, b_hh, gates);
            kernels::gemm(
                MatMut::rows(gates, n, gh),
                Mat::rows(x, n, lp.input),
                Mat::rows(&p[lp.w_ih..], gh, lp.input).t(),
                true,
                threads,
            );
            None
        }
        LayerInput::Table { table, tokens } => Some(TableRows { table, tokens, b, gh }),
    };

    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    let w_hh_t = if transposed { Mat::rows(&cache.w_hh_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() }; // (H, G·H)
    let lstm = cell.has_cell_state();
    match split {
        Split::Whole | Split::Tiles => {
            let gemm_threads = if split == Split::Tiles { threads } else { 1 };
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
                };
                forward_rows(cell, h, b_hh, w_hh_t, &mut rows, gemm_threads);
                rows.hold_ended(lengths, t, 0, h);
            }
        }
        Split::Rows(parts) => {
            // Each part owns its batch rows for the whole pass: the parts never wait.
            let bufs = FwdBufs::new(&mut cache.gates, &mut cache.hs, &mut cache.cs, &mut cache.aux, hproj);
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
                    forward_rows(cell, h, b_hh, w_hh_t, &mut rows, 1);
                    rows.hold_ended(lengths, t, r0, h);
                },
            );
        }
        Split::Units(parts) => {
            // Each part owns units [u0, u1) of every row: its G row blocks of W_hh stay in its
            // core's cache. Step t needs all of h_{t−1}, so the parts meet before each step. (A
            // wavefront of one layer: the same driver runs stacked layers at once.)
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let wave = wavefront::Wave { steps, b, units: parts, chunk: steps, threads };
            wavefront::forward_steps(cfg, lps, p, caches, hproj, table.as_ref(), wave);
        }
    }
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

/// How the work of one pass is cut into parts, run on up to `--threads` threads. Chosen from
/// the sizes alone, never the thread count, so that results are the same at any setting (one
/// thread runs the parts in turn).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Split {
    /// Too little work per step to share (under ~0.5 µs), or too few rows.
    Whole,
    /// This many blocks of batch rows: independent for the whole pass, no meeting at all. Each
    /// part reads all of W_hh.
    Rows(usize),
    /// This many blocks of hidden units (whole SIMD vectors) of every row: each part reads only
    /// its rows of W_hh (they stay in its core's cache), and the parts meet once per step.
    Units(usize),
    /// The whole step, its recurrent products cut into GEMM tiles of W_hh's columns (`kernels::
    /// gemm`): for a W_hh too large for any cache, each tile's slice is streamed once per step.
    Tiles,
}

/// W_hh elements (4 MB in f32) from which a step with enough rows is cut into GEMM tiles
/// instead of row blocks: every row block would stream all of W_hh at every step (at H = 1024,
/// B = 64, two 32-row blocks on one core ran at 2.4k tokens/s, the whole step at 3.7k).
const TILED_WEIGHTS: usize = 1 << 20;
/// Multiply-adds per step from which [`Split::Tiles`] pays for one hand-off per product.
const TILED_WORK: usize = 1 << 24;

/// Rows per part of a row split: fewer and the per-step GEMM runs below its best rate (16-row
/// parts cost LSTM H = 512, B = 64 about 10% on two cores).
const ROWS_PER_PART: usize = 32;
/// Units per part of a unit split: a part's G·u·H weights (128 units of an H = 256 LSTM:
/// 512 KB in f32) stay in a core's L2 across all steps. (64-unit parts cost B = 1, H = 256
/// 8% on two cores: twice the per-step products per thread.)
const UNITS_PER_PART: usize = 128;
/// Unit blocks start at multiples of this (whole AVX-512 vectors of f32 / AVX2 of f64).
const UNIT_ALIGN: usize = 8;

/// [`plan`], except that variable lengths run whole steps or row blocks (the unit split and
/// the wavefront do not know them yet).
fn plan_with(b: usize, gh: usize, h: usize, lengths: &[usize]) -> Split {
    match plan(b, gh, h) {
        Split::Units(_) if !lengths.is_empty() => Split::Whole,
        split => split,
    }
}

/// Whether row `r` has ended before step `t` (`lengths` empty: no row ends).
fn ended(lengths: &[usize], t: usize, r: usize) -> bool {
    lengths.get(r).is_some_and(|&len| t >= len)
}

/// See [`Split`]: `b·G·H·H` multiply-adds per step and the size of W_hh decide. Rows need no
/// meeting, so they win wherever each core can hold all of a small W_hh (≤ 256 KB in f32) or
/// has enough rows to amortise reading a large one.
fn plan(b: usize, gh: usize, h: usize) -> Split {
    let work = b * gh * h;
    if gh * h >= TILED_WEIGHTS && work >= TILED_WORK && b <= 512 {
        return Split::Tiles;
    }
    if b >= 8 && (work >= 1 << 21 || gh * h <= 1 << 16) {
        Split::Rows((b / ROWS_PER_PART).clamp(2, team::MAX_PARTS))
    } else if h >= 32 && work >= 1 << 16 {
        Split::Units(parts::count(h, UNITS_PER_PART, UNIT_ALIGN).max(2))
    } else {
        Split::Whole
    }
}

/// Backward (BPTT) over the steps of the last forward pass.
///
/// On entry `cache.dh` (T, B, H) holds dL/dh_t from above. For t = T−1 … 0 the gradient from
/// the future is added (`dh_t += dh_next`), the cell turns it into pre-activation gradients,
/// and `dh_next = dpre_t · W_hh` (+ the GRU's direct term) carries it one step back. After the
/// loop every weight gradient is one GEMM over all T·B rows. `dx` (T·B, I), when given,
/// receives dL/dx. `dh_next`/`dc_next` (B, H) hold dL/d(final state) on entry (zeros when the
/// loss is all inside the window) and dL/d(initial state) on return.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Float>(
    cfg: &NetConfig,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    x: LayerInput<'_, F>,
    dx: Option<&mut [F]>,
    dh_next: &mut [F],
    dc_next: &mut [F],
    mut dh_norms: Option<&mut [F]>,
    steps: usize,
    b: usize,
    threads: usize,
    lengths: &[usize],
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh) = (b * h, b * gh);
    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    // The per-step norms need whole steps: that diagnostic runs unsplit.
    let split = if dh_norms.is_some() { Split::Whole } else { plan_with(b, gh, h, lengths) };
    match split {
        Split::Whole | Split::Tiles => {
            let gemm_threads = if split == Split::Tiles { threads } else { 1 };
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
                };
                backward_rows(cell, h, gh, Mat::rows(w_hh, gh, h), rows, gemm_threads, Ended { lengths, t, r0: 0 });
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
                    backward_rows(cell, h, gh, Mat::rows(w_hh, gh, h), rows, 1, Ended { lengths, t, r0 });
                },
            );
        }
        Split::Units(parts) => {
            // Per step, the cell's backward step for each part's units, then (after every part's
            // dpre_t is in) dh_next for its units, a GEMM over all of dpre_t: a wavefront of one
            // layer (net/layer/wavefront.rs).
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let wave = wavefront::Wave { steps, b, units: parts, chunk: steps, threads };
            wavefront::backward_steps(cfg, lps, p, caches, dh_next, dc_next, wave);
        }
    }

    weight_grads(cfg, lp, p, grads, cache, x, dx, steps, b, threads);
}

/// The shared-weight gradients of a layer after its time loop, accumulated over all steps: one
/// GEMM each over the T·B rows of pre-activation gradients; `dx` (T·B, I), when given, receives
/// dL/dx.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grads<F: Float>(
    cfg: &NetConfig,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &LayerCache<F>,
    x: LayerInput<'_, F>,
    dx: Option<&mut [F]>,
    steps: usize,
    b: usize,
    threads: usize,
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let (gh, n) = (cell.gates() * h, steps * b);
    let dpre_x = &cache.gates[..n * gh]; // (T·B, G·H)
    let dpre_h = if cell.recurrent_apart() { &cache.dgates_h[..n * gh] } else { dpre_x };
    let (g_lo, g_hi) = grads.split_at_mut(lp.w_hh);
    if let LayerInput::Rows(x) = x {
        kernels::gemm(
            MatMut::rows(&mut g_lo[lp.w_ih..lp.w_ih + gh * lp.input], gh, lp.input),
            Mat::rows(dpre_x, n, gh).t(),
            Mat::rows(x, n, lp.input),
            true,
            threads,
        );
    }
    kernels::gemm(
        MatMut::rows(&mut g_hi[..gh * h], gh, h),
        Mat::rows(dpre_h, n, gh).t(),
        Mat::rows(&cache.hs[..n * h], n, h),
        true,
        threads,
    );
    kernels::add_col_sums(&mut grads[lp.b_ih..lp.b_ih + gh], dpre_x, n, gh);
    kernels::add_col_sums(&mut grads[lp.b_hh..lp.b_hh + gh], dpre_h, n, gh);
    if let Some(dx) = dx {
        kernels::gemm(
            MatMut::rows(dx, n, lp.input),
            Mat::rows(dpre_x, n, gh),
            Mat::rows(&p[lp.w_ih..], gh, lp.input),
            false,
            threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Split, plan};

    /// The sizes the integration tests use to reach each split do reach it with at least four
    /// parts, for every cell (G = 1, 3, 4): tests/it/gradcheck.rs and tests/it/determinism.rs.
    #[test]
    fn test_sizes_engage_the_splits() {
        for g in [1, 3, 4] {
            assert_eq!(plan(32, g * 256, 256), Split::Rows(2));
            assert_eq!(plan(128, g * 16, 16), Split::Rows(4));
            assert_eq!(plan(1, g * 512, 512), Split::Units(4));
            assert_eq!(plan(4, g * 128, 128), Split::Units(2));
            assert_eq!(plan(4, g * 512, 512), Split::Units(4));
            assert_eq!(plan(2, g * 8, 8), Split::Whole);
            // tests/it/torch.rs: the PyTorch known answers at split sizes.
            assert_eq!(plan(128, g * 16, 16), Split::Rows(4));
            assert_eq!(plan(1, g * 256, 256), Split::Units(2));
            assert_eq!(plan(2, g * 512, 512), Split::Units(4));
            assert_eq!(plan(16, g * 1024, 1024), Split::Tiles);
        }
        assert_eq!(plan(16, 4 * 512, 512), Split::Tiles);
        assert_eq!(plan(16, 3 * 592, 592), Split::Tiles);
        assert_eq!(plan(32, 3 * 512, 512), Split::Rows(2));
        // tests/it/gradcheck.rs and torch.rs: the wavefront over layers.
        use crate::net::{Head, InputKind, LossKind, NetConfig};
        for cell in crate::cell::CellKind::ALL {
            let input = InputKind::Dense { size: 4 };
            let cfg = |layers, hidden| NetConfig {
                cell,
                input,
                hidden,
                layers,
                output: 3,
                loss: LossKind::CrossEntropy,
                head: Head::PerStep,
            };
            assert_eq!(super::wavefront::units(&cfg(3, 256), 1), Some(2));
            assert_eq!(super::wavefront::units(&cfg(2, 256), 4), Some(2));
            assert_eq!(super::wavefront::units(&cfg(1, 256), 4), None);
            assert_eq!(super::wavefront::units(&cfg(2, 16), 128), None);
        }
    }
}
