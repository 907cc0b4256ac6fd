//! Post-hoc correction and per-class counting on the CPU.

use crate::error::Result;
use crate::metrics::{check_labels, ClassCounts};
use crate::posthoc::{adjustments_for_test_prior, check_logits, Predictions};
use crate::prior::ClassPrior;

/// `argmax_c f_ic - a_tc` for each tau, ties to the smallest index, with the
/// same f32 subtraction of the same `a_tc = f32(tau) * f32(log pi_c)` as the GPU.
pub fn predict(prior: &ClassPrior, taus: &[f64], logits: &[f32]) -> Result<Predictions> {
    predict_for_test_prior(prior, None, taus, logits)
}

/// [`predict`] toward a test set drawn from `test` (`None`: balanced), as
/// [`crate::PostHoc::for_test_prior`].
pub fn predict_for_test_prior(
    prior: &ClassPrior,
    test: Option<&ClassPrior>,
    taus: &[f64],
    logits: &[f32],
) -> Result<Predictions> {
    let c = prior.classes();
    let n = check_logits(logits, c)?;
    let a = adjustments_for_test_prior(prior, test, taus)?;
    let by_tau = (0..taus.len())
        .map(|t| {
            (0..n)
                .map(|i| {
                    let mut best = 0usize;
                    let mut best_g = f32::NEG_INFINITY;
                    for k in 0..c {
                        let g = logits[i * c + k] - a[t * c + k];
                        // Strict: the first of equal values wins. A row of
                        // -inf keeps index 0.
                        if g > best_g || k == 0 {
                            best_g = g;
                            best = k;
                        }
                    }
                    best as u32
                })
                .collect()
        })
        .collect();
    Ok(Predictions {
        taus: taus.to_vec(),
        by_tau,
    })
}

/// `f_ic - a_tc` for one tau.
pub fn corrected(prior: &ClassPrior, tau: f64, logits: &[f32]) -> Result<Vec<f32>> {
    corrected_for_test_prior(prior, None, tau, logits)
}

/// [`corrected`] toward a test set drawn from `test` (`None`: balanced).
pub fn corrected_for_test_prior(
    prior: &ClassPrior,
    test: Option<&ClassPrior>,
    tau: f64,
    logits: &[f32],
) -> Result<Vec<f32>> {
    let c = prior.classes();
    check_logits(logits, c)?;
    let a = adjustments_for_test_prior(prior, test, &[tau])?;
    Ok(logits
        .iter()
        .enumerate()
        .map(|(i, &f)| f - a[i % c])
        .collect())
}

/// The `k` best classes of each row under `tau`, best first, ties to the
/// smaller index (`N x k`, row-major).
pub fn top_k(prior: &ClassPrior, tau: f64, logits: &[f32], k: usize) -> Result<Vec<u32>> {
    top_k_for_test_prior(prior, None, tau, logits, k)
}

/// [`top_k`] toward a test set drawn from `test` (`None`: balanced).
pub fn top_k_for_test_prior(
    prior: &ClassPrior,
    test: Option<&ClassPrior>,
    tau: f64,
    logits: &[f32],
    k: usize,
) -> Result<Vec<u32>> {
    let c = prior.classes();
    let g = corrected_for_test_prior(prior, test, tau, logits)?;
    let mut out = Vec::with_capacity(g.len() / c.max(1) * k);
    for row in g.chunks(c) {
        let mut order: Vec<usize> = (0..c).collect();
        // A stable sort by value, descending, keeps equal values (-0 == +0
        // included) in index order. check_logits refused NaN.
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        out.extend(order.iter().take(k).map(|&i| i as u32));
    }
    Ok(out)
}

/// Per-class totals and correct counts for every tau.
pub fn class_counts(
    labels: &[i64],
    classes: usize,
    predictions: &Predictions,
) -> Result<ClassCounts> {
    check_labels(labels, classes)?;
    let mut total = vec![0u64; classes];
    for &y in labels {
        total[y as usize] += 1;
    }
    let correct = predictions
        .by_tau
        .iter()
        .map(|pred| {
            let mut correct = vec![0u64; classes];
            for (&y, &p) in labels.iter().zip(pred) {
                if p as i64 == y {
                    correct[y as usize] += 1;
                }
            }
            correct
        })
        .collect();
    Ok(ClassCounts { total, correct })
}

/// The label histogram `n_c`.
pub fn label_histogram(labels: &[i64], classes: usize) -> Result<Vec<u64>> {
    Ok(class_counts(
        labels,
        classes,
        &Predictions {
            taus: vec![],
            by_tau: vec![],
        },
    )?
    .total)
}
