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
    let packing = Packing::of::<F>(pass);
    if pass.w_hh_t && packing != Packing::Panels {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
    }
    // Input projections of all T steps at once: gates (T·B, G·H) = bias + X · W_ihᵀ. Token
    // input reads its rows of the folded table instead, step by step just before each step's
    // recurrent GEMM (while they are hot in cache, not in one pass over all of `gates`).
    let table = match x {
        LayerInput::Rows(x) => {
            project(&pass.dims, lengths, lp, p, &mut cache.gates, x);
            None
        }
        LayerInput::Table { table, tokens } => Some(TableRows { table, tokens, b, gh }),
    };

    let w_hh = &p[lp.w_hh..lp.w_hh + gh * h]; // (G·H, H)
    let mut packs = Packs::take(cache, packing);
    let w_hh_t = if pass.w_hh_t && packing != Packing::Panels {
        Mat::rows(&cache.w_hh_t, h, gh)
    } else {
        Mat::rows(w_hh, gh, h).t()
    }; // (H, G·H)
    // W_hhᵀ packed once for every step's product (held apart from the cache meanwhile).
    packs.pack(w_hh_t, threads);
    let w_hh_t = packs.operand(w_hh_t);
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
                    tr.fill_on(t, &mut cache.gates[t * bgh..(t + 1) * bgh], gemm_threads);
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
            let plain_t = pass.w_hh_t && packing == Packing::Plain;
            let w_hh_t = packs.operand(if plain_t { Mat::rows(w_t, h, gh) } else { Mat::rows(w_hh, gh, h).t() });
            run_row_blocks(threads, lengths, (steps, b, parts), false, |t, r0, r1| {
                // SAFETY: this part touches only rows [r0, r1) of each step (and of the (B, ·)
                // scratch), every other part only other rows (see `FwdBufs::rows`).
                let mut rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                if let Some(tr) = &table {
                    tr.fill(t, r0, rows.g);
                }
                forward_rows(cell, h, b_hh, w_hh_t, &mut rows, 1, Ended { lengths, t, r0 });
            });
        }
        Split::Units(_) | Split::Grid(..) => {
            // Each part owns units [u0, u1) of every row (of a block of rows, in a grid): its G
            // row blocks of W_hh stay in its core's cache. Step t needs all of h_{t−1}, so the
            // parts meet before each step. (A wavefront of one layer: the same driver runs
            // stacked layers at once.)
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let (rows, units) = pass.split.blocks();
            let wave = wavefront::Wave { dims: pass.dims, rows, units, chunk: steps, w_hh_t: pass.w_hh_t, lengths };
            wavefront::forward_steps(lps, p, caches, hproj, table.as_ref(), wave);
        }
    }
    packs.put_back(cache);
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

impl<F: Copy + Send + Sync> TableRows<'_, F> {
    /// Fills all of step t's rows `g` on up to `threads` threads, a block of rows each: the
    /// first write of each step's gates, whose lines are cold, costs each core its share (LSTM
    /// H = 1024, B = 64, two threads: 15 → 8.5 ms a step, the forward loop 250 → 238; H = 512
    /// × 2: the whole step +1.6%, paired medians of 20 in-process pairs).
    fn fill_on(&self, t: usize, g: &mut [F], threads: usize) {
        let parts = threads.clamp(1, FILL_PARTS).min(self.b);
        if parts == 1 {
            return self.fill(t, 0, g);
        }
        let per = self.b.div_ceil(parts);
        let mut blocks: [&mut [F]; FILL_PARTS] = Default::default();
        for (block, rows) in blocks.iter_mut().zip(g.chunks_mut(per * self.gh)) {
            *block = rows;
        }
        team::for_each_mut(threads, &mut blocks[..self.b.div_ceil(per)], |i, rows| self.fill(t, i * per, rows));
    }
}

