//! The unit split of a layer's time loop: blocks of hidden units of every row, the parts of a
//! step sharing the layer's buffers through `Shared` (each part writes only its units).

use super::*;

/// W_hh in the layout the plan chose for the unit split's GEMMs: a single row (B = 1) is a
/// matrix-vector product that streams W_hh's rows (forward) or W_hhᵀ's rows (backward) as dot
/// products; more rows are GEMMs that read W_hhᵀ (forward) and W_hh (backward) without
/// repacking. `w_hh_t` is empty where the plan reads W_hh itself.
pub(super) struct UnitWeights<'a, F> {
    pub(super) w_hh: &'a [F],   // (G·H, H)
    pub(super) w_hh_t: &'a [F], // (H, G·H), or empty
}

impl<'a, F> UnitWeights<'a, F> {
    /// (H, u): the columns of W_hhᵀ for units [u0, u0 + u) of gate block q (forward).
    pub(super) fn forward(&self, gh: usize, h: usize, q: usize, u0: usize, u: usize) -> Mat<'a, F> {
        let row = q * h + u0;
        if self.w_hh_t.is_empty() {
            Mat::rows(&self.w_hh[row * h..], u, h).t()
        } else {
            Mat::strided(&self.w_hh_t[row..], h, u, gh, 1)
        }
    }

    /// (G·H, u): the columns of W_hh for units [u0, u0 + u) (backward).
    pub(super) fn backward(&self, gh: usize, h: usize, u0: usize, u: usize) -> Mat<'a, F> {
        if !self.w_hh_t.is_empty() {
            Mat::rows(&self.w_hh_t[u0 * gh..], u, gh).t()
        } else {
            Mat::strided(&self.w_hh[u0..], gh, u, h, 1)
        }
    }
}

/// The input projection of a run of steps [t0, t1) of a layer above the first, in a wavefront:
/// rows (t1 − t0)·B of the layer below's hidden states and this layer's input weights.
pub(super) struct InputRows<'a, F> {
    pub(super) t0: usize,
    pub(super) x: &'a [F],    // ((t1 − t0)·B, I)
    pub(super) w_ih: &'a [F], // (G·H, I)
    pub(super) b_ih: &'a [F], // (G·H)
    pub(super) input: usize,  // I
}

/// Units [u0, u1) of rows [r0, r1) of step t: one part's share of one phase (the unit split:
/// every row; the grid: a block of rows); `lengths` each row's (empty: every row runs every
/// step): an ended row holds its state, its gradient passes through.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block<'a> {
    pub(super) t: usize,
    pub(super) r0: usize,
    pub(super) r1: usize,
    pub(super) u0: usize,
    pub(super) u1: usize,
    pub(super) lengths: &'a [usize],
}

/// Units [u0, u1) of rows [r0, r1) of forward step t: (first, for a run of steps of an upper
/// layer in a wavefront — whose blocks hold every row — the biases and input projections of
/// these units of all its steps), the recurrent GEMM of each gate block, then the cell's step.
///
/// # Safety
/// Nothing else may touch units [u0, u1) of rows [r0, r1) of step t's gates (of every step of
/// `input`), of the GRU scratch, or of step t+1's states while this runs, nor write step t's
/// states.
pub(super) unsafe fn forward_units<F: Float>(
    d: &Dims,
    b_hh: &[F],
    w: &UnitWeights<'_, F>,
    table: Option<&TableRows<'_, F>>,
    input: Option<InputRows<'_, F>>,
    bufs: &FwdBufs<F>,
    blk: Block<'_>,
) {
    let (Dims { cell, h, gh, b, .. }, Block { t, r0, r1, u0, u1, .. }) = (*d, blk);
    let (u, bh) = (u1 - u0, b * h);
    let gate_blocks = cell.gates();
    // SAFETY (whole body): every range below is units [u0, u1) of one gate block of one of rows
    // [r0, r1) (or of the (r1 − r0, ·) view of them, or of every row of the input run), which
    // the contract gives to this call, or step t's states, read-only.
    unsafe {
        if let Some(x) = input {
            assert!(r0 == 0 && r1 == b, "a wavefront's blocks hold every row");
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
            for r in r0..r1 {
                for q in 0..gate_blocks {
                    let at = q * h + u0;
                    let dst = bufs.gates.slice(t * b * gh + r * gh + at, u);
                    dst.copy_from_slice(&tr.row(t, r)[at..at + u]);
                }
            }
        }
        // Rows up to the last one still running (the rest hold their state: `live_rows`).
        let live = live_rows(blk.lengths, t, r0, r1 - r0);
        let h_prev = bufs.hs.read(t * bh + r0 * h, live * h); // (live, H) of step t, read-only
        let (out, at) = if cell.recurrent_apart() { (bufs.hproj, r0 * gh) } else { (bufs.gates, (t * b + r0) * gh) };
        if cell.recurrent_apart() {
            for r in r0..r0 + live {
                for q in 0..gate_blocks {
                    let k = r * gh + q * h + u0;
                    out.slice(k, u).copy_from_slice(&b_hh[q * h + u0..q * h + u1]);
                }
            }
        }
        for q in (0..gate_blocks).filter(|_| live > 0) {
            let c = MatMut::from_shared(out, at + q * h + u0, live, u, gh, 1);
            kernels::gemm(c, Mat::rows(h_prev, live, h), w.forward(gh, h, q, u0, u), true, 1);
        }
        forward_units_cell(d, bufs, blk, live);
    }
}

