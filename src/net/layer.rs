//! One recurrent layer over T steps: the input projection of all steps as one GEMM, then per
//! step one recurrent GEMM plus the cell's fused step; backward mirrors it and ends with one
//! GEMM per weight gradient.

pub(crate) mod wavefront;

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

/// W_hh in the layout the unit split's GEMMs read best: a single row (B = 1) is a matrix-vector
/// product that streams W_hh's rows (forward) or W_hhᵀ's rows (backward) as dot products; more
/// rows are GEMMs that read W_hhᵀ (forward) and W_hh (backward) without repacking.
struct UnitWeights<'a, F> {
    w_hh: &'a [F],   // (G·H, H)
    w_hh_t: &'a [F], // (H, G·H); empty when the layout in use does not need it
}

impl<'a, F> UnitWeights<'a, F> {
    /// (H, u): the columns of W_hhᵀ for units [u0, u0 + u) of gate block q (forward).
    fn forward(&self, b: usize, gh: usize, h: usize, q: usize, u0: usize, u: usize) -> Mat<'a, F> {
        let row = q * h + u0;
        if b == 1 || self.w_hh_t.is_empty() {
            Mat::rows(&self.w_hh[row * h..], u, h).t()
        } else {
            Mat::strided(&self.w_hh_t[row..], h, u, gh, 1)
        }
    }

    /// (G·H, u): the columns of W_hh for units [u0, u0 + u) (backward).
    fn backward(&self, b: usize, gh: usize, h: usize, u0: usize, u: usize) -> Mat<'a, F> {
        if b == 1 && !self.w_hh_t.is_empty() {
            Mat::rows(&self.w_hh_t[u0 * gh..], u, gh).t()
        } else {
            Mat::strided(&self.w_hh[u0..], gh, u, h, 1)
        }
    }
}

/// The input projection of a run of steps [t0, t1) of a layer above the first, in a wavefront:
/// rows (t1 − t0)·B of the layer below's hidden states and this layer's input weights.
struct InputRows<'a, F> {
    t0: usize,
    x: &'a [F],    // ((t1 − t0)·B, I)
    w_ih: &'a [F], // (G·H, I)
    b_ih: &'a [F], // (G·H)
    input: usize,  // I
}

/// Units [u0, u1) of every row of forward step t: (first, for a run of steps of an upper layer in
/// a wavefront, the biases and input projections of these units of all its steps), the recurrent
/// GEMM of each gate block, then the cell's step.
///
/// # Safety
/// Nothing else may touch units [u0, u1) of step t's gates (of every step of `input`), of the GRU
/// scratch, or of step t+1's states while this runs, nor write step t's states.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_units<F: Float>(
    cell: CellKind,
    h: usize,
    b: usize,
    b_hh: &[F],
    w: &UnitWeights<'_, F>,
    table: Option<&TableRows<'_, F>>,
    input: Option<InputRows<'_, F>>,
    bufs: &FwdBufs<F>,
    t: usize,
    u0: usize,
    u1: usize,
) {
    let (gh, u, bh) = (b_hh.len(), u1 - u0, b * h);
    let gate_blocks = cell.gates();
    // SAFETY (whole body): every range below is units [u0, u1) of one gate block of one row
    // (or of the whole (B, ·) view of them, or of every row of the input run), which the
    // contract gives to this call, or step t's states, read-only.
    unsafe {
        if let Some(x) = input {
            // Bias (b_ih + b_hh, or b_ih for the GRU), then + x·W_ihᵀ: the layer-by-layer order.
            let rows = x.x.len() / x.input;
            for r in 0..rows {
                for q in 0..gate_blocks {
                    let (at, dst) = (q * h + u0, bufs.gates.slice(x.t0 * b * gh + r * gh + q * h + u0, u));
                    dst.copy_from_slice(&x.b_ih[at..at + u]);
                    if !cell.recurrent_apart() {
                        kernels::add_into(dst, &b_hh[at..at + u]);
                    }
                }
            }
            for q in 0..gate_blocks {
                let c = MatMut::from_shared(bufs.gates, x.t0 * b * gh + q * h + u0, rows, u, gh, 1);
                let w_ih = Mat::rows(&x.w_ih[(q * h + u0) * x.input..], u, x.input).t(); // (I, u)
                kernels::gemm(c, Mat::rows(x.x, rows, x.input), w_ih, true, 1);
            }
        }
        if let Some(tr) = table {
            for r in 0..b {
                for q in 0..gate_blocks {
                    let at = q * h + u0;
                    let dst = bufs.gates.slice(t * b * gh + r * gh + at, u);
                    dst.copy_from_slice(&tr.row(t, r)[at..at + u]);
                }
            }
        }
        let h_prev = bufs.hs.read(t * bh, bh); // (B, H) step t, read-only
        let (out, at) = if cell.recurrent_apart() { (bufs.hproj, 0) } else { (bufs.gates, t * b * gh) };
        if cell.recurrent_apart() {
            for r in 0..b {
                for q in 0..gate_blocks {
                    let k = r * gh + q * h + u0;
                    out.slice(k, u).copy_from_slice(&b_hh[q * h + u0..q * h + u1]);
                }
            }
        }
        for q in 0..gate_blocks {
            let c = MatMut::from_shared(out, at + q * h + u0, b, u, gh, 1);
            kernels::gemm(c, Mat::rows(h_prev, b, h), w.forward(b, gh, h, q, u0, u), true, 1);
        }
        forward_units_cell(cell, h, b, gh, bufs, t, u0, u1);
    }
}