/// The most blocks of rows one step's table rows are filled in ([`TableRows::fill_on`]).
const FILL_PARTS: usize = 16;

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
pub(crate) fn live_rows(lengths: &[usize], t: usize, r0: usize, rows: usize) -> usize {
    if lengths.is_empty() {
        return rows;
    }
    (0..rows).rev().find(|&k| !ended(lengths, t, r0 + k)).map_or(0, |k| k + 1)
}

/// Rows [r0, r1) of row block `part` of `parts` over a batch of `b` rows: equal counts, or with
/// `lengths` equal shares of the batch's real steps (each length up to the pass's `steps`), so
/// that a batch sorted longest first does not leave one block all its longest sequences (GRU
/// H = 256, B = 32: 76% of the equal-length speed with equal counts). Every block keeps a row.
pub(super) fn row_block(lengths: &[usize], steps: usize, b: usize, parts: usize, part: usize) -> (usize, usize) {
    if lengths.is_empty() || parts > b {
        return parts::range(b, parts, 1, part);
    }
    let len = |r: usize| lengths[r].min(steps);
    let total: usize = (0..b).map(len).sum();
    // Block q starts at the first row whose real steps before it reach q/parts of the total.
    let start = |q: usize| {
        let (mut k, mut before) = (0, 0);
        while k < b && before * parts < q * total {
            before += len(k);
            k += 1;
        }
        k.clamp(q, b - (parts - q))
    };
    (start(part), if part + 1 == parts { b } else { start(part + 1) })
}

/// Every row block of [`row_block`], computed once per pass (the parts look theirs up at each
/// step); entries past `parts` are empty.
pub(super) fn row_ranges(lengths: &[usize], steps: usize, b: usize, parts: usize) -> [(usize, usize); team::MAX_PARTS] {
    let mut ranges = [(0, 0); team::MAX_PARTS];
    for (part, range) in ranges.iter_mut().enumerate().take(parts) {
        *range = row_block(lengths, steps, b, parts, part);
    }
    ranges
}

/// Runs a pass cut into `parts` row blocks ([`row_ranges`]): `step(t, r0, r1)` for every step
/// t of each block's rows [r0, r1), forward in time or (`reverse`) backward. Each part owns its
/// rows for the whole pass, so the parts never meet.
pub(super) fn run_row_blocks(
    threads: usize,
    lengths: &[usize],
    (steps, b, parts): (usize, usize, usize),
    reverse: bool,
    step: impl Fn(usize, usize, usize) + Sync,
) {
    let ranges = row_ranges(lengths, steps, b, parts);
    team::run(
        threads,
        parts,
        steps,
        |_| false,
        |part, k| {
            let (r0, r1) = ranges[part];
            step(if reverse { steps - 1 - k } else { k }, r0, r1);
        },
    );
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
    // W_hh packed once for every step's dh_{t−1} product.
    let mut packs = Packs::take(cache, Packing::of::<F>(pass));
    packs.pack(Mat::rows(w_hh, gh, h), threads);
    let w_op = packs.operand(Mat::rows(w_hh, gh, h));
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
            run_row_blocks(threads, lengths, (steps, b, parts), true, |t, r0, r1| {
                // SAFETY: as in `forward`: rows [r0, r1) of every buffer belong to this part.
                let rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                backward_rows(cell, h, gh, w_op, rows, 1, Ended { lengths, t, r0 });
            });
        }
        Split::Units(_) | Split::Grid(..) => {
            // Per step, the cell's backward step for each part's units, then (after every part's
            // dpre_t is in) dh_next for its units, a GEMM over all of dpre_t (of its rows): a
            // wavefront of one layer (net/layer/wavefront.rs).
            let (caches, lps) = (std::slice::from_mut(cache), std::slice::from_ref(lp));
            let (rows, units) = pass.split.blocks();
            let wave = wavefront::Wave { dims: pass.dims, rows, units, chunk: steps, w_hh_t: pass.w_hh_t, lengths };
            wavefront::backward_steps(lps, p, caches, dh_next, dc_next, wave);
        }
    }
    packs.put_back(cache);
    weight_grads(&pass.dims, pass.lengths, lp, p, grads, cache, below);
}