/// The cell's step for units [u0, u1) of the first `live` of rows [r0, r1) of forward step t
/// (see [`forward_units`]); the ended rows hold their state.
///
/// # Safety
/// As [`forward_units`].
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub(super) unsafe fn forward_units_cell<F: Float>(d: &Dims, bufs: &FwdBufs<F>, at: Block<'_>, live: usize) {
    let (Dims { cell, h, gh, b, .. }, Block { t, r0, r1, u0, u1, lengths }) = (*d, at);
    let (u, bh) = (u1 - u0, b * h);
    // SAFETY (whole body): every range below is units [u0, u1) of one gate block or state of
    // one of rows [r0, r1), which the contract gives to this call, or step t's states, read-only.
    unsafe {
        let (gates, lstm, gru, aux) = (cell.gates(), cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
        for r in r0..r1 {
            let g = |q: usize| if q < gates { bufs.gates.slice(t * b * gh + r * gh + q * h + u0, u) } else { &mut [] };
            let st = |buf: &Shared<F>, step: usize| buf.slice(step * bh + r * h + u0, u);
            let hp = |q: usize| if gru { bufs.hproj.read(r * gh + q * h + u0, u) } else { &[] };
            if r >= r0 + live {
                // (Past the last running row: ended, nothing to compute.)
                st(&bufs.hs, t + 1).copy_from_slice(bufs.hs.read(t * bh + r * h + u0, u));
                if lstm {
                    st(&bufs.cs, t + 1).copy_from_slice(bufs.cs.read(t * bh + r * h + u0, u));
                }
                continue;
            }
            cell.forward_units(Step {
                g: [g(0), g(1), g(2), g(3)],
                hp: [hp(0), hp(1), hp(2)],
                h_prev: if gru { bufs.hs.read(t * bh + r * h + u0, u) } else { &[] },
                c_prev: if lstm { &*st(&bufs.cs, t) } else { &[] },
                c: if lstm { st(&bufs.cs, t + 1) } else { &mut [] },
                aux: if aux { st(&bufs.aux, t) } else { &mut [] },
                h: st(&bufs.hs, t + 1),
            });
            if ended(lengths, t, r) {
                // The row's sequence has ended: it keeps its state.
                st(&bufs.hs, t + 1).copy_from_slice(bufs.hs.read(t * bh + r * h + u0, u));
                if lstm {
                    st(&bufs.cs, t + 1).copy_from_slice(bufs.cs.read(t * bh + r * h + u0, u));
                }
            }
        }
    }
}

/// What a layer below receives from the layer above in a wavefront, for a run of steps
/// [t0, t0 + n): dL/dh_t = dpre_t (of the layer above) · W_ih (of the layer above).
pub(super) struct FromAbove<'a, F> {
    pub(super) t0: usize,
    pub(super) n: usize,
    pub(super) dpre: Shared<F>, // the layer above's (T, B, G·H) input-side pre-activation gradients
    pub(super) w_ih: &'a [F],   // the layer above's (G·H, H)
}

