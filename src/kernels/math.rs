//! Branch-free f32 `exp`, `sigmoid` and `tanh` that the compiler vectorises (Cephes-style
//! range reduction and minimax polynomials, within 2 ulp of the correctly rounded result).
//! The f64 path uses the standard library, so gradient checks run on exact functions.

#![allow(clippy::excessive_precision)] // the published coefficients, digit for digit

/// e^x for f32, branch-free. Inputs are clamped to [−87, 88] (results stay normal, finite);
/// NaN propagates.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0); // NaN stays NaN
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
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
