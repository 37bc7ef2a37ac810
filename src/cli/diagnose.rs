//! `bptt diagnose`: gradient flow through time (and the exploding / truncation experiments),
//! written as PNG + SVG plots, CSV and JSON.

use super::memory;
use anyhow::Result;
use bptt::CellKind;
use bptt::charlm::fsio;
use bptt::diagnose::{FlowConfig, experiments as ex, gradient_flow};
use bptt::tasks::{TaskConfig, TaskKind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Cells to compare, comma-separated.
    #[arg(long, default_value = "rnn_tanh,lstm,gru", value_delimiter = ',')]
    cells: Vec<String>,
    /// Hidden width H.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    hidden: usize,
    /// Stacked layers L.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    layers: usize,
    /// Sequence length T.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    length: usize,
    /// Sequences the norms are averaged over.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    batch: usize,
    /// Measure after this many updates of adding-task training (0 = at initialisation).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    train_steps: usize,
    /// Rescale W_hh to this largest singular value at initialisation.
    #[arg(long, allow_negative_numbers = true, value_parser = super::finite)]
    w_hh_scale: Option<f64>,
    /// LSTM forget-gate bias at initialisation.
    #[arg(long, allow_negative_numbers = true, value_parser = super::finite)]
    forget_bias: Option<f64>,
    /// Also run the exploding-gradient experiment (tanh RNN, SGD, with and without clipping).
    #[arg(long)]
    explode: bool,
    /// Also measure the truncation bias of TBPTT(1, k) against full BPTT, on an LSTM trained on
    /// the adding task for --train-steps updates (2000 if not given).
    #[arg(long)]
    truncation: bool,
    /// Also compare forward-mode gradients — exact RTRL, SnAp-1, UORO (--uoro-draws draws) —
    /// and TBPTT(1, k) with full BPTT, on an LSTM trained on the adding task, over 2 fresh
    /// sequences. RTRL costs O(S²·P) per step: keep --hidden small (16–32).
    #[arg(long)]
    online: bool,
    /// UORO's draws of random signs for --online.
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    uoro_draws: u64,
    /// Seed.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Measure a saved model instead: a char model with --text (windows of --length characters),
    /// or a `fit` model with --data (up to --batch of its sequences of the most common length).
    #[arg(long, conflicts_with_all = ["train_steps", "w_hh_scale", "forget_bias"])]
    model: Option<PathBuf>,
    /// The text for a char --model.
    #[arg(long, requires = "model", conflicts_with = "data")]
    text: Option<PathBuf>,
    /// The labelled sequences (.ts, .csv, .npz) for a `fit` --model.
    #[arg(long, requires = "model")]
    data: Option<PathBuf>,
    /// Output folder [default: runs/diagnose-<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    Ok(fsio::write_atomic(path, text.as_bytes())?)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    let cells = a.cells.iter().map(|c| c.parse::<CellKind>()).collect::<Result<Vec<_>, _>>()?;
    if a.hidden == 0 || a.layers == 0 || a.batch == 0 || a.length < 2 {
        anyhow::bail!("--hidden, --layers and --batch must be at least 1 and --length at least 2");
    }
    let cfg = FlowConfig {
        cells,
        hidden: a.hidden,
        layers: a.layers,
        length: a.length,
        batch: a.batch,
        seed: a.seed,
        threads,
        train_steps: a.train_steps,
        w_hh_scale: a.w_hh_scale,
        forget_bias: a.forget_bias,
        jacobian_samples: 8,
    };
    const HINT: &str = "lower --hidden, --layers, --length or --batch";
    let mut most = 0u64;
    if a.model.is_none() {
        most = cfg.estimate_bytes();
    }
    if a.explode {
        let explode = TaskConfig { steps: 300, ..TaskConfig::new(TaskKind::Adding, CellKind::RnnTanh, 30) };
        most = most.max(explode.estimate_bytes());
    }
    if a.truncation {
        most = most.max(ex::truncation_bytes(
            CellKind::Lstm,
            a.hidden,
            a.length,
            if a.train_steps > 0 { a.train_steps } else { 2000 },
        ));
    }
    if a.online {
        // The truncation run's, plus RTRL's influence matrix (this step's and the last), its Ī_t
        // and SnAp-1's pattern.
        let train = if a.train_steps > 0 { a.train_steps } else { 2000 };
        let net = TaskKind::Adding.net_config(CellKind::Lstm, a.hidden, 1);
        let (s, p) = (2 * a.hidden as u64, bptt::Net::new(net).map_or(u64::MAX, |n| n.num_params() as u64));
        let influence = s.saturating_mul(p).saturating_mul(8 * 4);
        most = most.max(ex::truncation_bytes(CellKind::Lstm, a.hidden, a.length, train).saturating_add(influence));
    }
    if a.model.is_some() && a.text.is_none() && a.data.is_none() {
        anyhow::bail!("--model needs --text (a char model) or --data (a `fit` model)");
    }
    let (model_bytes, text_bytes) = (
        a.model.as_deref().map_or(0, memory::file_bytes),
        a.text.as_deref().or(a.data.as_deref()).map_or(0, memory::file_bytes),
    );
    memory::Estimate::new(threads)
        .add("model file and weights", model_bytes.saturating_mul(2))
        .add("text and its ids", text_bytes.saturating_mul(2))
        .add("experiments", most)
        .add("charts", memory::CHART)
        .check(HINT)?;
    let dir = super::output_dir(a.out.as_deref(), "diagnose-")?;
    let mut length = a.length;
    let (flows, when, hidden) = match (&a.model, &a.text) {
        (Some(m), None) => {
            let (model, data) =
                super::predict::load(m, a.data.as_deref().unwrap_or(Path::new("")), None, None, threads)?;
            let probe = FlowConfig { hidden: model.spec.hidden_size, layers: model.spec.num_layers, ..cfg.clone() };
            memory::Estimate::new(threads)
                .add("measurement", probe.measure_bytes(model.net.config()))
                .add("charts", memory::CHART)
                .check("lower --batch")?;
            let (flow, t) = bptt::diagnose::flow::measure_seq(&model, &data, &cfg)?;
            length = t;
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (vec![flow], format!("{name} on its data"), model.spec.hidden_size)
        }
        (Some(m), Some(t)) => {
            let model = bptt::charlm::CharModel::load(m)?;
            let text = fsio::read_text(t)?;
            let ids = model.vocab.encode(&text).map_err(|e| anyhow::anyhow!("{}: {e}", t.display()))?;
            drop(text);
            let cfg = FlowConfig { hidden: model.spec.hidden, layers: model.spec.layers, ..cfg };
            // (The program's resident memory now includes the model and the ids.)
            memory::Estimate::new(threads)
                .add("measurement", cfg.measure_bytes(model.net.config()))
                .add("charts", memory::CHART)
                .check("lower --length or --batch")?;
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let flow = bptt::diagnose::flow::measure_text(&model, &ids, &cfg)?;
            (vec![flow], format!("{name} on its text"), model.spec.hidden)
        }
        _ => {
            let flows = gradient_flow(&cfg, |c| super::errln!("measuring {c} ..."))?;
            let when = if a.train_steps == 0 {
                "at initialisation".to_string()
            } else {
                format!("after {} updates", a.train_steps)
            };
            (flows, when, a.hidden)
        }
    };
    let title = format!("Gradient flow through time, T = {length}, H = {hidden}, {when}");
    let mut chart = ex::flow_chart(&flows, &title);
    if a.data.is_some() {
        // A `fit` model's loss reads every step (pooled), not only the last.
        chart.x_label = "time step t (RNN steps; the pooled head reads every step)".into();
        chart.y_label = "‖∂L/∂h_t‖ (mean over the sequences)".into();
    }
    chart.save(&dir.join("gradient_flow"))?;
    write(&dir.join("gradient_flow.csv"), &ex::flow_csv(&flows))?;
    write(&dir.join("gradient_flow.json"), &serde_json::to_string_pretty(&flows)?)?;
    super::outln!(
        "{:<9} {:>14} {:>14} {:>12} {:>22}",
        "cell",
        "|dL/dh_T-1|",
        "|dL/dh_0|",
        "survival",
        "sigma_max(dh_t/dh_t-1)"
    )?;
    for f in &flows {
        let n = &f.dh_norms[0];
        super::outln!(
            "{:<9} {:>14.3e} {:>14.3e} {:>12.3e} {:>22.3}",
            f.cell,
            n[n.len() - 1],
            n[0],
            f.survival(),
            f.jacobian[0].geometric_mean
        )?;
    }
    if a.explode {
        super::errln!("exploding-gradient experiment ...");
        let runs = ex::explode(30, 300, 3.0, 0.05, 1.0, a.seed, threads)?;
        let (loss, norm) = ex::explode_charts(&runs, 1.0);
        loss.save(&dir.join("explode_loss"))?;
        norm.save(&dir.join("explode_grad_norm"))?;
        write(&dir.join("explode.csv"), &ex::explode_csv(&runs, 1.0))?;
        for (r, name) in runs.iter().zip(["without clipping", "with clip-norm 1"]) {
            let skipped = r.history.iter().filter(|s| s.skipped).count();
            let clipped = r.history.iter().filter(|s| s.clipped).count();
            super::outln!(
                "explode {name:<17} final loss {:.4} (baseline {:.4}), {clipped} clipped, {skipped} skipped",
                r.final_loss,
                r.baseline
            )?;
        }
    }
    if a.truncation {
        super::errln!("truncation-bias experiment ...");
        let ks: Vec<usize> =
            [1, 2, 5, 10, 20, 30, 50, 75, 100].into_iter().filter(|&k| k < a.length).chain([a.length]).collect();
        // The LSTM is trained on the adding task first (--train-steps, else the task's 2000).
        let steps = if a.train_steps > 0 { a.train_steps } else { 2000 };
        let pts = ex::truncation(CellKind::Lstm, a.hidden, a.length, steps, &ks, a.seed, threads)?;
        ex::truncation_chart(&pts, "LSTM on the adding task").save(&dir.join("truncation"))?;
        write(&dir.join("truncation.csv"), &ex::truncation_csv(&pts))?;
        for p in &pts {
            super::outln!("truncation k={:<4} cosine {:.4} relative norm {:.4}", p.k, p.cosine, p.relative_norm)?;
        }
    }
    if a.online {
        super::errln!("forward-mode gradients (RTRL, SnAp-1, UORO) against truncation ...");
        let ks: Vec<usize> = [1, 5, 20].into_iter().filter(|&k| k < a.length).collect();
        let steps = if a.train_steps > 0 { a.train_steps } else { 2000 };
        let pts = ex::online(CellKind::Lstm, a.hidden, a.length, steps, &ks, a.uoro_draws, 2, a.seed, threads)?;
        write(&dir.join("online.csv"), &bptt::diagnose::online::online_csv(&pts))?;
        for p in &pts {
            super::outln!(
                "online {:<10} cosine {:.4} (sd {:.4}) relative norm {:.4} {:>10.3} ms/step {:>10} values carried",
                p.method,
                p.cosine,
                p.cosine_sd,
                p.relative_norm,
                p.ms_per_step,
                p.carried
            )?;
        }
    }
    super::errln!("wrote plots, CSV and JSON to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
