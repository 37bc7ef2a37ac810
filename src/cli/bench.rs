//! `bptt bench`: full training steps of the char-LM (forward, backward, clip, Adam) on random
//! tokens, timed after a warm-up; tokens/s, ms/step, GFLOP/s and memory. `--suite` runs the
//! BENCHMARKS.md table, each config in a fresh process so peak RSS is its own.

use super::memory;
use anyhow::{Context, Result};
use bptt::charlm::ModelSpec;
use bptt::net::{Dropout, WeightDrop};
use bptt::{CellKind, Clip, Input, Net, Optimizer, OptimizerConfig, State, Targets, Workspace, apply_update};
use rand::{RngExt, SeedableRng};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// lstm, gru, rnn_tanh, rnn_relu.
    #[arg(long, default_value = "lstm")]
    cell: String,
    /// Hidden width H.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    hidden: usize,
    /// Stacked layers L.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    layers: usize,
    /// Embedding width E.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    embedding_dim: usize,
    /// Vocabulary V.
    #[arg(long, default_value_t = 65, allow_negative_numbers = true)]
    vocab: usize,
    /// Streams B.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    batch: usize,
    /// Steps per update T.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    seq_len: usize,
    /// Timed updates (after 3 warm-up updates).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    steps: usize,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Print one JSON line per config.
    #[arg(long)]
    json: bool,
    /// Run the BENCHMARKS.md table (each config in its own process).
    #[arg(long)]
    suite: bool,
    /// Measure the GEMM crate's own peak GFLOP/s (f32, square matrices) instead.
    #[arg(long)]
    gemm_peak: bool,
    /// Memory-efficient BPTT: keep the state every K steps and recompute segments in the
    /// backward pass (0 = plain BPTT; `auto` = √T).
    #[arg(long, default_value = "0")]
    checkpoint_every: String,
    /// Dropout P on the non-recurrent connections (as `train --dropout`), a fresh mask per
    /// update.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    dropout: f64,
    /// DropConnect P on every W_hh, one mask per update (as `train --weight-drop`).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    weight_drop: f64,
    /// Stacked layers with small batches as a wavefront: auto (on with 4+ cores), on, off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    wavefront: String,
    /// Row blocks of mid-size batches cut into rows × units (more parts for many cores): auto
    /// (on with 8+ cores where a part's step pays for its meeting), on, off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    grid: String,
    /// Bidirectional layers (a reverse direction too, outputs 2H wide, as PyTorch's
    /// bidirectional=True): the state is not carried between steps.
    #[arg(long)]
    bidirectional: bool,
    /// LSTM: project each layer's output to P < H values (PyTorch's proj_size; 0 = none).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    proj_size: usize,
    /// LSTM: the LayerNorm-LSTM (norms on W_ih·x, W_hh·h and c).
    #[arg(long)]
    layer_norm: bool,
    /// Zoneout Z on h (as `train --zoneout-h`).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_h: f64,
    /// LSTM: zoneout Z on c (as `train --zoneout-c`).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_c: f64,
    /// f32, or bf16: the large products' operands rounded to bf16, f32 accumulation (on CPUs
    /// with AVX512-BF16; f32 elsewhere).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    precision: String,
    /// The schedule model: time every part of every pass on one thread and predict the time of
    /// an update on 1, 2, 4, 8 and 16 threads (the slowest thread's parts per segment, plus
    /// meetings and hand-offs measured here, per helper); the measured line is the 1-thread run.
    #[arg(long)]
    plan: bool,
    /// Plan as if this machine had N cores — the wavefront, the grid, the tiles of deep
    /// products — so that `--plan` predicts that machine's schedule (0 = this machine's own).
    #[arg(long, default_value_t = 0)]
    plan_cores: usize,
}

