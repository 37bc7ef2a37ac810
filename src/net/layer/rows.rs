//! The row paths of a layer's time loop: whole steps or blocks of batch rows, a recurrent GEMM
//! and the cell's step over plain slices.

use super::*;

/// One step's slices for a range of batch rows (forward).
pub(super) struct FwdRows<'a, F> {
    pub(super) g: &'a mut [F],     // (r, G·H) pre-activations → activated gates
    pub(super) h_prev: &'a [F],    // (r, H)
    pub(super) h: &'a mut [F],     // (r, H) out
    pub(super) c_prev: &'a [F],    // (r, H) LSTM
    pub(super) c: &'a mut [F],     // (r, H) LSTM, out
    pub(super) aux: &'a mut [F],   // (r, H) LSTM tanh(c), GRU h_n; out
    pub(super) hproj: &'a mut [F], // (r, G·H) GRU scratch
    pub(super) zh: &'a [F],        // (r, H) zoneout's hold mask of h (empty: none)
    pub(super) zc: &'a [F],        // (r, H) zoneout's hold mask of c (empty: none)
}

/// The recurrent GEMM (tiled on up to `threads` threads) and the cell's fused step for some rows
/// of one step, up to the last row still running (see `live_rows`); then the rows whose sequence
/// ended before step t keep their state, h_t = h_{t−1} (and c), so padding never touches the
/// state and the last state is each sequence's own. With more than one thread the cell's step
/// runs in blocks of rows too ([`cell_blocks`]): each row's step is the same whichever block
/// holds it.
pub(super) fn forward_rows<F: Float>(
    cell: CellKind,
    h: usize,
    b_hh: &[F],
    w_hh_t: Operand<'_, F>,
    s: &mut FwdRows<'_, F>,
    threads: usize,
    ended: Ended<'_>,
) {
    let gh = b_hh.len();
    let r = live_rows(ended.lengths, ended.t, ended.r0, s.h.len() / h);
    if r > 0 {
        let h_prev = &s.h_prev[..r * h];
        // The recurrent product joins the gates' pre-activations, or (GRU) is kept apart with b_hh.
        if cell.recurrent_apart() {
            let hproj = &mut s.hproj[..r * gh];
            kernels::fill_rows(hproj, b_hh);
            kernels::gemm_op(MatMut::rows(hproj, r, gh), Mat::rows(h_prev, r, h), w_hh_t, true, threads);
        } else {
            let g = &mut s.g[..r * gh];
            kernels::gemm_op(MatMut::rows(g, r, gh), Mat::rows(h_prev, r, h), w_hh_t, true, threads);
        }
        let live = s.head(r, h, gh);
        let blocks = cell_blocks(r, threads);
        if blocks == 1 {
            forward_cell(cell, h, live);
        } else {
            let mut parts: [Option<FwdRows<'_, F>>; MAX_CELL_BLOCKS] = Default::default();
            let mut rest = live;
            for (k, part) in parts.iter_mut().enumerate().take(blocks) {
                let (r0, r1) = parts::range(r, blocks, 1, k);
                let (block, after) = rest.split(r1 - r0, h, gh);
                *part = Some(block);
                rest = after;
            }
            team::for_each_mut(threads, &mut parts[..blocks], |_, part| {
                if let Some(block) = part.take() {
                    forward_cell(cell, h, block);
                }
            });
        }
    }
    ended.copy_rows(h, s.h_prev, s.h);
    ended.copy_rows(h, s.c_prev, s.c);
}

/// The most blocks of rows one step's cell runs in.
const MAX_CELL_BLOCKS: usize = 16;
/// Rows per block of a cell's step, at least: a block's step must outweigh its hand-off.
const CELL_ROWS: usize = 8;

/// Blocks of rows for the cell's step of `r` rows on `threads` threads (1: the caller alone).
/// Each row's step does the same arithmetic in any block, so the count never changes a result.
fn cell_blocks(r: usize, threads: usize) -> usize {
    (r / CELL_ROWS).clamp(1, threads.clamp(1, MAX_CELL_BLOCKS))
}

/// The cell's fused step for every row of `s` (after the recurrent product), then zoneout.
fn forward_cell<F: Float>(cell: CellKind, h: usize, s: FwdRows<'_, F>) {
    let n = s.h.len();
    let hp: &[F] = if cell.recurrent_apart() { s.hproj } else { &[] };
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
    // Zoneout (net/zoneout.rs): h_t = (1 − m) ⊙ h̃_t + m ⊙ h_{t−1}; the RNN keeps h̃_t for
    // its backward step.
    if !s.zh.is_empty() {
        if !cell.has_aux() {
            s.aux[..n].copy_from_slice(&s.h[..n]);
        }
        zoneout::blend(&mut s.h[..n], s.h_prev, &s.zh[..n]);
    }
    if !s.zc.is_empty() {
        zoneout::blend(&mut s.c[..n], s.c_prev, &s.zc[..n]);
    }
}

impl<'a, F> FwdRows<'a, F> {
    /// The first `r` rows (of widths H and G·H), reborrowed; unused (empty) buffers stay empty.
    fn head(&mut self, r: usize, h: usize, gh: usize) -> FwdRows<'_, F> {
        FwdRows {
            g: head_mut(self.g, r * gh),
            h_prev: head(self.h_prev, r * h),
            h: head_mut(self.h, r * h),
            c_prev: head(self.c_prev, r * h),
            c: head_mut(self.c, r * h),
            aux: head_mut(self.aux, r * h),
            hproj: head_mut(self.hproj, r * gh),
            zh: head(self.zh, r * h),
            zc: head(self.zc, r * h),
        }
    }

    /// The first `r` rows and the rest.
    fn split(self, r: usize, h: usize, gh: usize) -> (Self, Self) {
        let (g, g2) = cut_mut(self.g, r * gh);
        let (h_prev, h_prev2) = cut(self.h_prev, r * h);
        let (hn, hn2) = cut_mut(self.h, r * h);
        let (c_prev, c_prev2) = cut(self.c_prev, r * h);
        let (c, c2) = cut_mut(self.c, r * h);
        let (aux, aux2) = cut_mut(self.aux, r * h);
        let (hproj, hproj2) = cut_mut(self.hproj, r * gh);
        let (zh, zh2) = cut(self.zh, r * h);
        let (zc, zc2) = cut(self.zc, r * h);
        (
            FwdRows { g, h_prev, h: hn, c_prev, c, aux, hproj, zh, zc },
            FwdRows {
                g: g2,
                h_prev: h_prev2,
                h: hn2,
                c_prev: c_prev2,
                c: c2,
                aux: aux2,
                hproj: hproj2,
                zh: zh2,
                zc: zc2,
            },
        )
    }
}

