//! Stacked layers as a wavefront: layer l at step t needs only layer l − 1 at step t and itself
//! at t − 1, so diagonal d runs step d − l of every layer l at once (forward), and its mirror
//! image backward, each layer cut into its blocks of hidden units. The parts meet once per
//! step (forward) or twice (backward: after the cells, after the dh_next GEMMs).
//!
//! The layers run in runs of `chunk` steps: layer l + 1 runs a run of steps while layer l runs
//! the next one. Layers above the first take their input projection a run at a time, just
//! before the run (bias, + x·W_ihᵀ, then per step + h_{t−1}·W_hhᵀ: the order of the
//! layer-by-layer path), and the backward pass sends dL/dx = dpre·W_ih down a run at a time
//! instead of in one GEMM after the loop. Weight gradients are the layer-by-layer path's GEMMs
//! after the loop. One layer with one run is the unit split of `layer::forward`/`backward`.

use super::{
    BwdBufs, Dims, FromAbove, FwdBufs, InputRows, LayerInput, TableRows, UNIT_ALIGN, UnitWeights, units::Block,
};
use crate::float::Float;
use crate::kernels::team;
use crate::kernels::{self, parts};
use crate::net::LayerParams;
use crate::net::plan::MAX_LAYERS;
use crate::net::workspace::LayerCache;

/// The shape of a pass through [`forward_steps`] / [`backward_steps`]: each layer cut into
/// `rows` × `units` blocks (rows: 1 but for one layer's grid, `plan::Split::Grid`), layers
/// running `chunk` steps apart, W_hh read through its transpose or not (the plan's choice for
/// this direction), each row's length (empty: all T steps).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wave<'a> {
    pub dims: Dims,
    pub rows: usize,
    pub units: usize,
    pub chunk: usize,
    pub w_hh_t: bool,
    pub lengths: &'a [usize],
}

/// Forward over all layers (hs[0], cs[0] of each cache hold its initial state); `x0` is the first
/// layer's input, `hproj` (L, B, G·H) the GRU's per-layer scratch.
pub(crate) fn forward<F: Float>(
    lps: &[LayerParams],
    p: &[F],
    caches: &mut [LayerCache<F>],
    hproj: &mut [F],
    x0: LayerInput<'_, F>,
    wave: Wave,
) {
    let Dims { h, gh, b, threads, .. } = wave.dims;
    let table = match x0 {
        LayerInput::Rows(x) => {
            // The first layer's input is known: project all its steps at once.
            super::project(&wave.dims, wave.lengths, &lps[0], p, &mut caches[0].gates, x);
            None
        }
        LayerInput::Table { table, tokens } => Some(TableRows { table, tokens, b, gh }),
    };
    if wave.w_hh_t {
        for (c, lp) in caches.iter_mut().zip(lps) {
            kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut c.w_hh_t, threads);
        }
    }
    forward_steps(lps, p, caches, hproj, table.as_ref(), wave);
}