/// The GEMM crate's f32 throughput on square n×n×n products, best of several runs.
fn gemm_peak(threads: usize, json: bool) -> Result<()> {
    // The machine's own ceiling first: fused multiply-adds on registers, every thread at once.
    let fma = bptt::kernels::machine::fma_peak(threads);
    let bf16 = bptt::kernels::machine::bf16_peak(threads);
    let amx = bptt::kernels::machine::amx_peak(threads);
    let peaks = [
        ("fma-peak", Some(fma), "f32 FMA peak (registers only)", "", ""),
        (
            "bf16-peak",
            bf16,
            "bf16 dot-product peak (vdpbf16ps, registers only)",
            "",
            "bf16: this CPU has no AVX512-BF16 (the bf16 kernel runs a scalar loop)",
        ),
        (
            "amx-peak",
            amx,
            "bf16 AMX tile peak (tdpbf16ps, registers only)",
            " — the bf16 kernel below runs on AMX tiles",
            "AMX: no tiles here (CPU, kernel or BPTT_AMX=off): the bf16 kernel runs vdpbf16ps",
        ),
    ];
    for (system, peak, what, after, absent) in peaks {
        match (peak, json) {
            (Some(p), true) => super::outln!(
                "{}",
                serde_json::json!({"system": system, "threads": threads, "gflops": (p * 10.0).round() / 10.0, "cpu": cpu_model()})
            )?,
            (Some(p), false) => super::outln!("{what}, {threads} threads: {p:.1} GFLOP/s{after}")?,
            (None, false) => super::outln!("{absent}")?,
            (None, true) => {}
        }
    }
    for n in [256usize, 512, 1024, 2048] {
        let a: Vec<f32> = (0..n * n).map(|k| (k % 7) as f32 * 0.1).collect();
        let b = a.clone();
        let mut c = vec![0.0f32; n * n];
        let reps = (2_000_000_000 / (2 * n * n * n)).max(2);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            for _ in 0..reps {
                bptt::kernels::gemm(
                    bptt::kernels::MatMut::rows(&mut c, n, n),
                    bptt::kernels::Mat::rows(&a, n, n),
                    bptt::kernels::Mat::rows(&b, n, n),
                    false,
                    threads,
                );
            }
            best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
        }
        let gflops = 2.0 * (n * n * n) as f64 / best / 1e9;
        // The bf16 kernel on one thread beside the crate on one (operands packed beforehand, as
        // weights are once per update).
        let one_thread = time_gemm(reps, || {
            bptt::kernels::gemm(
                bptt::kernels::MatMut::rows(&mut c, n, n),
                bptt::kernels::Mat::rows(&a, n, n),
                bptt::kernels::Mat::rows(&b, n, n),
                false,
                1,
            )
        });
        let (mut pa, mut pb) = (bptt::kernels::bf16::PackedA::new(n, n), bptt::kernels::bf16::PackedB::new(n, n));
        pa.pack(bptt::kernels::Mat::rows(&a, n, n));
        pb.pack(bptt::kernels::Mat::rows(&b, n, n));
        let bf16_time =
            time_gemm(reps, || bptt::kernels::bf16::gemm(bptt::kernels::MatMut::rows(&mut c, n, n), &pa, &pb, false));
        let (g1, gb) = (2.0 * (n * n * n) as f64 / one_thread / 1e9, 2.0 * (n * n * n) as f64 / bf16_time / 1e9);
        if json {
            super::outln!(
                "{}",
                serde_json::json!({"system": "bf16-kernel", "n": n, "threads": 1, "gflops": (gb * 10.0).round() / 10.0, "f32_gemm_crate_1_thread": (g1 * 10.0).round() / 10.0, "cpu": cpu_model()})
            )?;
        } else {
            super::outln!("bf16 kernel {n}x{n}x{n}, 1 thread: {gb:.1} GFLOP/s (gemm f32, 1 thread: {g1:.1})")?;
        }
        if json {
            super::outln!(
                "{}",
                serde_json::json!({"system": "gemm-crate", "n": n, "threads": threads, "gflops": (gflops * 10.0).round() / 10.0, "cpu": cpu_model()})
            )?;
        } else {
            super::outln!("gemm f32 {n}x{n}x{n}, {threads} threads: {gflops:.1} GFLOP/s")?;
        }
    }
    Ok(())
}

