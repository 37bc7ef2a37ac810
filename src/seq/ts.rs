//! The UEA/UCR `.ts` time-series format (aeon/sktime and the time-series classification
//! archives): `#` comments, `@` header lines, then after `@data` one sequence per line, its
//! dimensions separated by `:` and each dimension's values by `,`, the class label (or target
//! value) last when the header says so. Every problem is an error naming the line, never a panic.

use crate::error::{Error, Result};
use crate::seq::{Dataset, Labels};
use std::path::Path;

/// Largest `.ts` file read (1 GiB).
const LIMIT: u64 = 1 << 30;

/// Reads a `.ts` file (see the module docs).
pub fn read(path: &Path) -> Result<Dataset> {
    let bytes = crate::charlm::fsio::read_bounded(path, LIMIT)?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: format!("not UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    parse(&text).map_err(|e| e.in_file(path))
}

/// What the header says.
#[derive(Default)]
struct Header {
    dimensions: Option<usize>,
    class_labels: Option<Vec<String>>,
    target_label: bool,
}

/// Parses the text of a `.ts` file; the error is a message naming the line (1-based).
pub fn parse(text: &str) -> crate::Result<Dataset> {
    parse_text(text).map_err(crate::Error::Malformed)
}

fn parse_text(text: &str) -> std::result::Result<Dataset, String> {
    let mut header = Header::default();
    let mut lines = text.lines().enumerate();
    let mut saw_data = false;
    for (k, raw) in lines.by_ref() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix('@') else {
            return Err(format!("line {}: data before the @data line", k + 1));
        };
        let mut words = rest.split_whitespace();
        let key = words.next().unwrap_or("").to_ascii_lowercase();
        let words: Vec<&str> = words.collect();
        let flag = |w: &[&str]| w.first().is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match key.as_str() {
            "data" => {
                saw_data = true;
                break;
            }
            "dimensions" => {
                let d = words.first().and_then(|v| v.parse::<usize>().ok()).filter(|&d| d > 0);
                header.dimensions =
                    Some(d.ok_or_else(|| format!("line {}: @dimensions needs a whole number ≥ 1", k + 1))?);
            }
            "classlabel" if flag(&words) => {
                let labels: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
                if labels.is_empty() {
                    return Err(format!("line {}: @classLabel true lists no classes", k + 1));
                }
                header.class_labels = Some(labels);
            }
            "targetlabel" if flag(&words) => header.target_label = true,
            _ => {} // @problemName, @missing, @equalLength, … carry nothing we need (a '?' is an error)
        }
    }
    if !saw_data {
        return Err("no @data line: not a .ts file".into());
    }
    let labelled = header.class_labels.is_some() || header.target_label;
    let mut features = header.dimensions;
    let (mut values, mut lengths, mut names, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, raw) in lines {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = k + 1;
        let mut dims: Vec<&str> = line.split(':').collect();
        let label = if labelled {
            if dims.len() < 2 {
                return Err(format!(
                    "line {at}: no label after the values (expected dimensions, then ':' and the label)"
                ));
            }
            dims.pop().map(str::trim)
        } else {
            None
        };
        let d = *features.get_or_insert(dims.len());
        if dims.len() != d {
            return Err(format!("line {at}: {} dimensions, the file has {d}", dims.len()));
        }
        // Parse each dimension's series; all must have one length.
        let mut series: Vec<Vec<f32>> = Vec::with_capacity(d);
        for (j, dim) in dims.iter().enumerate() {
            let mut s = Vec::new();
            for (i, v) in dim.split(',').enumerate() {
                let v = v.trim();
                if v == "?" || v.eq_ignore_ascii_case("nan") {
                    return Err(format!(
                        "line {at}: missing value at dimension {} step {}: fill or drop it first",
                        j + 1,
                        i + 1
                    ));
                }
                let x: f32 = v
                    .parse()
                    .map_err(|_| format!("line {at}: '{v}' at dimension {} step {} is not a number", j + 1, i + 1))?;
                if !x.is_finite() {
                    return Err(format!("line {at}: {v} at dimension {} step {} is not finite", j + 1, i + 1));
                }
                s.push(x);
            }
            if let Some(first) = series.first()
                && first.len() != s.len()
            {
                return Err(format!(
                    "line {at}: dimension {} has {} steps, dimension 1 has {}",
                    j + 1,
                    s.len(),
                    first.len()
                ));
            }
            series.push(s);
        }
        let t = series[0].len();
        // Time-major within the sequence: step i holds all d features.
        values.extend((0..t).flat_map(|i| series.iter().map(move |s| s[i])));
        lengths.push(t);
        match (label, &header.class_labels) {
            (Some(l), Some(classes)) => {
                if !classes.iter().any(|c| c == l) {
                    return Err(format!("line {at}: label '{l}' is not among @classLabel {}", classes.join(" ")));
                }
                names.push(l.to_string());
            }
            (Some(l), None) => {
                let y: f32 = l.parse().map_err(|_| format!("line {at}: target '{l}' is not a number"))?;
                targets.push(y);
            }
            (None, _) => {}
        }
    }
    if lengths.is_empty() {
        return Err("no sequences after @data".into());
    }
    let labels = match header.class_labels {
        Some(classes) => Labels::Classes {
            ids: names.iter().map(|n| classes.iter().position(|c| c == n).unwrap_or(0)).collect(),
            names: classes,
        },
        None if header.target_label => Labels::Values(targets),
        None => Labels::None,
    };
    Ok(Dataset { features: features.unwrap_or(1), lengths, values, labels })
}
