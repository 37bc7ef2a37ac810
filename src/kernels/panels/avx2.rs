//! The panel products' register block on AVX2 with FMA (16 registers of 8 f32), where the CPU
//! lacks AVX-512F: the block of up to [`MR`] rows × one panel's [`NR`] columns runs as up to four
//! sub-blocks of at most 12 accumulators (6 rows × 16 columns three times, then 2 rows × 48:
//! [`sub_blocks`]), chunk by chunk of [`KB`] k, so that a chunk of the panel (24 KB) and of A's
//! rows (4 KB) stay in L1 while every sub-block runs over them. Each element is still one chain of fused
//! multiply-adds over k in order, carried between chunks as exact f32: the same bits as the
//! AVX-512 block and [`super::super::few`].

use super::{Chain, MR, NR};
use crate::kernels::MatMut;
use std::arch::x86_64::*;

/// Depth of the chunks of k over which the sub-blocks take turns (see the module docs).
const KB: usize = 128;
/// How many k ahead a sub-block that reads its columns of the panel first brings them into L1
/// (the panel's rows are 192 bytes apart, a stride the hardware prefetchers follow late): one
/// thread, in-process alternation, +3 to +8% on the per-step and deep products of LSTM H = 512
/// and 1024.
const FETCH_K: usize = 8;

/// One block's partial sums (MR rows of NR) between chunks, aligned for vector loads.
#[repr(C, align(64))]
struct Carry([f32; MR * NR]);

/// Where a sub-block's chains end after a chunk: the carried partial sums, or C.
#[derive(Clone, Copy)]
enum Out {
    Carry,
    /// C's element (r, j) at `data + r·rs + j` for j < `cols`; + C when `accumulate`.
    C {
        data: *mut f32,
        rs: usize,
        cols: usize,
        accumulate: bool,
    },
}

/// The operands of one sub-block over one chunk.
#[derive(Clone, Copy)]
struct Sub {
    /// A's element (r, kk) of the sub-block's rows, from the chunk's first k: at `kk·MR + r`
    /// packed, else at `r·rs + kk`.
    a: *const f32,
    rs: usize,
    /// The panel's row of the chunk's first k, from the sub-block's first column (aligned).
    b: *const f32,
    kc: usize,
    /// The carried sums of the sub-block's element (r, j) at `r·NR + j` (aligned).
    carry: *mut f32,
    from_carry: bool,
    out: Out,
    /// Lines to bring toward L2, one per k from the first.
    fetch: *const f32,
    lines: usize,
}

/// C's `rows` × its columns (+)= A's rows × the panel `b`, as the AVX-512 `tile` (its operands
/// and chains), in sub-blocks of 4 rows × 3 vectors chunk by chunk of [`KB`].
///
/// # Safety
/// AVX2 and FMA must be present; the operands as `tile_rows` asserts them.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    rows: usize,
    c: MatMut<'_, f32>,
    ap: &[f32],
    rs: usize,
    b: &[f32],
    k: usize,
    accumulate: bool,
    next: &[f32],
    chain: Chain,
    partial: *mut f32,
) {
    let packed = rs == 0;
    let (subs, count) = sub_blocks(rows, c.cols.div_ceil(8));
    let mut local = Carry([0.0; MR * NR]);
    let carry = if chain.from_partial || chain.to_partial { partial } else { local.0.as_mut_ptr() };
    let (mut fetch, mut lines) = (next.as_ptr(), next.len() / 16);
    let chunks = k.div_ceil(KB).max(1);
    for chunk in 0..chunks {
        let (k0, kc) = (chunk * KB, k.saturating_sub(chunk * KB).min(KB));
        let from_carry = chunk > 0 || chain.from_partial;
        let last = chunk + 1 == chunks;
        for &(r0, r, v0, w) in &subs[..count] {
            let out = if last && !chain.to_partial {
                // SAFETY: row r0, column 8·v0 of C's block (within it: r0 < rows, 8·v0 < cols).
                let data = unsafe { c.data.add(r0 * c.rs + 8 * v0) };
                Out::C { data, rs: c.rs, cols: c.cols - 8 * v0, accumulate }
            } else {
                Out::Carry
            };
            let take = lines.min(kc);
            // SAFETY: offsets within the operands `tile_rows` asserted (k rows of MR or of `rs`
            // floats in A, of NR in B, MR × NR carried sums).
            let sub = unsafe {
                Sub {
                    a: if packed { ap.as_ptr().add(k0 * MR + r0) } else { ap.as_ptr().add(r0 * rs + k0) },
                    rs,
                    b: b.as_ptr().add(k0 * NR + 8 * v0),
                    kc,
                    carry: carry.add(r0 * NR + 8 * v0),
                    from_carry,
                    out,
                    fetch,
                    lines: take,
                }
            };
            // SAFETY: lines of `next` (whole, asserted by the caller).
            (fetch, lines) = (unsafe { fetch.add(16 * take) }, lines - take);
            // SAFETY: the caller's contract, and the sub-block's operands above.
            unsafe {
                if packed {
                    dispatch::<true>(r, w, sub);
                } else {
                    dispatch::<false>(r, w, sub);
                }
            }
        }
    }
}