/// Rows per chunk of a padded pass's weight-gradient products: the live rows of its steps are
/// gathered this many at a time (`LayerCache::pack`) so that no product runs over padding.
pub(crate) const PACK_ROWS: usize = 512;
/// Elements a part of the gather copies at least (fewer: fewer parts, or the caller alone).
const GATHER_PER_PART: usize = 1 << 14;

/// The shared-weight gradients of a layer after its time loop, accumulated over all steps: one
/// GEMM each over the T·B rows of pre-activation gradients; `below.dx` (T·B, I), when given,
/// receives dL/dx. (A LayerNorm-LSTM's `layer/norm.rs` has summed its biases already and left
/// its two sides' pre-norm gradients in `gates` and `dgates_h`.)
///
/// With lengths, each step's rows after its last running one (`live_rows`) count nothing (their
/// pre-activation gradients and projected outputs are zero): the steps whose every row runs are
/// read in place, the others' live rows gathered into chunks of [`PACK_ROWS`] (cuDNN's packed
/// layout), so the products skip the padding; dx is zero on the rows skipped.
pub(crate) fn weight_grads<F: Float>(
    dims: &Dims,
    lengths: &[usize],
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    cache: &mut LayerCache<F>,
    below: Below<'_, F>,
) {
    let Dims { h, hp, gh, b, steps, .. } = *dims;
    let n = steps * b;
    let live = |t: usize| live_rows(lengths, t, 0, b);
    let x = match below.x {
        LayerInput::Rows(x) => Some(x),
        LayerInput::Table { .. } => None,
    };
    let (apart, proj, input) = (dims.cell.recurrent_apart() || dims.norm, hp != h, lp.input);
    let layout = Layout { x, h, hp, gh, input, apart, proj };
    let view = |c, r0, r1| layout.view(c, r0, r1);
    let mut dx = below.dx;
    if (0..steps).all(|t| live(t) == b) {
        return products(dims, lp, p, grads, view(cache, 0, n), dx);
    }
    let widths = Widths::of(dims, input);
    let mut pack = std::mem::take(&mut cache.pack);
    if pack.len() < PACK_ROWS * widths.total() {
        pack.resize(PACK_ROWS * widths.total(), F::zero()); // (`Workspace::set_lengths` sized it)
    }
    if let Some(dx) = dx.as_deref_mut() {
        for t in (0..steps).filter(|&t| live(t) < b) {
            dx[(t * b + live(t)) * input..(t + 1) * b * input].fill(F::zero());
        }
    }
    let mut t = 0;
    while t < steps {
        // A run of steps whose every row runs: read in place.
        let full = (t..steps).take_while(|&s| live(s) == b).count();
        if full > 0 {
            let (r0, r1) = (t * b, (t + full) * b);
            products(
                dims,
                lp,
                p,
                grads,
                view(cache, r0, r1),
                dx.as_deref_mut().map(|d| &mut d[r0 * input..r1 * input]),
            );
            t += full;
            continue;
        }
        // Steps with ended rows, up to the next full run: their live rows gathered a chunk at
        // a time (a step's rows may straddle two chunks), then dx scattered back.
        let end = (t..steps).find(|&s| live(s) == b).unwrap_or(steps);
        let mut at = (t, 0);
        while at.0 < end {
            let mut chunk = widths.split(&mut pack);
            let (first, mut m) = (at, 0);
            while at.0 < end && m < PACK_ROWS {
                let (s, r) = at;
                let k = (live(s) - r).min(PACK_ROWS - m);
                m += k;
                at = if r + k == live(s) { (s + 1, 0) } else { (s, r + k) };
            }
            chunk.gather(first, m, &live, &|r0, r1| view(cache, r0, r1), &widths, dims);
            let (rows, packed_dx) = chunk.rows(m, &widths);
            if m == 0 {
                continue; // (steps whose every row has ended)
            }
            let wants_dx = dx.is_some();
            products(dims, lp, p, grads, rows, wants_dx.then_some(&mut packed_dx[..m * input]));
            if let Some(dx) = dx.as_deref_mut() {
                // Back to rows (s, r), in the order gathered.
                let (mut at, mut done) = (first, 0);
                while done < m {
                    let (s, r) = at;
                    let k = (live(s) - r).min(m - done);
                    let dst = &mut dx[(s * b + r) * input..(s * b + r + k) * input];
                    dst.copy_from_slice(&packed_dx[done * input..(done + k) * input]);
                    at = if r + k == live(s) { (s + 1, 0) } else { (s, r + k) };
                    done += k;
                }
            }
        }
        t = end;
    }
    cache.pack = pack;
}

