//! What is cut: part ranges chosen from the sizes alone (never the thread count), so that a
//! given machine computes the same bits at any `--threads`. No threads here (see `team`).

use super::team::MAX_PARTS;

/// [start, end) of part `p` when `n` items are cut into `parts` near-equal pieces whose inner
/// boundaries are multiples of `align`.
pub(crate) fn range(n: usize, parts: usize, align: usize, p: usize) -> (usize, usize) {
    let blocks = n.div_ceil(align);
    let at = |q: usize| (q * blocks / parts * align).min(n);
    (at(p), at(p + 1))
}

/// How many parts of at least `min` items (and at most [`MAX_PARTS`]) `n` items make, in whole
/// blocks of `align`: a power of two, so that 2, 4, 8 or 16 threads share them evenly (five
/// parts on two threads leave one thread a part behind).
pub(crate) fn count(n: usize, min: usize, align: usize) -> usize {
    let most = (n / min.max(align)).clamp(1, MAX_PARTS).min(n.div_ceil(align).max(1));
    1 << most.ilog2()
}

/// `data` cut into `parts` consecutive chunks, part p covering `bound(p)..bound(p + 1)`
/// (`bound` non-decreasing from 0 to `data.len()`); unused entries are empty.
pub(crate) fn chunks<T>(mut data: &mut [T], parts: usize, bound: impl Fn(usize) -> usize) -> [&mut [T]; MAX_PARTS] {
    let mut out: [&mut [T]; MAX_PARTS] = std::array::from_fn(|_| <&mut [T]>::default());
    for (p, slot) in out.iter_mut().enumerate().take(parts) {
        let (head, tail) = std::mem::take(&mut data).split_at_mut(bound(p + 1) - bound(p));
        *slot = head;
        data = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{chunks, count, range};

    /// Parts tile 0..n exactly, in order, with aligned inner boundaries.
    #[test]
    fn ranges_tile_the_items() {
        for n in [1, 7, 16, 100, 256, 1000] {
            for align in [1, 8, 16] {
                for parts in 1..=9 {
                    let mut next = 0;
                    for p in 0..parts {
                        let (a, b) = range(n, parts, align, p);
                        assert_eq!(a, next, "n {n} parts {parts} align {align}");
                        assert!(b >= a && (b == n || b % align == 0));
                        next = b;
                    }
                    assert_eq!(next, n);
                }
                let c = count(n, 8, align);
                assert!((1..=64).contains(&c) && c.is_power_of_two());
            }
        }
        let mut v: Vec<u32> = (0..10).collect();
        let c = chunks(&mut v, 3, |p| [0, 2, 2, 10][p]);
        assert_eq!((c[0].len(), c[1].len(), c[2].len(), c[3].len()), (2, 0, 8, 0));
    }
}