/// The cell's step for units [u0, u1) of every row of forward step t (see [`forward_units`]).
///
/// # Safety
/// As [`forward_units`].
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_units_cell<F: Float>(
    cell: CellKind,
    h: usize,
    b: usize,
    gh: usize,
    bufs: &FwdBufs<F>,
    t: usize,
    u0: usize,
    u1: usize,
) {
    let (u, bh) = (u1 - u0, b * h);
    // SAFETY (whole body): every range below is units [u0, u1) of one gate block or state of
    // one row, which the contract gives to this call, or step t's states, read-only.
    unsafe {
        let (gates, lstm, gru, aux) = (cell.gates(), cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
        for r in 0..b {
            let g = |q: usize| if q < gates { bufs.gates.slice(t * b * gh + r * gh + q * h + u0, u) } else { &mut [] };
            let st = |buf: &Shared<F>, step: usize| buf.slice(step * bh + r * h + u0, u);
            let hp = |q: usize| if gru { bufs.hproj.read(r * gh + q * h + u0, u) } else { &[] };
            cell.forward_units(Step {
                g: [g(0), g(1), g(2), g(3)],
                hp: [hp(0), hp(1), hp(2)],
                h_prev: if gru { bufs.hs.read(t * bh + r * h + u0, u) } else { &[] },
                c_prev: if lstm { &*st(&bufs.cs, t) } else { &[] },
                c: if lstm { st(&bufs.cs, t + 1) } else { &mut [] },
                aux: if aux { st(&bufs.aux, t) } else { &mut [] },
                h: st(&bufs.hs, t + 1),
            });
        }
    }
}

/// One step's slices for a range of batch rows (forward).
struct FwdRows<'a, F> {
    g: &'a mut [F],     // (r, G·H) pre-activations → activated gates
    h_prev: &'a [F],    // (r, H)
    h: &'a mut [F],     // (r, H) out
    c_prev: &'a [F],    // (r, H) LSTM
    c: &'a mut [F],     // (r, H) LSTM, out
    aux: &'a mut [F],   // (r, H) LSTM tanh(c), GRU h_n; out
    hproj: &'a mut [F], // (r, G·H) GRU scratch
}

impl<F: Copy> FwdRows<'_, F> {
    /// Rows (from r0) whose sequence ended before step t keep their state: h_t = h_{t−1} (and
    /// c), so padding never touches the state and the last state is each sequence's own.
    fn hold_ended(&mut self, lengths: &[usize], t: usize, r0: usize, h: usize) {
        for k in 0..self.h.len() / h {
            if ended(lengths, t, r0 + k) {
                self.h[k * h..(k + 1) * h].copy_from_slice(&self.h_prev[k * h..(k + 1) * h]);
                if !self.c.is_empty() {
                    self.c[k * h..(k + 1) * h].copy_from_slice(&self.c_prev[k * h..(k + 1) * h]);
                }
            }
        }
    }
}

