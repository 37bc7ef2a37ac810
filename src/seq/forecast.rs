//! Forecasting: the next `horizon` values of a series from its last `window` steps. A series is
//! read from a CSV (rows in time order; every numeric column is a feature, the target is one of
//! them) and cut into windows — each a sequence of `window` steps labelled with the `horizon`
//! values after it — so the regressor of `fit` learns it. The baselines a forecast must beat are
//! computed on the same windows: naive (the last value, repeated) and seasonal naive (the value
//! one season before each target step).

use crate::error::{Error, Result};
use crate::seq::{Dataset, Labels};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Columns that name time, not a feature (skipped).
const TIME_COLUMNS: [&str; 10] = ["time", "t", "step", "date", "ds", "year", "month", "week", "day", "timestamp"];

/// How a forecaster reads a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForecastSpec {
    /// Steps of history each forecast reads.
    pub window: usize,
    /// Values forecast after them.
    pub horizon: usize,
    /// The season of the seasonal-naive baseline (1: none, the naive forecast).
    pub season: usize,
    /// The target's column among the series' features.
    pub target: usize,
}

/// A series: T steps of F values, and the names of its features.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// F, the numeric columns.
    pub names: Vec<String>,
    /// (T, F) values, row by row.
    pub values: Vec<f32>,
}

impl Series {
    /// T.
    pub fn len(&self) -> usize {
        self.values.len() / self.names.len().max(1)
    }

    /// True without steps.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The column named `name`, or the last one when `None`.
    pub fn column(&self, name: Option<&str>) -> crate::Result<usize> {
        match name {
            None => Ok(self.names.len() - 1),
            Some(n) => self.names.iter().position(|c| c == n).ok_or_else(|| {
                Error::Malformed(format!("no numeric column '{n}' (the series has {})", self.names.join(", ")))
            }),
        }
    }

    /// Value of feature `j` at step `t`.
    fn at(&self, t: usize, j: usize) -> f32 {
        self.values[t * self.names.len() + j]
    }

    /// The windows whose forecast steps all lie in `from..to`: each a sequence of `window` steps
    /// of every feature, labelled with the next `horizon` target values.
    pub fn windows(&self, spec: &ForecastSpec, from: usize, to: usize) -> Dataset {
        let f = self.names.len();
        let (w, h) = (spec.window, spec.horizon);
        let first = from.max(w);
        let mut d =
            Dataset { features: f, lengths: Vec::new(), values: Vec::new(), labels: Labels::Values(Vec::new()) };
        let mut targets = Vec::new();
        let mut s = first;
        while s + h <= to.min(self.len()) {
            d.values.extend_from_slice(&self.values[(s - w) * f..s * f]);
            d.lengths.push(w);
            targets.extend((s..s + h).map(|t| self.at(t, spec.target)));
            s += 1;
        }
        d.labels = Labels::Values(targets);
        d
    }

    /// The naive and seasonal-naive forecasts for the windows of [`Series::windows`], (N, h).
    pub fn baselines(&self, spec: &ForecastSpec, from: usize, to: usize) -> (Vec<f32>, Vec<f32>) {
        let (w, h, m) = (spec.window, spec.horizon, spec.season.max(1));
        let (mut naive, mut seasonal) = (Vec::new(), Vec::new());
        let mut s = from.max(w);
        while s + h <= to.min(self.len()) {
            let last = self.at(s - 1, spec.target);
            for k in 0..h {
                naive.push(last);
                // The same phase one (or more) seasons back, before the forecast origin.
                let back = m * (k / m + 1);
                seasonal.push(if back <= s + k { self.at(s + k - back, spec.target) } else { last });
            }
            s += 1;
        }
        (naive, seasonal)
    }
}

/// Reads a series from a CSV file: a header, then one row per step in time order. Columns named
/// like time (`date`, `year`, `t`, …) and columns that are not numbers in every row are skipped;
/// every other column is a feature. A missing value is an error naming its line.
pub fn read_series(path: &Path) -> Result<Series> {
    let bytes = crate::files::fsio::read_bounded(path, 1 << 30)?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: format!("not UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    parse_series(&text).map_err(|e| e.in_file(path))
}

/// Parses a series CSV's text (see [`read_series`]).
pub fn parse_series(text: &str) -> crate::Result<Series> {
    series_of(text).map_err(Error::Malformed)
}

fn series_of(text: &str) -> std::result::Result<Series, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or("the file is empty: a series needs a header line and rows")?;
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    let header: Vec<String> = head.trim_start_matches('\u{feff}').split(',').map(unquote).collect();
    let rows: Vec<(usize, Vec<String>)> = lines.map(|(k, l)| (k + 1, l.split(',').map(unquote).collect())).collect();
    if rows.is_empty() {
        return Err("no rows after the header".into());
    }
    for (at, r) in &rows {
        if r.len() != header.len() {
            return Err(format!("line {at}: {} fields, the header has {}", r.len(), header.len()));
        }
    }
    let numeric = |c: usize| rows.iter().all(|(_, r)| r[c].is_empty() || r[c].parse::<f64>().is_ok());
    let cols: Vec<usize> = (0..header.len())
        .filter(|&c| !TIME_COLUMNS.contains(&header[c].to_ascii_lowercase().as_str()) && numeric(c))
        .collect();
    if cols.is_empty() {
        return Err(format!("no numeric column besides time (the columns are {})", header.join(", ")));
    }
    let mut values = Vec::with_capacity(rows.len() * cols.len());
    for (at, r) in &rows {
        for &c in &cols {
            let v = &r[c];
            let x: f32 =
                v.parse().map_err(|_| format!("line {at}: missing value in column '{}': fill it first", header[c]))?;
            if !x.is_finite() {
                return Err(format!("line {at}: {v} in column '{}' is not finite", header[c]));
            }
            values.push(x);
        }
    }
    Ok(Series { names: cols.iter().map(|&c| header[c].clone()).collect(), values })
}
