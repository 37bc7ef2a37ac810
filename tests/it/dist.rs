//! The gradient reduction without MPI: ranks in one process over the in-process loopback
//! transport — buckets reported during backward, the gaps between them, the average, the
//! control collectives, and a peer that never answers.

use bptt::dist::Group;
use bptt::net::GradValues;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Rank r's gradient: distinct values per rank and element.
fn grads_of(rank: usize, n: usize) -> Vec<f32> {
    (0..n).map(|k| ((k * 7 + rank * 13) % 17) as f32 * 0.25 - 1.5 + rank as f32 * 0.125).collect()
}

/// Three ranks: buckets [60, 100) and [10, 30) reported while "backward" runs, the gaps
/// [0, 10) and [30, 60) reduced after it; every rank ends with the average, summed in rank
/// order, and the backward pass's own writes after reporting are not lost.
#[test]
fn buckets_and_gaps_average_over_loopback_ranks() {
    let (n, len) = (3, 100);
    let groups = Group::loopback(n, Arc::new(AtomicUsize::new(0))).unwrap();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                s.spawn(move || {
                    let rank = g.rank();
                    let mut reducer = g.reducer::<f32>(len, 4);
                    let hook = reducer.hook().expect("a loopback group has a hook");
                    let mut grads = vec![0.0f32; len];
                    for pass in 0..2 {
                        // Two passes: the second reuses the first's buffers.
                        let loss = reducer
                            .reduce(&mut grads, |g| {
                                g.copy_from_slice(&grads_of(rank, len));
                                g[..].iter_mut().for_each(|v| *v += pass as f32);
                                hook.ready(60..100, GradValues::F32(&g[60..100]));
                                hook.ready(10..30, GradValues::F32(&g[10..30]));
                                Ok(1.0)
                            })
                            .unwrap();
                        assert_eq!(loss, 1.0);
                    }
                    grads
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The second pass's values: each rank's gradient plus 1.
    let per_rank: Vec<Vec<f32>> = (0..n).map(|r| grads_of(r, len).iter().map(|v| v + 1.0).collect()).collect();
    for k in 0..len {
        let sum = per_rank.iter().map(|g| g[k]).fold(None, |a: Option<f32>, v| Some(a.map_or(v, |a| a + v))).unwrap();
        let want = sum / n as f32;
        for (r, got) in results.iter().enumerate() {
            assert_eq!(got[k], want, "rank {r} element {k}");
        }
    }
}

/// Sums, gathers and broadcasts of the control path agree on every rank.
#[test]
fn control_collectives_over_loopback() {
    let groups = Group::loopback(4, Arc::new(AtomicUsize::new(0))).unwrap();
    std::thread::scope(|s| {
        for g in &groups {
            s.spawn(move || {
                let r = g.rank();
                let mut v = [r as f64, 1.0];
                g.sum(&mut v).unwrap();
                assert_eq!(v, [6.0, 4.0]);
                let all = g.gather(&[r as f32, 10.0 + r as f32]).unwrap();
                assert_eq!(all, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0]);
                let mut b = [r as u8; 3];
                g.broadcast(&mut b).unwrap();
                assert_eq!(b, [0, 0, 0]);
                assert!(!g.all_ok(r != 2).unwrap(), "one rank said no");
                assert!(g.all_ok(true).unwrap());
            });
        }
    });
}

/// A peer that never joins the reduction: once the interrupt is set (what a signal does), the
/// waiting rank gives up within a second with `Error::Dist`, and later calls fail the same way.
#[test]
fn a_peer_that_never_answers_ends_in_an_error_not_a_hang() {
    let interrupt = Arc::new(AtomicUsize::new(0));
    let groups = Group::loopback(2, interrupt.clone()).unwrap();
    let g0 = &groups[0];
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            interrupt.store(15, Ordering::SeqCst);
        });
        let mut reducer = g0.reducer::<f32>(8, 2);
        let mut grads = vec![1.0f32; 8];
        let r = reducer.reduce(&mut grads, |_| Ok(()));
        assert!(matches!(r, Err(bptt::Error::Dist(_))), "{r:?}");
        let again = g0.sum(&mut [1.0]);
        assert!(matches!(again, Err(bptt::Error::Dist(_))), "{again:?}");
    });
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    // (Rank 1's link thread never took part; dropping the groups shuts both down.)
    std::mem::forget(groups); // the failed link thread is parked for good, as under MPI
}
