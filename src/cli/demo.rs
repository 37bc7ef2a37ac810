//! `bptt demo`: every picture of BPTT from real runs, in one self-contained report.html (plus
//! the PNG/SVG/CSV files behind it). Needs no downloads; the char-LM section uses
//! tiny-shakespeare (or --text) only when present and says so.

use super::memory;
use anyhow::Result;
use bptt::CellKind;
use bptt::charlm::train::TrainConfig;
use bptt::charlm::{CharModel, ModelSpec, Sampler, TokenIds, Trainer, Vocab, fsio};
use bptt::diagnose::experiments as ex;
use bptt::diagnose::flow::{CellFlow, FlowConfig, measure};
use bptt::diagnose::graph::{GraphFormat, unrolled};
use bptt::diagnose::plot::{Chart, Series};
use bptt::diagnose::report::{Report, Section};
use bptt::tasks::{self, TaskConfig, TaskKind, TaskReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A shorter demo (about 4 s on 2 cores): shorter sequences, fewer updates.
    #[arg(long)]
    quick: bool,
    /// Output folder [default: runs/demo-<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Text for the char-LM section [default: data/tinyshakespeare.txt, shipped in the repository].
    #[arg(long)]
    text: Option<PathBuf>,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
}

/// Sizes of the two demo variants.
struct Plan {
    flow_len: usize,
    adding_len: usize,
    adding_steps: usize,
    copy_len: usize,
    copy_steps: usize,
    explode_steps: usize,
    online_len: usize,
    online_seqs: usize,
    lm_steps: u64,
}

const QUICK: Plan = Plan {
    flow_len: 60,
    adding_len: 40,
    adding_steps: 800,
    copy_len: 0,
    copy_steps: 0,
    explode_steps: 200,
    online_len: 20,
    online_seqs: 300,
    lm_steps: 60,
};
const FULL: Plan = Plan {
    flow_len: 100,
    adding_len: 100,
    adding_steps: 2000,
    copy_len: 10,
    copy_steps: 5000,
    explode_steps: 300,
    online_len: 50,
    online_seqs: 2000,
    lm_steps: 400,
};

struct Ctx {
    dir: PathBuf,
    threads: usize,
    started: Instant,
    section: usize,
    sections: usize,
}

impl Ctx {
    fn step(&mut self, what: &str) {
        self.section += 1;
        super::errln!("[{}/{}] {what} ({:.0} s)", self.section, self.sections, self.started.elapsed().as_secs_f64());
    }
    /// Saves the chart's PNG, SVG and CSV (every point of every line) and returns the SVG for
    /// the report.
    fn chart(&self, chart: &Chart, name: &str) -> Result<String> {
        chart.save(&self.dir.join(name))?;
        self.write(&format!("{name}.csv"), &chart.csv())?;
        Ok(chart.svg()?)
    }
    fn write(&self, name: &str, text: &str) -> Result<()> {
        Ok(fsio::write_atomic(&self.dir.join(name), text.as_bytes())?)
    }
}

