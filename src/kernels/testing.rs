//! Test helpers shared by the kernels' tests: a computed product checked against its
//! definition and the GEMM crate.

/// A computed product C (m × n) beside the crate's and C's initial values.
pub(crate) struct Product<'a> {
    pub c: &'a [f32],
    pub crate_c: &'a [f32],
    pub c0: &'a [f32],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub accumulate: bool,
}

/// Every element of `p.c` against the definition Σ a(r, kk)·b(kk, j) (+ C) in f64, within k
/// ulps of the magnitudes summed, and against the crate's within twice that.
pub(crate) fn check(p: Product<'_>, a_at: impl Fn(usize, usize) -> f32, b_at: impl Fn(usize, usize) -> f32) {
    let Product { c, crate_c, c0, m, n, k, accumulate } = p;
    for r in 0..m {
        for j in 0..n {
            let mut want = if accumulate { c0[r * n + j] as f64 } else { 0.0 };
            let mut scale = want.abs();
            for kk in 0..k {
                let p = a_at(r, kk) as f64 * b_at(kk, j) as f64;
                want += p;
                scale += p.abs();
            }
            let got = c[r * n + j] as f64;
            let tol = (k + 2) as f64 * f32::EPSILON as f64 * scale;
            assert!((got - want).abs() <= tol, "m={m} n={n} k={k} ({r},{j}): {got} vs {want}");
            let other = crate_c[r * n + j] as f64;
            assert!((got - other).abs() <= 2.0 * tol, "m={m} n={n} k={k}: crate {other}, ours {got}");
        }
    }
}