/// Where [`weight_grads`] finds a pass's rows.
struct Layout<'x, F> {
    x: Option<&'x [F]>,
    h: usize,
    hp: usize,
    gh: usize,
    input: usize,
    apart: bool,
    proj: bool,
}

impl<'x, F> Layout<'x, F> {
    /// Rows [r0, r1) of the pass's buffers, as the products read them.
    fn view<'c>(&self, c: &'c LayerCache<F>, r0: usize, r1: usize) -> GradRows<'c, F>
    where
        'x: 'c,
    {
        let Layout { h, hp, gh, input, .. } = *self;
        GradRows {
            dpre_x: &c.gates[r0 * gh..r1 * gh],
            dpre_h: if self.apart { &c.dgates_h[r0 * gh..r1 * gh] } else { &[] },
            h_prev: &c.hs[r0 * hp..r1 * hp],
            x: self.x.map_or(&[][..], |x| &x[r0 * input..r1 * input]),
            dh: if self.proj { &c.dh[r0 * hp..r1 * hp] } else { &[] },
            ms: if self.proj { &c.ms[r0 * h..r1 * h] } else { &[] },
        }
    }
}

/// The rows one call of [`products`] reads (m each; empty where the layer has no such buffer):
/// dL/d(input and recurrent pre-activations), h_{t−1}, x, and with a projection dL/dh and m.
struct GradRows<'a, F> {
    dpre_x: &'a [F],
    /// Empty where the recurrent side's gradient is the input side's (`dpre_x`).
    dpre_h: &'a [F],
    h_prev: &'a [F],
    x: &'a [F],
    dh: &'a [F],
    ms: &'a [F],
}

/// The widths of a padded pass's gathered rows (see [`weight_grads`]), in the order of
/// [`GradRows`]' fields, then dx.
#[derive(Clone, Copy)]
pub(crate) struct Widths([usize; 7]);

impl Widths {
    /// A layer's widths for input width `input` (every buffer it may gather, used or not).
    pub(crate) fn of(d: &Dims, input: usize) -> Self {
        let (apart, proj) = (d.cell.recurrent_apart() || d.norm, d.hp != d.h);
        let on = |yes: bool, w: usize| if yes { w } else { 0 };
        Widths([d.gh, on(apart, d.gh), d.hp, input, on(proj, d.hp), on(proj, d.h), input])
    }

    pub(crate) fn total(self) -> usize {
        self.0.iter().sum()
    }

    /// The pack cut into its buffers, [`PACK_ROWS`] rows each.
    fn split<F>(self, mut pack: &mut [F]) -> Chunk<'_, F> {
        let mut bufs: [&mut [F]; 7] = Default::default();
        for (buf, w) in bufs.iter_mut().zip(self.0) {
            let (head, rest) = std::mem::take(&mut pack).split_at_mut(PACK_ROWS * w);
            (*buf, pack) = (head, rest);
        }
        Chunk(bufs)
    }
}

/// One chunk of gathered rows: the buffers of [`Widths`].
struct Chunk<'a, F>([&'a mut [F]; 7]);