fn default_text() -> Option<PathBuf> {
    // The repository's copy, from the clone's root (or the binary's folder's grandparent).
    let exe_root = std::env::current_exe().ok().and_then(|e| e.parent()?.parent()?.parent().map(PathBuf::from));
    let candidates =
        [Some(PathBuf::from("data/tinyshakespeare.txt")), exe_root.map(|r| r.join("data/tinyshakespeare.txt"))];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    let plan = if a.quick { &QUICK } else { &FULL };
    let text = a.text.clone().or_else(default_text);
    // Read the text now, so a bad --text fails before minutes of experiments, not after.
    let raw = text.as_deref().map(fsio::read_text).transpose()?;
    estimate(plan, threads, raw.as_deref())?.check("use a shorter --text or fewer --threads")?;
    let dir = super::output_dir(a.out.as_deref(), "demo-")?;
    let mut cx = Ctx { dir, threads, started: Instant::now(), section: 0, sections: 8 };
    let q = if a.quick { " --quick" } else { "" };
    let mut sections = Vec::new();

    cx.step("the unrolled graph");
    sections.push(Section {
        title: "1. Unrolling the network".into(),
        text: "BPTT first unrolls the recurrence into a feed-forward graph with one copy of the cell per time step, \
               all sharing the same weights; each step has its own output and loss. Solid arrows are the forward pass; \
               dashed arrows are the backward pass, in which dL/dh_t receives the gradient from step t's own loss and \
               from the future through h_{t+1}."
            .into(),
        command: "bptt graph --steps 4 --format svg  (or --format mermaid / dot)".into(),
        figures: vec![unrolled(4, 1, GraphFormat::Svg)],
        ..Default::default()
    });
    cx.write("unrolled.svg", &unrolled(4, 1, GraphFormat::Svg))?;
    cx.write("unrolled.mmd", &unrolled(4, 1, GraphFormat::Mermaid))?;

    cx.step("gradient flow at initialisation");
    let flow_cfg = |len: usize| flow_config(len, threads);
    let mut init_flows = Vec::new();
    for (cell, fb) in
        [(CellKind::RnnTanh, None), (CellKind::Lstm, None), (CellKind::Gru, None), (CellKind::Lstm, Some(3.0))]
    {
        let cfg = FlowConfig { forget_bias: fb, ..flow_cfg(plan.flow_len) };
        let task =
            TaskConfig { steps: 0, forget_bias: fb, threads, ..TaskConfig::new(TaskKind::Adding, cell, plan.flow_len) };
        let (net, p) = tasks::trained(&task)?;
        let mut f = measure(&net, &p.iter().map(|&v| v as f64).collect::<Vec<_>>(), cell, &cfg, 0)?;
        if fb.is_some() {
            f.cell = "lstm, forget bias 3";
        }
        init_flows.push(f);
    }
    let chart = ex::flow_chart(&init_flows, &format!("Gradient flow at initialisation, T = {}", plan.flow_len));
    let svg = cx.chart(&chart, "flow_init")?;
    cx.write("flow_init.csv", &ex::flow_csv(&init_flows))?;
    sections.push(Section {
        title: "2. Vanishing gradients at initialisation".into(),
        text: format!(
            "The norm of the gradient of the last step's loss with respect to each earlier hidden state, measured on \
             the adding task with PyTorch's default initialisation: it shrinks geometrically with distance for every \
             cell, because each step multiplies it by a Jacobian of norm below one (a forget or update gate near 1/2 \
             halves it). Setting the LSTM forget-gate bias to 3 makes ∂c_t/∂c_(t-1) = diag(f) ≈ 0.95 and the gradient \
             survives: after {} steps it keeps {:.1e} of its size, against {:.1e} for the tanh RNN.",
            plan.flow_len,
            init_flows[3].survival(),
            init_flows[0].survival()
        ),
        command: format!(
            "bptt diagnose --length {} --cells rnn_tanh,lstm,gru  (add --forget-bias 3 for the last line)",
            plan.flow_len
        ),
        figures: vec![svg],
        table: flow_table(&init_flows),
        ..Default::default()
    });

    cx.step("long-range tasks");
    let mut adding = Vec::new();
    let mut trained = Vec::new();
    for cell in [CellKind::RnnTanh, CellKind::Lstm, CellKind::Gru] {
        let cfg = TaskConfig {
            steps: plan.adding_steps,
            threads,
            ..TaskConfig::new(TaskKind::Adding, cell, plan.adding_len)
        };
        let (net, params, r) = tasks::train(&cfg, |_| {})?;
        super::errln!(
            "      adding T={} {}: loss {:.4} (baseline {:.4}) {}",
            r.length,
            r.cell,
            r.final_loss,
            r.baseline,
            solved(&r)
        );
        trained.push((cell, net, params));
        adding.push(r);
    }
    let mut copy = Vec::new();
    if plan.copy_steps > 0 {
        for cell in [CellKind::RnnTanh, CellKind::Lstm, CellKind::Gru] {
            let cfg = TaskConfig {
                steps: plan.copy_steps,
                hidden: 128,
                threads,
                ..TaskConfig::new(TaskKind::Copy, cell, plan.copy_len)
            };
            let r = tasks::run(&cfg, |_| {})?;
            super::errln!(
                "      copy T={} {}: loss {:.4} (baseline {:.4}) {}",
                r.length,
                r.cell,
                r.final_loss,
                r.baseline,
                solved(&r)
            );
            copy.push(r);
        }
    }
    let mut figures =
        vec![cx.chart(&ex::task_chart(&adding, &format!("Adding problem, T = {}", plan.adding_len)), "adding")?];
    if !copy.is_empty() {
        figures.push(cx.chart(&ex::task_chart(&copy, &format!("Copy task, delay T = {}", plan.copy_len)), "copy")?);
    }
    let mut table =
        vec![row(&["task", "T", "cell", "updates", "held-out loss", "baseline", "copy accuracy", "solved", "seconds"])];
    for r in adding.iter().chain(&copy) {
        table.push(vec![
            r.task.into(),
            r.length.to_string(),
            r.cell.into(),
            r.steps.to_string(),
            format!("{:.4}", r.final_loss),
            format!("{:.4}", r.baseline),
            r.accuracy.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
            if r.solved { "yes".into() } else { "no".into() },
            format!("{:.1}", r.seconds),
        ]);
    }
    sections.push(Section {
        title: "3. Long-range tasks: the gates at work".into(),
        text: "The adding problem hides two marked numbers in a long sequence and asks for their sum at the end; the \
               copy task asks to reproduce 10 symbols after a delay. The baseline is the loss of the best answer that \
               ignores the long-range information; gated cells (LSTM, GRU) get far below it where the tanh RNN, whose \
               gradient vanishes before it reaches the first marker, stays near it."
            .into(),
        command: format!(
            "bptt task adding --cell lstm --length {} --steps {}  (and --cell rnn_tanh, gru; bptt task copy --length {} --hidden 128 --steps {})",
            plan.adding_len, plan.adding_steps, FULL.copy_len, FULL.copy_steps
        ),
        figures,
        table,
        ..Default::default()
    });

    cx.step("gradient flow after training");
    let cfg = flow_cfg(plan.adding_len);
    let mut after = Vec::new();
    for (cell, net, params) in &trained {
        let p: Vec<f64> = params.iter().map(|&v| v as f64).collect();
        after.push(measure(net, &p, *cell, &cfg, plan.adding_steps)?);
    }
    let chart = ex::flow_chart(
        &after,
        &format!("Gradient flow after {} updates on the adding task, T = {}", plan.adding_steps, plan.adding_len),
    );
    let svg = cx.chart(&chart, "flow_trained")?;
    cx.write("flow_trained.csv", &ex::flow_csv(&after))?;
    sections.push(Section {
        title: "4. Gradient flow after training".into(),
        text: "The same measurement on the networks trained in section 3. The gated cells have learned to keep their \
               gates open, so the gradient of the final loss reaches the first steps with little loss, while the tanh \
               RNN's still decays geometrically: the vanishing-gradient problem, and its fix, in one picture."
            .into(),
        command: format!("bptt diagnose --length {} --train-steps {}", plan.adding_len, plan.adding_steps),
        figures: vec![svg],
        table: flow_table(&after),
        ..Default::default()
    });

    cx.step("exploding gradients and clipping");
    let runs = ex::explode(30, plan.explode_steps, 3.0, 0.05, 1.0, 1, threads)?;
    let (loss, norm) = ex::explode_charts(&runs, 1.0);
    let figures = vec![cx.chart(&loss, "explode_loss")?, cx.chart(&norm, "explode_grad_norm")?];
    cx.write("explode.csv", &ex::explode_csv(&runs, 1.0))?;
    let skipped = runs[0].history.iter().filter(|s| s.skipped).count();
    let clipped = runs[1].history.iter().filter(|s| s.clipped).count();
    sections.push(Section {
        title: "5. Exploding gradients and clipping".into(),
        text: format!(
            "A tanh RNN whose recurrent matrix starts with largest singular value 3 (Pascanu et al.: above 1/γ = 1 \
             gradients can explode), trained by plain SGD at lr 0.05 on the adding task with T = 30. Without clipping \
             the gradient norm grows by orders of magnitude within a few dozen updates until it is no longer finite \
             ({skipped} of {} updates skipped, never applied); clipping the global norm to 1 ({clipped} updates clipped) \
             keeps every update bounded and training stable.",
            runs[0].steps
        ),
        command: "bptt diagnose --explode".into(),
        figures,
        ..Default::default()
    });

    cx.step("truncation bias");
    let (_, lstm_net, lstm_params) = &trained[1];
    let ks: Vec<usize> = [1, 2, 5, 10, 20, 30, 40, 50, 75, 100]
        .into_iter()
        .filter(|&k| k < plan.adding_len)
        .chain([plan.adding_len])
        .collect();
    let pts = ex::truncation_of(lstm_net, lstm_params, TaskKind::Adding, plan.adding_len, &ks, 1, threads)?;
    let svg = cx.chart(&ex::truncation_chart(&pts, "the trained LSTM of section 3"), "truncation")?;
    cx.write("truncation.csv", &ex::truncation_csv(&pts))?;
    let mut table = vec![row(&["k", "cosine", "relative norm"])];
    table.extend(
        pts.iter().map(|p| vec![p.k.to_string(), format!("{:.4}", p.cosine), format!("{:.4}", p.relative_norm)]),
    );
    sections.push(Section {
        title: "6. The bias of truncated BPTT".into(),
        text: "Truncated BPTT back-propagates each loss through at most k steps, so the gradient it follows is not \
               the true one. For the LSTM trained on the adding task, the TBPTT(1, k) gradient of a batch (each loss \
               back-propagated through exactly k steps) is compared with the full-BPTT gradient of the same losses: \
               for small k it misses the long-range part and points elsewhere; as k grows to T it becomes exact."
            .into(),
        command: format!("bptt diagnose --truncation --length {} --train-steps {}", plan.adding_len, plan.adding_steps),
        figures: vec![svg],
        table,
        ..Default::default()
    });

    cx.step("online learning beside BPTT");
    sections.push(online_section(&cx, plan)?);

    cx.step("a character language model");
    sections.push(char_lm(&cx, text.as_deref().zip(raw.as_deref()), plan.lm_steps, q)?);

    let report = Report {
        title: "What backpropagation through time does — measured".into(),
        intro: "Every figure below comes from real forward and backward passes of bptt's own hand-written BPTT, made \
                by `bptt demo` on this machine; each section names the command that reproduces it. The PNG, SVG and \
                CSV files sit next to this page."
            .into(),
        sections,
        footer: format!(
            "bptt {} · {} thread(s) · {:.0} s · {}",
            env!("CARGO_PKG_VERSION"),
            threads,
            cx.started.elapsed().as_secs_f64(),
            if a.quick { "bptt demo --quick" } else { "bptt demo" }
        ),
    };
    // Every table of the report as CSV too (`table_<section>.csv`).
    for (k, section) in report.sections.iter().enumerate().filter(|(_, s)| !s.table.is_empty()) {
        let rows: Vec<String> = section
            .table
            .iter()
            .map(|r| r.iter().map(|c| bptt::diagnose::plot::csv_field(c)).collect::<Vec<_>>().join(","))
            .collect();
        cx.write(&format!("table_{}.csv", k + 1), &(rows.join("\n") + "\n"))?;
    }
    cx.write("report.html", &report.html())?;
    super::errln!("report: {} ({:.0} s)", cx.dir.join("report.html").display(), cx.started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn solved(r: &TaskReport) -> &'static str {
    if r.solved { "solved" } else { "not solved" }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn flow_table(flows: &[CellFlow]) -> Vec<Vec<String>> {
    let mut t = vec![row(&[
        "cell",
        "‖∂L/∂h_(T-1)‖",
        "‖∂L/∂h_0‖",
        "ratio",
        "σmax(∂h_t/∂h_(t-1)), geo. mean",
        "σmax(W_hh) per gate",
    ])];
    for f in flows {
        let n = &f.dh_norms[0];
        let sig: Vec<String> = f.w_hh_sigma_max[0].iter().map(|s| format!("{s:.2}")).collect();
        t.push(vec![
            f.cell.into(),
            format!("{:.2e}", n[n.len() - 1]),
            format!("{:.2e}", n[0]),
            format!("{:.1e}", f.survival()),
            format!("{:.3}", f.jacobian[0].geometric_mean),
            sig.join(" "),
        ]);
    }
    t
}

/// Section 7: a short char-LM run on the text, if there is one.
/// The gradient-flow measurements' settings (H = 64, B = 16) at length `len`, cells to fill in.
fn flow_config(len: usize, threads: usize) -> FlowConfig {
    FlowConfig {
        cells: vec![],
        hidden: 64,
        layers: 1,
        length: len,
        batch: 16,
        seed: 1,
        threads,
        train_steps: 0,
        w_hh_scale: None,
        forget_bias: None,
        jacobian_samples: 6,
    }
}

/// The char-LM section's run.
fn lm_config(steps: u64) -> TrainConfig {
    let spec = ModelSpec {
        cell: CellKind::Lstm,
        embedding_dim: 32,
        hidden: 128,
        layers: 1,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    TrainConfig { seq_len: 64, k1: 64, lr: 3e-3, steps, val_fraction: 0.02, seed: 1, ..TrainConfig::new(spec) }
}

/// Section 7: online learners (RTRL, UORO, SnAp-1) beside BPTT and TBPTT on the adding task.
fn online_section(cx: &Ctx, plan: &Plan) -> Result<Section> {
    let (len, seqs) = (plan.online_len, plan.online_seqs);
    // (BPTT gets 10 times the sequences: it is that much cheaper per sequence.)
    let runs = ex::online_training(len, 10 * seqs, seqs, cx.threads)?;
    let svg = cx.chart(&ex::online_training_chart(&runs, len), "online")?;
    // The gradients themselves, on an LSTM (H = 16) trained by BPTT on the same task.
    let ks: Vec<usize> = [1, 2, 5, 10, 20].into_iter().filter(|&k| k < len).collect();
    let points = ex::online(CellKind::Lstm, 16, len, seqs / 4, &ks, 100, 2, 1, cx.threads)?;
    cx.write("online_gradients.csv", &bptt::diagnose::online::online_csv(&points))?;
    let tradeoff = ex::online_tradeoff_chart(&points, &format!("LSTM H = 16, adding task T = {len}"));
    let svg2 = cx.chart(&tradeoff, "online_tradeoff")?;
    let mut table = vec![row(&["learner", "sequences", "seconds", "ms per sequence", "held-out MSE", "vs baseline"])];
    for r in &runs {
        let rep = &r.report;
        table.push(vec![
            r.name.clone(),
            rep.steps.to_string(),
            format!("{:.2}", rep.seconds),
            format!("{:.2}", 1e3 * rep.seconds / rep.steps as f64),
            format!("{:.4}", rep.final_loss),
            format!("{:.2}×", rep.final_loss / rep.baseline),
        ]);
    }
    Ok(Section {
        title: "7. Learning online: RTRL, UORO and SnAp-1 beside BPTT".into(),
        text: format!(
            "BPTT stores a sequence and sweeps back through it; forward-mode learners carry the gradient forward \
             instead and update the weights after every step, with no stored window (a GRU with H = 16 on the adding \
             task, T = {len}; one sequence per update for BPTT, one update per step online), drawn against the seconds \
             each has trained, so at any point of the x axis every learner has had the same compute. RTRL carries \
             the exact influence matrix ds_t/dθ (S × P values); SnAp-1 keeps only the entries one step reaches (exact \
             for diagonal recurrences, biased otherwise); UORO a rank-one unbiased estimate, whose variance is the \
             price. TBPTT(k) cuts every gradient path longer than k steps, yet learns this task too: what must be \
             learnt (add a marked value into the state, keep the rest) happens within a step and the weights are \
             shared by all steps, so a window that sees the second number teaches the handling of the first — its \
             bias (section 6) slows it rather than stops it. At this size BPTT is far cheaper per sequence than any \
             forward-mode method (the table): RTRL and UORO pay S one-step passes per step (S the state's size), \
             SnAp-1 (per unit: a 2×2 Jacobian block and one coefficient per gate row) a step's forward and backward \
             pass and an update per step, for needing no history; they are for learners that cannot store the past. \
             The second figure compares the \
             gradients themselves with BPTT's on one batch (an LSTM trained by BPTT; `online_gradients.csv` has the \
             time per step too): RTRL is exact at the largest memory, SnAp-1 close to it with far less, TBPTT(1, k) \
             approaches it as k grows, and UORO's rank-one estimate (S + P values) points only roughly the right way, \
             each draw differently."
        ),
        command: format!("bptt task adding --cell gru --hidden 16 --length {len} --batch 1 --lr 3e-3 --online snap"),
        figures: vec![svg, svg2],
        table,
        ..Default::default()
    })
}

/// The most any one section holds (they run one after another), and the text's bytes.
fn estimate(plan: &Plan, threads: usize, raw: Option<&str>) -> Result<memory::Estimate> {
    let task = |kind, hidden, len| TaskConfig { hidden, threads, ..TaskConfig::new(kind, CellKind::Lstm, len) };
    let flow = FlowConfig {
        cells: vec![CellKind::RnnTanh, CellKind::Lstm, CellKind::Gru],
        ..flow_config(plan.flow_len.max(plan.adding_len), threads)
    };
    let mut most = [
        task(TaskKind::Adding, 64, plan.adding_len).estimate_bytes(),
        task(TaskKind::Copy, 128, plan.copy_len).estimate_bytes(),
        flow.estimate_bytes(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let mut ids = 0;
    if let Some(raw) = raw {
        // (The text itself is in the program's resident memory already.)
        let vocab = Vocab::from_text(raw)?.len();
        most = most.max(lm_config(plan.lm_steps).estimate_bytes(vocab)?);
        ids = TokenIds::with_capacity(vocab, 0).id_bytes() as u64 * raw.chars().count() as u64;
    }
    Ok(memory::Estimate::new(threads).add("token ids", ids).add("experiments", most).add("charts", memory::CHART))
}

fn char_lm(cx: &Ctx, text: Option<(&Path, &str)>, steps: u64, q: &str) -> Result<Section> {
    let title = "8. A character language model".to_string();
    let Some((path, raw)) = text else {
        return Ok(Section {
            title,
            text: "Skipped: no text was found (data/tinyshakespeare.txt is absent and --text was not given).".into(),
            ..Default::default()
        });
    };
    let vocab = Vocab::from_text(raw)?;
    let ids = vocab.encode(raw)?;
    let cfg = lm_config(steps);
    let model = CharModel::new(cfg.model, vocab, 1)?;
    let mut t = Trainer::new(cfg, model, ids, cx.threads)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let every = (steps / 6).max(1);
    while !t.done() {
        let m = t.train_step()?;
        train.push((m.step as f64, m.train_loss));
        if (m.step % every == 0 || t.done())
            && let Some(e) = t.validate()?
        {
            val.push((m.step as f64, e.loss));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    t.model.save(&cx.dir.join("charlm.safetensors"))?;
    let mut sampler = Sampler::new(&t.model, 7, 1)?;
    sampler.feed(&[t.model.vocab.id('\n').unwrap_or(0)])?;
    let sample: String =
        (0..400).map(|_| sampler.next(0.8, None).map(|id| t.model.vocab.char(id))).collect::<bptt::Result<_>>()?;
    let chart = Chart {
        title: format!(
            "LSTM char-LM on {}, H = 128",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ),
        x_label: "update (32 streams × 64 characters)".into(),
        y_label: "cross-entropy (nats/char)".into(),
        log_y: false,
        series: vec![
            Series { name: "train".into(), points: train, marks: vec![] },
            Series { name: "validation".into(), points: val.clone(), marks: val.clone() },
        ],
        hlines: vec![((65f64).ln(), "uniform guess, ln V".into())],
        legend_below: false,
    };
    let svg = cx.chart(&chart, "charlm")?;
    let last = val.last().map_or(f64::NAN, |v| v.1);
    Ok(Section {
        title,
        text: format!(
            "The showcase: {steps} updates of truncated BPTT (T = 64, state carried between updates) on {} took {secs:.0} s \
             and brought the validation loss to {last:.3} nats/char ({:.2} bits/char). Below, 400 characters sampled \
             from it at temperature 0.8; `bptt train` runs the same loop with checkpoints, and the model file loads \
             into PyTorch.",
            path.display(),
            last / std::f64::consts::LN_2
        ),
        command: format!(
            "bptt train --text {} --hidden 128 --layers 1 --embedding-dim 32 --seq-len 64 --lr 3e-3 --steps {steps}{}",
            path.display(),
            if q.is_empty() { "" } else { "  (demo --quick trains fewer steps)" }
        ),
        figures: vec![svg],
        pre: Some(sample),
        ..Default::default()
    })
}
