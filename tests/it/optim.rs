//! Optimizer state round trips, schedules, clipping properties and the guarded update.

use bptt::train::clip::{clip_grad_norm, global_norm};
use bptt::{Clip, LrSchedule, Optimizer, OptimizerConfig, Schedule, apply_update};
use proptest::prelude::*;

fn all_configs() -> Vec<(OptimizerConfig, f64)> {
    vec![
        (OptimizerConfig::Sgd { momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 0.01 }, 0.1),
        (OptimizerConfig::adam(), 0.01),
        (OptimizerConfig::adamw(), 0.01),
        (OptimizerConfig::RmsProp { alpha: 0.9, eps: 1e-8, momentum: 0.5, centered: true, weight_decay: 0.0 }, 0.01),
        (OptimizerConfig::adagrad(), 0.1),
    ]
}

fn grad(s: usize, n: usize) -> Vec<f32> {
    (0..n).map(|k| ((k * 13 + s * 7) as f32 * 0.31).sin()).collect()
}

#[test]
fn state_save_and_restore_continue_bit_exactly() {
    let n = 17;
    for (config, lr) in all_configs() {
        let mut p: Vec<f32> = (0..n).map(|k| k as f32 * 0.01).collect();
        let mut opt = Optimizer::<f32>::new(config, n).unwrap();
        for s in 0..3 {
            opt.step(&mut p, &grad(s, n), lr);
        }
        let (saved_p, saved_state) = (p.clone(), opt.state());
        for s in 3..6 {
            opt.step(&mut p, &grad(s, n), lr);
        }
        let mut q = saved_p;
        let mut restored = Optimizer::<f32>::new(config, n).unwrap();
        restored.load_state(saved_state.clone()).unwrap();
        assert_eq!(restored.steps(), 3);
        for s in 3..6 {
            restored.step(&mut q, &grad(s, n), lr);
        }
        assert_eq!(p, q, "{}: resumed optimizer diverged", config.name());
        let mut wrong = Optimizer::<f32>::new(config, n + 1).unwrap();
        assert!(wrong.load_state(saved_state).is_err(), "{}: size mismatch accepted", config.name());
    }
}

#[test]
fn schedules() {
    let s = LrSchedule { base_lr: 1.0, schedule: Schedule::Step { every: 10, gamma: 0.5 }, warmup: 0 };
    assert_eq!((s.lr(0), s.lr(9), s.lr(10), s.lr(25)), (1.0, 1.0, 0.5, 0.25));
    let e = LrSchedule { base_lr: 2.0, schedule: Schedule::Exponential { gamma: 0.9 }, warmup: 0 };
    assert!((e.lr(2) - 2.0 * 0.81).abs() < 1e-12);
    let c = LrSchedule { base_lr: 1.0, schedule: Schedule::Cosine { total: 100, min_lr: 0.1 }, warmup: 0 };
    assert_eq!(c.lr(0), 1.0);
    assert!((c.lr(50) - 0.55).abs() < 1e-12);
    assert!((c.lr(100) - 0.1).abs() < 1e-12 && (c.lr(500) - 0.1).abs() < 1e-12);
    let w = LrSchedule { base_lr: 1.0, schedule: Schedule::Constant, warmup: 4 };
    assert_eq!((w.lr(0), w.lr(3), w.lr(4)), (0.25, 1.0, 1.0));
    assert!(LrSchedule::constant(-1.0).validate().is_err());
    assert!(LrSchedule::constant(f64::NAN).validate().is_err());
}

#[test]
fn non_finite_gradients_are_skipped_not_applied() {
    let mut p = vec![1.0f32; 4];
    let mut opt = Optimizer::<f32>::new(OptimizerConfig::adam(), 4).unwrap();
    let mut g = vec![0.1, f32::NAN, 0.2, 0.3];
    let r = apply_update(&mut p, &mut g, &mut opt, 0.1, Clip { max_norm: Some(1.0), max_value: None });
    assert!(r.skipped && !r.grad_norm.is_finite());
    assert_eq!(p, vec![1.0; 4]);
    assert_eq!(opt.steps(), 0, "optimizer state advanced on a skipped step");
    let mut g = vec![f32::INFINITY, 0.0, 0.0, 0.0];
    assert!(apply_update(&mut p, &mut g, &mut opt, 0.1, Clip::default()).skipped);
    let mut g = vec![3.0, 4.0, 0.0, 0.0];
    let r = apply_update(&mut p, &mut g, &mut opt, 0.1, Clip { max_norm: Some(1.0), max_value: None });
    assert!(!r.skipped && r.clipped && (r.grad_norm - 5.0).abs() < 1e-6);
    assert!(p.iter().all(|v| v.is_finite()) && p != vec![1.0; 4]);
}

#[test]
fn value_clipping_clamps_every_element() {
    let mut p = vec![0.0f64; 3];
    let mut opt = Optimizer::<f64>::new(OptimizerConfig::sgd(), 3).unwrap();
    let mut g = vec![-5.0, 0.5, 2.0];
    let r = apply_update(&mut p, &mut g, &mut opt, 1.0, Clip { max_norm: None, max_value: Some(1.0) });
    assert!(r.clipped);
    assert_eq!(g, vec![-1.0, 0.5, 1.0]);
    assert_eq!(p, vec![1.0, -0.5, -1.0]);
}

proptest! {
    #[test]
    fn norm_clipping_bounds_norm_keeps_direction_returns_pre_norm(
        g in prop::collection::vec(-1e3f64..1e3, 1..64),
        max_norm in 1e-3f64..1e2,
    ) {
        let before = global_norm(&g);
        let mut c = g.clone();
        let reported = clip_grad_norm(&mut c, max_norm);
        prop_assert_eq!(reported, before);
        let after = global_norm(&c);
        prop_assert!(after <= max_norm * (1.0 + 1e-12) || after <= before);
        prop_assert!(after <= before * (1.0 + 1e-12));
        if before > 0.0 {
            // Same direction: c = λ g with λ > 0.
            let dot: f64 = g.iter().zip(&c).map(|(a, b)| a * b).sum();
            prop_assert!((dot / (before * after.max(1e-300)) - 1.0).abs() < 1e-9 || after == 0.0);
        }
        if before <= max_norm {
            prop_assert_eq!(c, g);
        }
    }
}

/// Large slabs are updated in two halves on two threads: the same bits as one thread, for
/// Adam, AdamW and AMSGrad.
#[test]
fn two_thread_updates_equal_one_thread() {
    let n = (1 << 16) + 5;
    let amsgrad = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        amsgrad: true,
        decoupled: false,
    };
    for config in [OptimizerConfig::adam(), OptimizerConfig::adamw(), amsgrad] {
        let run = |threads: usize| {
            let mut p: Vec<f32> = (0..n).map(|k| (k as f32 * 0.37).cos()).collect();
            let mut opt = Optimizer::<f32>::new(config, n).unwrap().with_threads(threads);
            for s in 0..4 {
                opt.step(&mut p, &grad(s, n), 0.01);
            }
            (p, opt.state().buffers)
        };
        assert_eq!(run(1), run(2), "{}: the update depends on the thread count", config.name());
    }
}
