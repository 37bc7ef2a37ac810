//! Sequences in long-form CSV: a header, then one row per time step — a sequence id, the feature
//! columns and (optionally) a label or target — with each sequence's rows in time order (they
//! need not be adjacent). Sequences come in the order their ids first appear. Every problem is an
//! error naming the line (1-based) and column, never a panic.
//!
//! Columns: the id is `--id-column` or the first of `id`, `series`, `sequence`; the label is
//! `--label-column` or the first of `label`, `class`, `target`, `y` (none: unlabelled data); a
//! `time`, `t` or `step` column is skipped; every other column is a feature. Classes are the
//! distinct labels sorted (numerically when every label is a number, as scikit-learn's
//! `LabelEncoder` sorts them); for regression the label must be a number.

use crate::error::{Error, Result};
use crate::seq::{Dataset, Labels};
use std::collections::HashMap;
use std::path::Path;

/// Largest CSV file read (1 GiB).
const LIMIT: u64 = 1 << 30;

/// Which columns mean what, and whether labels are classes or values.
#[derive(Clone, Debug, Default)]
pub struct Columns {
    /// The sequence-id column (default: `id`, `series` or `sequence`).
    pub id: Option<String>,
    /// The label or target column (default: `label`, `class`, `target` or `y`, if present).
    pub label: Option<String>,
    /// Labels are numbers to regress on, not classes.
    pub values: bool,
    /// A label per step (labelling), not per sequence.
    pub per_step: bool,
}

/// Reads a CSV file (see the module docs).
pub fn read(path: &Path, columns: &Columns) -> Result<Dataset> {
    let bytes = crate::files::fsio::read_bounded(path, LIMIT)?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: format!("not UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    parse(&text, columns).map_err(|e| e.in_file(path))
}

/// A sequence's label and the line it was first read from.
type Label = (String, usize);

/// Splits one CSV line into fields (double quotes may enclose a field; `""` is a quote).
fn fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let (mut out, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (',', false) => out.push(std::mem::take(&mut cur).trim().to_string()),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    out.push(cur.trim().to_string());
    Ok(out)
}

/// Parses the text of a CSV file; the error is a message naming the line.
pub fn parse(text: &str, columns: &Columns) -> crate::Result<Dataset> {
    parse_text(text, columns).map_err(crate::Error::Malformed)
}

fn parse_text(text: &str, columns: &Columns) -> std::result::Result<Dataset, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or("the file is empty: a CSV needs a header line and rows")?;
    let header = fields(head.trim_start_matches('\u{feff}')).map_err(|e| format!("line 1: {e}"))?;
    let find =
        |given: &Option<String>, defaults: &[&str], what: &str| -> std::result::Result<Option<usize>, String> {
            match given {
                Some(name) => header.iter().position(|h| h == name).map(Some).ok_or_else(|| {
                    format!("line 1: no {what} column '{name}' (the columns are {})", header.join(", "))
                }),
                None => Ok(defaults.iter().find_map(|d| header.iter().position(|h| h.eq_ignore_ascii_case(d)))),
            }
        };
    let id = find(&columns.id, &["id", "series", "sequence"], "id")?.ok_or_else(|| {
        format!(
            "line 1: no sequence-id column (id, series or sequence): name it with `id_column` (the columns are {})",
            header.join(", ")
        )
    })?;
    let label = find(&columns.label, &["label", "class", "target", "y"], "label")?;
    let time = ["time", "t", "step"].iter().find_map(|d| header.iter().position(|h| h.eq_ignore_ascii_case(d)));
    let features: Vec<usize> = (0..header.len()).filter(|&c| c != id && Some(c) != label && Some(c) != time).collect();
    if features.is_empty() {
        return Err("line 1: no feature columns besides the id and the label".into());
    }
    let f = features.len();
    // Sequence by first appearance: its steps (values) and its label with the line it came from.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut seqs: Vec<(Vec<f32>, Option<Label>)> = Vec::new();
    let mut step_labels: Vec<Vec<String>> = Vec::new();
    for (k, line) in lines {
        let at = k + 1;
        let row = fields(line).map_err(|e| format!("line {at}: {e}"))?;
        if row.len() != header.len() {
            return Err(format!("line {at}: {} fields, the header has {}", row.len(), header.len()));
        }
        let next = seqs.len();
        let s = *index.entry(row[id].clone()).or_insert(next);
        if s == next {
            seqs.push((Vec::new(), None));
            step_labels.push(Vec::new());
        }
        let (values, lab) = &mut seqs[s];
        for &c in &features {
            let v = row[c].as_str();
            if v.is_empty() || v == "?" || v.eq_ignore_ascii_case("nan") || v.eq_ignore_ascii_case("na") {
                return Err(format!("line {at}: missing value in column '{}': fill or drop it first", header[c]));
            }
            let x: f32 =
                v.parse().map_err(|_| format!("line {at}: '{v}' in column '{}' is not a number", header[c]))?;
            if !x.is_finite() {
                return Err(format!("line {at}: {v} in column '{}' is not finite", header[c]));
            }
            values.push(x);
        }
        if let Some(l) = label {
            let v = &row[l];
            if v.is_empty() {
                return Err(format!("line {at}: empty label in column '{}'", header[l]));
            }
            if columns.per_step {
                step_labels[s].push(v.clone());
                continue;
            }
            match lab {
                None => *lab = Some((v.clone(), at)),
                Some((first, line0)) if first != v => {
                    return Err(format!(
                        "line {at}: sequence '{}' has label '{v}' here but '{first}' on line {line0}: one label per \
                         sequence",
                        row[id]
                    ));
                }
                Some(_) => {}
            }
        }
    }
    if seqs.is_empty() {
        return Err("no rows after the header".into());
    }
    let lengths = seqs.iter().map(|(v, _)| v.len() / f).collect();
    let labels: Vec<Option<Label>> = seqs.iter().map(|(_, l)| l.clone()).collect();
    let values = seqs.into_iter().flat_map(|(v, _)| v).collect();
    let labels = match label {
        None => Labels::None,
        Some(_) if columns.per_step => match classes_of(&step_labels.concat()) {
            Labels::Classes { names, ids } => Labels::Steps { names, ids },
            other => other,
        },
        Some(_) if columns.values => {
            let mut out = Vec::with_capacity(labels.len());
            for (v, at) in labels.into_iter().flatten() {
                let x: f32 = v.parse().map_err(|_| format!("line {at}: target '{v}' is not a number"))?;
                if !x.is_finite() {
                    return Err(format!("line {at}: target {v} is not finite"));
                }
                out.push(x);
            }
            Labels::Values(out)
        }
        Some(_) => classes_of(&labels.into_iter().flatten().map(|(v, _)| v).collect::<Vec<_>>()),
    };
    Ok(Dataset { features: f, lengths, values, labels })
}

