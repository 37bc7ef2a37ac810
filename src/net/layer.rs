//! One recurrent layer over T steps: the input projection of all steps as one GEMM, then per
//! step one recurrent GEMM plus the cell's fused step; backward mirrors it and ends with one
//! GEMM per weight gradient.

use crate::cell::{CellKind, gru, lstm, rnn};
use crate::float::Float;
use crate::kernels::{self, Mat, MatMut};
use crate::net::workspace::LayerCache;
use crate::net::{LayerParams, NetConfig};

/// Where a layer's input comes from.
pub(crate) enum LayerInput<'a, F> {
    /// (T·B, I) rows: the dense input or the layer below's hidden states.
    Rows(&'a [F]),
    /// Token ids (T·B) into a (V, G·H) table holding embedding · W_ihᵀ.
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
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    // W_hhᵀ (H, G·H), transposed once per pass: the GEMM crate would otherwise repack W_hh at
    // every step. A single step gains nothing from it, so it reads W_hh as it is.
    if steps > 1 {
        kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t);
    }
    // Input projections of all T steps at once: gates (T·B, G·H) = bias + X · W_ihᵀ.
    // The GRU keeps b_hh on the recurrent side (it sits inside r ⊙ (W_hn h + b_hn)).
    let gates = &mut cache.gates[..n * gh];
    kernels::fill_rows(gates, b_ih);
    if cell != CellKind::Gru {
        for row in gates.chunks_exact_mut(gh) {
            kernels::add_into(row, b_hh);
        }
    }
    match x {
        LayerInput::Rows(x) => kernels::gemm(
            MatMut::rows(gates, n, gh),
            Mat::rows(x, n, lp.input),
            Mat::rows(&p[lp.w_ih..], gh, lp.input).t(),
            true,
            threads,
        ),
        LayerInput::Table { table, tokens } => {
            for (row, &tok) in gates.chunks_exact_mut(gh).zip(tokens) {
                kernels::add_into(row, &table[tok as usize * gh..(tok as usize + 1) * gh]);
            }
        }
    }

    let w_hh_t = if steps > 1 { Mat::rows(&cache.w_hh_t, h, gh) } else { Mat::rows(&p[lp.w_hh..], gh, h).t() }; // (H, G·H)
    let (b0, inner) = split_rows(b, gh, h, threads);
    let lstm = cell == CellKind::Lstm;
    if b0 < b && threads > 1 {
        // Each thread owns one half of the batch rows for the whole pass: one hand-off per pass
        // instead of one per step. Same arithmetic as the per-step split below.
        let bufs = FwdBufs::new(&mut cache.gates, &mut cache.hs, &mut cache.cs, &mut cache.aux, hproj);
        let half = |r0: usize, r1: usize| {
            for t in 0..steps {
                // SAFETY: this closure touches only rows [r0, r1) of each step (and of the
                // (B, ·) scratch), the other thread only the other rows; every range is in
                // bounds by construction (see `Bufs::rows`).
                let rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                forward_rows(cell, h, b_hh, w_hh_t, rows, inner);
            }
        };
        rayon::join(|| half(0, b0), || half(b0, b));
        return;
    }
    for t in 0..steps {
        let (past, future) = cache.hs.split_at_mut((t + 1) * bh);
        let (c_prev, c) = if lstm {
            let (c_past, c_future) = cache.cs.split_at_mut((t + 1) * bh);
            (&c_past[t * bh..], &mut c_future[..bh])
        } else {
            (&[][..], &mut [][..])
        };
        let aux = if cell == CellKind::RnnTanh || cell == CellKind::RnnRelu {
            &mut [][..]
        } else {
            &mut cache.aux[t * bh..(t + 1) * bh]
        };
        let rows = FwdRows {
            g: &mut cache.gates[t * bgh..(t + 1) * bgh],
            h_prev: &past[t * bh..],
            h: &mut future[..bh],
            c_prev,
            c,
            aux,
            hproj: &mut hproj[..],
        };
        if b0 == b {
            forward_rows(cell, h, b_hh, w_hh_t, rows, threads);
        } else {
            // One thread (two threads took the per-pass path above): the halves in turn, so the
            // arithmetic is the same as there.
            let (top, bottom) = rows.split(b0, h, gh);
            forward_rows(cell, h, b_hh, w_hh_t, top, inner);
            forward_rows(cell, h, b_hh, w_hh_t, bottom, inner);
        }
    }
}

