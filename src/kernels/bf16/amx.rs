//! The bf16 products on AMX tiles (Intel Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 × 32 bf16 tile of A by a 32 × 16 one of B into a 16 × 16 f32 tile of C — 8,192
//! multiply-adds per instruction, 16 times an AVX-512 FMA's per cycle. The packed layouts of
//! [`super`] are the tiles' own (rows of k-pairs for A, panels of 16 columns by k-pairs for B,
//! padded to whole tiles), so the kernel loads them as they are; C is read and written in place
//! where its 16 × 16 blocks are whole, else through a scratch tile.
//!
//! Linux hands the tiles' 8 KB of state to a process only on request (`arch_prctl`,
//! `ARCH_REQ_XCOMP_PERM`), made once by [`ready`]; where the CPU, the kernel or
//! `BPTT_AMX=off` says no, the products run on `vdpbf16ps` instead. Tile instructions are
//! written in `asm!` (Rust's AMX intrinsics are not stable); each call configures the tiles and
//! releases them before it returns, so no tile state outlives a product.

use super::{DEPTH, LANES, PackedA, PackedB, stride};
use crate::kernels::MatMut;
use std::arch::asm;

/// True if the products may use AMX tiles: the CPU has AMX-TILE and AMX-BF16, the kernel
/// granted this process the tile state, and `BPTT_AMX` is not `off`. Asked once.
pub fn ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| std::env::var("BPTT_AMX").map_or(true, |v| v != "off") && request())
}

/// Whether the CPU has the instructions and the kernel grants the tile data.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request() -> bool {
    /// `arch_prctl` code to request permission for an extended state component.
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    /// The AMX tile data's state component.
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;
    if !super::native() {
        return false;
    }
    // (Leaf 7 exists on every CPU with AVX-512, checked just above.)
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // SAFETY: a plain system call with integer arguments; it changes only this process's
    // permission to use the tile state.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1): every tile 16 rows of 64 bytes —
/// tmm0–3 the C tiles (2 × 2), tmm4–5 two row blocks of A, tmm6–7 two panels of B.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// k-blocks (16 pairs each) per chunk of a deep product: 256 pairs, so a chunk of 256 rows of
/// A and 16 panels of B (a tile of `kernels::gemm`) is 256 KB each.
const CHUNK: usize = 16;
/// The most elements of C a call runs in chunks of k (256 KB of f32: a tile of `kernels::gemm`).
const CHUNK_C: usize = 1 << 16;

const CONFIG: Config = Config {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `tileloadd tmm$t` from `ptr`, rows `stride` bytes apart.
macro_rules! load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $ptr, s = in(reg) $stride,
            options(nostack, readonly, preserves_flags))
    };
}

/// `tilestored` of tmm$t to `ptr`, rows `stride` bytes apart.
macro_rules! store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $ptr, s = in(reg) $stride,
            options(nostack, preserves_flags))
    };
}

/// `tdpbf16ps`: tmm$c += tmm$a · tmm$b.
macro_rules! dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b), options(nomem, nostack, preserves_flags))
    };
}

/// C tile t of a 2 × 2 block (row block t / 2, panel t % 2) to or from tmm0–3.
macro_rules! on_tile {
    ($t:expr, $op:ident, $ptr:expr, $stride:expr) => {
        match $t {
            0 => $op!("0", $ptr, $stride),
            1 => $op!("1", $ptr, $stride),
            2 => $op!("2", $ptr, $stride),
            _ => $op!("3", $ptr, $stride),
        }
    };
}

/// `iters` rounds of four `tdpbf16ps` on registers (four independent accumulators, no memory
/// traffic): the tiles' own peak, as `bench --gemm-peak` reports it. Returns the multiply-adds
/// done, or 0 where AMX is not [`ready`].
pub(crate) fn peak_loop(iters: usize) -> usize {
    if !ready() {
        return 0;
    }
    let zeros = [0u32; LANES * LANES];
    // SAFETY: AMX is ready; `CONFIG` is valid and `zeros` holds a whole 16 × 64-byte tile.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags));
        for t in 0..4 {
            on_tile!(t, load, zeros.as_ptr(), LANES * 4);
        }
        load!("4", zeros.as_ptr(), LANES * 4);
        load!("5", zeros.as_ptr(), LANES * 4);
        load!("6", zeros.as_ptr(), LANES * 4);
        load!("7", zeros.as_ptr(), LANES * 4);
        for _ in 0..iters {
            dot!("0", "4", "6");
            dot!("1", "4", "7");
            dot!("2", "5", "6");
            dot!("3", "5", "7");
        }
        asm!("tilerelease", options(nomem, nostack, preserves_flags));
    }
    iters * 4 * LANES * LANES * 2 * DEPTH
}