/// Units [u0, u1) of rows [r0, r1) of backward step t, first half: (for the last step of a run
/// in a wavefront — whose blocks hold every row — dL/dh of these units for all the run's steps
/// from the layer above), dh_t += dh_next, then the cell's backward step (dpre_t, dc, and the
/// GRU's direct term into dh_next); the rows after the block's last running one are not
/// touched but for a zero dpre up to the batch's last running row, which the weight gradients
/// gather (as `rows::backward_rows`).
///
/// # Safety
/// Nothing else may touch units [u0, u1) of rows [r0, r1) of step t's dh (of every step of
/// `above`), dpre or of dh_next/dc_next while this runs, nor write step t's or t+1's states or
/// `above`'s dpre.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
pub(super) unsafe fn backward_units_cell<F: Float>(
    d: &Dims,
    above: Option<FromAbove<'_, F>>,
    bufs: &BwdBufs<F>,
    at: Block<'_>,
) {
    let (Dims { cell, h, gh, b, .. }, Block { t, r0, r1, u0, u1, lengths }) = (*d, at);
    let (u, bh) = (u1 - u0, b * h);
    // SAFETY (whole body): each slice is units [u0, u1) of one gate block or state of one of
    // rows [r0, r1) (or the run's dh of these units), given to this call by the contract, or a
    // read of a cached state or of the layer above's dpre, which nobody writes now.
    unsafe {
        if let Some(a) = above {
            assert!(r0 == 0 && r1 == b, "a wavefront's blocks hold every row");
            let dpre = Mat::rows(a.dpre.read(a.t0 * b * gh, a.n * b * gh), a.n * b, gh);
            let c = MatMut::from_shared(bufs.dh, a.t0 * b * h + u0, a.n * b, u, h, 1);
            kernels::gemm(c, dpre, Mat::strided(&a.w_ih[u0..], gh, u, h, 1), false, 1);
        }
        let (gates, lstm, gru, aux) = (cell.gates(), cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
        // The rows after the last running one are not touched (`rows::backward_rows`), but for
        // a zero dpre up to the batch's last running one (`Ended::batch_live`).
        let (live, batch_live) = (live_rows(lengths, t, r0, r1 - r0), live_rows(lengths, t, 0, b).min(r1));
        for r in r0 + live..batch_live {
            for q in 0..gates {
                bufs.gates.slice(t * b * gh + r * gh + q * h + u0, u).fill(F::zero());
                if gru {
                    bufs.dgh.slice(t * b * gh + r * gh + q * h + u0, u).fill(F::zero());
                }
            }
        }
        for r in r0..r0 + live {
            let g = |q: usize| if q < gates { bufs.gates.slice(t * b * gh + r * gh + q * h + u0, u) } else { &mut [] };
            let st = |step: usize| r * h + u0 + step * bh; // offset of these units in a (·, B, H) buffer
            let dh = bufs.dh.slice(st(t), u);
            let dh_next = bufs.dh_next.slice(st(0), u);
            kernels::add_into(dh, dh_next);
            if ended(lengths, t, r) {
                // An ended row held its state: no pre-activation gradient (the GEMM phase passes
                // dh_t straight through to dh_next).
                for q in 0..gates {
                    g(q).fill(F::zero());
                }
                for q in 0..if gru { gates } else { 0 } {
                    bufs.dgh.slice(t * b * gh + r * gh + q * h + u0, u).fill(F::zero());
                }
                continue;
            }
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

/// Units [u0, u1) of rows [r0, r1) of backward step t, second half: dh_next[r0..r1, u0..u1]
/// (+)= dpre_t[r0..r1] · W_hh[:, u0..u1] (the GRU adds to its direct term).
///
/// # Safety
/// Nothing may write rows [r0, r1) of step t's dpre while this runs, nor touch units [u0, u1)
/// of those rows of dh_next.
pub(super) unsafe fn backward_units_gemm<F: Float>(d: &Dims, w: &UnitWeights<'_, F>, bufs: &BwdBufs<F>, at: Block<'_>) {
    let (Dims { cell, h, gh, b, .. }, Block { t, r0, r1, u0, u1, lengths }) = (*d, at);
    let gru = cell.recurrent_apart();
    let dpre = if gru { bufs.dgh } else { bufs.gates };
    // SAFETY: the contract.
    unsafe {
        // Rows up to the last one still running; the ended ones are copied below.
        let live = live_rows(lengths, t, r0, r1 - r0);
        if live > 0 {
            let dpre = dpre.read((t * b + r0) * gh, live * gh); // (live, G·H)
            let c = MatMut::from_shared(bufs.dh_next, r0 * h + u0, live, u1 - u0, h, 1);
            kernels::gemm(c, Mat::rows(dpre, live, gh), w.backward(gh, h, u0, u1 - u0), gru, 1);
        }
        // An ended row's gradient passes straight through: dh_{t−1} = dh_t.
        for r in (r0..r0 + live).filter(|&r| ended(lengths, t, r)) {
            let at = r * h + u0;
            bufs.dh_next.slice(at, u1 - u0).copy_from_slice(bufs.dh.read(t * b * h + at, u1 - u0));
        }
    }
}

/// A layer's forward buffers, to be shared out between the parts of a pass.
pub(super) struct FwdBufs<F> {
    pub(super) gates: Shared<F>,
    pub(super) hs: Shared<F>,
    pub(super) cs: Shared<F>,
    pub(super) aux: Shared<F>,
    pub(super) hproj: Shared<F>,
    pub(super) zh: Shared<F>,
    pub(super) zc: Shared<F>,
}

impl<F> FwdBufs<F> {
    /// Shares out the buffers a layer's forward time loop writes, and its zoneout masks (the
    /// cache's W_hhᵀ stays out: the time loop reads it).
    pub(super) fn new<'c>(c: &'c mut LayerCache<F>, hproj: &mut [F]) -> (Self, &'c [F]) {
        let s = Shared::of;
        let bufs = FwdBufs {
            gates: s(&mut c.gates),
            hs: s(&mut c.hs),
            cs: s(&mut c.cs),
            aux: s(&mut c.aux),
            hproj: s(hproj),
            zh: s(&mut c.zone_h),
            zc: s(&mut c.zone_c),
        };
        (bufs, &c.w_hh_t)
    }

    /// Rows [r0, r1) of step t.
    ///
    /// # Safety
    /// While the result lives, nothing else may touch rows [r0, r1) of steps t and t+1 of these
    /// buffers (or of the scratch); the constructor's borrow must still be live.
    pub(super) unsafe fn rows<'a>(
        &self,
        t: usize,
        r0: usize,
        r1: usize,
        b: usize,
        h: usize,
        gh: usize,
    ) -> FwdRows<'a, F> {
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
                zh: self.zh.read(t * bh + r0 * h, r * h),
                zc: self.zc.read(t * bh + r0 * h, r * h),
            }
        }
    }
}

