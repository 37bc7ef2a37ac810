//! Facts about this machine that plans and memory checks may depend on (never the thread count
//! in use): its cores, the size of one core's L2 cache, the memory available now.

use std::sync::OnceLock;

/// The cores of this machine (what `--threads` defaults to), 1 if unknown. A plan may depend on
/// it (a property of the machine, like its cache sizes), never on the thread count in use.
pub fn machine_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// What [`set_plan_cores`] set (0: nothing).
static PLAN_CORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The cores plans are made for: [`machine_cores`], unless [`set_plan_cores`] said otherwise.
/// The wavefront's and the grid's defaults and the tiles of deep products read it.
pub fn plan_cores() -> usize {
    match PLAN_CORES.load(std::sync::atomic::Ordering::Relaxed) {
        0 => machine_cores(),
        n => n,
    }
}

/// Plans every later pass as if this machine had `cores` cores (0: its own) — the wavefront,
/// the grid and the tiles of deep products — so that `bptt bench --plan --plan-cores 16`
/// predicts what a 16-core machine would run. Process-wide: set it before the first pass, never
/// while passes run (their results would depend on when).
pub fn set_plan_cores(cores: usize) {
    PLAN_CORES.store(cores, std::sync::atomic::Ordering::Relaxed);
}

/// The f32 vector instructions this crate's own kernels run on (detected once): AVX-512F (16
/// lanes), AVX2 with FMA (8 lanes), or neither (the GEMM crate and portable loops run there).
/// Every kernel computes each element as the same chain of fused multiply-adds on either, so the
/// two give the same bits; `BPTT_SIMD=avx2` (or `none`) uses less than the CPU has, to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Neither: the crate and portable loops.
    None,
    /// AVX2 with FMA: 16 registers of 8 f32.
    Avx2,
    /// AVX-512F: 32 registers of 16 f32.
    Avx512,
}

/// The [`Simd`] of this CPU (and `BPTT_SIMD`), detected once.
pub fn simd() -> Simd {
    static SIMD: OnceLock<Simd> = OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let has = if std::arch::is_x86_feature_detected!("avx512f") {
            Simd::Avx512
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            Simd::Avx2
        } else {
            Simd::None
        };
        #[cfg(not(target_arch = "x86_64"))]
        let has = Simd::None;
        let cap = match std::env::var("BPTT_SIMD").as_deref() {
            Ok("none") => Simd::None,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        has.min(cap)
    })
}

/// The size of one core's L2 cache in bytes (Linux sysfs; 1 MiB if unknown). Like
/// [`machine_cores`], a plan may depend on it.
pub fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        let size = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size").unwrap_or_default();
        let size = size.trim();
        let (digits, scale) = match size.strip_suffix('K') {
            Some(d) => (d, 1 << 10),
            None => size.strip_suffix('M').map_or((size, 1), |d| (d, 1 << 20)),
        };
        digits.parse::<usize>().ok().filter(|&n| n > 0).map_or(1 << 20, |n| n.saturating_mul(scale))
    })
}

/// Memory this process can still get now without swapping or being refused, in bytes; checked
/// before large allocations. The least of: the machine's MemAvailable (/proc/meminfo), what
/// the cgroup's `memory.max` leaves (a container's limit), and what the address-space limit
/// (`ulimit -v`) leaves of this process's virtual size. `u64::MAX` where none is known.
pub fn available_memory() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    // A field of a /proc table in kB (or bytes for the limits table), as bytes.
    let field = |text: &str, name: &str, nth: usize, scale: u64| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().nth(nth)?.parse::<u64>().ok().map(|v| v.saturating_mul(scale))
    };
    let machine = read("/proc/meminfo").and_then(|m| field(&m, "MemAvailable:", 0, 1024));
    let cgroup = (|| {
        let max = read("/sys/fs/cgroup/memory.max")?.trim().parse::<u64>().ok()?;
        let current = read("/sys/fs/cgroup/memory.current")?.trim().parse::<u64>().ok()?;
        Some(max.saturating_sub(current))
    })();
    let address_space = (|| {
        let size = field(&read("/proc/self/status")?, "VmSize:", 0, 1024)?;
        Some(address_space_limit()?.saturating_sub(size))
    })();
    [machine, cgroup, address_space].into_iter().flatten().min().unwrap_or(u64::MAX)
}

/// The address-space limit of this process (`ulimit -v`) in bytes, if one is set. Under it,
/// virtual reservations count as well as resident memory: each thread's stack and the malloc
/// arena of each thread that allocates (64 MiB with glibc).
pub fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..].split_whitespace().next()?.parse::<u64>().ok()
}

