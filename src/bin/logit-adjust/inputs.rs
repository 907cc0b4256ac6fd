//! Inputs the commands share: a batch of logits with its labels, and the
//! class prior from training counts or from probabilities.

use std::path::Path;

use logit_adjust::ClassPrior;

use crate::npy;

/// Logits `(N, C)` and labels `(N,)`: `(n, c, logits, labels)`; float16
/// logits are widened to f32, which is exact.
pub fn read_batch(
    logits: &Path,
    labels: &Path,
) -> Result<(usize, usize, Vec<f32>, Vec<i64>), String> {
    let (n, c, logits, labels) = read_batch_any(logits, labels)?;
    Ok((n, c, logits.widened(), labels))
}

/// [`read_batch`] with float16 logits kept as they are.
pub fn read_batch_any(
    logits: &Path,
    labels: &Path,
) -> Result<(usize, usize, npy::Logits, Vec<i64>), String> {
    let (n, c, logits) = npy::read_logits_any(logits, "logits")?;
    let labels = npy::read_labels(labels, "labels")?;
    if labels.len() != n {
        return Err(format!(
            "shape mismatch: logits have {n} rows but labels have {}",
            labels.len()
        ));
    }
    Ok((n, c, logits, labels))
}

/// The prior of `c` classes from training counts (with additive smoothing
/// `a`) or else from a probabilities file.
pub fn prior(
    counts: Option<&[f64]>,
    smoothing: f64,
    probabilities: Option<&Path>,
    c: usize,
) -> Result<ClassPrior, String> {
    if let Some(k) = counts.and_then(|n| n.iter().position(|&x| x + smoothing == 0.0)) {
        return Err(format!(
            "invalid prior: class {k} has a zero count in training, so log(prior) = -inf; \
             pass --count-smoothing 1 to add one to every count"
        ));
    }
    let prior = match (counts, probabilities) {
        (Some(counts), _) => ClassPrior::from_counts_smoothed(counts, smoothing),
        (None, Some(path)) => {
            ClassPrior::from_probabilities(&npy::read_vector(path, "prior", false)?)
        }
        (None, None) => return Err("no class prior: pass class counts or a prior".into()),
    }
    .map_err(|e| e.to_string())?;
    if prior.classes() != c {
        return Err(format!(
            "shape mismatch: logits have {c} classes but the prior has {}",
            prior.classes()
        ));
    }
    Ok(prior)
}
