//! Truncation against forward-mode gradients: on one batch at fixed weights, the gradient of
//! TBPTT(1, k) for several k, of exact RTRL, of SnAp-1 and of UORO (several draws of its random
//! signs) against the full-BPTT gradient of the same losses — how close each comes (cosine,
//! relative norm), and what it costs per step (measured time, and the values it carries per
//! sequence from step to step).

use crate::diagnose::truncation::truncation_bias;
use crate::error::Result;
use crate::net::{Input, Net, Targets};
use crate::online::{self, Method, Sequences};
use std::time::Instant;

/// One method's gradient against the full one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OnlinePoint {
    /// `bptt`, `tbptt(k)`, `rtrl`, `snap1` or `uoro`.
    pub method: String,
    /// cos(g, g_full) (UORO: the mean over its draws).
    pub cosine: f64,
    /// The standard deviation of the cosine over UORO's draws (0 for the others).
    pub cosine_sd: f64,
    /// ‖g‖ / ‖g_full‖ (UORO: the mean over its draws).
    pub relative_norm: f64,
    /// Milliseconds per step and sequence, measured.
    pub ms_per_step: f64,
    /// Values carried per sequence from step to step (stored history or influence): BPTT T·S,
    /// TBPTT(1, k) k·S, RTRL S·P, SnAp-1 the influence entries one step reaches, UORO S + P
    /// (S the state's values, P the parameters).
    pub carried: u64,
}

/// Compares TBPTT(1, k) for every k in `ks`, RTRL, SnAp-1 and `draws` draws of UORO with full
/// BPTT on dense `x` (T, B, I) from a zero state.
#[allow(clippy::too_many_arguments)]
pub fn online_bias(
    net: &Net,
    params: &[f64],
    x: &[f64],
    targets: Targets<'_, f64>,
    steps: usize,
    ks: &[usize],
    draws: u64,
    threads: usize,
) -> Result<Vec<OnlinePoint>> {
    let b = x.len() / (steps * net.config().input_width());
    let cfg = net.config();
    let s = (cfg.layers * (cfg.state_width() + if cfg.cell.has_cell_state() { cfg.hidden } else { 0 })) as u64;
    let (p, t) = (net.num_params() as u64, steps as u64);
    let per_step = |since: Instant| since.elapsed().as_secs_f64() * 1e3 / (steps * b) as f64;
    let t0 = Instant::now();
    let mut ws = net.workspace::<f64>(steps, b, threads)?;
    net.forward(params, &mut ws, Input::Dense(x), Some(targets), None)?;
    let mut full = vec![0.0; net.num_params()];
    net.backward(params, &mut ws, &mut full)?;
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let full_norm = norm(&full);
    let compare = |g: &[f64]| {
        let dot: f64 = g.iter().zip(&full).map(|(a, b)| a * b).sum();
        let n = norm(g);
        (if n > 0.0 && full_norm > 0.0 { dot / (n * full_norm) } else { 0.0 }, n / full_norm)
    };
    let point = |method: String, cosine, relative_norm, ms_per_step, carried| OnlinePoint {
        method,
        cosine,
        cosine_sd: 0.0,
        relative_norm,
        ms_per_step,
        carried,
    };
    let mut out = vec![point("bptt".into(), 1.0, 1.0, per_step(t0), t * s)];
    for &k in ks {
        let t0 = Instant::now();
        let pts = truncation_bias(net, params, x, targets, steps, &[k], threads)?;
        out.push(point(
            format!("tbptt({})", pts[0].k),
            pts[0].cosine,
            pts[0].relative_norm,
            per_step(t0),
            k as u64 * s,
        ));
    }
    let run = |method: Method| -> Result<(Vec<f64>, f64, u64)> {
        let t0 = Instant::now();
        let mut g = vec![0.0; net.num_params()];
        let seqs = Sequences { input: Input::Dense(x), targets, batch: b, init: None };
        let (_, carried) = online::gradient_report(net, params, method, seqs, &mut g)?;
        Ok((g, per_step(t0), carried))
    };
    for (name, method) in [("rtrl", Method::Rtrl), ("snap1", Method::Snap1)] {
        let (g, ms, carried) = run(method)?;
        let (c, r) = compare(&g);
        out.push(point(name.into(), c, r, ms, carried));
    }
    let (mut cs, mut rs, mut total_ms) = (Vec::new(), Vec::new(), 0.0);
    for seed in 0..draws.max(1) {
        let (g, ms, _) = run(Method::Uoro { seed })?;
        let (c, r) = compare(&g);
        cs.push(c);
        rs.push(r);
        total_ms += ms;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mc, mr) = (mean(&cs), mean(&rs));
    let sd = (cs.iter().map(|c| (c - mc) * (c - mc)).sum::<f64>() / cs.len() as f64).sqrt();
    out.push(OnlinePoint { cosine_sd: sd, ..point("uoro".into(), mc, mr, total_ms / cs.len() as f64, s + p) });
    Ok(out)
}

/// `method,cosine,cosine_sd,relative_norm,ms_per_step,carried` rows.
pub fn online_csv(points: &[OnlinePoint]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("method,cosine,cosine_sd,relative_norm,ms_per_step,carried\n");
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            p.method, p.cosine, p.cosine_sd, p.relative_norm, p.ms_per_step, p.carried
        );
    }
    s
}