/// Refuses an allocation of `bytes` for `what` that [`available_memory`] cannot cover, as an
/// [`Error::Memory`](crate::Error::Memory) (the bindings raise it as `MemoryError`): the check
/// the library and the Python bindings make before an allocation whose size a caller chose.
pub fn ensure_available(what: impl FnOnce() -> String, bytes: u64) -> crate::Result<()> {
    let available = available_memory();
    if bytes > available {
        return Err(crate::Error::Memory { what: what(), needed: bytes, available });
    }
    Ok(())
}

/// The f32 multiply-add throughput of `threads` cores at once, in GFLOP/s (2 per multiply-add),
/// measured: each thread runs a loop of independent fused multiply-adds on registers (8 vectors:
/// AVX-512, or AVX2 + FMA, as the CPU allows), the best of 3 runs. It is the machine's f32 vector peak as its frequency and vector units deliver it —
/// the ceiling no product can pass — beside which the GEMM crate's peak and a model's GFLOP/s
/// can be read.
pub fn fma_peak(threads: usize) -> f64 {
    const ITERS: usize = 20_000_000;
    let per_round = fma_loop(1, 1.0, 0.0).1;
    let flops = (2 * per_round * ITERS) as f64 * threads.max(1) as f64;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        std::thread::scope(|s| {
            for k in 0..threads.max(1) {
                // (acc · 0.99999 + 1e-3 settles near 100: never a denormal, which some CPUs
                // handle in microcode at a hundredth of the speed.)
                s.spawn(move || {
                    std::hint::black_box(fma_loop(ITERS, std::hint::black_box(0.999_99), 1e-3 + k as f32 * 1e-9))
                });
            }
        });
        best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The bf16 peak in GFLOP/s (products of bf16 pairs summed into f32, AVX512-BF16's
/// `vdpbf16ps` on registers, every thread at once, best of 3), or `None` without the
/// instruction. Counted as [`fma_peak`] counts: two FLOPs per multiply-add.
pub fn bf16_peak(threads: usize) -> Option<f64> {
    if !super::bf16::native() {
        return None;
    }
    const ITERS: usize = 20_000_000;
    // 8 vectors of 32 multiply-adds per round.
    let flops = (2 * 8 * 32 * ITERS) as f64 * threads.max(1) as f64;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        std::thread::scope(|s| {
            for k in 0..threads.max(1) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512F and AVX512-BF16 (`native` above).
                s.spawn(move || std::hint::black_box(unsafe { dpbf16_loop(ITERS, std::hint::black_box(k as u32)) }));
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (s, k);
            }
        });
        best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    Some(best)
}

/// The AMX bf16 peak in GFLOP/s (`tdpbf16ps` on registers, every thread at once, best of 3),
/// or `None` where AMX tiles are not available (`kernels::bf16::amx::ready`). Counted as
/// [`fma_peak`] counts.
pub fn amx_peak(threads: usize) -> Option<f64> {
    if !super::bf16::amx::ready() {
        return None;
    }
    const ITERS: usize = 200_000;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let macs: usize = std::thread::scope(|s| {
            let runs: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(|| super::bf16::amx::peak_loop(ITERS))).collect();
            runs.into_iter().map(|r| r.join().unwrap_or(0)).sum()
        });
        best = best.max(2.0 * macs as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    Some(best)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_loop(iters: usize, seed: u32) -> f32 {
    use std::arch::x86_64::*;
    // Small values (bf16 of 2^-10 and 2^-20): the sums stay finite however long the loop.
    let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3a80_3a80_u32.wrapping_add(seed) as i32)) };
    let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3580_3580)) };
    let mut acc = [_mm512_setzero_ps(); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(sum)
}

/// `iters` rounds of 8 vectors' independent fused multiply-adds on registers (no memory
/// traffic): AVX-512 (16 lanes) or AVX2 + FMA (8 lanes) where the CPU has them; returns the sum
/// of the accumulators (so nothing is optimised away) and the multiply-adds per round.
fn fma_loop(iters: usize, a: f32, b: f32) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return (unsafe { fma_avx512(iters, a, b) }, 8 * 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return (unsafe { fma_avx2(iters, a, b) }, 8 * 8);
        }
    }
    let mut acc = [1.0f32; 8];
    for _ in 0..iters {
        acc.iter_mut().for_each(|x| *x = x.mul_add(a, b));
    }
    (acc.iter().sum(), 8)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
    let mut acc = [_mm512_set1_ps(1.0); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, va, vb);
        }
    }
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    let mut acc = [_mm256_set1_ps(1.0); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, va, vb);
        }
    }
    let mut out = [0.0f32; 8];
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    // SAFETY: `out` holds the 8 floats the store writes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out.iter().sum()
}