/// Class labels from one label per sequence: the distinct labels sorted (numerically when every
/// one is a number, as scikit-learn's `LabelEncoder` orders them), and each sequence's id.
pub fn classes_of(labels: &[String]) -> Labels {
    let mut names: Vec<String> = labels.to_vec();
    names.sort();
    names.dedup();
    if names.iter().all(|n| n.parse::<f64>().is_ok()) {
        names.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
    }
    let ids = labels.iter().map(|v| names.iter().position(|n| n == v).unwrap_or(0)).collect();
    Labels::Classes { names, ids }
}

/// Writes `data` as long-form CSV (`id`, `f1`…`fF`, then `label` if labelled): what [`parse`]
/// reads back into the same dataset.
pub fn to_csv(data: &Dataset) -> String {
    let mut out = String::from("id");
    for j in 1..=data.features {
        out.push_str(&format!(",f{j}"));
    }
    if !matches!(data.labels, Labels::None) {
        out.push_str(",label");
    }
    out.push('\n');
    let starts = data.starts();
    let mut at = 0;
    for i in 0..data.len() {
        let seq = &data.values[starts[i]..starts[i] + data.lengths[i] * data.features];
        for (s, step) in seq.chunks_exact(data.features).enumerate() {
            out.push_str(&i.to_string());
            for v in step {
                out.push_str(&format!(",{v:?}"));
            }
            match &data.labels {
                Labels::None => {}
                Labels::Classes { names, ids } => out.push_str(&format!(",{}", names[ids[i]])),
                Labels::Values(v) => out.push_str(&format!(",{:?}", v[i])),
                Labels::Steps { names, ids } => out.push_str(&format!(",{}", names[ids[at + s]])),
            }
            out.push('\n');
        }
        at += data.lengths[i];
    }
    out
}