impl<'a, F: Copy + Send + Sync + 'a> Chunk<'a, F> {
    /// Gathers the chunk's m rows: the live rows (`live`) of steps from `first` = (step, row)
    /// on, in order, from the pass's rows (`view` of the (T·B) rows [r0, r1)); the threads of
    /// the pass each copy a contiguous share of them.
    fn gather<'c>(
        &mut self,
        first: (usize, usize),
        m: usize,
        live: &(impl Fn(usize) -> usize + Sync),
        view: &(impl Fn(usize, usize) -> GradRows<'c, F> + Sync),
        w: &Widths,
        d: &Dims,
    ) where
        F: 'c,
    {
        let parts = (m * w.total() / GATHER_PER_PART).clamp(1, d.threads.min(team::MAX_PARTS));
        let dsts = self.0.each_mut().map(|v| Shared::of(v));
        team::for_each(d.threads, parts, |part| {
            let (lo, hi) = (m * part / parts, m * (part + 1) / parts);
            let (mut at, mut done) = (first, 0);
            while done < hi {
                let (s, r) = at;
                let k = (live(s) - r).min(m - done);
                let (a, z) = (done.max(lo), (done + k).min(hi));
                if a < z {
                    let row = s * d.b + r + (a - done);
                    let src = view(row, row + z - a);
                    let srcs = [src.dpre_x, src.dpre_h, src.h_prev, src.x, src.dh, src.ms];
                    for ((dst, from), &w) in dsts.iter().zip(srcs).zip(&w.0) {
                        // SAFETY: rows [a, z) of the chunk are this part's alone, in bounds
                        // (m ≤ PACK_ROWS rows of width w each); the pass's rows are only read.
                        unsafe { dst.slice(a * w, from.len()).copy_from_slice(from) };
                    }
                }
                done += k;
                at = if r + k == live(s) { (s + 1, 0) } else { (s, r + k) };
            }
        });
    }

    /// The first `m` rows as the products read them (the buffers `gather` filled), and dx's.
    fn rows(self, m: usize, w: &Widths) -> (GradRows<'a, F>, &'a mut [F]) {
        let [dpre_x, dpre_h, h_prev, x, dh, ms, dx] = self.0;
        let rows = |v: &'a mut [F], w: usize| -> &'a [F] { &v[..m * w] };
        let [a, b, c, d, e, f, _] = w.0;
        (
            GradRows {
                dpre_x: rows(dpre_x, a),
                dpre_h: rows(dpre_h, b),
                h_prev: rows(h_prev, c),
                x: rows(x, d),
                dh: rows(dh, e),
                ms: rows(ms, f),
            },
            dx,
        )
    }
}

