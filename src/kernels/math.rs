//! Branch-free f32 `exp`, `sigmoid` and `tanh` that the compiler vectorises (Cephes-style
//! range reduction and minimax polynomials, within 2 ulp of the correctly rounded result).
//! The f64 path uses the standard library, so gradient checks run on exact functions.

#![allow(clippy::excessive_precision)] // the published coefficients, digit for digit

// The constants of `exp`, shared by the scalar function and the vector kernels below.
/// Inputs are clamped to [EXP_LO, EXP_HI], so results stay normal and finite.
const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.0;
/// ln 2 in two parts: n · LN2_HI is exact for the n that occur, LN2_LO carries the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// The polynomial p(r) of e^r ≈ 1 + r + p(r) r², highest degree first (Horner's order).
const EXP_POLY: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

/// e^x for f32, branch-free. Inputs are clamped to [−87, 88] (results stay normal, finite);
/// NaN propagates.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI); // NaN stays NaN
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let y = p * (r * r) + r + 1.0;
    // 2^n from the integer's bits (no float→int conversion, so the loop vectorises).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// σ(x) = 1 / (1 + e^(−x)) for f32, branch-free.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// tanh(x) for f32, branch-free: an odd polynomial for |x| < 0.625, 1 − 2/(e^(2|x|) + 1)
/// with the sign of x beyond.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let big = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    let z = x * x;
    let small = ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
        - 3.333_328_2e-1)
        * z
        * x
        + x;
    if a < 0.625 { small } else { big }
}

/// The LSTM's forward step over one row's units in AVX-512F f32 vectors (the cell's inner loop,
/// `cell::lstm::forward_row`, where the CPU has AVX-512F): the same functions as [`exp_f32`],
/// [`sigmoid_f32`] and [`tanh_f32`] with fused multiply-adds, and 1/d as the 14-bit reciprocal
/// refined by one Newton step instead of a division (a division of 16 lanes issues once per
/// ~10 cycles, and the step takes five). Every lane runs the same instructions — the last
/// vector masked — so a unit's result does not depend on where a row is cut. With AVX2 and FMA
/// (no AVX-512F) the same in 8-lane vectors, gate by gate, dividing instead. Returns false (nothing done)
/// where the CPU has neither.
pub(crate) fn lstm_forward_row(gates: [&mut [f32]; 4], c_prev: &[f32], out: [&mut [f32]; 3]) -> bool {
    let n = gates[0].len();
    assert!(
        gates.iter().map(|g| g.len()).chain(out.iter().map(|o| o.len())).all(|l| l >= n) && c_prev.len() >= n,
        "an LSTM row's slices hold its units"
    );
    #[cfg(target_arch = "x86_64")]
    match super::machine::simd() {
        super::machine::Simd::Avx512 => {
            // SAFETY: AVX-512F is present (checked), and every slice holds n floats (asserted).
            unsafe { avx512::lstm_forward_row(n, gates, c_prev, out) };
            return true;
        }
        super::machine::Simd::Avx2 => {
            // SAFETY: AVX2 and FMA are present (checked), every slice holds n floats (asserted).
            unsafe { avx2::lstm_forward_row(n, gates, c_prev, out) };
            return true;
        }
        super::machine::Simd::None => {}
    }
    let _ = (gates, c_prev, out);
    false
}

/// The GRU's forward step over one row's units in AVX2 f32 vectors (the cell's inner loop,
/// `cell::gru::forward_row`, where the CPU has AVX2 and FMA but not AVX-512F, which keeps the
/// compiler's 16-lane loop): gates (r, z, n) in as input pre-activations and activated out,
/// `hp` the recurrent pre-activations (h_r, h_z, h_n), then h_n copied out and h_t, with the
/// functions of [`sigmoid_f32`] and [`tanh_f32`] in fused multiply-adds, every lane by the
/// same instructions (cut-free). Returns false (nothing done) elsewhere.
pub(crate) fn gru_forward_row(gates: [&mut [f32]; 3], hp: [&[f32]; 3], h_prev: &[f32], out: [&mut [f32]; 2]) -> bool {
    let n = gates[0].len();
    let lens = gates.iter().map(|g| g.len()).chain(hp.iter().map(|h| h.len()));
    assert!(
        lens.chain(out.iter().map(|o| o.len())).all(|l| l >= n) && h_prev.len() >= n,
        "a GRU row's slices hold its units"
    );
    #[cfg(target_arch = "x86_64")]
    if super::machine::simd() == super::machine::Simd::Avx2 {
        // SAFETY: AVX2 and FMA are present (checked), every slice holds n floats (asserted).
        unsafe { avx2::gru_forward_row(n, gates, hp, h_prev, out) };
        return true;
    }
    let _ = (gates, hp, h_prev, out);
    false
}