/// How a step's B rows are shared out: rows [0, b0) and [b0, B) run as two independent halves
/// (in parallel when there are threads for it), each GEMM then on `inner` threads. Only steps
/// with enough work are split (a thread hand-off costs a few µs). The split depends on the
/// sizes only, never on the thread count, so results are the same at any setting.
fn split_rows(b: usize, gh: usize, h: usize, threads: usize) -> (usize, usize) {
    if b >= 8 && b * gh * h >= 1 << 21 { (b / 2, 1) } else { (b, threads) }
}

/// Runs `a` and `b`, on two threads if `parallel`.
fn join(parallel: bool, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    if parallel {
        rayon::join(a, b);
    } else {
        a();
        b();
    }
}

/// Step `t` (`bh` values) of a (T, B, H) buffer; empty if the cell does not use the buffer.
fn step_of<F>(v: &[F], t: usize, bh: usize) -> &[F] {
    if v.is_empty() { v } else { &v[t * bh..(t + 1) * bh] }
}

/// Splits a (rows, width) slice after `r0` rows; empty slices (unused by a cell) stay empty.
fn cut<T>(v: &[T], r0: usize, width: usize) -> (&[T], &[T]) {
    if v.is_empty() { (v, v) } else { v.split_at(r0 * width) }
}

