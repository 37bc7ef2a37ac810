//! Products with few rows: C (m × n) (+)= A (m × k) · B (k × n) for m ≤ 8, each row of B loaded
//! once into registers and multiplied into every row of C — the per-step recurrent products of a
//! batch's last running rows (lengths) and of small batches, where the GEMM crate's packing and
//! dispatch cost more than the arithmetic. f32 with AVX-512, or AVX2 with FMA in rows of up to 4
//! (checked at run time); everything else runs in the crate.
//!
//! Each element of C is one chain of fused multiply-adds over k in order (then + C when
//! accumulating), so a product gives the same bits however its columns are cut into tiles.

use super::{Mat, MatMut};

/// The most rows of A (and of C) the kernel takes.
pub(crate) const MAX_ROWS: usize = 8;

/// 16-wide vectors of C's columns per block: with 1 or 2 rows 8 (a block of 128 columns, a
/// whole unit block of the unit split: one stream of B instead of two, the lengths' last rows
/// run at the latency of one chain), with 3 or 4 rows 6 (24 accumulators and 6 loaded rows of B
/// fill the 32 registers), with 5 to 8 rows 3.
const VECTORS_2: usize = 8;
const VECTORS: usize = 6;
const VECTORS_8: usize = 3;

/// Whether the kernel runs a product of `m` rows whose B and C have unit column strides.
pub(crate) fn takes(m: usize, b_cs: usize, c_cs: usize) -> bool {
    m <= MAX_ROWS && b_cs == 1 && c_cs == 1 && super::machine::simd() >= super::machine::Simd::Avx2
}

/// Whether the kernels run AVX-512F here ([`super::machine::simd`]; else AVX2 with FMA, where
/// [`takes`]).
pub(super) fn native() -> bool {
    super::machine::simd() == super::machine::Simd::Avx512
}

/// C (+)= A · B (see the module docs).
///
/// # Panics
/// If the product is not one [`takes`] (an internal invariant).
pub(crate) fn gemm(c: MatMut<'_, f32>, a: Mat<'_, f32>, b: Mat<'_, f32>, accumulate: bool) {
    assert!(takes(c.rows, b.cs, c.cs), "few-row product of a shape it does not take");
    assert!(a.rows == c.rows && a.cols == b.rows && b.cols == c.cols, "few-row product shape mismatch");
    #[cfg(target_arch = "x86_64")]
    if !native() {
        // AVX2 with FMA (`takes`): rows in groups of up to 4, each over all the columns.
        let mut r0 = 0;
        while r0 < c.rows {
            let rows = (c.rows - r0).min(4);
            // SAFETY: rows [r0, r0 + rows) of C, this call's alone.
            let cr = unsafe { c.block(r0, rows, 0, c.cols) };
            // SAFETY: AVX2 and FMA are present (`takes`), the views as below.
            unsafe { avx2_rows(&cr, a.sub_rows(r0, rows), b, accumulate) };
            r0 += rows;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let vectors = match c.rows {
            0..=2 => VECTORS_2,
            3..=4 => VECTORS,
            _ => VECTORS_8,
        };
        let full = c.cols / (16 * vectors) * 16 * vectors;
        let rest = (c.cols - full).div_ceil(16);
        // SAFETY: AVX-512F is present (`takes`); the views were bounds-checked on construction
        // and the kernels touch only their elements (masked loads and stores at the edge).
        unsafe {
            if full > 0 {
                match vectors {
                    VECTORS_2 => by_rows::<VECTORS_2>(c.rows, &c, a, b, 0, full, accumulate),
                    VECTORS => by_rows::<VECTORS>(c.rows, &c, a, b, 0, full, accumulate),
                    _ => by_rows::<VECTORS_8>(c.rows, &c, a, b, 0, full, accumulate),
                }
            }
            match rest {
                0 => {}
                1 => by_rows::<1>(c.rows, &c, a, b, full, c.cols, accumulate),
                2 => by_rows::<2>(c.rows, &c, a, b, full, c.cols, accumulate),
                3 => by_rows::<3>(c.rows, &c, a, b, full, c.cols, accumulate),
                4 => by_rows::<4>(c.rows, &c, a, b, full, c.cols, accumulate),
                5 => by_rows::<5>(c.rows, &c, a, b, full, c.cols, accumulate),
                6 => by_rows::<6>(c.rows, &c, a, b, full, c.cols, accumulate),
                _ => by_rows::<7>(c.rows, &c, a, b, full, c.cols, accumulate),
            }
        }
    }
}

/// Columns [j0, j1) in blocks of `V` vectors, for `m` rows.
///
/// # Safety
/// As [`block`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn by_rows<const V: usize>(
    m: usize,
    c: &MatMut<'_, f32>,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    j0: usize,
    j1: usize,
    accumulate: bool,
) {
    let mut j = j0;
    while j < j1 {
        let w = (j1 - j).min(16 * V);
        // SAFETY: the caller's contract.
        unsafe {
            match m {
                1 => block::<1, V>(c, a, b, j, w, accumulate),
                2 => block::<2, V>(c, a, b, j, w, accumulate),
                3 => block::<3, V>(c, a, b, j, w, accumulate),
                4 => block::<4, V>(c, a, b, j, w, accumulate),
                // (5 to 8 rows: at most 3 vectors, `gemm`'s blocks and remainders of ≤ 48.)
                5 => block::<5, V>(c, a, b, j, w, accumulate),
                6 => block::<6, V>(c, a, b, j, w, accumulate),
                7 => block::<7, V>(c, a, b, j, w, accumulate),
                _ => block::<8, V>(c, a, b, j, w, accumulate),
            }
        }
        j += w;
    }
}