/// The sub-blocks (first row, rows, first vector, vectors) of a block of `rows` × `vectors`,
/// and how many: up to 2 rows as one (≤ 6 vectors), else up to 6 rows in pairs of vectors and
/// the rows past 6 as one — 12 accumulators each at most, with the operands of one k in the
/// other registers (a 4 × 3 block needs all 16, and the compiler kept one accumulator in
/// memory: 36 → 41% of the FMA peak).
fn sub_blocks(rows: usize, vectors: usize) -> ([(usize, usize, usize, usize); 4], usize) {
    let mut subs = [(0, 0, 0, 0); 4];
    if rows <= 2 {
        subs[0] = (0, rows, 0, vectors);
        return (subs, 1);
    }
    let mut count = 0;
    for v0 in (0..vectors).step_by(2) {
        subs[count] = (0, rows.min(6), v0, (vectors - v0).min(2));
        count += 1;
    }
    if rows > 6 {
        subs[count] = (6, rows - 6, 0, vectors);
        count += 1;
    }
    (subs, count)
}

/// [`sub_block`] for `r` rows and `w` vectors as [`sub_blocks`] cuts them.
///
/// # Safety
/// As [`sub_block`].
#[target_feature(enable = "avx2,fma")]
unsafe fn dispatch<const PACKED: bool>(r: usize, w: usize, sub: Sub) {
    // SAFETY: the caller's contract.
    unsafe {
        match (r, w) {
            (1, 1) => sub_block::<1, 1, PACKED>(sub),
            (1, 2) => sub_block::<1, 2, PACKED>(sub),
            (1, 3) => sub_block::<1, 3, PACKED>(sub),
            (1, 4) => sub_block::<1, 4, PACKED>(sub),
            (1, 5) => sub_block::<1, 5, PACKED>(sub),
            (1, _) => sub_block::<1, 6, PACKED>(sub),
            (2, 1) => sub_block::<2, 1, PACKED>(sub),
            (2, 2) => sub_block::<2, 2, PACKED>(sub),
            (2, 3) => sub_block::<2, 3, PACKED>(sub),
            (2, 4) => sub_block::<2, 4, PACKED>(sub),
            (2, 5) => sub_block::<2, 5, PACKED>(sub),
            (2, _) => sub_block::<2, 6, PACKED>(sub),
            (3, 1) => sub_block::<3, 1, PACKED>(sub),
            (3, _) => sub_block::<3, 2, PACKED>(sub),
            (4, 1) => sub_block::<4, 1, PACKED>(sub),
            (4, _) => sub_block::<4, 2, PACKED>(sub),
            (5, 1) => sub_block::<5, 1, PACKED>(sub),
            (5, _) => sub_block::<5, 2, PACKED>(sub),
            (_, 1) => sub_block::<6, 1, PACKED>(sub),
            (_, _) => sub_block::<6, 2, PACKED>(sub),
        }
    }
}