/// `v` cut after `n` elements (an unused, empty buffer: two empty halves).
fn cut<F>(v: &[F], n: usize) -> (&[F], &[F]) {
    if v.is_empty() { (v, v) } else { v.split_at(n) }
}

/// [`cut`], mutable.
fn cut_mut<F>(v: &mut [F], n: usize) -> (&mut [F], &mut [F]) {
    if v.is_empty() { (v, &mut []) } else { v.split_at_mut(n) }
}

/// Step `t` (`bh` values) of a (T, B, H) buffer; empty if the cell does not use the buffer.
pub(super) fn step_of<F>(v: &[F], t: usize, bh: usize) -> &[F] {
    if v.is_empty() { v } else { &v[t * bh..(t + 1) * bh] }
}

/// One step's slices for a range of batch rows (backward).
pub(super) struct BwdRows<'a, F> {
    pub(super) dh: &'a [F],          // (r, H) total dL/dh_t
    pub(super) g: &'a mut [F],       // (r, G·H) activated gates → dL/d(input pre-activations)
    pub(super) dgh: &'a mut [F],     // (r, G·H) GRU dL/d(recurrent pre-activations)
    pub(super) h_prev: &'a [F],      // (r, H)
    pub(super) h: &'a [F],           // (r, H) h_t
    pub(super) c_prev: &'a [F],      // (r, H) LSTM
    pub(super) aux: &'a [F],         // (r, H) LSTM tanh(c_t), GRU h_n
    pub(super) dc: &'a mut [F],      // (r, H) LSTM dL/dc: in from t+1, out to t−1
    pub(super) dh_next: &'a mut [F], // (r, H) out: dL/dh_{t−1}
    pub(super) zh: &'a [F],          // (r, H) zoneout's hold mask of h (empty: none)
    pub(super) zc: &'a [F],          // (r, H) zoneout's hold mask of c (empty: none)
    pub(super) zdh: &'a mut [F],     // (r, H) zoneout scratch: dL/dh̃_t
    pub(super) zdc: &'a mut [F],     // (r, H) zoneout scratch: the part of dL/dc_t held
}

/// Which rows of a step's row range [r0, …) have ended (their sequence is shorter than t + 1).
#[derive(Clone, Copy)]
pub(super) struct Ended<'a> {
    pub(super) lengths: &'a [usize],
    pub(super) t: usize,
    pub(super) r0: usize,
}

