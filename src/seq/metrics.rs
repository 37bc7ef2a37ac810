//! How good predictions are: accuracy, balanced accuracy, per-class precision / recall / F1 and
//! the confusion matrix for classification (scikit-learn's definitions: a class never predicted
//! has precision 0, a class absent from the truth is left out of the balanced accuracy);
//! MSE / MAE for regression.

use serde::Serialize;

/// Per-class quality.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassReport {
    /// The class name.
    pub class: String,
    /// Right among those predicted as this class (0 when none were).
    pub precision: f64,
    /// Found among those of this class (0 when there are none).
    pub recall: f64,
    /// The harmonic mean of the two (0 when both are 0).
    pub f1: f64,
    /// Sequences of this class in the truth.
    pub support: usize,
}

/// A classification report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// Sequences scored.
    pub n: usize,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Mean recall over the classes present in the truth.
    pub balanced_accuracy: f64,
    /// Mean F1 over the classes present in the truth.
    pub macro_f1: f64,
    /// Mean cross-entropy of the predicted probabilities (nats).
    pub loss: f64,
    /// Per class, in the model's order.
    pub per_class: Vec<ClassReport>,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Scores class probabilities `probs` (N, C) against true class ids `truth` (N).
pub fn classification(classes: &[String], truth: &[usize], probs: &[f32]) -> Classification {
    let c = classes.len();
    let mut confusion = vec![vec![0usize; c]; c];
    let mut loss = 0.0;
    for (p, &t) in probs.chunks_exact(c.max(1)).zip(truth) {
        let pred = (0..c).fold(0, |b, k| if p[k] > p[b] { k } else { b });
        confusion[t][pred] += 1;
        loss -= (p[t].max(f32::MIN_POSITIVE) as f64).ln();
    }
    let n = truth.len();
    let right: usize = (0..c).map(|k| confusion[k][k]).sum();
    let per_class: Vec<ClassReport> = (0..c)
        .map(|k| {
            let support: usize = confusion[k].iter().sum();
            let predicted: usize = (0..c).map(|t| confusion[t][k]).sum();
            let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let (precision, recall) = (ratio(confusion[k][k], predicted), ratio(confusion[k][k], support));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassReport { class: classes[k].clone(), precision, recall, f1, support }
        })
        .collect();
    let present: Vec<&ClassReport> = per_class.iter().filter(|r| r.support > 0).collect();
    let mean = |f: fn(&ClassReport) -> f64| present.iter().map(|r| f(r)).sum::<f64>() / present.len().max(1) as f64;
    Classification {
        n,
        accuracy: right as f64 / n.max(1) as f64,
        balanced_accuracy: mean(|r| r.recall),
        macro_f1: mean(|r| r.f1),
        loss: loss / n.max(1) as f64,
        per_class,
        confusion,
    }
}

/// A regression report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Regression {
    /// Sequences scored.
    pub n: usize,
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// 1 − SSE / SST (scikit-learn's `r2_score`; 0 when the truth is constant).
    pub r2: f64,
}

/// Scores predicted values against the truth.
pub fn regression(truth: &[f32], pred: &[f32]) -> Regression {
    let n = truth.len().max(1) as f64;
    let mean = truth.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut se, mut ae, mut st) = (0.0, 0.0, 0.0);
    for (&t, &p) in truth.iter().zip(pred) {
        let d = p as f64 - t as f64;
        se += d * d;
        ae += d.abs();
        st += (t as f64 - mean).powi(2);
    }
    Regression { n: truth.len(), mse: se / n, mae: ae / n, r2: if st > 0.0 { 1.0 - se / st } else { 0.0 } }
}
