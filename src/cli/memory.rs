//! Every command's memory estimate: what it will hold, summed from the library's estimators
//! before its large allocations, refused in one line when the machine lacks it, and with
//! `--memory` printed on stderr, then compared with the peak actually used at exit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static SHOW: AtomicBool = AtomicBool::new(false);
static ESTIMATE: AtomicU64 = AtomicU64::new(0);

/// Each helper thread: its touched stack and the GEMM crate's thread-local packing buffers.
const PER_THREAD: u64 = 2 << 20;

/// Each helper thread under an address-space limit (`ulimit -v`), where reservations count: its
/// stack and the 64 MiB malloc arena glibc reserves for a thread that allocates.
const PER_THREAD_VIRTUAL: u64 = 66 << 20;

/// A chart rendered to PNG and SVG: the bitmap, the SVG text and plotters' font caches.
pub const CHART: u64 = 8 << 20;

/// Turns on `--memory`: the estimate printed when checked, the peak at exit.
pub fn show(on: bool) {
    SHOW.store(on, Ordering::Relaxed);
}

/// A command's estimate, item by item.
#[derive(Debug)]
pub struct Estimate {
    items: Vec<(&'static str, u64)>,
}

impl Estimate {
    /// The program as it stands (resident now: code, libraries, what is already loaded) and
    /// `threads` − 1 helper threads.
    pub fn new(threads: usize) -> Self {
        let program = resident("VmRSS:").max(4 << 20);
        let per_thread =
            if bptt::kernels::machine::address_space_limit().is_some() { PER_THREAD_VIRTUAL } else { PER_THREAD };
        Estimate { items: vec![("program", program), ("threads", threads.saturating_sub(1) as u64 * per_thread)] }
    }

    /// Adds `bytes` held for `what`.
    pub fn add(mut self, what: &'static str, bytes: u64) -> Self {
        self.items.push((what, bytes));
        self
    }

    /// The sum of the items (saturating).
    pub fn total(&self) -> u64 {
        self.items.iter().fold(0u64, |s, &(_, b)| s.saturating_add(b))
    }

    /// Refuses, in one line naming the estimate and `hint` (the flags to lower), if the total
    /// exceeds the memory available now; otherwise records it for the report at exit (and
    /// prints it with `--memory`).
    pub fn check(&self, hint: &str) -> anyhow::Result<()> {
        let (needed, available) = (self.total(), bptt::kernels::machine::available_memory());
        ESTIMATE.fetch_max(needed, Ordering::Relaxed);
        if SHOW.load(Ordering::Relaxed) {
            let items: Vec<String> =
                self.items.iter().filter(|(_, b)| *b > 0).map(|(w, b)| format!("{w} {}", mib(*b))).collect();
            super::errln!("memory: estimated {} ({}) of {} available", mib(needed), items.join(", "), mib(available));
        }
        if needed > available {
            // The items that matter, largest first.
            let mut big: Vec<_> = self.items.iter().filter(|(_, b)| *b >= needed / 10).collect();
            big.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
            let what = big.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(" and ");
            let e = bptt::Error::Memory { what: format!("this command ({what})"), needed, available };
            // The helper threads' share is lowered by --threads, whatever the command.
            if big.iter().any(|(w, _)| *w == "threads") {
                anyhow::bail!("{e}: give fewer --threads, or {hint}");
            }
            anyhow::bail!("{e}: {hint}");
        }
        Ok(())
    }
}

/// With `--memory`: the peak resident memory of the process against its largest estimate.
pub fn report() {
    if SHOW.load(Ordering::Relaxed) {
        let (peak, estimate) = (resident("VmHWM:"), ESTIMATE.load(Ordering::Relaxed));
        let ratio =
            if estimate > 0 { format!(", {:.0}% of it", 100.0 * peak as f64 / estimate as f64) } else { String::new() };
        super::errln!("memory: peak {} (estimated {}{ratio})", mib(peak), mib(estimate));
    }
}

/// A field of /proc/self/status in bytes (0 where unavailable).
fn resident(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// Peak resident memory so far, in MiB (for `bench`).
pub fn peak_mib() -> f64 {
    resident("VmHWM:") as f64 / 1048576.0
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// Adds the flags to change to a library memory error (others pass through).
pub fn hint(hint: &'static str) -> impl Fn(bptt::Error) -> anyhow::Error {
    move |e| match e {
        bptt::Error::Memory { .. } => anyhow::anyhow!("{e}: {hint}"),
        e => e.into(),
    }
}

/// The bytes of a file about to be read whole (0 if it cannot be inspected: the read reports it).
pub fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