/// Mutable [`cut`].
fn cut_mut<T>(v: &mut [T], r0: usize, width: usize) -> (&mut [T], &mut [T]) {
    if v.is_empty() { v.split_at_mut(0) } else { v.split_at_mut(r0 * width) }
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

impl<'a, F> FwdRows<'a, F> {
    fn split(self, r0: usize, h: usize, gh: usize) -> (Self, Self) {
        let (g0, g1) = cut_mut(self.g, r0, gh);
        let (hp0, hp1) = cut(self.h_prev, r0, h);
        let (h0, h1) = cut_mut(self.h, r0, h);
        let (cp0, cp1) = cut(self.c_prev, r0, h);
        let (c0, c1) = cut_mut(self.c, r0, h);
        let (a0, a1) = cut_mut(self.aux, r0, h);
        let (p0, p1) = cut_mut(self.hproj, r0, gh);
        (
            FwdRows { g: g0, h_prev: hp0, h: h0, c_prev: cp0, c: c0, aux: a0, hproj: p0 },
            FwdRows { g: g1, h_prev: hp1, h: h1, c_prev: cp1, c: c1, aux: a1, hproj: p1 },
        )
    }
}

/// The recurrent GEMM and the cell's fused step for some rows of one step.
fn forward_rows<F: Float>(cell: CellKind, h: usize, b_hh: &[F], w_hh_t: Mat<'_, F>, s: FwdRows<'_, F>, threads: usize) {
    let gh = b_hh.len();
    let r = s.h.len() / h;
    match cell {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            kernels::gemm(MatMut::rows(s.g, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, true, threads);
            rnn::forward_step(cell == CellKind::RnnRelu, s.g, s.h);
        }
        CellKind::Lstm => {
            kernels::gemm(MatMut::rows(s.g, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, true, threads);
            lstm::forward_step(h, s.g, s.c_prev, s.c, s.aux, s.h);
        }
        CellKind::Gru => {
            let hproj = &mut s.hproj[..r * gh];
            kernels::fill_rows(hproj, b_hh);
            kernels::gemm(MatMut::rows(hproj, r, gh), Mat::rows(s.h_prev, r, h), w_hh_t, true, threads);
            gru::forward_step(h, s.g, hproj, s.h_prev, s.aux, s.h);
        }
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
) {
    let (h, cell) = (cfg.hidden, cfg.cell);
    let gh = cell.gates() * h;
    let (bh, bgh, n) = (b * h, b * gh, steps * b);
    let w_hh = Mat::rows(&p[lp.w_hh..], gh, h); // (G·H, H)

    let (b0, inner) = split_rows(b, gh, h, threads);
    if b0 < b && threads > 1 && dh_norms.is_none() {
        let bufs = BwdBufs::new(cache, dh_next, dc_next);
        let half = |r0: usize, r1: usize| {
            for t in (0..steps).rev() {
                // SAFETY: as in `forward`: rows [r0, r1) of every buffer belong to this thread.
                let rows = unsafe { bufs.rows(t, r0, r1, b, h, gh) };
                backward_rows(cell, h, gh, w_hh, rows, inner);
            }
        };
        rayon::join(|| half(0, b0), || half(b0, b));
    } else {
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
                dgh: if cell == CellKind::Gru { &mut cache.dgates_h[t * bgh..(t + 1) * bgh] } else { &mut [][..] },
                h_prev: &cache.hs[t * bh..(t + 1) * bh],
                h: &cache.hs[(t + 1) * bh..(t + 2) * bh],
                c_prev: step_of(&cache.cs, t, bh),
                aux: step_of(&cache.aux, t, bh),
                dc: &mut dc_next[..],
                dh_next: &mut dh_next[..],
            };
            if b0 == b {
                backward_rows(cell, h, gh, w_hh, rows, threads);
            } else {
                let (top, bottom) = rows.split(b0, h, gh);
                join(
                    threads > 1,
                    || backward_rows(cell, h, gh, w_hh, top, inner),
                    || backward_rows(cell, h, gh, w_hh, bottom, inner),
                );
            }
        }
    }

    // Shared-weight gradients, accumulated over all steps: one GEMM each.
    let dpre_x = &cache.gates[..n * gh]; // (T·B, G·H)
    let dpre_h = if cell == CellKind::Gru { &cache.dgates_h[..n * gh] } else { dpre_x };
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

impl<'a, F> BwdRows<'a, F> {
    fn split(self, r0: usize, h: usize, gh: usize) -> (Self, Self) {
        let (dh0, dh1) = cut(self.dh, r0, h);
        let (g0, g1) = cut_mut(self.g, r0, gh);
        let (d0, d1) = cut_mut(self.dgh, r0, gh);
        let (hp0, hp1) = cut(self.h_prev, r0, h);
        let (h0, h1) = cut(self.h, r0, h);
        let (cp0, cp1) = cut(self.c_prev, r0, h);
        let (a0, a1) = cut(self.aux, r0, h);
        let (dc0, dc1) = cut_mut(self.dc, r0, h);
        let (n0, n1) = cut_mut(self.dh_next, r0, h);
        (
            BwdRows { dh: dh0, g: g0, dgh: d0, h_prev: hp0, h: h0, c_prev: cp0, aux: a0, dc: dc0, dh_next: n0 },
            BwdRows { dh: dh1, g: g1, dgh: d1, h_prev: hp1, h: h1, c_prev: cp1, aux: a1, dc: dc1, dh_next: n1 },
        )
    }
}

/// The cell's backward step and the recurrent GEMM dh_next = dpre · W_hh for some rows.
fn backward_rows<F: Float>(cell: CellKind, h: usize, gh: usize, w_hh: Mat<'_, F>, s: BwdRows<'_, F>, threads: usize) {
    let r = s.dh.len() / h;
    match cell {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            rnn::backward_step(cell == CellKind::RnnRelu, s.dh, s.h, s.g);
            kernels::gemm(MatMut::rows(s.dh_next, r, h), Mat::rows(s.g, r, gh), w_hh, false, threads);
        }
        CellKind::Lstm => {
            lstm::backward_step(h, s.dh, s.dc, s.g, s.c_prev, s.aux);
            kernels::gemm(MatMut::rows(s.dh_next, r, h), Mat::rows(s.g, r, gh), w_hh, false, threads);
        }
        CellKind::Gru => {
            gru::backward_step(h, s.dh, s.g, s.dgh, s.aux, s.h_prev, s.dh_next);
            kernels::gemm(MatMut::rows(s.dh_next, r, h), Mat::rows(s.dgh, r, gh), w_hh, true, threads);
        }
    }
}

/// A raw pointer and length standing for a buffer that two threads share out by batch rows.
#[derive(Clone, Copy)]
struct Raw<F>(*mut F, usize);

// SAFETY: a `Raw` is only turned into slices over row ranges that one thread owns (see the
// `rows` methods' contracts); F itself is Send + Sync.
unsafe impl<F: Send> Send for Raw<F> {}
unsafe impl<F: Sync> Sync for Raw<F> {}

impl<F> Raw<F> {
    fn of(v: &mut [F]) -> Self {
        Raw(v.as_mut_ptr(), v.len())
    }

    /// `len` elements from `at` (empty if the buffer is unused).
    ///
    /// # Safety
    /// No other live reference may overlap the range; it must be in bounds (asserted).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(&self, at: usize, len: usize) -> &'a mut [F] {
        if self.1 == 0 {
            return &mut [];
        }
        assert!(at + len <= self.1, "row range out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// A layer's forward buffers, to be shared out by batch rows for a whole pass.
struct FwdBufs<F> {
    gates: Raw<F>,
    hs: Raw<F>,
    cs: Raw<F>,
    aux: Raw<F>,
    hproj: Raw<F>,
}

impl<F> FwdBufs<F> {
    fn new(gates: &mut [F], hs: &mut [F], cs: &mut [F], aux: &mut [F], hproj: &mut [F]) -> Self {
        FwdBufs { gates: Raw::of(gates), hs: Raw::of(hs), cs: Raw::of(cs), aux: Raw::of(aux), hproj: Raw::of(hproj) }
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
                h_prev: self.hs.slice(t * bh + r0 * h, r * h),
                h: self.hs.slice((t + 1) * bh + r0 * h, r * h),
                c_prev: self.cs.slice(t * bh + r0 * h, r * h),
                c: self.cs.slice((t + 1) * bh + r0 * h, r * h),
                aux: self.aux.slice(t * bh + r0 * h, r * h),
                hproj: self.hproj.slice(r0 * gh, r * gh),
            }
        }
    }
}

/// A layer's backward buffers, to be shared out by batch rows for a whole pass.
struct BwdBufs<F> {
    dh: Raw<F>,
    gates: Raw<F>,
    dgh: Raw<F>,
    hs: Raw<F>,
    cs: Raw<F>,
    aux: Raw<F>,
    dc: Raw<F>,
    dh_next: Raw<F>,
}

impl<F: Float> BwdBufs<F> {
    fn new(cache: &mut LayerCache<F>, dh_next: &mut [F], dc_next: &mut [F]) -> Self {
        BwdBufs {
            dh: Raw::of(&mut cache.dh),
            gates: Raw::of(&mut cache.gates),
            dgh: Raw::of(&mut cache.dgates_h),
            hs: Raw::of(&mut cache.hs),
            cs: Raw::of(&mut cache.cs),
            aux: Raw::of(&mut cache.aux),
            dc: Raw::of(dc_next),
            dh_next: Raw::of(dh_next),
        }
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
                h_prev: self.hs.slice(t * bh + r0 * h, r * h),
                h: self.hs.slice((t + 1) * bh + r0 * h, r * h),
                c_prev: self.cs.slice(t * bh + r0 * h, r * h),
                aux: self.aux.slice(t * bh + r0 * h, r * h),
                dc: self.dc.slice(r0 * h, r * h),
                dh_next,
            }
        }
    }
}
