//! Both directions of a bidirectional layer at once: each direction's time loop is one part,
//! whole steps over all rows — or, planned for 8+ cores, each direction's row blocks are parts —
//! and the parts never meet (they share no buffer). Small batches gain the most: instead of
//! cutting each direction's steps into unit blocks that meet at every step, each core runs one
//! direction straight through; many cores get twice one direction's row blocks.

use super::*;

/// Forward: each direction's input projection (a GEMM on up to `threads` threads), then both
/// time loops as two parts. `xs` are the forward direction's input rows and the reverse
/// direction's (the same rows in each sequence's reverse order).
pub(crate) fn forward_pair<'a, F: Float>(
    pass: &Pass<'_>,
    lps: [&LayerParams; 2],
    p: &'a [F],
    caches: [&'a mut LayerCache<F>; 2],
    hprojs: [&mut [F]; 2],
    xs: [&[F]; 2],
) {
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let [fwd, rev] = caches;
    for (cache, (lp, x)) in [&mut *fwd, &mut *rev].into_iter().zip(lps.iter().zip(xs)) {
        if pass.w_hh_t {
            kernels::transpose(&p[lp.w_hh..lp.w_hh + gh * h], gh, h, &mut cache.w_hh_t, threads);
        }
        project(&pass.dims, pass.lengths, lp, p, &mut cache.gates, x);
    }
    // (H, G·H): W_hhᵀ as transposed into the cache, or a view of W_hh.
    let w_hh_t = |t: &'a [F], lp: &LayerParams| -> Mat<'a, F> {
        if pass.w_hh_t { Mat::rows(t, h, gh) } else { Mat::rows(&p[lp.w_hh..lp.w_hh + gh * h], gh, h).t() }
    };
    let [hp_f, hp_r] = hprojs;
    let ((bf, tf), (br, tr)) = (FwdBufs::new(fwd, hp_f), FwdBufs::new(rev, hp_r));
    let (w_f, w_r, bufs) = (w_hh_t(tf, lps[0]), w_hh_t(tr, lps[1]), [bf, br]);
    let (ws, lengths, blocks) = ([w_f, w_r], pass.lengths, row_blocks(pass));
    let ranges = row_ranges(lengths, steps, b, blocks);
    team::run(
        threads,
        2 * blocks,
        steps,
        |_| false,
        |part, t| {
            let (d, (r0, r1)) = (part / blocks, ranges[part % blocks]);
            let b_hh = &p[lps[d].b_hh..lps[d].b_hh + gh];
            // SAFETY: part (d, block) touches only rows [r0, r1) of direction d's buffers (of steps
            // t and t + 1), which no other part reads or writes.
            let mut rows = unsafe { bufs[d].rows(t, r0, r1, b, h, gh) };
            forward_rows(cell, h, b_hh, Operand::Plain(ws[d]), &mut rows, 1, Ended { lengths, t, r0 });
        },
    );
}

/// Row blocks per direction of a pair (the plan's `Schedule::Directions(rows)`, carried in the
/// pass's split).
fn row_blocks(pass: &Pass<'_>) -> usize {
    if let Split::Rows(rows) = pass.split { rows } else { 1 }
}

/// Elements of `gates` a thread fills with the biases at least.
const FILL_PER_PART: usize = 1 << 15;
/// Padded rows per batch row from which [`project`] skips the padding: each batch row's
/// product is then a call of its own, which costs about as much as 16–30 padded rows (GRU
/// H = 256, I = 8: ≈ 8 µs a call, ≈ 0.3 µs a padded row; larger inputs also pack W_ihᵀ per call).
const SKIP_PADDING: usize = 16;