/// The recurrent GEMM (tiled on up to `threads` threads) and the cell's fused step for some rows
/// of one step.
fn forward_rows<F: Float>(
    cell: CellKind,
    h: usize,
    b_hh: &[F],
    w_hh_t: Mat<'_, F>,
    s: &mut FwdRows<'_, F>,
    threads: usize,
) {
    let gh = b_hh.len();
    let r = s.h.len() / h;
    // The recurrent product joins the gates' pre-activations, or (GRU) is kept apart with b_hh.
    let hp: &[F] = if cell.recurrent_apart() {
        let hproj = &mut s.hproj[..r * gh];
        kernels::fill_rows(hproj, b_hh);
        kernels::gemm(MatMut::rows(hproj, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, true, threads);
        hproj
    } else {
        kernels::gemm(MatMut::rows(s.g, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, true, threads);
        &[]
    };
    let step = Step {
        g: [&mut *s.g, &mut [], &mut [], &mut []],
        hp: [hp, &[], &[]],
        h_prev: s.h_prev,
        c_prev: s.c_prev,
        c: &mut *s.c,
        aux: &mut *s.aux,
        h: &mut *s.h,
    };
    cell.forward_rows(h, step);
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

/// Step `t` (`bh` values) of a (T, B, H) buffer; empty if the cell does not use the buffer.
fn step_of<F>(v: &[F], t: usize, bh: usize) -> &[F] {
    if v.is_empty() { v } else { &v[t * bh..(t + 1) * bh] }
}

/// One step's slices for a range of batch rows (backward).
struct BwdRows<'a, F> {
    dh: &'a [F],          // (r, H) total dL/dh_t
    g: &'a mut [F],       // (r, G·H) activated gates → dL/d(input pre-activations)
    dgh: &'a mut [F],     // (r, G·H) GRU dL/d(recurrent pre-activations)
    h_prev: &'a [F],      // (r, H)
    h: &'a [F],           // (r, H) h_t
    c_prev: &'a [F],      // (r, H) LSTM
    aux: &'a [F],         // (r, H) LSTM tanh(c_t), GRU h_n
    dc: &'a mut [F],      // (r, H) LSTM dL/dc: in from t+1, out to t−1
    dh_next: &'a mut [F], // (r, H) out: dL/dh_{t−1}
}

/// Which rows of a step's row range [r0, …) have ended (their sequence is shorter than t + 1).
#[derive(Clone, Copy)]
struct Ended<'a> {
    lengths: &'a [usize],
    t: usize,
    r0: usize,
}

impl Ended<'_> {
    /// Whether row k (counted from r0) has ended.
    fn at(self, k: usize) -> bool {
        ended(self.lengths, self.t, self.r0 + k)
    }

    /// The maximal runs [a, b) of rows (counted from r0) still running, among the first `rows`
    /// (all of them in one run when no lengths are set). Allocates nothing.
    fn running(self, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let mut k = 0;
        std::iter::from_fn(move || {
            while k < rows && self.at(k) {
                k += 1;
            }
            let a = k;
            while k < rows && !self.at(k) {
                k += 1;
            }
            (a < k).then_some(a..k)
        })
    }
}

/// The cell's backward step and the recurrent GEMM dh_next = dpre · W_hh (tiled on up to
/// `threads` threads) for some rows. A row whose sequence has ended (`ended`) held its state
/// through this step, so its gradient passes straight through: dpre = 0, dh_{t−1} = dh_t and
/// dc unchanged.
fn backward_rows<F: Float>(
    cell: CellKind,
    h: usize,
    gh: usize,
    w_hh: Mat<'_, F>,
    s: BwdRows<'_, F>,
    threads: usize,
    ended: Ended<'_>,
) {
    let r = s.dh.len() / h;
    let all = ended.lengths.is_empty();
    for k in (0..r).filter(|&k| !all && ended.at(k)) {
        s.g[k * gh..(k + 1) * gh].fill(F::zero());
        if !s.dgh.is_empty() {
            s.dgh[k * gh..(k + 1) * gh].fill(F::zero());
        }
    }
    let rows = |a: usize, b: usize, w: usize| a * w..b * w;
    let (lstm, gru, aux) = (cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
    for run in ended.running(r) {
        let (hr, gr) = (rows(run.start, run.end, h), rows(run.start, run.end, gh));
        cell.backward_rows(
            h,
            BackStep {
                dh: &s.dh[hr.clone()],
                g: [&mut s.g[gr.clone()], &mut [], &mut [], &mut []],
                dgh: [if gru { &mut s.dgh[gr] } else { &mut [] }, &mut [], &mut []],
                h: if gru || lstm { &[] } else { &s.h[hr.clone()] },
                h_prev: if gru { &s.h_prev[hr.clone()] } else { &[] },
                c_prev: if lstm { &s.c_prev[hr.clone()] } else { &[] },
                dc: if lstm { &mut s.dc[hr.clone()] } else { &mut [] },
                aux: if aux { &s.aux[hr.clone()] } else { &[] },
                dh_prev: if gru { &mut s.dh_next[hr] } else { &mut [] },
            },
        );
    }
    let (dpre, gru) = if cell.recurrent_apart() { (&*s.dgh, true) } else { (&*s.g, false) };
    kernels::gemm(MatMut::rows(s.dh_next, r, h), Mat::rows(dpre, r, gh), w_hh, gru, threads);
    if !all {
        for k in (0..r).filter(|&k| ended.at(k)) {
            s.dh_next[k * h..(k + 1) * h].copy_from_slice(&s.dh[k * h..(k + 1) * h]);
        }
    }
}

/// What a layer below receives from the layer above in a wavefront, for a run of steps
/// [t0, t0 + n): dL/dh_t = dpre_t (of the layer above) · W_ih (of the layer above).
struct FromAbove<'a, F> {
    t0: usize,
    n: usize,
    dpre: Shared<F>, // the layer above's (T, B, G·H) input-side pre-activation gradients
    w_ih: &'a [F],   // the layer above's (G·H, H)
}