/// The time loops of `caches.len()` layers as a wavefront (one layer: the unit split of
/// `layer::forward`), once the first layer's input projection (or its `table`) and W_hhᵀ (if
/// the wave reads it) are in place: part (l, block) runs units `block` of layer l; layer l runs
/// its run r of `chunk` steps in super-step r + l, starting it with the run's input projection.
pub(super) fn forward_steps<F: Float>(
    lps: &[LayerParams],
    p: &[F],
    caches: &mut [LayerCache<F>],
    hproj: &mut [F],
    table: Option<&TableRows<'_, F>>,
    wave: Wave,
) {
    let Wave { dims, rows, units, chunk, w_hh_t, lengths } = wave;
    let Dims { h, gh, b, steps, threads, .. } = dims;
    let (layers, bh, blocks) = (caches.len().min(MAX_LAYERS), b * h, rows * units);
    let mut bufs: [Option<FwdBufs<F>>; MAX_LAYERS] = Default::default();
    let mut weights: [Option<UnitWeights<'_, F>>; MAX_LAYERS] = Default::default();
    let hprojs = hproj.chunks_mut((b * gh).max(1)).map(Some).chain(std::iter::repeat_with(|| None));
    for (l, (c, hp)) in caches.iter_mut().zip(hprojs).enumerate().take(layers) {
        let w_hh = &p[lps[l].w_hh..lps[l].w_hh + gh * h];
        bufs[l] = Some(FwdBufs::new(c, hp.unwrap_or_default()).0);
        weights[l] = Some(UnitWeights { w_hh, w_hh_t: if w_hh_t { &c.w_hh_t[..] } else { &[] } });
    }
    let supers = steps.div_ceil(chunk) + layers - 1;
    let ranges = super::row_ranges(lengths, steps, b, rows);
    team::run(
        threads,
        layers * blocks,
        supers * chunk,
        |_| true,
        |part, phase| {
            let (l, block, j) = (part / blocks, part % blocks, phase % chunk);
            let Some(t0) = (phase / chunk).checked_sub(l).map(|run| run * chunk).filter(|&t0| t0 + j < steps) else {
                return;
            };
            let (Some(buf), Some(w)) = (&bufs[l], &weights[l]) else { return };
            let (t, lp) = (t0 + j, &lps[l]);
            let ((r0, r1), (u0, u1)) = (ranges[block / units], parts::range(h, units, UNIT_ALIGN, block % units));
            let b_hh = &p[lp.b_hh..lp.b_hh + gh];
            // The run's input projection, from the layer below (which ran it a super-step ago).
            let below = l.checked_sub(1).and_then(|k| bufs[k].as_ref()).filter(|_| j == 0);
            let t1 = (t0 + chunk).min(steps);
            // SAFETY: this part writes only units [u0, u1) of layer l's step t (of the run's steps
            // for the input projection: gates, scratch, step t + 1's states) and reads the layer
            // below's states of the run and layer l's step-t states, which every part finished
            // at an earlier phase (the barrier before each phase).
            unsafe {
                let input = below.map(|below| InputRows {
                    t0,
                    x: below.hs.read((t0 + 1) * bh, (t1 - t0) * bh),
                    w_ih: &p[lp.w_ih..lp.w_ih + gh * lp.input],
                    b_ih: &p[lp.b_ih..lp.b_ih + gh],
                    input: lp.input,
                });
                let table = table.filter(|_| l == 0);
                super::forward_units(&dims, b_hh, w, table, input, buf, Block { t, r0, r1, u0, u1, lengths });
            }
        },
    );
}

/// Backward (BPTT) over the layers of the last forward pass as a wavefront (one layer: the unit
/// split of `layer::backward`), top layer first: layer l runs its run r (of `chunk` steps, from
/// the end) in super-step r + (L − 1 − l), starting it with dL/dh of the run's steps from the
/// layer above. Each step has two phases: the cell for each part's units, then (after every
/// part's dpre_t is in) dh_next for its units. On entry the top cache's `dh` holds dL/dh_t from
/// the readout and `dh0`/`dc0` (L, B, H) hold dL/d(final state); on return they hold
/// dL/d(initial state), and every layer's `gates` (and GRU `dgates_h`) its pre-activation
/// gradients, ready for `weight_grads`.
pub(crate) fn backward_steps<F: Float>(
    lps: &[LayerParams],
    p: &[F],
    caches: &mut [LayerCache<F>],
    dh0: &mut [F],
    dc0: &mut [F],
    wave: Wave,
) {
    let Wave { dims, rows, units, chunk, w_hh_t: single, lengths } = wave;
    let Dims { h, gh, b, steps, threads, .. } = dims;
    let (layers, bh, blocks) = (caches.len().min(MAX_LAYERS), b * h, rows * units);
    let mut bufs: [Option<BwdBufs<F>>; MAX_LAYERS] = Default::default();
    let mut weights: [Option<UnitWeights<'_, F>>; MAX_LAYERS] = Default::default();
    let dcs = dc0.chunks_mut(bh).map(Some).chain(std::iter::repeat_with(|| None));
    // A single row reads W_hhᵀ's rows backward (see `UnitWeights`).
    for (l, ((c, dh), dc)) in caches.iter_mut().zip(dh0.chunks_mut(bh)).zip(dcs).enumerate().take(layers) {
        let w_hh = &p[lps[l].w_hh..lps[l].w_hh + gh * h];
        if single {
            kernels::transpose(w_hh, gh, h, &mut c.w_hh_t, threads);
        }
        let (buf, w_hh_t) = BwdBufs::new(c, dh, dc.unwrap_or_default());
        bufs[l] = Some(buf);
        weights[l] = Some(UnitWeights { w_hh, w_hh_t: if single { w_hh_t } else { &[] } });
    }
    let (top, supers) = (layers - 1, steps.div_ceil(chunk) + layers - 1);
    let ranges = super::row_ranges(lengths, steps, b, rows);
    team::run(
        threads,
        layers * blocks,
        2 * supers * chunk,
        // After each cell phase (the dh_next GEMM reads all of dpre_t), and before each run
        // (it reads the layer above's dpre of the run).
        |phase| phase % 2 == 1 || (phase / 2) % chunk == 0,
        |part, phase| {
            let (l, block, j) = (part / blocks, part % blocks, (phase / 2) % chunk);
            // Step k from the end: layer l starts `top − l` super-steps after the top layer.
            let Some(k0) =
                (phase / (2 * chunk)).checked_sub(top - l).map(|run| run * chunk).filter(|&k0| k0 + j < steps)
            else {
                return;
            };
            let (Some(buf), Some(w)) = (&bufs[l], &weights[l]) else { return };
            let t = steps - 1 - (k0 + j);
            let ((r0, r1), (u0, u1)) = (ranges[block / units], parts::range(h, units, UNIT_ALIGN, block % units));
            let n = (k0 + chunk).min(steps) - k0; // the run: steps [T − k0 − n, T − k0)
            let above = bufs.get(l + 1).and_then(Option::as_ref).filter(|_| j == 0 && phase % 2 == 0).map(|a| {
                FromAbove { t0: steps - k0 - n, n, dpre: a.gates, w_ih: &p[lps[l + 1].w_ih..lps[l + 1].w_ih + gh * h] }
            });
            // SAFETY: the cell phase writes only units [u0, u1) of layer l's step t (and of the
            // run's dh), and of its dh_next/dc_next, reading the layer above's dpre of the run,
            // finished by every part a super-step before; the GEMM phase reads all of layer l's
            // dpre_t, finished at the phase before (the barrier), and writes units [u0, u1) of its
            // dh_next.
            unsafe {
                let blk = Block { t, r0, r1, u0, u1, lengths };
                if phase % 2 == 0 {
                    super::backward_units_cell(&dims, above, buf, blk);
                } else {
                    super::backward_units_gemm(&dims, w, buf, blk);
                }
            }
        },
    );
}