/// The bias and input projection of all T steps: gates (T·B, G·H) = bias + X · W_ihᵀ, one
/// GEMM on up to `threads` threads. With `lengths` and enough padding ([`SKIP_PADDING`]), only
/// the rows a time loop reads are projected ([`project_live`]). (One product per step of live
/// rows instead ran slower, GRU H = 256, B = 8: a call costs more than its rows.)
pub(super) fn project<F: Float>(d: &Dims, lengths: &[usize], lp: &LayerParams, p: &[F], gates: &mut [F], x: &[F]) {
    let (gh, n) = (d.gh, d.steps * d.b);
    let real: usize = (0..d.b).map(|r| row_steps(lengths, d.steps, r)).sum();
    // (bf16 products pack both operands per call, and f32 ones on the deep kernel differ in
    // bits from the crate's per-row calls: they keep the one product.)
    let deep = kernels::runs_deep::<F>(n, gh, lp.input, 1);
    if n - real >= SKIP_PADDING * d.b && d.precision == Precision::F32 && !deep {
        return project_live(d, lengths, lp, p, gates, x);
    }
    let gates = &mut gates[..n * gh];
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    let w_ih = Mat::rows(&p[lp.w_ih..], gh, lp.input).t();
    if deep && d.precision.effective::<F>() == Precision::F32 {
        // Each block of the gates starts as the biases (`fill_input_bias`) just before the deep
        // kernel adds its product (no pass of its own over all of them).
        let second = if d.cell.recurrent_apart() { &[][..] } else { b_hh };
        let (c, x) = (MatMut::rows(gates, n, gh), Mat::rows(x, n, lp.input));
        return kernels::gemm_deep_onto(c, x, w_ih, [b_ih, second], d.threads);
    }
    // (The rows shared out between the threads: a padded batch of GRU H = 256 spent 1.3% of a
    // `fit` filling them on one.)
    let parts = (n * gh / FILL_PER_PART).clamp(1, d.threads.min(team::MAX_PARTS));
    let mut chunks = parts::chunks(gates, parts, |q| parts::range(n, parts, 1, q).0 * gh);
    team::for_each_mut(d.threads, &mut chunks[..parts], |_, rows| fill_input_bias(d.cell, b_ih, b_hh, rows));
    kernels::gemm_at(d.precision, MatMut::rows(gates, n, gh), Mat::rows(x, n, lp.input), w_ih, true, d.threads);
}

/// [`project`] of the rows a time loop reads (`live_rows`: up to each step's last running
/// row), f32 or f64 products: batch row r's steps [0, M_r) in one strided product of its own,
/// each on one thread — the same bits as the one product's rows. The padding's gates are left
/// as they are: nothing reads them (the test `padding_is_never_read`).
fn project_live<F: Float>(d: &Dims, lengths: &[usize], lp: &LayerParams, p: &[F], gates: &mut [F], x: &[F]) {
    let (gh, b, input) = (d.gh, d.b, lp.input);
    let (b_ih, b_hh) = (&p[lp.b_ih..lp.b_ih + gh], &p[lp.b_hh..lp.b_hh + gh]);
    let w_ih = Mat::rows(&p[lp.w_ih..], gh, input).t();
    let parts = b.min(d.threads).min(team::MAX_PARTS);
    let gates = Shared::of(&mut gates[..d.steps * b * gh]);
    team::for_each(d.threads, parts, |part| {
        // Rows dealt out back and forth (0, 1, 1, 0, 0, 1, … for two parts): rows sorted
        // longest first give each part about the same steps.
        let mine =
            |r: usize| if (r / parts).is_multiple_of(2) { r % parts == part } else { parts - 1 - r % parts == part };
        for r in (0..b).filter(|&r| mine(r)) {
            let m = row_steps(lengths, d.steps, r);
            for t in 0..m {
                // SAFETY: row r of every step is this part's alone.
                fill_input_bias(d.cell, b_ih, b_hh, unsafe { gates.slice((t * b + r) * gh, gh) });
            }
            // SAFETY: as above — rows (t, r), t < m, strided B·G·H apart.
            let c = unsafe { MatMut::from_shared(gates, r * gh, m, gh, b * gh, 1) };
            kernels::gemm(c, Mat::strided(&x[r * input..], m, input, b * input, 1), w_ih, true, 1);
        }
    });
}

/// The steps [0, M_r) at which batch row r is at or before its step's last running row
/// (`live_rows`): the longest length among rows r, r + 1, …, at most `steps` (all of them
/// without lengths).
fn row_steps(lengths: &[usize], steps: usize, r: usize) -> usize {
    if lengths.is_empty() {
        return steps;
    }
    lengths[r..].iter().copied().max().unwrap_or(0).min(steps)
}