/// [`super::gemm_block`] on AMX tiles: C (the view) (+)= A's rows [row0, row0 + c.rows) ·
/// B's panels from `first`, in blocks of 32 rows × 2 panels, each C tile's sums over k in the
/// same order whoever computes it.
///
/// # Safety
/// [`ready`] returned true; the view is in bounds, `row0 + c.rows <= a.m`, the panels are in
/// `b`, and the depths agree (the caller's checks).
pub(super) unsafe fn gemm(
    c: &mut MatMut<'_, f32>,
    a: &PackedA,
    row0: usize,
    b: &PackedB,
    first: usize,
    accumulate: bool,
) {
    let words = stride(a.k);
    let (a_rs, b_panel) = (words * 4, words * LANES);
    let panels = c.cols.div_ceil(LANES);
    // Edge tiles of C (rows or columns short of 16, or a strided view) go through these.
    let mut scratch = [[0f32; LANES * LANES]; 4];
    // SAFETY: the CPU has AMX and this process the tile state (the caller's contract);
    // `CONFIG` is a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags)) };
    let blocks = words / DEPTH;
    // (Not where C itself would not stay in L2 between chunks.)
    let chunk = if c.rows * c.cols <= CHUNK_C { CHUNK } else { blocks.max(1) };
    // Deep products run in chunks of k: a chunk of every A row and B panel the call reads stays
    // in L2 while all of C's tiles take it in (C then goes to memory and back between chunks,
    // exactly: the same bits as one pass over k).
    for k0 in (0..blocks).step_by(chunk) {
        let accumulate = accumulate || k0 > 0;
        let k1 = blocks.min(k0 + chunk);
        for p0 in (0..panels).step_by(2) {
            let np = 2.min(panels - p0);
            for i0 in (0..c.rows).step_by(2 * LANES) {
                let nr = if c.rows - i0 > LANES { 2 } else { 1 };
                // The C tiles of this block: where each lives and whether it is whole in place.
                let tiles = |t: usize| {
                    let (r, j) = (i0 + LANES * (t / 2), (p0 + t % 2) * LANES);
                    let (rows, cols) = (LANES.min(c.rows - r), LANES.min(c.cols - j));
                    (r, j, rows, cols, c.cs == 1 && rows == LANES && cols == LANES)
                };
                let used = |t: usize| t / 2 < nr && t % 2 < np;
                for t in (0..4).filter(|&t| used(t)) {
                    let (r, j, rows, cols, whole) = tiles(t);
                    // SAFETY: (r, j) is inside the view; a whole tile's 16 rows of 16 are too.
                    unsafe {
                        let at = c.data.add(r * c.rs + j * c.cs);
                        if !accumulate {
                            match t {
                                0 => asm!("tilezero tmm0", options(nomem, nostack, preserves_flags)),
                                1 => asm!("tilezero tmm1", options(nomem, nostack, preserves_flags)),
                                2 => asm!("tilezero tmm2", options(nomem, nostack, preserves_flags)),
                                _ => asm!("tilezero tmm3", options(nomem, nostack, preserves_flags)),
                            }
                        } else if whole {
                            on_tile!(t, load, at, c.rs * 4);
                        } else {
                            let tile = &mut scratch[t];
                            tile.fill(0.0);
                            for y in 0..rows {
                                for x in 0..cols {
                                    tile[y * LANES + x] = *at.add(y * c.rs + x * c.cs);
                                }
                            }
                            on_tile!(t, load, tile.as_ptr(), LANES * 4);
                        }
                    }
                }
                let a0 = a.data[(row0 + i0) * words..].as_ptr();
                let b0 = b.data[(first + p0) * b_panel..].as_ptr();
                for kb in k0..k1 {
                    // SAFETY: A has 16 rows to spare past its m, so both row blocks' 16 rows are in
                    // its buffer; the panels are in B's; each row and panel holds whole k-blocks.
                    unsafe {
                        let (a_k, b_k) = (a0.add(kb * DEPTH), b0.add(kb * DEPTH * LANES));
                        load!("4", a_k, a_rs);
                        load!("6", b_k, LANES * 4);
                        dot!("0", "4", "6");
                        if np == 2 {
                            load!("7", b_k.add(b_panel), LANES * 4);
                            dot!("1", "4", "7");
                        }
                        if nr == 2 {
                            load!("5", a_k.add(LANES * words), a_rs);
                            dot!("2", "5", "6");
                            if np == 2 {
                                dot!("3", "5", "7");
                            }
                        }
                    }
                }
                for t in (0..4).filter(|&t| used(t)) {
                    let (r, j, rows, cols, whole) = tiles(t);
                    // SAFETY: as for the loads above.
                    unsafe {
                        let at = c.data.add(r * c.rs + j * c.cs);
                        if whole {
                            on_tile!(t, store, at, c.rs * 4);
                        } else {
                            let tile = &mut scratch[t];
                            on_tile!(t, store, tile.as_mut_ptr(), LANES * 4);
                            for y in 0..rows {
                                for x in 0..cols {
                                    *at.add(y * c.rs + x * c.cs) = tile[y * LANES + x];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // SAFETY: as for `ldtilecfg`.
    unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::super::{PackedA, PackedB, gemm_avx512, round, widen};
    use crate::kernels::{Mat, MatMut};
    use rand::{RngExt, SeedableRng};

    /// The AMX kernel against the definition on the rounded operands (f64 sums) and against
    /// the `vdpbf16ps` kernel: odd sizes, rows and panels from an offset into A and B, a
    /// transposed (strided) C, with and without accumulation, deep products run in chunks of k
    /// and a C too large for them. Skipped, saying so, where the CPU or kernel has no AMX.
    #[test]
    fn amx_tiles_equal_the_definition_and_the_vector_kernel() {
        if !super::ready() {
            eprintln!("skipped: no AMX tiles here (CPU, kernel or BPTT_AMX=off); the bf16 products use vdpbf16ps");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(32);
        let cases = [
            (1, 1, 1, 0, 0),
            (16, 16, 32, 0, 0),
            (17, 33, 31, 3, 16),
            (40, 70, 300, 5, 32),
            (33, 16, 9000, 16, 0),
            (300, 260, 600, 0, 0),
        ];
        for (m, n, k, row0, col0) in cases {
            let (am, bn) = (row0 + m + 2, col0 + n + 5);
            let a: Vec<f32> = (0..am * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * bn).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut pa = PackedA::new(am, k);
            pa.pack(Mat::rows(&a, am, k));
            let mut pb = PackedB::new(k, bn);
            pb.pack(Mat::rows(&b, k, bn));
            for accumulate in [false, true] {
                for transposed in [false, true] {
                    let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                    // C (i, j) at i·n + j, or (transposed) at i + j·m.
                    let at = |i: usize, j: usize| if transposed { i + j * m } else { i * n + j };
                    fn view(c: &mut [f32], m: usize, n: usize, transposed: bool) -> MatMut<'_, f32> {
                        if transposed { MatMut::strided(c, m, n, 1, m) } else { MatMut::rows(c, m, n) }
                    }
                    let (mut amx, mut vec) = (c0.clone(), c0.clone());
                    // SAFETY: `ready` said yes; the views and packings are in bounds.
                    unsafe {
                        super::gemm(&mut view(&mut amx, m, n, transposed), &pa, row0, &pb, col0 / 16, accumulate)
                    };
                    // SAFETY: AMX implies AVX-512F and AVX512-BF16 (`request` checks `native`).
                    unsafe {
                        gemm_avx512(&mut view(&mut vec, m, n, transposed), &pa, row0, &pb, col0 / 16, accumulate)
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let base = if accumulate { c0[at(i, j)] as f64 } else { 0.0 };
                            let terms = (0..k).map(|t| {
                                widen(round(a[(row0 + i) * k + t])) as f64 * widen(round(b[t * bn + col0 + j])) as f64
                            });
                            let (sum, mag) = terms.fold((base, base.abs()), |(s, g), x| (s + x, g + x.abs()));
                            let bound = (k as f64 + 2.0) * 2f64.powi(-23) * mag + 1e-30;
                            let (got, other) = (amx[at(i, j)] as f64, vec[at(i, j)] as f64);
                            let case = format!(
                                "({m},{n},{k}) from ({row0},{col0}), accumulate {accumulate}, transposed {transposed}: [{i},{j}]"
                            );
                            assert!((got - sum).abs() <= bound, "{case}: {got} vs the definition's {sum}");
                            assert!((got - other).abs() <= 2.0 * bound, "{case}: {got} vs vdpbf16ps {other}");
                        }
                    }
                }
            }
        }
    }
}