/// Units [u0, u1) of every row of backward step t, first half: (for the last step of a run in a
/// wavefront, dL/dh of these units for all the run's steps from the layer above), dh_t +=
/// dh_next, then the cell's backward step (dpre_t, dc, and the GRU's direct term into dh_next).
///
/// # Safety
/// Nothing else may touch units [u0, u1) of step t's dh (of every step of `above`), dpre or of
/// dh_next/dc_next while this runs, nor write step t's or t+1's states or `above`'s dpre.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_units_cell<F: Float>(
    cell: CellKind,
    h: usize,
    b: usize,
    gh: usize,
    above: Option<FromAbove<'_, F>>,
    bufs: &BwdBufs<F>,
    t: usize,
    u0: usize,
    u1: usize,
) {
    let (u, bh) = (u1 - u0, b * h);
    // SAFETY (whole body): each slice is units [u0, u1) of one gate block or state of one row
    // (or the run's dh of these units), given to this call by the contract, or a read of a
    // cached state or of the layer above's dpre, which nobody writes now.
    unsafe {
        if let Some(a) = above {
            let dpre = Mat::rows(a.dpre.read(a.t0 * b * gh, a.n * b * gh), a.n * b, gh);
            let c = MatMut::from_shared(bufs.dh, a.t0 * b * h + u0, a.n * b, u, h, 1);
            kernels::gemm(c, dpre, Mat::strided(&a.w_ih[u0..], gh, u, h, 1), false, 1);
        }
        let (gates, lstm, gru, aux) = (cell.gates(), cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
        for r in 0..b {
            let g = |q: usize| if q < gates { bufs.gates.slice(t * b * gh + r * gh + q * h + u0, u) } else { &mut [] };
            let st = |step: usize| r * h + u0 + step * bh; // offset of these units in a (·, B, H) buffer
            let dh = bufs.dh.slice(st(t), u);
            let dh_next = bufs.dh_next.slice(st(0), u);
            kernels::add_into(dh, dh_next);
            let dg = |q: usize| if gru { bufs.dgh.slice(t * b * gh + r * gh + q * h + u0, u) } else { &mut [] };
            cell.backward_units(BackStep {
                dh,
                g: [g(0), g(1), g(2), g(3)],
                dgh: [dg(0), dg(1), dg(2)],
                h: if gru || lstm { &[] } else { bufs.hs.read(st(t + 1), u) },
                h_prev: if gru { bufs.hs.read(st(t), u) } else { &[] },
                c_prev: if lstm { bufs.cs.read(st(t), u) } else { &[] },
                dc: if lstm { bufs.dc.slice(st(0), u) } else { &mut [] },
                aux: if aux { bufs.aux.read(st(t), u) } else { &[] },
                dh_prev: if gru { dh_next } else { &mut [] },
            });
        }
    }
}

/// Units [u0, u1) of backward step t, second half: dh_next[:, u0..u1] (+)= dpre_t · W_hh[:, u0..u1]
/// (the GRU adds to its direct term).
///
/// # Safety
/// Nothing may write step t's dpre while this runs, nor touch units [u0, u1) of dh_next.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_units_gemm<F: Float>(
    cell: CellKind,
    h: usize,
    b: usize,
    gh: usize,
    w: &UnitWeights<'_, F>,
    bufs: &BwdBufs<F>,
    t: usize,
    u0: usize,
    u1: usize,
) {
    let gru = cell.recurrent_apart();
    let dpre = if gru { bufs.dgh } else { bufs.gates };
    // SAFETY: the contract.
    unsafe {
        let dpre = dpre.read(t * b * gh, b * gh); // (B, G·H)
        let c = MatMut::from_shared(bufs.dh_next, u0, b, u1 - u0, h, 1);
        kernels::gemm(c, Mat::rows(dpre, b, gh), w.backward(b, gh, h, u0, u1 - u0), gru, 1);
    }
}

