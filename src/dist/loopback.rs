//! An in-process transport: N groups in one process whose link threads meet in shared memory,
//! so the reducer's buckets, gaps and failures run in plain `cargo test` without MPI. Every
//! collective is an exchange of each rank's bytes; sums are taken in rank order.

use super::{Pipe, PipeState, Transport, Waiter, serve_with};
use std::sync::{Arc, Condvar, Mutex};

/// The shared memory the ranks meet in: one collective at a time.
struct Fabric {
    n: usize,
    state: Mutex<Round>,
    wake: Condvar,
}

#[derive(Default)]
struct Round {
    /// The collective's number (every rank issues the same sequence).
    generation: u64,
    /// Each rank's payload for this round.
    slots: Vec<Option<Vec<u8>>>,
    /// All payloads in rank order once everyone arrived; how many ranks have read them.
    result: Option<Arc<Vec<Vec<u8>>>>,
    read: usize,
}

struct Loop {
    fabric: Arc<Fabric>,
    rank: usize,
}

impl Loop {
    /// Every rank's `payload`, in rank order, once all have arrived (polling `w` while waiting).
    fn exchange(&self, payload: Vec<u8>, w: &Waiter<'_>) -> Result<Arc<Vec<Vec<u8>>>, String> {
        let f = &self.fabric;
        let mut st = f.state.lock().unwrap_or_else(|e| e.into_inner());
        // Wait until the previous round has been read by everyone.
        while st.result.is_some() {
            st = self.wait(st, w);
        }
        let generation = st.generation;
        st.slots[self.rank] = Some(payload);
        if st.slots.iter().all(Option::is_some) {
            let all: Vec<Vec<u8>> = st.slots.iter_mut().map(|s| s.take().unwrap_or_default()).collect();
            st.result = Some(Arc::new(all));
            st.read = 0;
            f.wake.notify_all();
        }
        while st.generation == generation && st.result.is_none() {
            st = self.wait(st, w);
        }
        let all = st.result.clone().ok_or("the exchange ended without a result")?;
        st.read += 1;
        if st.read == f.n {
            st.result = None;
            st.generation += 1;
            f.wake.notify_all();
        }
        Ok(all)
    }

    /// One wait step: a short timed wait, giving up (for good) when the waiter says so.
    fn wait<'a>(&self, st: std::sync::MutexGuard<'a, Round>, w: &Waiter<'_>) -> std::sync::MutexGuard<'a, Round> {
        if w.give_up() {
            drop(st);
            w.fail();
        }
        self.fabric
            .wake
            .wait_timeout(st, std::time::Duration::from_millis(5))
            .map(|r| r.0)
            .unwrap_or_else(|e| e.into_inner().0)
    }
}

/// Sums every rank's values in rank order into `out`.
fn sum_in_order<T: Copy + std::ops::Add<Output = T>>(
    out: &mut [T],
    all: &[Vec<u8>],
    decode: impl Fn(&[u8]) -> T,
    size: usize,
) -> Result<(), String> {
    for (k, d) in out.iter_mut().enumerate() {
        let mut acc: Option<T> = None;
        for bytes in all {
            let v = decode(bytes.get(k * size..(k + 1) * size).ok_or("the ranks sent different lengths")?);
            acc = Some(acc.map_or(v, |a| a + v));
        }
        *d = acc.ok_or("no rank")?;
    }
    Ok(())
}

impl Transport for Loop {
    fn size(&self) -> usize {
        self.fabric.n
    }

    fn sum_f32(&self, data: &[f32], out: &mut [f32], w: &Waiter<'_>) -> Result<(), String> {
        let all = self.exchange(data.iter().flat_map(|v| v.to_le_bytes()).collect(), w)?;
        sum_in_order(out, &all, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 4)
    }

    fn sum_f64(&self, data: &[f64], out: &mut [f64], w: &Waiter<'_>) -> Result<(), String> {
        let all = self.exchange(data.iter().flat_map(|v| v.to_le_bytes()).collect(), w)?;
        sum_in_order(out, &all, |b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])), 8)
    }

    fn gather_f32(&self, local: &[f32], all: &mut [f32], w: &Waiter<'_>) -> Result<(), String> {
        let got = self.exchange(local.iter().flat_map(|v| v.to_le_bytes()).collect(), w)?;
        let flat: Vec<f32> = got
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<u8>>()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if flat.len() != all.len() {
            return Err("the ranks gathered different lengths".into());
        }
        all.copy_from_slice(&flat);
        Ok(())
    }

    fn broadcast(&self, bytes: &mut [u8], w: &Waiter<'_>) -> Result<(), String> {
        let got = self.exchange(bytes.to_vec(), w)?;
        if got[0].len() != bytes.len() {
            return Err("the ranks broadcast different lengths".into());
        }
        bytes.copy_from_slice(&got[0]);
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `n` groups of one process, ranks 0..n, connected in memory (for tests): each has its own
/// link thread. `interrupt` plays the signal flag: once set, a wait gives up half a second later.
pub(super) fn groups(
    n: usize,
    interrupt: Arc<std::sync::atomic::AtomicUsize>,
) -> crate::error::Result<Vec<super::Group>> {
    let fabric = Arc::new(Fabric {
        n,
        state: Mutex::new(Round { slots: vec![None; n], ..Round::default() }),
        wake: Condvar::new(),
    });
    (0..n)
        .map(|rank| {
            let pipe = Arc::new(Pipe {
                state: Mutex::new(PipeState::new()),
                wake: Condvar::new(),
                interrupt: interrupt.clone(),
                abort: std::sync::atomic::AtomicUsize::new(0),
            });
            let (p, t) = (pipe.clone(), Loop { fabric: fabric.clone(), rank });
            let handle = std::thread::Builder::new()
                .name(format!("bptt-loop-{rank}"))
                .spawn(move || serve_with(&t, &p))
                .map_err(|e| crate::error::Error::Dist(format!("cannot start a loopback link thread: {e}")))?;
            Ok(super::Group { rank, size: n, link: Some((pipe, handle)) })
        })
        .collect()
}