/// The best of 3 timings of `reps` calls of `f`, seconds per call.
fn time_gemm(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// The BENCHMARKS.md table: (cell, H, L, B, T).
const SUITE: &[(&str, usize, usize, usize, usize)] = &[
    ("lstm", 64, 1, 16, 50),
    ("lstm", 128, 1, 32, 64),
    ("lstm", 256, 1, 32, 100),
    ("gru", 256, 1, 32, 100),
    ("rnn_tanh", 256, 1, 32, 100),
    ("lstm", 256, 1, 1, 100),
    ("lstm", 512, 2, 64, 100),
];

/// Model FLOPs per token of one training step: forward GEMMs 2·G·H·(I_k + H) per layer (with
/// I_0 = E, as an unfolded embedding computes it) plus the readout 2·V·H; backward twice that.
/// D directions double the recurrent part, and each layer above the first (and the readout)
/// reads D·H.
pub fn flops_per_token(spec: &ModelSpec, vocab: usize, directions: usize) -> f64 {
    let (g, h, e, d) = (spec.cell.gates() as f64, spec.hidden as f64, spec.embedding_dim as f64, directions as f64);
    let layers: f64 = (0..spec.layers).map(|k| d * 2.0 * g * h * (if k == 0 { e } else { d * h } + h)).sum();
    3.0 * (layers + 2.0 * vocab as f64 * d * h)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(a: Args) -> Result<ExitCode> {
    bptt::kernels::machine::set_plan_cores(a.plan_cores);
    // (The schedule model times each part on one thread.)
    let threads = if a.plan { 1 } else { super::threads(a.threads)? };
    if a.gemm_peak {
        gemm_peak(threads, a.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if a.suite {
        let exe = std::env::current_exe().context("cannot find the bptt executable")?;
        for &(cell, h, l, b, t) in SUITE {
            let steps = if b == 1 { 50 } else { a.steps };
            let (h, l, b, t) = (h.to_string(), l.to_string(), b.to_string(), t.to_string());
            let th = threads.to_string();
            let mut args =
                vec!["bench", "--cell", cell, "--hidden", &h, "--layers", &l, "--batch", &b, "--seq-len", &t];
            let steps = steps.to_string();
            args.extend(["--steps", &steps, "--threads", &th]);
            if a.json {
                args.push("--json");
            }
            let status = Command::new(&exe).args(&args).status()?;
            anyhow::ensure!(status.success(), "bench config {args:?} failed");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cell: CellKind = a.cell.parse()?;
    let (hidden, layers, layer_norm) = (a.hidden, a.layers, a.layer_norm);
    let zoneout = bptt::Zoneout { h: a.zoneout_h, c: a.zoneout_c };
    let spec = ModelSpec { cell, embedding_dim: a.embedding_dim, hidden, layers, layer_norm, zoneout };
    spec.validate(a.vocab)?;
    anyhow::ensure!(a.batch > 0 && a.seq_len > 0 && a.steps > 0, "--batch, --seq-len and --steps must be at least 1");
    let (bidirectional, proj_size) = (a.bidirectional, a.proj_size);
    let net = Net::new(bptt::NetConfig { bidirectional, proj_size, ..spec.net_config(a.vocab) })?;
    let k = super::checkpoint_every(&a.checkpoint_every, a.seq_len)?;
    // Plain BPTT keeps a T-step workspace; checkpointed BPTT a K-step one plus T/K states.
    const HINT: &str = "lower --hidden, --layers, --batch or --seq-len, or use --checkpoint-every auto";
    let cfg = net.config();
    let activations = match k {
        0 => Workspace::<f32>::estimate_bytes(cfg, a.seq_len, a.batch),
        k => bptt::CheckpointedBptt::<f32>::estimate_bytes(cfg, k, a.seq_len, a.batch)
            .saturating_add(Workspace::<f32>::estimate_bytes(cfg, 1, a.batch)),
    };
    let precision: bptt::kernels::Precision = a.precision.parse()?;
    let packs = match precision {
        bptt::kernels::Precision::Bf16 => Workspace::<f32>::estimate_bf16_bytes(cfg, a.seq_len, a.batch),
        bptt::kernels::Precision::F32 => 0,
    };
    memory::Estimate::new(threads)
        .add("weights, gradients, Adam", (net.num_params() as u64).saturating_mul(4 * 4))
        .add("activations", activations)
        .add("bf16 packs", packs)
        .add("batch", (a.seq_len as u64).saturating_mul(a.batch as u64).saturating_mul(8))
        .check(HINT)?;
    let mut params = net.init_params::<f32>(1);
    let mut grads = vec![0.0f32; params.len()];
    let mut ws =
        net.workspace::<f32>(if k > 0 { 1 } else { a.seq_len }, a.batch, threads).map_err(memory::hint(HINT))?;
    if a.wavefront != "auto" {
        ws.set_wavefront(a.wavefront == "on");
    }
    if a.grid != "auto" {
        ws.set_grid(a.grid == "on");
    }
    ws.set_precision(precision);
    let mut ck = match k {
        0 => None,
        k => Some(bptt::CheckpointedBptt::<f32>::new(&net, k, a.batch, threads).map_err(memory::hint(HINT))?),
    };
    // Dropout and weight drop: validated (and their buffers allocated) before the timed loop.
    let dropout = |seed: u64| Dropout { p: a.dropout, locked: false, seed }.when_needed(&net.config().zoneout);
    match ck.as_mut() {
        Some(ck) => ck.set_dropout(dropout(0))?,
        None => ws.set_dropout(dropout(0))?,
    }
    let weight_drop = |seed: u64| (a.weight_drop > 0.0).then_some(WeightDrop { p: a.weight_drop, seed });
    if let Some(wd) = weight_drop(0) {
        wd.validate()?;
    }
    let mut dropped = if a.weight_drop > 0.0 { params.clone() } else { Vec::new() };
    let mut w_hh_mask = vec![0.0f32; if a.weight_drop > 0.0 { WeightDrop::mask_len(&net) } else { 0 }];
    let mut update = 0u64;
    let mut opt = Optimizer::new(OptimizerConfig::adam(), params.len())?.with_threads(threads);
    let clip = Clip { max_norm: Some(5.0), max_value: None };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = a.seq_len * a.batch;
    let (mut x, mut y) = (vec![0u32; n], vec![0u32; n]);
    let mut state = State::zeros(net.config(), a.batch);
    let mut step = |timed: bool| -> Result<f64> {
        for v in x.iter_mut().chain(y.iter_mut()) {
            *v = rng.random_range(0..a.vocab as u32);
        }
        let t0 = Instant::now();
        grads.fill(0.0);
        update += 1;
        let p = match weight_drop(update) {
            Some(wd) => {
                wd.apply(&net, &params, &mut dropped, &mut w_hh_mask)?;
                &dropped
            }
            None => &params,
        };
        match ck.as_mut() {
            Some(ck) => {
                ck.set_dropout(dropout(update))?;
                ck.run(&net, p, Input::Tokens(&x), Targets::classes(&y), Some(&state), &mut grads)?;
                // (The carried state is not needed to time the step; keep it at zero.)
            }
            None => {
                ws.set_dropout(dropout(update))?;
                net.forward(p, &mut ws, Input::Tokens(&x), Some(Targets::classes(&y)), Some(&state))?;
                net.backward(p, &mut ws, &mut grads)?;
                if !a.bidirectional {
                    ws.state_at(a.seq_len, &mut state);
                }
            }
        }
        if weight_drop(update).is_some() {
            WeightDrop::backward(&net, &mut grads, &w_hh_mask)?;
        }
        apply_update(&mut params, &mut grads, &mut opt, 2e-3, clip);
        let dt = t0.elapsed().as_secs_f64();
        Ok(if timed { dt } else { 0.0 })
    };
    for _ in 0..3 {
        step(false)?;
    }
    // How the parts of every pass were shared between the threads, over the timed steps only.
    let _ = bptt::kernels::team::take_shares();
    bptt::kernels::team::model_start(a.plan);
    let mut total = 0.0;
    for _ in 0..a.steps {
        total += step(true)?;
    }
    let model = bptt::kernels::team::model_sums();
    bptt::kernels::team::model_start(false);
    let parts_run = bptt::kernels::team::take_shares();
    let all_parts: u64 = parts_run.iter().sum::<u64>().max(1);
    let share: Vec<f64> = parts_run.iter().map(|&n| (n as f64 / all_parts as f64 * 1000.0).round() / 1000.0).collect();
    let ms = 1e3 * total / a.steps as f64;
    let tokens_per_s = n as f64 / (total / a.steps as f64);
    let gflops = flops_per_token(&spec, a.vocab, net.config().directions()) * tokens_per_s / 1e9;
    let line = serde_json::json!({
        "system": "bptt",
        "cell": cell.name(),
        "hidden": a.hidden,
        "layers": a.layers,
        "embedding_dim": a.embedding_dim,
        "vocab": a.vocab,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "threads": threads,
        "steps": a.steps,
        "tokens_per_s": tokens_per_s.round(),
        "ms_per_step": (ms * 1000.0).round() / 1000.0,
        "gflops": (gflops * 10.0).round() / 10.0,
        "peak_rss_mb": (memory::peak_mib() * 10.0).round() / 10.0,
        "checkpoint_every": k,
        "activation_mb": (ck.as_ref().map_or(ws.bytes(), |c| c.bytes()) as f64 / 1048576.0 * 10.0).round() / 10.0,
        "cpu": cpu_model(),
        "wavefront": a.wavefront,
        "grid": a.grid,
        "plan_cores": bptt::kernels::machine::plan_cores(),
        "schedule": ws.schedule(),
        "dropout": a.dropout,
        "weight_drop": a.weight_drop,
        "bidirectional": a.bidirectional,
        "proj_size": a.proj_size,
        "layer_norm": a.layer_norm,
        "zoneout_h": a.zoneout_h,
        "zoneout_c": a.zoneout_c,
        "precision": precision.effective::<f32>().name(),
        "parts_per_thread": parts_run,
        "thread_share": share,
    });
    if a.json {
        super::outln!("{line}")?;
    } else {
        super::outln!(
            "{} H={} L={} B={} T={} threads={} {}: {:.0} tokens/s, {:.2} ms/step, {:.1} GFLOP/s, peak RSS {:.1} MB, activations {:.1} MB, parts per thread {}",
            cell.name(),
            a.hidden,
            a.layers,
            a.batch,
            a.seq_len,
            threads,
            precision.effective::<f32>().name(),
            tokens_per_s,
            ms,
            gflops,
            line["peak_rss_mb"].as_f64().unwrap_or(0.0),
            line["activation_mb"].as_f64().unwrap_or(0.0),
            share.iter().map(|f| format!("{:.0}%", f * 100.0)).collect::<Vec<_>>().join("/")
        )?;
    }
    if a.plan {
        print_plan(&model, total / a.steps as f64, a.steps, n, a.json.then_some(&line))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The schedule model's predictions (`--plan`) from its sums over `steps` updates of `n` tokens
/// that took `per_update` seconds each on one thread: the time outside passes (the same at any
/// count), the slowest thread's parts per segment, and meetings and hand-offs at their cost on 2
/// threads here, once per helper taking part (a pass runs on no more threads than it has
/// parts). `json`: one line, with the config's keys of the measured line.
fn print_plan(
    model: &[bptt::kernels::team::ModelSums],
    per_update: f64,
    steps: usize,
    n: usize,
    json: Option<&serde_json::Value>,
) -> Result<()> {
    let (meeting, hand_off) = bptt::kernels::team::meeting_costs(2, 4000);
    let per = |v: f64| v / steps as f64;
    let serial = (per_update - per(model[0].busy_s)).max(0.0);
    let rows: Vec<(usize, f64, f64, f64)> = model
        .iter()
        .map(|m| {
            let sync = per(m.meetings as f64) * meeting + per(m.passes as f64) * hand_off;
            let t = serial + per(m.busy_s) + sync;
            (m.lanes, t, per(m.busy_s), sync)
        })
        .collect();
    if let Some(measured) = json {
        let predicted: Vec<_> = rows
            .iter()
            .map(|&(lanes, t, busy, sync)| {
                serde_json::json!({"threads": lanes, "ms_per_step": (t * 1e6).round() / 1e3,
                    "tokens_per_s": (n as f64 / t).round(), "parts_ms": (busy * 1e6).round() / 1e3,
                    "sync_ms": (sync * 1e6).round() / 1e3})
            })
            .collect();
        let mut line = serde_json::json!({"system": "bptt-plan", "serial_ms": (serial * 1e6).round() / 1e3,
            "meeting_us": (meeting * 1e9).round() / 1e3, "hand_off_us": (hand_off * 1e9).round() / 1e3,
            "predicted": predicted});
        for key in ["cell", "hidden", "layers", "embedding_dim", "vocab", "batch", "seq_len", "cpu"] {
            line[key] = measured[key].clone();
        }
        return Ok(super::outln!("{line}")?);
    }
    super::outln!(
        "schedule model: {:.2} ms/update outside passes; a meeting {:.2} µs, a hand-off {:.2} µs on 2 threads here",
        serial * 1e3,
        meeting * 1e6,
        hand_off * 1e6
    )?;
    for (lanes, t, busy, sync) in rows {
        super::outln!(
            "  {lanes:>2} threads: {:.2} ms/update ({:.0} tokens/s): parts {:.2} ms, meetings and hand-offs {:.2} ms",
            t * 1e3,
            n as f64 / t,
            busy * 1e3,
            sync * 1e3
        )?;
    }
    Ok(())
}