/// Backward: both directions' time loops as two parts, then each one's weight gradients
/// (GEMMs on up to `threads` threads). `belows` and `carries` are each direction's.
pub(crate) fn backward_pair<F: Float>(
    pass: &Pass<'_>,
    lps: [&LayerParams; 2],
    p: &[F],
    grads: &mut [F],
    caches: [&mut LayerCache<F>; 2],
    belows: [Below<'_, F>; 2],
    carries: [Carry<'_, F>; 2],
) {
    let Dims { cell, h, gh, b, steps, threads, .. } = pass.dims;
    let ([fwd, rev], lengths) = (caches, pass.lengths);
    let [cf, cr] = carries;
    {
        let (bf, _) = BwdBufs::new(fwd, cf.dh_next, cf.dc_next);
        let (br, _) = BwdBufs::new(rev, cr.dh_next, cr.dc_next);
        let (bufs, blocks) = ([bf, br], row_blocks(pass));
        let ranges = row_ranges(lengths, steps, b, blocks);
        team::run(
            threads,
            2 * blocks,
            steps,
            |_| false,
            |part, k| {
                let (d, (r0, r1)) = (part / blocks, ranges[part % blocks]);
                let t = steps - 1 - k;
                let w_hh = Mat::rows(&p[lps[d].w_hh..lps[d].w_hh + gh * h], gh, h);
                // SAFETY: as in `forward_pair`: part (d, block) touches only its rows of direction
                // d's buffers.
                let rows = unsafe { bufs[d].rows(t, r0, r1, b, h, gh) };
                backward_rows(cell, h, gh, Operand::Plain(w_hh), rows, 1, Ended { lengths, t, r0 });
            },
        );
    }
    let [below_f, below_r] = belows;
    weight_grads(&pass.dims, lengths, lps[0], p, grads, fwd, below_f);
    weight_grads(&pass.dims, lengths, lps[1], p, grads, rev, below_r);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projection of live rows only: every row a time loop reads (`live_rows`) holds the
    /// same bits as the full product's, at 1 and 3 threads, sorted lengths or not, f32 and f64;
    /// the padding is left as it was.
    #[test]
    fn the_projection_skips_only_padding() {
        fn check<F: Float>() {
            let (i, h, t, b) = (5, 24, 30, 7);
            let gh = 3 * h;
            let lp = LayerParams { input: i, w_ih: 0, w_hh: gh * i, b_ih: gh * i, b_hh: gh * i + gh, w_hr: 0, ln: 0 };
            let p: Vec<F> = (0..gh * i + 2 * gh).map(|k| F::of(((k * 37 % 101) as f64 - 50.0) / 64.0)).collect();
            let x: Vec<F> = (0..t * b * i).map(|k| F::of(((k * 53 % 97) as f64 - 48.0) / 32.0)).collect();
            let sorted = [30, 25, 19, 12, 6, 2, 1];
            let holes = [30, 1, 19, 12, 1, 2, 1];
            for lengths in [&sorted[..], &holes[..]] {
                for threads in [1, 3] {
                    let d = Dims {
                        cell: CellKind::Gru,
                        h,
                        hp: h,
                        gh,
                        b,
                        norm: false,
                        steps: t,
                        threads,
                        precision: Precision::F32,
                    };
                    let mut full = vec![F::zero(); t * b * gh];
                    project(&d, &[], &lp, &p, &mut full, &x);
                    let stale = F::of(7.5);
                    let mut skip = vec![stale; t * b * gh];
                    project_live(&d, lengths, &lp, &p, &mut skip, &x);
                    for s in 0..t {
                        let live = live_rows(lengths, s, 0, b);
                        assert!(live < b || s == 0, "the test's lengths leave padding");
                        for r in 0..b {
                            let row = (s * b + r) * gh..(s * b + r + 1) * gh;
                            if r < live {
                                assert!(skip[row.clone()] == full[row], "step {s} row {r}: not the full product's");
                            } else {
                                assert!(skip[row].iter().all(|&v| v == stale), "step {s} row {r}: padding written");
                            }
                        }
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }
}
