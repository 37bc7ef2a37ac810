//! The unrolled computation graph of an L-layer RNN over T steps, as in the design document's
//! figure: inputs x_t, hidden states h_t, outputs y_t and per-step losses L_t, forward edges
//! (solid) and the backward, gradient edges through time (dashed), as Mermaid, Graphviz dot
//! or a standalone SVG picture.

use std::fmt::Write;

/// Output format of [`unrolled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    /// Mermaid `graph TD`.
    Mermaid,
    /// Graphviz `digraph`.
    Dot,
    /// A self-contained SVG picture.
    Svg,
}

impl std::str::FromStr for GraphFormat {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "mermaid" => Ok(GraphFormat::Mermaid),
            "dot" => Ok(GraphFormat::Dot),
            "svg" => Ok(GraphFormat::Svg),
            _ => Err(crate::Error::Config(format!("unknown graph format '{s}': use mermaid, dot or svg"))),
        }
    }
}

/// Node ids: `X0`, `H0` (or `H0_1` for layer 1 of a stack), `Y0`, `Loss0`.
fn h(t: usize, l: usize, layers: usize) -> String {
    if layers == 1 { format!("H{t}") } else { format!("H{t}_{l}") }
}

/// An edge of the unrolled graph: (from, to, label, backward?).
fn edges(steps: usize, layers: usize) -> Vec<(String, String, String, bool)> {
    let mut e = Vec::new();
    let top = layers - 1;
    for t in 0..steps {
        e.push((format!("X{t}"), h(t, 0, layers), String::new(), false));
        for l in 1..layers {
            e.push((h(t, l - 1, layers), h(t, l, layers), String::new(), false));
        }
        e.push((h(t, top, layers), format!("Y{t}"), String::new(), false));
        e.push((format!("Y{t}"), format!("Loss{t}"), String::new(), false));
        if t > 0 {
            for l in 0..layers {
                e.push((h(t - 1, l, layers), h(t, l, layers), format!("h{}", t - 1), false));
            }
        }
    }
    for t in (0..steps).rev() {
        e.push((format!("Loss{t}"), format!("Y{t}"), format!("dL{t}/dy{t}"), true));
        e.push((format!("Y{t}"), h(t, top, layers), String::new(), true));
        for l in (1..layers).rev() {
            e.push((h(t, l, layers), h(t, l - 1, layers), String::new(), true));
        }
        if t > 0 {
            for l in 0..layers {
                e.push((h(t, l, layers), h(t - 1, l, layers), format!("dL/dh{}", t - 1), true));
            }
        }
    }
    e
}

fn label(id: &str) -> String {
    let (kind, rest) = id.split_at(if id.starts_with("Loss") { 4 } else { 1 });
    let name = match kind {
        "X" => "x",
        "H" => "h",
        "Y" => "y",
        _ => "L",
    };
    match rest.split_once('_') {
        Some((t, l)) => format!("{name}{t} (layer {})", l.parse::<usize>().unwrap_or(0) + 1),
        None => format!("{name}{rest}"),
    }
}

/// The unrolled graph for `steps` ≥ 1 steps and `layers` ≥ 1 layers.
pub fn unrolled(steps: usize, layers: usize, format: GraphFormat) -> String {
    let (steps, layers) = (steps.max(1), layers.max(1));
    let edges = edges(steps, layers);
    let mut nodes: Vec<String> = Vec::new();
    for t in 0..steps {
        nodes.push(format!("X{t}"));
        nodes.extend((0..layers).map(|l| h(t, l, layers)));
        nodes.push(format!("Y{t}"));
        nodes.push(format!("Loss{t}"));
    }
    let mut s = String::new();
    match format {
        GraphFormat::Mermaid => {
            s.push_str("graph TD\n");
            for n in &nodes {
                let _ = writeln!(s, "    {n}([{}])", label(n));
            }
            for (a, b, l, back) in &edges {
                let arrow = if *back { "-.->" } else { "-->" };
                let l = if l.is_empty() { String::new() } else { format!("|{l}|") };
                let _ = writeln!(s, "    {a} {arrow}{l} {b}");
            }
        }
        GraphFormat::Dot => {
            s.push_str("digraph unrolled {\n    rankdir=BT;\n    node [shape=box, style=rounded];\n");
            for n in &nodes {
                let _ = writeln!(s, "    {n} [label=\"{}\"];", label(n));
            }
            for (a, b, l, back) in &edges {
                let style = if *back { ", style=dashed, color=red, constraint=false" } else { "" };
                let _ = writeln!(s, "    {a} -> {b} [label=\"{l}\"{style}];");
            }
            s.push_str("}\n");
        }
        GraphFormat::Svg => s = svg(steps, layers),
    }
    s
}

