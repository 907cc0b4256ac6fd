//! The class prior `pi` (docs/MATH.md, notation): validated once, so that every
//! loss built from it has a finite `log pi`.

use crate::error::{Error, Result};

/// A validated class prior: `pi_c > 0`, finite, summing to one.
///
/// `pi_c = n_c / sum(n)` from training-label counts; a class with no
/// examples would have `log pi_c = -inf`, which is an error unless the
/// caller asks for additive smoothing `pi_c = (n_c + a) / (sum(n) + C a)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrior {
    probabilities: Vec<f64>,
    counts: Option<Vec<f64>>,
}

impl ClassPrior {
    /// From per-class training counts `n_c` (non-negative, finite). A zero
    /// count is an error: use [`ClassPrior::from_counts_smoothed`].
    pub fn from_counts(counts: &[f64]) -> Result<Self> {
        Self::from_counts_smoothed(counts, 0.0)
    }

    /// From counts with additive smoothing `a >= 0`:
    /// `pi_c = (n_c + a) / (sum(n) + C a)`. With `a = 0` this is
    /// [`ClassPrior::from_counts`].
    pub fn from_counts_smoothed(counts: &[f64], a: f64) -> Result<Self> {
        if !(a.is_finite() && a >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "smoothing must be finite and >= 0, got {a}"
            )));
        }
        if counts.is_empty() {
            return Err(Error::InvalidArgument(
                "class counts are empty: need at least one class".into(),
            ));
        }
        for (class, &n) in counts.iter().enumerate() {
            if !n.is_finite() {
                return Err(Error::InvalidPrior {
                    class,
                    value: n,
                    reason: "count is not finite",
                });
            }
            if n < 0.0 {
                return Err(Error::InvalidPrior {
                    class,
                    value: n,
                    reason: "count is negative",
                });
            }
            if n + a == 0.0 {
                return Err(Error::InvalidPrior {
                    class,
                    value: n,
                    reason: "zero count gives log(prior) = -inf; use additive smoothing (ClassPrior::from_counts_smoothed)",
                });
            }
        }
        let total: f64 = counts.iter().map(|&n| n + a).sum();
        Ok(Self {
            probabilities: counts.iter().map(|&n| (n + a) / total).collect(),
            counts: Some(counts.to_vec()),
        })
    }

    /// From training labels in `[0, classes)`, counted per class.
    pub fn from_labels(labels: &[i64], classes: usize) -> Result<Self> {
        Self::from_counts(&count_labels(labels, classes)?)
    }

    /// From probabilities (finite, > 0); they are divided by their sum, so
    /// unnormalised weights are accepted. No training counts are known.
    pub fn from_probabilities(probabilities: &[f64]) -> Result<Self> {
        if probabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "prior is empty: need at least one class".into(),
            ));
        }
        for (class, &p) in probabilities.iter().enumerate() {
            let reason = if !p.is_finite() {
                "probability is not finite"
            } else if p < 0.0 {
                "probability is negative"
            } else if p == 0.0 {
                "zero probability gives log(prior) = -inf"
            } else {
                continue;
            };
            return Err(Error::InvalidPrior {
                class,
                value: p,
                reason,
            });
        }
        let total: f64 = probabilities.iter().sum();
        if !total.is_finite() {
            return Err(Error::InvalidArgument("prior sums to infinity".to_string()));
        }
        Ok(Self {
            probabilities: probabilities.iter().map(|&p| p / total).collect(),
            counts: None,
        })
    }

    /// Number of classes `C`.
    pub fn classes(&self) -> usize {
        self.probabilities.len()
    }

    /// `pi_c`, summing to one.
    pub fn probabilities(&self) -> &[f64] {
        &self.probabilities
    }

    /// `log pi_c`, all finite.
    pub fn log_prior(&self) -> Vec<f64> {
        self.probabilities.iter().map(|p| p.ln()).collect()
    }

    /// The training counts, when the prior was built from counts or labels
    /// (needed for many/medium/few-shot groups and LDAM margins).
    pub fn counts(&self) -> Option<&[f64]> {
        self.counts.as_deref()
    }
}

/// Counts of each class in `labels`; a label outside `[0, classes)` is an error.
pub fn count_labels(labels: &[i64], classes: usize) -> Result<Vec<f64>> {
    let mut counts = vec![0.0; classes];
    for (row, &label) in labels.iter().enumerate() {
        match usize::try_from(label).ok().filter(|&y| y < classes) {
            Some(y) => counts[y] += 1.0,
            None => {
                return Err(Error::LabelOutOfRange {
                    row,
                    label,
                    classes,
                    ignore_index: None,
                })
            }
        }
    }
    Ok(counts)
}