/// A layer's backward buffers, to be shared out between the parts of a pass.
pub(super) struct BwdBufs<F> {
    pub(super) dh: Shared<F>,
    pub(super) gates: Shared<F>,
    pub(super) dgh: Shared<F>,
    pub(super) hs: Shared<F>,
    pub(super) cs: Shared<F>,
    pub(super) aux: Shared<F>,
    pub(super) dc: Shared<F>,
    pub(super) dh_next: Shared<F>,
    pub(super) zh: Shared<F>,
    pub(super) zc: Shared<F>,
    pub(super) zdh: Shared<F>,
    pub(super) zdc: Shared<F>,
}

impl<F: Float> BwdBufs<F> {
    /// Shares out `cache` but its W_hhᵀ, which the halves read.
    pub(super) fn new<'c>(c: &'c mut LayerCache<F>, dh_next: &mut [F], dc_next: &mut [F]) -> (Self, &'c [F]) {
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
            zh: s(&mut c.zone_h),
            zc: s(&mut c.zone_c),
            zdh: s(&mut c.zone_dh),
            zdc: s(&mut c.zone_dc),
        };
        (bufs, &c.w_hh_t)
    }

    /// Rows [r0, r1) of step t, after adding the gradient from the future into dh_t.
    ///
    /// # Safety
    /// As [`FwdBufs::rows`].
    pub(super) unsafe fn rows<'a>(
        &self,
        t: usize,
        r0: usize,
        r1: usize,
        b: usize,
        h: usize,
        gh: usize,
    ) -> BwdRows<'a, F> {
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
                zh: self.zh.read(t * bh + r0 * h, r * h),
                zc: self.zc.read(t * bh + r0 * h, r * h),
                zdh: self.zdh.slice(r0 * h, r * h),
                zdc: self.zdc.slice(r0 * h, r * h),
            }
        }
    }
}