/// A left-to-right picture: one column per step, rows x, h (per layer), y, L from the bottom.
fn svg(steps: usize, layers: usize) -> String {
    let (cw, rh, bw, bh) = (150.0, 78.0, 74.0, 34.0);
    let rows = layers + 3;
    let (w, hgt) = (cw * steps as f64 + 40.0, rh * rows as f64 + 70.0);
    let pos = |t: usize, row: usize| (40.0 + cw * t as f64 + cw / 2.0 - 20.0, hgt - 50.0 - rh * row as f64);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" \
         font-family=\"DejaVu Sans, sans-serif\" font-size=\"14\">\n<defs>\
         <marker id=\"f\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0L10,5L0,10z\" fill=\"#333\"/></marker>\
         <marker id=\"b\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0L10,5L0,10z\" fill=\"#c0392b\"/></marker></defs>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"12\" y=\"22\" fill=\"#333\">forward</text><line x1=\"80\" y1=\"17\" x2=\"120\" y2=\"17\" stroke=\"#333\" stroke-width=\"2\" marker-end=\"url(#f)\"/>\
         <text x=\"140\" y=\"22\" fill=\"#c0392b\">backward (gradient)</text><line x1=\"290\" y1=\"17\" x2=\"330\" y2=\"17\" stroke=\"#c0392b\" stroke-width=\"2\" stroke-dasharray=\"6,4\" marker-end=\"url(#b)\"/>\n"
    );
    let fills = ["#E6F7FF", "#F0F8FF", "#FFF4E5", "#FFD700"];
    for t in 0..steps {
        for row in 0..rows {
            let (x, y) = pos(t, row);
            let (fill, text) = match row {
                0 => (fills[0], format!("x{t}")),
                r if r <= layers => {
                    (fills[1], if layers == 1 { format!("h{t}") } else { format!("h{t}\u{2009}[{r}]") })
                }
                r if r == layers + 1 => (fills[2], format!("y{t}")),
                _ => (fills[3], format!("L{t}")),
            };
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{bw}\" height=\"{bh}\" rx=\"12\" fill=\"{fill}\" stroke=\"#6495ED\"/>\
                 <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{text}</text>",
                x - bw / 2.0,
                y - bh / 2.0,
                y + 5.0
            );
        }
    }
    let arrow = |s: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), back: bool, label: &str| {
        let (color, dash, m) = if back { ("#c0392b", " stroke-dasharray=\"6,4\"", "b") } else { ("#333", "", "f") };
        let _ = writeln!(
            s,
            "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"{color}\" stroke-width=\"1.6\"{dash} marker-end=\"url(#{m})\"/>"
        );
        if !label.is_empty() {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\" text-anchor=\"middle\">{label}</text>",
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0 + if back { 16.0 } else { -6.0 }
            );
        }
    };
    for t in 0..steps {
        for row in 0..rows - 1 {
            let (x, y) = pos(t, row);
            let (_, y2) = pos(t, row + 1);
            arrow(&mut s, (x - 8.0, y - bh / 2.0), (x - 8.0, y2 + bh / 2.0), false, "");
            if row > 0 {
                arrow(&mut s, (x + 8.0, y2 + bh / 2.0), (x + 8.0, y - bh / 2.0), true, "");
            }
        }
        if t > 0 {
            for row in 1..=layers {
                let (x0, y) = pos(t - 1, row);
                let (x1, _) = pos(t, row);
                arrow(&mut s, (x0 + bw / 2.0, y - 6.0), (x1 - bw / 2.0, y - 6.0), false, &format!("h{}", t - 1));
                arrow(&mut s, (x1 - bw / 2.0, y + 6.0), (x0 + bw / 2.0, y + 6.0), true, &format!("∂L/∂h{}", t - 1));
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