/// [`weight_grads`]' products over the m rows of `r`: dW_ih (with rows of x), dW_hh, dW_hr
/// (with a projection), the biases (without layer norm) and dx (when given, overwritten).
fn products<F: Float>(
    dims: &Dims,
    lp: &LayerParams,
    p: &[F],
    grads: &mut [F],
    r: GradRows<'_, F>,
    dx: Option<&mut [F]>,
) {
    let Dims { h, hp, gh, norm, threads, precision, .. } = *dims;
    let m = r.dpre_x.len() / gh;
    let dpre_h = if r.dpre_h.is_empty() { r.dpre_x } else { r.dpre_h };
    // The slab holds W_ih, W_hh, b_ih and b_hh of a layer in this order.
    assert!(lp.w_hh + gh * hp == lp.b_ih && lp.b_ih + gh == lp.b_hh, "a layer's tensors in order");
    let (g_lo, g_hi) = grads.split_at_mut(lp.w_hh);
    let (g_hh, g_b) = g_hi.split_at_mut(gh * hp);
    let (g_bih, g_bhh) = g_b.split_at_mut(gh);
    // dW_ih (G·H, I) += dpreᵀ · x and dW_hh (G·H, P) += dpreᵀ · h_{t−1} over all steps (P = H
    // without a projection); one dpreᵀ for both unless the cell keeps the recurrent part apart.
    let dw_ih = MatMut::rows(&mut g_lo[lp.w_ih..lp.w_ih + gh * lp.input], gh, lp.input);
    let dw_hh = MatMut::rows(g_hh, gh, hp);
    let (x, h_prev) = (|| Mat::rows(r.x, m, lp.input), Mat::rows(r.h_prev, m, hp));
    // With one dpre (and no layer norm) both biases' gradients are its column sums, taken while
    // the products read it.
    let one_dpre = std::ptr::eq(dpre_h, r.dpre_x);
    let sums = (!norm && one_dpre).then(|| (&mut g_bih[..], &mut g_bhh[..gh]));
    let dpre_t = Mat::rows(r.dpre_x, m, gh).t();
    if one_dpre && r.x.is_empty() {
        kernels::gemm_shared_a(precision, dpre_t, &mut [(dw_hh, h_prev)], sums, true, threads);
    } else if one_dpre {
        kernels::gemm_shared_a(precision, dpre_t, &mut [(dw_ih, x()), (dw_hh, h_prev)], sums, true, threads);
    } else {
        if !r.x.is_empty() {
            kernels::gemm_at(precision, dw_ih, dpre_t, x(), true, threads);
        }
        kernels::gemm_at(precision, dw_hh, Mat::rows(dpre_h, m, gh).t(), h_prev, true, threads);
    }
    if hp != h {
        // dW_hr (P, H) += dhᵀ · m over all steps.
        kernels::gemm_at(
            precision,
            MatMut::rows(&mut grads[lp.w_hr..lp.w_hr + hp * h], hp, h),
            Mat::rows(r.dh, m, hp).t(),
            Mat::rows(r.ms, m, h),
            true,
            threads,
        );
    }
    if !norm && !one_dpre {
        kernels::add_col_sums(&mut grads[lp.b_ih..lp.b_ih + gh], r.dpre_x, m, gh);
        kernels::add_col_sums(&mut grads[lp.b_hh..lp.b_hh + gh], dpre_h, m, gh);
    }
    if let Some(dx) = dx {
        kernels::gemm_at(
            precision,
            MatMut::rows(dx, m, lp.input),
            Mat::rows(r.dpre_x, m, gh),
            Mat::rows(&p[lp.w_ih..], gh, lp.input),
            false,
            threads,
        );
    }
}

/// How a pass's row paths read W_hh (or W_hhᵀ) at every step: packed once per pass into bf16
/// tiles (`--precision bf16`), into f32 panels (f32 data on AVX-512F: `kernels/panels.rs`), or
/// as it is (f64, other CPUs, and the unit splits, whose parts read their own units' rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    Bf16,
    Panels,
    Plain,
}

/// W_hh elements (256 KB in f32) from which f32 panels pay: a smaller W_hh stays in cache as it
/// is, and its per-step products are too short to repay packing their rows (LSTM H = 64, B = 16:
/// 416k tokens/s with panels against 436k without, on two cores).
const PANEL_WEIGHTS: usize = 1 << 16;

impl Packing {
    pub(crate) fn of<F: Float>(pass: &Pass<'_>) -> Packing {
        let rows = matches!(pass.split, Split::Whole | Split::Tiles | Split::Rows(_));
        let large = pass.dims.gh * pass.dims.h >= PANEL_WEIGHTS;
        if pass.dims.precision == Precision::Bf16 {
            Packing::Bf16
        } else if rows && large && F::NAME == "f32" && kernels::panels::native() {
            Packing::Panels
        } else {
            Packing::Plain
        }
    }
}

/// A layer's packed W_hh for one pass, held apart from its cache while the steps borrow it.
pub(crate) struct Packs {
    packing: Packing,
    bf16: kernels::bf16::PackedB,
    panels: kernels::panels::Panels,
}

impl Packs {
    /// Takes the cache's packing buffers for a pass that reads W_hh as `packing` says.
    pub(crate) fn take<F>(cache: &mut LayerCache<F>, packing: Packing) -> Self {
        let (bf16, panels) = (std::mem::take(&mut cache.w_hh_pack), std::mem::take(&mut cache.w_hh_panels));
        Packs { packing, bf16, panels }
    }