/// tanh over a row (the tanh-RNN's forward step, `cell::rnn::forward_step`) in AVX2 f32
/// vectors, where the CPU has AVX2 and FMA but not AVX-512F: [`tanh_f32`]'s function with
/// fused multiply-adds, every lane by the same instructions. Returns false
/// (nothing done) elsewhere.
pub(crate) fn tanh_row(x: &[f32], out: &mut [f32]) -> bool {
    assert!(out.len() >= x.len(), "tanh's output holds its input");
    #[cfg(target_arch = "x86_64")]
    if super::machine::simd() == super::machine::Simd::Avx2 {
        // SAFETY: AVX2 and FMA are present (checked), both slices hold x.len() floats.
        unsafe { avx2::tanh_row(x, out) };
        return true;
    }
    let _ = (x, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, ROUND};

    /// [`super::exp_f32`] on 8 lanes, the polynomial in fused multiply-adds.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        // max(lo, x), min(hi, ·): a NaN in x is the second operand, which these return.
        let x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), _mm256_max_ps(_mm256_set1_ps(EXP_LO), x));
        let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(ROUND));
        let n = _mm256_sub_ps(shifted, _mm256_set1_ps(ROUND));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for coef in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*coef));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let n_bits = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(ROUND.to_bits() as i32));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_bits, _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    /// 1/d as a division. The 12-bit reciprocal estimate with two Newton steps (one leaves
    /// σ(x) for large x at 1 − 2⁻²⁴, not 1) ran the step 29% faster alone (the criterion
    /// bench) but 10% slower inside training on a Zen 3, whose divider runs beside the FMA
    /// pipes the four extra operations would take.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn recip(d: __m256) -> __m256 {
        _mm256_div_ps(_mm256_set1_ps(1.0), d)
    }

    /// [`super::sigmoid_f32`] on 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sigmoid(x: __m256) -> __m256 {
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
        recip(_mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    /// [`super::tanh_f32`] on 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tanh(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_andnot_ps(sign, x);
        let e = exp(_mm256_add_ps(a, a));
        let big =
            _mm256_fnmadd_ps(_mm256_set1_ps(2.0), recip(_mm256_add_ps(e, _mm256_set1_ps(1.0))), _mm256_set1_ps(1.0));
        let big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
        let z = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(-5.704_988_7e-3);
        for coef in [2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1] {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(coef));
        }
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(0.625));
        _mm256_blendv_ps(big, small, is_small)
    }

    /// Runs `f` over a row's units in 8-lane vectors: NI inputs in, NO outputs out (an output
    /// may be an input's place: each vector is loaded before it is stored). The last n mod 8
    /// units go through vectors on the stack (AVX2's masked stores are slow on some CPUs) by
    /// the same instructions, so a unit's result does not depend on where a row is cut.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; every pointer addresses at least n floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const NI: usize, const NO: usize>(
        n: usize,
        ins: [*const f32; NI],
        outs: [*mut f32; NO],
        f: impl Fn([__m256; NI]) -> [__m256; NO],
    ) {
        // SAFETY: lanes [j, j + 8) lie below n, which every pointer addresses (the contract).
        unsafe {
            let mut j = 0;
            // Two vectors per turn, their chains overlapping, then one.
            while j + 16 <= n {
                let y0 = f(ins.map(|p| _mm256_loadu_ps(p.add(j))));
                let y1 = f(ins.map(|p| _mm256_loadu_ps(p.add(j + 8))));
                for ((p, y0), y1) in outs.iter().zip(y0).zip(y1) {
                    _mm256_storeu_ps(p.add(j), y0);
                    _mm256_storeu_ps(p.add(j + 8), y1);
                }
                j += 16;
            }
            while j + 8 <= n {
                let y = f(ins.map(|p| _mm256_loadu_ps(p.add(j))));
                for (p, y) in outs.iter().zip(y) {
                    _mm256_storeu_ps(p.add(j), y);
                }
                j += 8;
            }
            let rest = n - j;
            if rest > 0 {
                let mut x = [[0.0f32; 8]; NI];
                for (x, p) in x.iter_mut().zip(ins) {
                    std::ptr::copy_nonoverlapping(p.add(j), x.as_mut_ptr(), rest);
                }
                let y = f(x.map(|x| _mm256_loadu_ps(x.as_ptr())));
                for (p, y) in outs.iter().zip(y) {
                    let mut out = [0.0f32; 8];
                    _mm256_storeu_ps(out.as_mut_ptr(), y);
                    std::ptr::copy_nonoverlapping(out.as_ptr(), p.add(j), rest);
                }
            }
        }
    }

    /// See [`super::lstm_forward_row`]: gates (i, f, g, o) in, activated out; c, tanh(c), h out.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; every slice holds at least n floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn lstm_forward_row(n: usize, g: [&mut [f32]; 4], c_prev: &[f32], out: [&mut [f32]; 3]) {
        let [gi, gf, gg, go] = g.map(|g| g.as_mut_ptr());
        let [c, tanh_c, h] = out.map(|o| o.as_mut_ptr());
        let ins = [gi as *const f32, gf, gg, go, c_prev.as_ptr()];
        // SAFETY: every pointer addresses n floats (the contract).
        unsafe {
            // Each gate on its own first: short independent chains, which the core overlaps
            // across vectors (one pass over all of a unit's chains, ~300 operations, outgrew the
            // reorder window and ran at its latency), then the state.
            for q in [gi, gf, go] {
                rows(
                    n,
                    [q as *const f32],
                    [q],
                    #[inline(always)]
                    |[x]| [sigmoid(x)],
                );
            }
            rows(
                n,
                [gg as *const f32],
                [gg],
                #[inline(always)]
                |[x]| [tanh(x)],
            );
            rows(
                n,
                ins,
                [c, tanh_c, h],
                #[inline(always)]
                |[i, f, g, o, cp]| {
                    let c = _mm256_fmadd_ps(f, cp, _mm256_mul_ps(i, g));
                    let tc = tanh(c);
                    [c, tc, _mm256_mul_ps(o, tc)]
                },
            )
        }
    }

    /// See [`super::tanh_row`].
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `out` holds at least `x.len()` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tanh_row(x: &[f32], out: &mut [f32]) {
        // SAFETY: both address x.len() floats (the contract).
        unsafe {
            rows(
                x.len(),
                [x.as_ptr()],
                [out.as_mut_ptr()],
                #[inline(always)]
                |[a]| [tanh(a)],
            )
        }
    }

    /// See [`super::gru_forward_row`]: r = σ(x_r + h_r), z = σ(x_z + h_z),
    /// n = tanh(x_n + r h_n) over the input pre-activations; h_n copied out; h_t.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; every slice holds at least n floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gru_forward_row(
        n: usize,
        g: [&mut [f32]; 3],
        hp: [&[f32]; 3],
        h_prev: &[f32],
        out: [&mut [f32]; 2],
    ) {
        let [gr, gz, gn] = g.map(|g| g.as_mut_ptr());
        let [hr, hz, hpn] = hp.map(|h| h.as_ptr());
        let [hn, h] = out.map(|o| o.as_mut_ptr());
        // SAFETY: every pointer addresses n floats (the contract).
        unsafe {
            // The gates r and z on their own first (short independent chains: see
            // `lstm_forward_row`), then n and the state.
            for (q, hq) in [(gr, hr), (gz, hz)] {
                rows(
                    n,
                    [q as *const f32, hq],
                    [q],
                    #[inline(always)]
                    |[x, h]| [sigmoid(_mm256_add_ps(x, h))],
                );
            }
            let ins = [gr as *const f32, gz, gn, hpn, h_prev.as_ptr()];
            rows(
                n,
                ins,
                [gn, hn, h],
                #[inline(always)]
                |[r, z, xn, hpn, hp]| {
                    let nn = tanh(_mm256_fmadd_ps(r, hpn, xn));
                    // (1 − z) n + z h_{t−1}
                    let h = _mm256_fmadd_ps(z, hp, _mm256_mul_ps(_mm256_sub_ps(_mm256_set1_ps(1.0), z), nn));
                    [nn, hpn, h]
                },
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, ROUND};

    /// [`super::exp_f32`] on 16 lanes, the polynomial in fused multiply-adds.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        // max(lo, x), min(hi, ·): a NaN in x is the second operand, which these return.
        let x = _mm512_min_ps(_mm512_set1_ps(EXP_HI), _mm512_max_ps(_mm512_set1_ps(EXP_LO), x));
        let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(ROUND));
        let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for coef in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*coef));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let n_bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUND.to_bits() as i32));
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(n_bits, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
    }

    /// 1/d: the 14-bit reciprocal and one Newton step, r (2 − d r).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn recip(d: __m512) -> __m512 {
        let r = _mm512_rcp14_ps(d);
        _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
    }

    /// [`super::sigmoid_f32`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sigmoid(x: __m512) -> __m512 {
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
        recip(_mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    /// [`super::tanh_f32`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tanh(x: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
        let e = exp(_mm512_add_ps(a, a));
        let big =
            _mm512_fnmadd_ps(_mm512_set1_ps(2.0), recip(_mm512_add_ps(e, _mm512_set1_ps(1.0))), _mm512_set1_ps(1.0));
        let big = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(big),
            _mm512_and_si512(sign, _mm512_castps_si512(x)),
        ));
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(-5.704_988_7e-3);
        for coef in [2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1] {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(coef));
        }
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.625));
        _mm512_mask_blend_ps(is_small, big, small)
    }

    /// See [`super::lstm_forward_row`]: gates (i, f, g, o) in, activated out; c, tanh(c), h out.
    ///
    /// # Safety
    /// AVX-512F must be present; every slice holds at least n floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn lstm_forward_row(n: usize, g: [&mut [f32]; 4], c_prev: &[f32], out: [&mut [f32]; 3]) {
        let [gi, gf, gg, go] = g;
        let [c, tanh_c, h] = out;
        let gates = [gi.as_mut_ptr(), gf.as_mut_ptr(), gg.as_mut_ptr(), go.as_mut_ptr()];
        let outs = [c.as_mut_ptr(), tanh_c.as_mut_ptr(), h.as_mut_ptr()];
        // Two vectors per turn (their chains, about 150 cycles each, overlap); one for the last
        // 16 lanes or fewer (a row block of 48 units: three vectors, not four).
        let mut j = 0;
        while j < n {
            // SAFETY: lanes [j, j + 16·V) masked to those below n, which every slice holds.
            unsafe {
                if n - j > 16 {
                    lstm_turn::<2>(n, j, gates, c_prev.as_ptr(), outs);
                } else {
                    lstm_turn::<1>(n, j, gates, c_prev.as_ptr(), outs);
                }
            }
            j += 32;
        }
    }

    /// V vectors of [`lstm_forward_row`] from lane j (masked to lanes below n).
    ///
    /// # Safety
    /// AVX-512F must be present; every pointer addresses at least n floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lstm_turn<const V: usize>(
        n: usize,
        j: usize,
        gates: [*mut f32; 4],
        c_prev: *const f32,
        outs: [*mut f32; 3],
    ) {
        let mask = |j: usize| -> __mmask16 {
            if n.saturating_sub(j) >= 16 { u16::MAX } else { (1u16 << n.saturating_sub(j)) - 1 }
        };
        let m: [__mmask16; V] = std::array::from_fn(|v| mask(j + 16 * v));
        // SAFETY: lanes masked to those below n (the caller's contract).
        unsafe {
            let ld = |s: *const f32| -> [__m512; V] {
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], s.add(j + 16 * v)))
            };
            let [gi, gf, gg, go] = gates;
            let (xi, xf, xg, xo, cp) = (ld(gi), ld(gf), ld(gg), ld(go), ld(c_prev));
            let i: [__m512; V] = std::array::from_fn(|v| sigmoid(xi[v]));
            let f: [__m512; V] = std::array::from_fn(|v| sigmoid(xf[v]));
            let g: [__m512; V] = std::array::from_fn(|v| tanh(xg[v]));
            let o: [__m512; V] = std::array::from_fn(|v| sigmoid(xo[v]));
            let cj: [__m512; V] = std::array::from_fn(|v| _mm512_fmadd_ps(f[v], cp[v], _mm512_mul_ps(i[v], g[v])));
            let tc: [__m512; V] = std::array::from_fn(|v| tanh(cj[v]));
            let st = |s: *mut f32, x: [__m512; V]| {
                for v in 0..V {
                    if m[v] != 0 {
                        _mm512_mask_storeu_ps(s.add(j + 16 * v), m[v], x[v]);
                    }
                }
            };
            st(gi, i);
            st(gf, f);
            st(gg, g);
            st(go, o);
            let [c, tanh_c, h] = outs;
            st(c, cj);
            st(tanh_c, tc);
            st(h, std::array::from_fn(|v| _mm512_mul_ps(o[v], tc[v])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 ulp at x (x rounded to f32).
    fn ulp(x: f64) -> f64 {
        let x = (x as f32).abs();
        f64::from(f32::from_bits(x.to_bits() + 1) - x)
    }

    fn ulps(a: f32, b: f64) -> f64 {
        (a as f64 - b).abs() / ulp(b)
    }

    /// The LSTM row kernel against the step's definition in f64 (each function within 3 ulp, and
    /// 1e-7 near zero; c, tanh(c) and h within what c's terms carry), at row lengths that end
    /// inside a vector; a unit's bits do not depend on where a row is cut; NaN propagates and
    /// large inputs saturate.
    #[test]
    fn lstm_row_kernel_is_the_step_within_three_ulp_and_cut_free() {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 12.0 - 6.0
        };
        for n in [1, 15, 16, 17, 33, 100, 512] {
            let x: Vec<Vec<f32>> = (0..5).map(|_| (0..n).map(|_| next()).collect()).collect();
            let run = |cuts: &[usize]| {
                let mut g = [x[0].clone(), x[1].clone(), x[2].clone(), x[3].clone()];
                let (mut c, mut tc, mut h) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                let mut at = 0;
                for &end in cuts.iter().chain([n].iter()).filter(|&&e| e <= n) {
                    let [gi, gf, gg, go] = &mut g;
                    let r = at..end;
                    let gates = [&mut gi[r.clone()], &mut gf[r.clone()], &mut gg[r.clone()], &mut go[r.clone()]];
                    if !lstm_forward_row(
                        gates,
                        &x[4][r.clone()],
                        [&mut c[r.clone()], &mut tc[r.clone()], &mut h[r.clone()]],
                    ) {
                        return None;
                    }
                    at = end;
                }
                Some((g, c, tc, h))
            };
            let Some((g, c, tc, h)) = run(&[]) else { return }; // no row kernel here
            for j in 0..n {
                let xs: Vec<f64> = (0..5).map(|q| f64::from(x[q][j])).collect();
                let (i, f, gg, o) = (sig(xs[0]), sig(xs[1]), xs[2].tanh(), sig(xs[3]));
                let cj = f * xs[4] + i * gg;
                let want = [i, f, gg, o, cj, cj.tanh(), o * cj.tanh()];
                // Each function within 3 ulp (and 1e-7 near zero); c = f·c_prev + i·g may cancel,
                // so its bound is its terms' (3 ulp each) and its own rounding, which tanh(c)
                // (slope ≤ 1) and h = o·tanh(c) carry on.
                let err_c = 3.0 * (ulp(f * xs[4]) + ulp(i * gg)) + ulp(cj) + 1e-7;
                let err_tc = err_c + 3.0 * ulp(cj.tanh());
                let bound = [i, f, gg, o].map(|w| 3.0 * ulp(w) + 1e-7);
                let bound = [bound[0], bound[1], bound[2], bound[3], err_c, err_tc, err_tc + 3.0 * ulp(want[6])];
                let got = [g[0][j], g[1][j], g[2][j], g[3][j], c[j], tc[j], h[j]];
                for (k, (&got, &want)) in got.iter().zip(&want).enumerate() {
                    let err = (f64::from(got) - want).abs();
                    assert!(err <= bound[k], "n={n} unit {j} output {k}: {got} vs {want} (bound {})", bound[k]);
                }
            }
            // The same bits however the row is cut into blocks of units.
            assert_eq!(run(&[7, 16, 20, 48]), Some((g, c, tc, h)), "n={n}: a cut row differs");
        }
        let mut g = [vec![f32::NAN, 100.0, -100.0], vec![0.0, 100.0, -100.0], vec![0.0, 100.0, -100.0], vec![0.0; 3]];
        let (cp, mut c, mut tc, mut h) = (vec![0.0, 1.0, 1.0], vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
        let [gi, gf, gg, go] = &mut g;
        if lstm_forward_row([gi, gf, gg, go], &cp, [&mut c, &mut tc, &mut h]) {
            assert!(gi[0].is_nan() && c[0].is_nan() && h[0].is_nan(), "NaN propagates");
            assert_eq!((gi[1], gf[1], gg[1], c[1], tc[1]), (1.0, 1.0, 1.0, 2.0, 0.964_027_6));
            assert!(gi[2] < 1e-37 && gg[2] == -1.0 && c[2] < 1e-37, "{g:?}");
        }
    }

    /// The GRU row kernel against the step's definition in f64 (each function within 3 ulp and
    /// 1e-7 near zero; n and h within what their arguments carry), at row lengths that end
    /// inside a vector; a unit's bits do not depend on where a row is cut; NaN propagates.
    #[test]
    fn gru_row_kernel_is_the_step_within_three_ulp_and_cut_free() {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        };
        for n in [1, 7, 8, 9, 16, 17, 33, 100, 512] {
            let x: Vec<Vec<f32>> = (0..7).map(|_| (0..n).map(|_| next()).collect()).collect();
            let run = |cuts: &[usize]| {
                let mut g = [x[0].clone(), x[1].clone(), x[2].clone()];
                let (mut hn, mut h) = (vec![0.0; n], vec![0.0; n]);
                let mut at = 0;
                for &end in cuts.iter().chain([n].iter()).filter(|&&e| e <= n) {
                    let [gr, gz, gn] = &mut g;
                    let r = at..end;
                    let gates = [&mut gr[r.clone()], &mut gz[r.clone()], &mut gn[r.clone()]];
                    let hp = [&x[3][r.clone()], &x[4][r.clone()], &x[5][r.clone()]];
                    if !gru_forward_row(gates, hp, &x[6][r.clone()], [&mut hn[r.clone()], &mut h[r.clone()]]) {
                        return None;
                    }
                    at = end;
                }
                Some((g, hn, h))
            };
            let Some((g, hn, h)) = run(&[]) else { return }; // no AVX2-only kernel here
            for j in 0..n {
                let xs: Vec<f64> = (0..7).map(|q| f64::from(x[q][j])).collect();
                let (r, z) = (sig(xs[0] + xs[3]), sig(xs[1] + xs[4]));
                let arg = xs[2] + r * xs[5];
                let nn = arg.tanh();
                let hj = (1.0 - z) * nn + z * xs[6];
                let err_n = xs[5].abs() * 3.0 * ulp(r) + 2.0 * ulp(arg) + 3.0 * ulp(nn) + 1e-7;
                let err_h = err_n + (nn.abs() + xs[6].abs()) * 3.0 * ulp(z) + 3.0 * ulp(hj) + 1e-7;
                let want = [r, z, nn, xs[5], hj];
                let bound = [3.0 * ulp(r) + 1e-7, 3.0 * ulp(z) + 1e-7, err_n, 0.0, err_h];
                let got = [g[0][j], g[1][j], g[2][j], hn[j], h[j]];
                for (k, ((&got, &want), &bound)) in got.iter().zip(&want).zip(&bound).enumerate() {
                    let err = (f64::from(got) - want).abs();
                    assert!(err <= bound, "n={n} unit {j} output {k}: {got} vs {want} (bound {bound})");
                }
            }
            assert_eq!(run(&[3, 8, 13, 40]), Some((g, hn, h)), "n={n}: a cut row differs");
        }
        let mut g = [vec![f32::NAN, 100.0], vec![0.0, -100.0], vec![0.0, 100.0]];
        let (hp, h_prev, mut hn, mut h) = ([0.0f32; 2], [1.0f32, 0.5], vec![0.0; 2], vec![0.0; 2]);
        let [gr, gz, gn] = &mut g;
        if gru_forward_row([gr, gz, gn], [&hp, &hp, &hp], &h_prev, [&mut hn, &mut h]) {
            assert!(gr[0].is_nan() && gn[0].is_nan() && h[0].is_nan(), "NaN propagates");
            assert_eq!((gr[1], gn[1], h[1]), (1.0, 1.0, 1.0), "saturates");
            assert!(gz[1] < 1e-37, "{g:?}");
        }
    }

    /// The tanh row kernel within 3 ulp of tanh (1e-7 near zero) over [−30, 30], the same bits
    /// however the row is cut, NaN propagating, ±1 and 0 exact.
    #[test]
    fn tanh_row_kernel_is_tanh_within_three_ulp_and_cut_free() {
        let x: Vec<f32> = (0..46_155).map(|k| -30.0 + 1.3e-3 * k as f32).collect();
        let mut y = vec![0.0; x.len()];
        if !tanh_row(&x, &mut y) {
            return; // no AVX2-only kernel here
        }
        for (&x, &y) in x.iter().zip(&y) {
            let want = f64::from(x).tanh();
            assert!((f64::from(y) - want).abs() <= 3.0 * ulp(want) + 1e-7, "tanh({x}) = {y}, not {want}");
        }
        let mut cut = vec![0.0; x.len()];
        for (at, end) in [(0, 3), (3, 11), (11, 12), (12, 1000), (1000, x.len())] {
            assert!(tanh_row(&x[at..end], &mut cut[at..end]));
        }
        assert_eq!(cut, y, "a cut row differs");
        let mut out = [0.0; 5];
        assert!(tanh_row(&[f32::NAN, 100.0, -100.0, 0.0, 1e-30], &mut out));
        assert!(out[0].is_nan(), "NaN propagates");
        assert_eq!(out[1..], [1.0, -1.0, 0.0, 1e-30]);
    }

    #[test]
    fn within_two_ulp_of_f64() {
        let mut worst = [0.0f64; 3];
        let mut x = -30.0f32;
        while x < 30.0 {
            let xd = x as f64;
            worst[0] = worst[0].max(ulps(exp_f32(x), xd.exp()));
            worst[1] = worst[1].max(ulps(sigmoid_f32(x), 1.0 / (1.0 + (-xd).exp())));
            worst[2] = worst[2].max(ulps(tanh_f32(x), xd.tanh()));
            x += 1.3e-3;
        }
        assert!(worst.iter().all(|&w| w <= 2.0), "exp, sigmoid, tanh worst ulps: {worst:?}");
        assert!(exp_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan() && sigmoid_f32(f32::NAN).is_nan());
        assert_eq!(
            (tanh_f32(100.0), tanh_f32(-100.0), sigmoid_f32(-200.0) < 1e-37, sigmoid_f32(200.0)),
            (1.0, -1.0, true, 1.0)
        );
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(tanh_f32(1e-30), 1e-30);
    }
}