/// R rows × W vectors over one chunk: R·W accumulators, from zero or the carried sums, each one
/// FMA chain over the chunk's k in order, into the carried sums or C (+ C when accumulating).
///
/// # Safety
/// AVX2 and FMA must be present; `sub`'s pointers as its fields say, for `kc` k.
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_block<const R: usize, const W: usize, const PACKED: bool>(sub: Sub) {
    let Sub { a, rs, b, kc, carry, from_carry, out, fetch, lines } = sub;
    let mut acc = [[_mm256_setzero_ps(); W]; R];
    if from_carry {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the carried sums of (r, 8v) (the caller's contract).
                *acc = unsafe { _mm256_load_ps(carry.add(r * NR + 8 * v)) };
            }
        }
    }
    if let Out::C { data, rs: c_rs, accumulate: true, .. } = out {
        for r in 0..R {
            // (A prefetch of row r of C's block: a hint, never faults.)
            _mm_prefetch::<_MM_HINT_T1>(data.wrapping_add(r * c_rs).cast());
        }
    }
    // One k: W vectors of the panel's row times each row's broadcast element — the R
    // broadcasts held while each vector is loaded in turn where R ≤ W, else the W vectors held
    // while each row's element is broadcast in turn (R·W + min(R, W) + 1 registers).
    let step = |acc: &mut [[__m256; W]; R], kk: usize| {
        // SAFETY: kk < kc rows of A and of the panel (the caller's contract); B's rows aligned.
        unsafe {
            let row = b.add(kk * NR);
            if W <= 2 {
                // (A hint: never faults, even past the panel.)
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(FETCH_K * NR).cast());
            }
            let at = |r: usize| &*if PACKED { a.add(kk * MR + r) } else { a.add(r * rs + kk) };
            if R <= W {
                let x: [__m256; R] = std::array::from_fn(|r| _mm256_broadcast_ss(at(r)));
                for v in 0..W {
                    let bv = _mm256_load_ps(row.add(8 * v));
                    for (acc, &x) in acc.iter_mut().zip(&x) {
                        acc[v] = _mm256_fmadd_ps(x, bv, acc[v]);
                    }
                }
            } else {
                let bv: [__m256; W] = std::array::from_fn(|v| _mm256_load_ps(row.add(8 * v)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(at(r));
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm256_fmadd_ps(x, bv, *acc);
                    }
                }
            }
        }
    };
    for kk in 0..lines.min(kc) {
        // SAFETY: a prefetch of a line of the next panel (a hint: never faults).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(fetch.add(16 * kk).cast()) };
        step(&mut acc, kk);
    }
    let mut kk = lines.min(kc);
    while kk + 4 <= kc {
        step(&mut acc, kk);
        step(&mut acc, kk + 1);
        step(&mut acc, kk + 2);
        step(&mut acc, kk + 3);
        kk += 4;
    }
    while kk < kc {
        step(&mut acc, kk);
        kk += 1;
    }
    match out {
        Out::Carry => {
            for (r, acc) in acc.iter().enumerate() {
                for (v, &sum) in acc.iter().enumerate() {
                    // SAFETY: as the loads above.
                    unsafe { _mm256_store_ps(carry.add(r * NR + 8 * v), sum) };
                }
            }
        }
        Out::C { data, rs: c_rs, cols, accumulate } => {
            for (r, acc) in acc.iter().enumerate() {
                for (v, &sum) in acc.iter().enumerate() {
                    let left = cols.saturating_sub(8 * v).min(8);
                    // SAFETY: row r of C's block from column 8v, `left` of its columns (masked
                    // lanes are neither read nor written).
                    unsafe {
                        let at = data.add(r * c_rs + 8 * v);
                        if left == 8 {
                            let sum = if accumulate { _mm256_add_ps(sum, _mm256_loadu_ps(at)) } else { sum };
                            _mm256_storeu_ps(at, sum);
                        } else {
                            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lanes);
                            let sum = if accumulate { _mm256_add_ps(sum, _mm256_maskload_ps(at, mask)) } else { sum };
                            _mm256_maskstore_ps(at, mask, sum);
                        }
                    }
                }
            }
        }
    }
}