/// A layer's forward buffers, to be shared out between the parts of a pass.
struct FwdBufs<F> {
    gates: Shared<F>,
    hs: Shared<F>,
    cs: Shared<F>,
    aux: Shared<F>,
    hproj: Shared<F>,
}

impl<F> FwdBufs<F> {
    fn new(gates: &mut [F], hs: &mut [F], cs: &mut [F], aux: &mut [F], hproj: &mut [F]) -> Self {
        let s = Shared::of;
        FwdBufs { gates: s(gates), hs: s(hs), cs: s(cs), aux: s(aux), hproj: s(hproj) }
    }

    /// Rows [r0, r1) of step t.
    ///
    /// # Safety
    /// While the result lives, nothing else may touch rows [r0, r1) of steps t and t+1 of these
    /// buffers (or of the scratch); the constructor's borrow must still be live.
    unsafe fn rows<'a>(&self, t: usize, r0: usize, r1: usize, b: usize, h: usize, gh: usize) -> FwdRows<'a, F> {
        let (r, bh, bgh) = (r1 - r0, b * h, b * gh);
        // SAFETY: distinct buffers, or distinct steps of one buffer (h_prev is step t, h is
        // step t+1), each restricted to rows [r0, r1): no two slices overlap.
        unsafe {
            FwdRows {
                g: self.gates.slice(t * bgh + r0 * gh, r * gh),
                h_prev: self.hs.read(t * bh + r0 * h, r * h),
                h: self.hs.slice((t + 1) * bh + r0 * h, r * h),
                c_prev: self.cs.read(t * bh + r0 * h, r * h),
                c: self.cs.slice((t + 1) * bh + r0 * h, r * h),
                aux: self.aux.slice(t * bh + r0 * h, r * h),
                hproj: self.hproj.slice(r0 * gh, r * gh),
            }
        }
    }
}

/// A layer's backward buffers, to be shared out between the parts of a pass.
struct BwdBufs<F> {
    dh: Shared<F>,
    gates: Shared<F>,
    dgh: Shared<F>,
    hs: Shared<F>,
    cs: Shared<F>,
    aux: Shared<F>,
    dc: Shared<F>,
    dh_next: Shared<F>,
}

impl<F: Float> BwdBufs<F> {
    /// Shares out `cache` but its W_hhᵀ, which the halves read.
    fn new<'c>(c: &'c mut LayerCache<F>, dh_next: &mut [F], dc_next: &mut [F]) -> (Self, &'c [F]) {
        let s = Shared::of;
        let bufs = BwdBufs {
            dh: s(&mut c.dh),
            gates: s(&mut c.gates),
            dgh: s(&mut c.dgates_h),
            hs: s(&mut c.hs),
            cs: s(&mut c.cs),
            aux: s(&mut c.aux),
            dc: s(dc_next),
            dh_next: s(dh_next),
        };
        (bufs, &c.w_hh_t)
    }

    /// Rows [r0, r1) of step t, after adding the gradient from the future into dh_t.
    ///
    /// # Safety
    /// As [`FwdBufs::rows`].
    unsafe fn rows<'a>(&self, t: usize, r0: usize, r1: usize, b: usize, h: usize, gh: usize) -> BwdRows<'a, F> {
        let (r, bh, bgh) = (r1 - r0, b * h, b * gh);
        // SAFETY: as in `FwdBufs::rows`: h_prev (step t) and h (step t+1) of `hs` are disjoint,
        // every other slice is a distinct buffer, all restricted to rows [r0, r1).
        unsafe {
            let dh = self.dh.slice(t * bh + r0 * h, r * h);
            let dh_next = self.dh_next.slice(r0 * h, r * h);
            kernels::add_into(dh, dh_next);
            BwdRows {
                dh,
                g: self.gates.slice(t * bgh + r0 * gh, r * gh),
                dgh: self.dgh.slice(t * bgh + r0 * gh, r * gh),
                h_prev: self.hs.read(t * bh + r0 * h, r * h),
                h: self.hs.read((t + 1) * bh + r0 * h, r * h),
                c_prev: self.cs.read(t * bh + r0 * h, r * h),
                aux: self.aux.read(t * bh + r0 * h, r * h),
                dc: self.dc.slice(r0 * h, r * h),
                dh_next,
            }
        }
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
