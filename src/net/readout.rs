//! The linear readout y = W_out f + b_out (one GEMM each way) and the losses with their
//! gradient dL/dy. Its rows f are the top layer's outputs h_t, T·B of them (a per-step head),
//! or B features pooled over each sequence's own steps (a pooled head: `pool` above `unpool`).

use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::kernels::{self, Mat, MatMut, Precision, team};
use crate::net::layer::Dims;
use crate::net::{LossKind, Net, NetConfig, Pool, Pooling, Target, Targets};

/// The length of sequence `r` within a pass of `steps` steps (all of them without lengths).
fn length(lengths: &[usize], r: usize, steps: usize) -> usize {
    lengths.get(r).map_or(steps, |&l| l.min(steps))
}

/// features (B, P·H) from the top outputs (T, B, H): per sequence r of length len, the chosen
/// poolings of h_1..h_len in the order last, mean, max; `argmax` (B, H) records the step of
/// each maximum (the first on ties) for the backward pass.
///
/// `reverse` > 0 (a bidirectional net, `reverse` = H): `last` takes the output's last `reverse`
/// values from step 1 instead — the reverse direction's final state, as PyTorch's
/// `torch.cat((h_n[-2], h_n[-1]), 1)`.
pub(crate) fn pool<F: Float>(
    pool: Pool,
    top: &[F],
    d: &Dims,
    lengths: &[usize],
    reverse: usize,
    feats: &mut [F],
    argmax: &mut [u32],
) {
    let Dims { steps, b, h, .. } = *d;
    let split = h - reverse;
    let p = pool.count();
    let row = |t: usize, r: usize| &top[(t * b + r) * h..(t * b + r + 1) * h];
    for (r, f) in feats.chunks_exact_mut(p * h).enumerate().take(b) {
        let len = length(lengths, r, steps);
        for (kind, slot) in pool.kinds().zip(f.chunks_exact_mut(h)) {
            match kind {
                Pooling::Last => {
                    slot[..split].copy_from_slice(&row(len - 1, r)[..split]);
                    slot[split..].copy_from_slice(&row(0, r)[split..]);
                }
                Pooling::Mean => {
                    slot.copy_from_slice(row(0, r));
                    for t in 1..len {
                        kernels::add_into(slot, row(t, r));
                    }
                    let inv = F::one() / F::of(len as f64);
                    slot.iter_mut().for_each(|v| *v *= inv);
                }
                Pooling::Max => {
                    let at = &mut argmax[r * h..(r + 1) * h];
                    slot.copy_from_slice(row(0, r));
                    at.fill(0);
                    for t in 1..len {
                        for ((m, a), &v) in slot.iter_mut().zip(at.iter_mut()).zip(row(t, r)) {
                            if v > *m {
                                (*m, *a) = (v, t as u32);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// dL/dtop (T, B, H) from dL/dfeatures (B, P·H): the last step's share to h_len, the mean's
/// spread as 1/len over h_1..h_len, the maximum's to the step that attained it. Padded steps
/// get zero. `reverse` as in [`pool`].
pub(crate) fn unpool<F: Float>(
    pool: Pool,
    dfeats: &[F],
    d: &Dims,
    lengths: &[usize],
    reverse: usize,
    argmax: &[u32],
    dtop: &mut [F],
) {
    let Dims { steps, b, h, .. } = *d;
    let split = h - reverse;
    let p = pool.count();
    dtop.fill(F::zero());
    for (r, d) in dfeats.chunks_exact(p * h).enumerate().take(b) {
        let len = length(lengths, r, steps);
        let at = |t: usize| (t * b + r) * h;
        for (kind, slot) in pool.kinds().zip(d.chunks_exact(h)) {
            match kind {
                Pooling::Last => {
                    kernels::add_into(&mut dtop[at(len - 1)..at(len - 1) + split], &slot[..split]);
                    kernels::add_into(&mut dtop[at(0) + split..at(0) + h], &slot[split..]);
                }
                Pooling::Mean => {
                    let inv = F::one() / F::of(len as f64);
                    for t in 0..len {
                        for (g, &v) in dtop[at(t)..at(t) + h].iter_mut().zip(slot) {
                            *g += v * inv;
                        }
                    }
                }
                Pooling::Max => {
                    for (j, &v) in slot.iter().enumerate() {
                        dtop[at(argmax[r * h + j] as usize) + j] += v;
                    }
                }
            }
        }
    }
}

/// logits (rows, O) = bias + rows (rows, W) · W_outᵀ, W the readout width (H, or P·H pooled).
pub(crate) fn forward<F: Float>(net: &Net, p: &[F], top: &[F], logits: &mut [F], threads: usize, precision: Precision) {
    let (o, h) = (net.config.output, net.config.readout_width());
    let rows = logits.len() / o;
    kernels::fill_rows(logits, &p[net.b_out..net.b_out + o]);
    kernels::gemm_at(
        precision,
        MatMut::rows(logits, rows, o),
        Mat::rows(top, rows, h),
        Mat::rows(&p[net.w_out..], o, h).t(),
        true,
        threads,
    );
}

/// The loss (see the module docs of `net`) and dL/dlogits, written into `dlogits`.
pub(crate) fn loss<F: Float>(
    cfg: &NetConfig,
    logits: &[F],
    dlogits: &mut [F],
    targets: Targets<'_, F>,
    rows: usize,
    threads: usize,
) -> Result<F> {
    let o = cfg.output;
    let weights = match targets.mask {
        Some(m) => {
            check_len("mask (T·B)", rows, m.len())?;
            if m.iter().any(|w| !w.is_finite() || *w < F::zero()) {
                return Err(Error::Data("mask weights must be finite and non-negative".into()));
            }
            m.iter().map(|w| w.f64()).sum::<f64>()
        }
        None => rows as f64,
    };
    let weight = |r: usize| targets.mask.map_or(1.0, |m| m[r].f64());
    if weights == 0.0 {
        dlogits.fill(F::zero());
        return Ok(F::zero());
    }
    let mut total = 0.0f64;
    match (cfg.loss, targets.target) {
        (LossKind::CrossEntropy, Target::Classes(y)) => {
            check_len("class targets (T·B)", rows, y.len())?;
            if let Some(bad) = y.iter().find(|&&c| c as usize >= o) {
                return Err(Error::Data(format!("class target {bad} is outside 0..{o}")));
            }
            // Blocks of rows (one per 8k logits, from the sizes only), on up to `threads`
            // threads; their sums are added in block order.
            let parts = kernels::parts::count(rows * o, 1 << 13, o).min(rows.max(1));
            let bound = |p: usize| kernels::parts::range(rows, parts, 1, p).0;
            let mut dz = kernels::parts::chunks(dlogits, parts, |p| if p == parts { rows * o } else { bound(p) * o });
            let mut items: [(&mut [F], f64); kernels::team::MAX_PARTS] =
                std::array::from_fn(|p| (std::mem::take(&mut dz[p]), 0.0));
            team::for_each_mut(threads, &mut items[..parts], |p, (d, t)| {
                let (r0, r1) = kernels::parts::range(rows, parts, 1, p);
                let m = targets.mask.map(|m| &m[r0..r1]);
                *t = cross_entropy(o, &logits[r0 * o..r1 * o], d, &y[r0..r1], m, weights);
            });
            total = items[..parts].iter().map(|i| i.1).sum();
        }
        (LossKind::Mse, Target::Values(y)) => {
            check_len("value targets (T·B·O)", rows * o, y.len())?;
            let inv_o = 1.0 / o as f64;
            for (r, ((z, t), dz)) in
                logits.chunks_exact(o).zip(y.chunks_exact(o)).zip(dlogits.chunks_exact_mut(o)).enumerate()
            {
                let w = weight(r);
                if w == 0.0 {
                    dz.fill(F::zero());
                    continue;
                }
                let scale = F::of(2.0 * inv_o * w / weights);
                let mut se = 0.0;
                for ((d, &zv), &tv) in dz.iter_mut().zip(z).zip(t) {
                    let diff = zv - tv;
                    se += diff.f64() * diff.f64();
                    *d = scale * diff;
                }
                total += w * se * inv_o;
            }
        }
        _ => {
            return Err(Error::Config(
                "target kind does not match the loss (classes for cross-entropy, values for mse)".into(),
            ));
        }
    }
    Ok(F::of(total / weights))
}

/// Σ_r w_r · (−log softmax(z_r)[y_r]) over some rows, writing dL/dz (w_r / Σw · (softmax − onehot))
/// into `dz`; `weights` is Σw over all rows.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn cross_entropy<F: Float>(o: usize, z: &[F], dz: &mut [F], y: &[u32], mask: Option<&[F]>, weights: f64) -> f64 {
    let mut total = 0.0;
    for (r, (z, dz)) in z.chunks_exact(o).zip(dz.chunks_exact_mut(o)).enumerate() {
        let w = mask.map_or(1.0, |m| m[r].f64());
        if w == 0.0 {
            dz.fill(F::zero());
            continue;
        }
        let max = z.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
        for (d, &v) in dz.iter_mut().zip(z) {
            *d = (v - max).exp_act();
        }
        let sum = kernels::sum(dz);
        let y = y[r] as usize;
        // log Σ exp(z − max) − (z_y − max): the max is never added to a small number, so a
        // uniform shift of every logit (even near f32's largest) leaves the loss as it was.
        total += w * (sum.ln() - (z[y] - max)).f64();
        let scale = F::of(w / weights) / sum;
        for d in dz.iter_mut() {
            *d *= scale;
        }
        dz[y] -= F::of(w / weights);
    }
    total
}

/// dW_out += dlogitsᵀ · rows, db_out += Σ rows of dlogits, drows = dlogits · W_out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Float>(
    net: &Net,
    p: &[F],
    grads: &mut [F],
    top: &[F],
    dlogits: &[F],
    dtop: &mut [F],
    threads: usize,
    precision: Precision,
) {
    let (o, h) = (net.config.output, net.config.readout_width());
    let rows = dlogits.len() / o;
    kernels::gemm_at(
        precision,
        MatMut::rows(&mut grads[net.w_out..net.w_out + o * h], o, h),
        Mat::rows(dlogits, rows, o).t(),
        Mat::rows(top, rows, h),
        true,
        threads,
    );
    kernels::add_col_sums(&mut grads[net.b_out..net.b_out + o], dlogits, rows, o);
    kernels::gemm_at(
        precision,
        MatMut::rows(dtop, rows, h),
        Mat::rows(dlogits, rows, o),
        Mat::rows(&p[net.w_out..], o, h),
        false,
        threads,
    );
}