/// Columns [j, j + w) (w ≤ 16·V) of all M rows: M × V accumulators over k.
///
/// # Safety
/// AVX-512F must be present; the views must be in bounds with unit column strides in B and C,
/// and C's elements this call's alone.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block<const M: usize, const V: usize>(
    c: &MatMut<'_, f32>,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    j: usize,
    w: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    // (Plain loops, no closures: the intrinsics stay inside this function's target feature.)
    let mut masks: [__mmask16; V] = [0; V];
    for (v, m) in masks.iter_mut().enumerate() {
        let left = w.saturating_sub(16 * v).min(16);
        *m = ((1u32 << left) - 1) as __mmask16;
    }
    let mut acc = [[_mm512_setzero_ps(); V]; M];
    let mut bv = [_mm512_setzero_ps(); V];
    let (bp, ap) = (b.data.as_ptr(), a.data.as_ptr());
    for k in 0..a.cols {
        // SAFETY: row k of B from column j: in bounds where the mask is set (masked lanes are
        // neither read nor faulted on); A's (r, k) are in bounds (r < M = its rows).
        unsafe {
            let row = bp.wrapping_add(k * b.rs + j);
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_maskz_loadu_ps(masks[v], row.wrapping_add(16 * v));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * a.rs + k * a.cs));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(x, bv, *acc);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &sum) in acc.iter().enumerate() {
            // SAFETY: row r of C from column j + 16v, masked to the block's columns.
            unsafe {
                let at = c.data.wrapping_add(r * c.rs + j + 16 * v);
                let sum = if accumulate { _mm512_add_ps(sum, _mm512_maskz_loadu_ps(masks[v], at)) } else { sum };
                _mm512_mask_storeu_ps(at, masks[v], sum);
            }
        }
    }
}

/// Up to 4 rows of C (+)= A · B on AVX2: blocks of 8 vectors of 8 columns for one row, 6 for
/// two, 3 for three, 2 for four (at most 12 accumulators, with the operands of one k in the
/// other registers), then the last columns.
///
/// # Safety
/// AVX2 and FMA must be present; the views as [`block_avx2`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_rows(c: &MatMut<'_, f32>, a: Mat<'_, f32>, b: Mat<'_, f32>, accumulate: bool) {
    let vectors = [8, 6, 3, 2][c.rows - 1];
    let mut j = 0;
    while j < c.cols {
        let w = (c.cols - j).min(8 * vectors);
        // SAFETY: the caller's contract; columns [j, j + w) of C.
        unsafe {
            match (c.rows, w.div_ceil(8)) {
                (1, v) => by_vectors_avx2::<1>(v, c, a, b, j, w, accumulate),
                (2, v) => by_vectors_avx2::<2>(v, c, a, b, j, w, accumulate),
                (3, v) => by_vectors_avx2::<3>(v, c, a, b, j, w, accumulate),
                (_, v) => by_vectors_avx2::<4>(v, c, a, b, j, w, accumulate),
            }
        }
        j += w;
    }
}

/// [`block_avx2`] for M rows and `v` (1 to 8) vectors.
///
/// # Safety
/// As [`block_avx2`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn by_vectors_avx2<const M: usize>(
    v: usize,
    c: &MatMut<'_, f32>,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    j: usize,
    w: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match v {
            1 => block_avx2::<M, 1>(c, a, b, j, w, accumulate),
            2 => block_avx2::<M, 2>(c, a, b, j, w, accumulate),
            3 => block_avx2::<M, 3>(c, a, b, j, w, accumulate),
            4 => block_avx2::<M, 4>(c, a, b, j, w, accumulate),
            5 => block_avx2::<M, 5>(c, a, b, j, w, accumulate),
            6 => block_avx2::<M, 6>(c, a, b, j, w, accumulate),
            7 => block_avx2::<M, 7>(c, a, b, j, w, accumulate),
            _ => block_avx2::<M, 8>(c, a, b, j, w, accumulate),
        }
    }
}