impl Ended<'_> {
    /// Whether row k (counted from r0) has ended.
    pub(super) fn at(self, k: usize) -> bool {
        ended(self.lengths, self.t, self.r0 + k)
    }

    /// Of the first `rows` rows (counted from r0), how many come before the last running row
    /// of the whole batch (`live_rows` of all its rows): the rows the weight gradients gather
    /// (`weight_grads`), so an ended one among them must give a zero dpre.
    pub(super) fn batch_live(self, rows: usize) -> usize {
        if self.lengths.is_empty() {
            return rows;
        }
        live_rows(self.lengths, self.t, 0, self.lengths.len()).saturating_sub(self.r0).min(rows)
    }

    /// Copies the ended rows of `from` over those of `to` ((r, w) each; nothing if `to` is
    /// empty): an ended row holds its state forward, and its gradient passes straight through.
    pub(super) fn copy_rows<F: Copy>(self, w: usize, from: &[F], to: &mut [F]) {
        if self.lengths.is_empty() || to.is_empty() {
            return;
        }
        for k in (0..to.len() / w).filter(|&k| self.at(k)) {
            to[k * w..(k + 1) * w].copy_from_slice(&from[k * w..(k + 1) * w]);
        }
    }

    /// Zeroes the ended rows of `v` ((r, w); nothing if empty): what an ended row contributes.
    pub(super) fn zero_rows<F: Float>(self, w: usize, v: &mut [F]) {
        if self.lengths.is_empty() || v.is_empty() {
            return;
        }
        for k in (0..v.len() / w).filter(|&k| self.at(k)) {
            v[k * w..(k + 1) * w].fill(F::zero());
        }
    }

    /// The maximal runs [a, b) of rows (counted from r0) still running, among the first `rows`
    /// (all of them in one run when no lengths are set). Allocates nothing.
    pub(super) fn running(self, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
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
/// dc unchanged — written only up to the batch's last running row ([`Ended::batch_live`]): the
/// rows after it are not touched at all: no product reads their dpre, and dh_t at a padded
/// position carries no gradient, so dh_next and dc already hold dh_{t−1} and dc_{t−1}. Under
/// zoneout the cell's step gets (1 − m) ⊙ dh_t (and (1 − k) ⊙ dc_t), and
/// m ⊙ dh_t (k ⊙ dc_t) joins dL/dh_{t−1} (dL/dc_{t−1}) past it. With more than one thread the
/// cell's step runs in blocks of rows ([`cell_blocks`]), as forward.
pub(super) fn backward_rows<F: Float>(
    cell: CellKind,
    h: usize,
    gh: usize,
    w_hh: Operand<'_, F>,
    mut s: BwdRows<'_, F>,
    threads: usize,
    ended: Ended<'_>,
) {
    let r = s.dh.len() / h;
    let blocks = cell_blocks(r, threads);
    if blocks == 1 {
        backward_cell(cell, h, gh, s.view(), ended);
    } else {
        let mut parts: [Option<(BwdRows<'_, F>, Ended<'_>)>; MAX_CELL_BLOCKS] = Default::default();
        let mut rest = s.view();
        for (k, part) in parts.iter_mut().enumerate().take(blocks) {
            let (r0, r1) = parts::range(r, blocks, 1, k);
            let (block, after) = rest.split(r1 - r0, h, gh);
            *part = Some((block, Ended { r0: ended.r0 + r0, ..ended }));
            rest = after;
        }
        team::for_each_mut(threads, &mut parts[..blocks], |_, part| {
            if let Some((block, ended)) = part.take() {
                backward_cell(cell, h, gh, block, ended);
            }
        });
    }
    let (dpre, gru) = if cell.recurrent_apart() { (&*s.dgh, true) } else { (&*s.g, false) };
    let live = live_rows(ended.lengths, ended.t, ended.r0, r);
    if live > 0 {
        let (dh_next, dpre) = (&mut s.dh_next[..live * h], &dpre[..live * gh]);
        kernels::gemm_op(MatMut::rows(dh_next, live, h), Mat::rows(dpre, live, gh), w_hh, gru, threads);
    }
    if !s.zh.is_empty() {
        for run in ended.running(r) {
            let hr = run.start * h..run.end * h;
            zoneout::past_cell(&mut s.dh_next[hr.clone()], &s.dh[hr.clone()], &s.zh[hr]);
        }
    }
    let batch_live = ended.batch_live(r);
    ended.copy_rows(h, &s.dh[..batch_live * h], &mut s.dh_next[..batch_live * h]);
}

/// The cell's backward step for the rows of `s` (before the recurrent product): dpre (and the
/// GRU's dh_{t−1} term, dc_{t−1}) from dh_t; an ended row's dpre is zeroed instead.
fn backward_cell<F: Float>(cell: CellKind, h: usize, gh: usize, s: BwdRows<'_, F>, ended: Ended<'_>) {
    let r = s.dh.len() / h;
    let batch_live = ended.batch_live(r);
    ended.zero_rows(gh, head_mut(s.g, batch_live * gh));
    ended.zero_rows(gh, head_mut(s.dgh, batch_live * gh));
    let rows = |a: usize, b: usize, w: usize| a * w..b * w;
    let (lstm, gru, aux) = (cell.has_cell_state(), cell.recurrent_apart(), cell.has_aux());
    let (zoned_h, zoned_c) = (!s.zh.is_empty(), !s.zc.is_empty());
    for run in ended.running(r) {
        let (hr, gr) = (rows(run.start, run.end, h), rows(run.start, run.end, gh));
        let dh = if zoned_h {
            zoneout::into_cell(&mut s.zdh[hr.clone()], &s.dh[hr.clone()], &s.zh[hr.clone()]);
            &s.zdh[hr.clone()]
        } else {
            &s.dh[hr.clone()]
        };
        if zoned_c {
            zoneout::split_in_place(&mut s.zdc[hr.clone()], &mut s.dc[hr.clone()], &s.zc[hr.clone()]);
        }
        cell.backward_rows(
            h,
            BackStep {
                dh,
                g: [&mut s.g[gr.clone()], &mut [], &mut [], &mut []],
                dgh: [if gru { &mut s.dgh[gr] } else { &mut [] }, &mut [], &mut []],
                // (The RNN's tanh' / relu' are of h̃_t, which zoneout keeps in `aux`.)
                h: match (gru || lstm, zoned_h) {
                    (true, _) => &[],
                    (false, true) => &s.aux[hr.clone()],
                    (false, false) => &s.h[hr.clone()],
                },
                h_prev: if gru { &s.h_prev[hr.clone()] } else { &[] },
                c_prev: if lstm { &s.c_prev[hr.clone()] } else { &[] },
                dc: if lstm { &mut s.dc[hr.clone()] } else { &mut [] },
                aux: if aux { &s.aux[hr.clone()] } else { &[] },
                dh_prev: if gru { &mut s.dh_next[hr.clone()] } else { &mut [] },
            },
        );
        if zoned_c {
            kernels::add_into(&mut s.dc[hr.clone()], &s.zdc[hr]);
        }
    }
}

impl<F> BwdRows<'_, F> {
    /// All rows, reborrowed.
    fn view(&mut self) -> BwdRows<'_, F> {
        BwdRows {
            dh: self.dh,
            g: &mut *self.g,
            dgh: &mut *self.dgh,
            h_prev: self.h_prev,
            h: self.h,
            c_prev: self.c_prev,
            aux: self.aux,
            dc: &mut *self.dc,
            dh_next: &mut *self.dh_next,
            zh: self.zh,
            zc: self.zc,
            zdh: &mut *self.zdh,
            zdc: &mut *self.zdc,
        }
    }

    /// The first `r` rows (of widths H and G·H) and the rest; unused (empty) buffers stay empty.
    fn split(self, r: usize, h: usize, gh: usize) -> (Self, Self) {
        let (dh, dh2) = cut(self.dh, r * h);
        let (g, g2) = cut_mut(self.g, r * gh);
        let (dgh, dgh2) = cut_mut(self.dgh, r * gh);
        let (h_prev, h_prev2) = cut(self.h_prev, r * h);
        let (hn, hn2) = cut(self.h, r * h);
        let (c_prev, c_prev2) = cut(self.c_prev, r * h);
        let (aux, aux2) = cut(self.aux, r * h);
        let (dc, dc2) = cut_mut(self.dc, r * h);
        let (dh_next, dh_next2) = cut_mut(self.dh_next, r * h);
        let (zh, zh2) = cut(self.zh, r * h);
        let (zc, zc2) = cut(self.zc, r * h);
        let (zdh, zdh2) = cut_mut(self.zdh, r * h);
        let (zdc, zdc2) = cut_mut(self.zdc, r * h);
        (
            BwdRows { dh, g, dgh, h_prev, h: hn, c_prev, aux, dc, dh_next, zh, zc, zdh, zdc },
            BwdRows {
                dh: dh2,
                g: g2,
                dgh: dgh2,
                h_prev: h_prev2,
                h: hn2,
                c_prev: c_prev2,
                aux: aux2,
                dc: dc2,
                dh_next: dh_next2,
                zh: zh2,
                zc: zc2,
                zdh: zdh2,
                zdc: zdc2,
            },
        )
    }
}
