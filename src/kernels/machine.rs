//! Facts about this machine that plans and memory checks may depend on (never the thread count
//! in use): its cores, the size of one core's L2 cache, the memory available now.

use std::sync::OnceLock;

/// The cores of this machine (what `--threads` defaults to), 1 if unknown. A plan may depend on
/// it (a property of the machine, like its cache sizes), never on the thread count in use.
pub fn machine_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