/// Columns [j, j + w) (w ≤ 8·V) of all M rows on AVX2: M × V accumulators over k, the M
/// broadcasts held while each vector of B's row is loaded in turn where M ≤ V, else the V
/// vectors held while each row's element is broadcast in turn; the same chains as [`block`].
///
/// # Safety
/// AVX2 and FMA must be present; the views must be in bounds with unit column strides in B and
/// C, and C's elements this call's alone.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const M: usize, const V: usize>(
    c: &MatMut<'_, f32>,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    j: usize,
    w: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut masks = [_mm256_setzero_si256(); V];
    for (v, m) in masks.iter_mut().enumerate() {
        let left = w.saturating_sub(8 * v).min(8);
        *m = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lanes);
    }
    let full = w == 8 * V;
    let mut acc = [[_mm256_setzero_ps(); V]; M];
    let (bp, ap) = (b.data.as_ptr(), a.data.as_ptr());
    for k in 0..a.cols {
        // SAFETY: row k of B from column j: in bounds where the mask is set (masked lanes are
        // neither read nor faulted on), all 8·V columns when `full`; A's (r, k) are in bounds.
        unsafe {
            let row = bp.wrapping_add(k * b.rs + j);
            let load = |v: usize| {
                if full {
                    _mm256_loadu_ps(row.add(8 * v))
                } else {
                    _mm256_maskload_ps(row.wrapping_add(8 * v), masks[v])
                }
            };
            if M <= V {
                let x: [__m256; M] = std::array::from_fn(|r| _mm256_broadcast_ss(&*ap.add(r * a.rs + k * a.cs)));
                for v in 0..V {
                    let bv = load(v);
                    for (acc, &x) in acc.iter_mut().zip(&x) {
                        acc[v] = _mm256_fmadd_ps(x, bv, acc[v]);
                    }
                }
            } else {
                let bv: [__m256; V] = std::array::from_fn(load);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*ap.add(r * a.rs + k * a.cs));
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm256_fmadd_ps(x, bv, *acc);
                    }
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &sum) in acc.iter().enumerate() {
            // SAFETY: row r of C from column j + 8v, masked to the block's columns.
            unsafe {
                let at = c.data.wrapping_add(r * c.rs + j + 8 * v);
                let sum = if accumulate { _mm256_add_ps(sum, _mm256_maskload_ps(at, masks[v])) } else { sum };
                _mm256_maskstore_ps(at, masks[v], sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Product, check};
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// Every row count, column counts around the block edges, strided A and B, with and without
    /// accumulation: against the definition (in f64: k ulps) and the GEMM crate (the same to
    /// rounding), and bit for bit the same when C's columns are cut in two.
    #[test]
    fn few_rows_match_the_definition_and_the_crate() {
        if !takes(1, 1, 1) {
            return; // (the crate runs these products here)
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for m in 1..=MAX_ROWS {
            for (k, n) in [(1, 1), (3, 17), (16, 96), (37, 100), (64, 128), (256, 384), (5, 193)] {
                for accumulate in [false, true] {
                    let (ars, brs) = (k + 3, n + 5);
                    let a: Vec<f32> = (0..m * ars).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let b: Vec<f32> = (0..k * brs).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let (av, bv) = (Mat::strided(&a, m, k, ars, 1), Mat::strided(&b, k, n, brs, 1));
                    let mut c = c0.clone();
                    gemm(MatMut::rows(&mut c, m, n), av, bv, accumulate);
                    let mut crate_c = c0.clone();
                    super::super::crate_gemm(MatMut::rows(&mut crate_c, m, n), av, bv, accumulate);
                    let (a_at, b_at) = (|r: usize, kk: usize| a[r * ars + kk], |kk: usize, j: usize| b[kk * brs + j]);
                    check(Product { c: &c, crate_c: &crate_c, c0: &c0, m, n, k, accumulate }, a_at, b_at);
                    // Two column tiles give the same bits as one product.
                    let cut = n / 2;
                    let mut tiled = c0.clone();
                    {
                        let (left, right) =
                            (Mat::strided(&b, k, cut, brs, 1), Mat::strided(&b[cut..], k, n - cut, brs, 1));
                        let cm = MatMut::rows(&mut tiled, m, n);
                        // SAFETY: the two blocks are disjoint columns of C.
                        let (l, r) = unsafe { (cm.block(0, m, 0, cut), cm.block(0, m, cut, n - cut)) };
                        if cut > 0 {
                            gemm(l, av, left, accumulate);
                        }
                        gemm(r, av, right, accumulate);
                    }
                    assert_eq!(tiled, c, "m={m} k={k} n={n}: tiles differ");
                }
            }
        }
    }
}