    /// Packs `w` ((k, n), as the per-step products read it), if the pass packs.
    pub(crate) fn pack<F: Float>(&mut self, w: Mat<'_, F>, threads: usize) {
        match self.packing {
            Packing::Bf16 => kernels::pack_b(&mut self.bf16, w),
            Packing::Panels => kernels::pack_panels(&mut self.panels, w, threads),
            Packing::Plain => {}
        }
    }

    /// The per-step products' right operand: packed, or `w` itself.
    pub(crate) fn operand<'a, F>(&'a self, w: Mat<'a, F>) -> Operand<'a, F> {
        match self.packing {
            Packing::Bf16 => Operand::Packed(&self.bf16),
            Packing::Panels => Operand::Panels(&self.panels),
            Packing::Plain => Operand::Plain(w),
        }
    }

    /// Returns the buffers to the cache for the next pass.
    pub(crate) fn put_back<F>(self, cache: &mut LayerCache<F>) {
        cache.w_hh_pack = self.bf16;
        cache.w_hh_panels = self.panels;
    }
}

#[cfg(test)]
mod tests {
    use super::{TableRows, row_block};

    /// A step's table rows filled in blocks on 1–20 threads (more than rows, too): each row
    /// its token's table row, as the one-thread fill leaves them.
    #[test]
    fn table_rows_fill_every_row_of_a_step_on_any_thread_count() {
        let (v, gh, b, steps) = (7, 12, 5, 3);
        let table: Vec<f32> = (0..v * gh).map(|i| i as f32).collect();
        let tokens: Vec<u32> = (0..steps * b).map(|i| ((i * 5 + 3) % v) as u32).collect();
        let tr = TableRows { table: &table, tokens: &tokens, b, gh };
        for t in 0..steps {
            let want: Vec<f32> = (0..b).flat_map(|r| tr.row(t, r).to_vec()).collect();
            for threads in [1, 2, 3, 4, 5, 20] {
                let mut g = vec![f32::NAN; b * gh];
                tr.fill_on(t, &mut g, threads);
                assert_eq!(g, want, "step {t}, {threads} threads");
            }
        }
    }

    /// Row blocks cover the batch in order, each with a row; with lengths each holds about its
    /// share of the real steps (within one sequence's length), sorted or not, long or short.
    #[test]
    fn row_blocks_share_the_real_steps() {
        let sorted: Vec<usize> = (0..32).map(|r| 180 - 5 * r).collect();
        let shuffled: Vec<usize> = (0..32).map(|r| sorted[(7 * r + 3) % 32]).collect();
        let one_long: Vec<usize> = (0..16).map(|r| if r == 0 { 500 } else { 1 }).collect();
        for lengths in [&sorted[..], &shuffled, &one_long, &[]] {
            let b = if lengths.is_empty() { 24 } else { lengths.len() };
            for parts in [1, 2, 3, 4, 8] {
                let blocks: Vec<(usize, usize)> = (0..parts).map(|p| row_block(lengths, 400, b, parts, p)).collect();
                assert_eq!(blocks[0].0, 0);
                assert_eq!(blocks[parts - 1].1, b);
                assert!(blocks.windows(2).all(|w| w[0].1 == w[1].0), "{blocks:?}");
                assert!(blocks.iter().all(|&(r0, r1)| r0 < r1), "a block without rows: {blocks:?}");
                if lengths.is_empty() || lengths == &one_long[..] {
                    continue;
                }
                let total: usize = lengths.iter().sum();
                let longest = *lengths.iter().max().unwrap();
                for &(r0, r1) in &blocks {
                    let share: usize = lengths[r0..r1].iter().sum();
                    assert!(share.abs_diff(total / parts) <= longest, "{parts} parts: {blocks:?}");
                }
            }
        }
        // The longest sequence alone in its block; lengths past the pass's steps count as it.
        assert_eq!(row_block(&one_long, 400, 16, 2, 0), (0, 1));
        assert_eq!(row_block(&[9, 1, 1, 1, 1, 1, 1, 1], 2, 8, 2, 0), (0, 4));
    }
}
