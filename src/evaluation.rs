//! Evaluating a corrected model as the literature reports it (docs/MATH.md
//! section 7): tau chosen on a validation set and scored on a test set,
//! top-k accuracy, expected calibration error, accuracy under a test prior.

use crate::error::{Error, Result};
use crate::metrics::{check_labels, Report, ShotGroups};
use crate::posthoc::{check_logits, PostHoc};

/// Equal-width confidence bins of [`expected_calibration_error`] by default.
pub const ECE_BINS: usize = 15;

/// What a tau is chosen by, on the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The lowest balanced error.
    BalancedError,
    /// The highest worst-class recall.
    WorstClass,
    /// The highest accuracy.
    Accuracy,
}

impl Select {
    /// The score to minimise.
    pub fn loss(self, r: &Report) -> f64 {
        match self {
            Select::BalancedError => r.balanced_error,
            Select::WorstClass => -r.worst_class_recall,
            Select::Accuracy => -r.accuracy,
        }
    }

    /// The index of the best report, the first of equals ([`first_best`]).
    pub fn best(self, reports: &[Report]) -> usize {
        first_best(&reports.iter().map(|r| self.loss(r)).collect::<Vec<_>>())
    }
}

/// The first index whose value is within `1e-12 * max(1, |min|)` of the
/// smallest. Metrics from integer counts that are equal as fractions can
/// differ in the last bit with the order of a float sum, so "equal" allows
/// for that, and the first of equals wins in every implementation.
pub fn first_best(values: &[f64]) -> usize {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let tol = 1e-12 * min.abs().max(1.0);
    values.iter().position(|&v| v <= min + tol).unwrap_or(0)
}

/// A tau chosen on validation and scored on test.
#[derive(Debug, Clone, PartialEq)]
pub struct TauSelection {
    /// The sweep's taus.
    pub taus: Vec<f64>,
    /// The validation report at every tau.
    pub validation: Vec<Report>,
    /// The index of the chosen tau.
    pub chosen: usize,
    /// The test report at the chosen tau, the only one computed on test.
    pub test: Report,
}

impl PostHoc {
    /// Sweep the taus on the validation set, choose one by `select`, and
    /// report the test set at that tau alone. `train_counts` and `groups`
    /// define the shot groups.
    pub fn select_tau(
        &self,
        validation: (&[f32], &[i64]),
        test: (&[f32], &[i64]),
        select: Select,
        train_counts: Option<&[f64]>,
        groups: ShotGroups,
    ) -> Result<TauSelection> {
        let ctx = self.context();
        let c = self.classes();
        let reports = |logits: &[f32], labels: &[i64], ph: &PostHoc| -> Result<Vec<Report>> {
            check_labels(labels, c)?;
            let p = ph.predict(logits)?;
            let counts = ctx.class_counts(labels, c, &p)?;
            (0..ph.taus().len())
                .map(|t| counts.report_with_groups(t, train_counts, groups))
                .collect()
        };
        let val = reports(validation.0, validation.1, self)?;
        let chosen = select.best(&val);
        let at_chosen = self.at_tau(chosen)?;
        let test = reports(test.0, test.1, &at_chosen)?.remove(0);
        Ok(TauSelection {
            taus: self.taus().to_vec(),
            validation: val,
            chosen,
            test,
        })
    }
}

/// Top-k accuracy for every `k' = 1..=k` from `N x k` top-k classes
/// ([`PostHoc::top_k`]: best first): the share of rows whose label is among
/// the first `k'`.
pub fn top_k_accuracy(top: &[u32], k: usize, labels: &[i64]) -> Result<Vec<f64>> {
    if k == 0 || top.len() != labels.len() * k {
        return Err(Error::ShapeMismatch {
            what: "top-k classes (N x k)".into(),
            expected: labels.len() * k,
            got: top.len(),
        });
    }
    if labels.is_empty() {
        return Err(Error::InvalidArgument(
            "no rows: top-k accuracy is undefined".into(),
        ));
    }
    // rank[i]: where the label sits in row i's list, k when absent.
    let mut hits = vec![0u64; k];
    for (row, &y) in top.chunks(k).zip(labels) {
        if let Some(r) = row.iter().position(|&p| p as i64 == y) {
            hits[r] += 1;
        }
    }
    let n = labels.len() as f64;
    let mut cumulative = 0;
    Ok(hits
        .iter()
        .map(|&h| {
            cumulative += h;
            cumulative as f64 / n
        })
        .collect())
}

/// Expected calibration error of the softmax of `logits` (`N x C`, the
/// corrected logits): rows go to `bins` equal-width bins by their
/// confidence `p = max_c softmax_c` (bin `b` holds `b / B < p <= (b + 1) / B`),
/// and `ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|`, with the
/// prediction the first maximum. All in f64. Infinite logits take the
/// softmax's limit: the `+inf` entries share the mass equally, and a row of
/// `-inf` is uniform.
pub fn expected_calibration_error(
    logits: &[f32],
    labels: &[i64],
    classes: usize,
    bins: usize,
) -> Result<f64> {
    let n = check_logits(logits, classes)?;
    if labels.len() != n {
        return Err(Error::ShapeMismatch {
            what: "labels (rows of the logits)".into(),
            expected: n,
            got: labels.len(),
        });
    }
    if n == 0 || bins == 0 {
        return Err(Error::InvalidArgument(
            "ECE needs rows and at least one bin".into(),
        ));
    }
    check_labels(labels, classes)?;
    let mut count = vec![0u64; bins];
    let mut correct = vec![0u64; bins];
    let mut confidence = vec![0.0f64; bins];
    for (row, &y) in logits.chunks(classes).zip(labels) {
        let mut best = 0;
        for k in 1..classes {
            if row[k] > row[best] {
                best = k;
            }
        }
        let m = row[best] as f64;
        // The softmax's limits: the +inf entries share the mass; a row of
        // -inf is the limit of equal logits, uniform.
        let p = if m == f64::INFINITY {
            1.0 / row.iter().filter(|&&f| f == f32::INFINITY).count() as f64
        } else if m == f64::NEG_INFINITY {
            1.0 / classes as f64
        } else {
            1.0 / row.iter().map(|&f| (f as f64 - m).exp()).sum::<f64>()
        };
        let b = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        correct[b] += u64::from(best as i64 == y);
        confidence[b] += p;
    }
    Ok((0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let nb = count[b] as f64;
            (nb / n as f64) * (correct[b] as f64 / nb - confidence[b] / nb).abs()
        })
        .sum())
}

/// The accuracy a test set drawn from `prior` would have: `sum_c pi_c r_c`
/// over the classes with examples, `pi` renormalised over them (`None`
/// when none has).
pub fn prior_weighted_accuracy(report: &Report, prior: &[f64]) -> Option<f64> {
    let (mut weight, mut sum) = (0.0, 0.0);
    for (r, &p) in report.per_class_recall.iter().zip(prior) {
        if let Some(r) = r {
            weight += p;
            sum += p * r;
        }
    }
    (weight > 0.0).then(|| sum / weight)
}
