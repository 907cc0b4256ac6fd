//! The loss family of docs/MATH.md sections 1-5 in f64.

use crate::error::Result;
use crate::loss::{LossOutput, LossSpec, Reduction, Upstream};

/// Forward only: the reduced loss and the per-row losses.
pub fn forward(spec: &LossSpec, logits: &[f32], labels: &[i64]) -> Result<LossOutput<f64>> {
    run(spec, logits, labels, Upstream::default(), false)
}

/// Forward and backward with upstream gradient 1.
pub fn forward_backward(
    spec: &LossSpec,
    logits: &[f32],
    labels: &[i64],
) -> Result<LossOutput<f64>> {
    run(spec, logits, labels, Upstream::default(), true)
}

/// Forward and backward with an explicit upstream gradient.
pub fn forward_backward_scaled(
    spec: &LossSpec,
    logits: &[f32],
    labels: &[i64],
    upstream: Upstream,
) -> Result<LossOutput<f64>> {
    run(spec, logits, labels, upstream, true)
}

fn run(
    spec: &LossSpec,
    logits: &[f32],
    labels: &[i64],
    upstream: Upstream,
    with_grad: bool,
) -> Result<LossOutput<f64>> {
    let n = spec.check_batch(logits, labels, upstream)?;
    let c = spec.classes();
    let eps = spec.label_smoothing() as f64;
    let s = spec.logit_scale() as f64;
    let lambda = spec.z_loss() as f64;
    let per_class = spec.per_class_smoothing();
    let b: Vec<f64> = spec.bias().iter().map(|&x| x as f64).collect();

    let valid = |label: i64| label != spec.ignore_index();
    let denom = match spec.reduction() {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => labels.iter().filter(|&&y| valid(y)).count() as f64,
        Reduction::WeightedMean => labels
            .iter()
            .filter(|&&y| valid(y))
            .map(|&y| spec.weight()[y as usize] as f64)
            .sum(),
    };

    let mut per_row = vec![0.0; n];
    let mut lse_rows = vec![0.0; n];
    let mut grad = if with_grad {
        vec![0.0; n * c]
    } else {
        Vec::new()
    };
    let mut z = vec![0.0f64; c];
    for (i, &label) in labels.iter().enumerate() {
        if !valid(label) {
            // l_i = 0, a zero gradient row; LSE of s (f + b).
            let z = (0..c).map(|k| s * (logits[i * c + k] as f64 + b[k]));
            let max = z.clone().fold(f64::NEG_INFINITY, f64::max);
            lse_rows[i] = max + z.map(|zk| (zk - max).exp()).sum::<f64>().ln();
            continue;
        }
        let y = label as usize;
        let alpha = spec.weight()[y] as f64;
        let margin = spec.margin()[y] as f64;
        for (k, zk) in z.iter_mut().enumerate() {
            *zk = s * (logits[i * c + k] as f64 + b[k] - if k == y { margin } else { 0.0 });
        }
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum_exp: f64 = z.iter().map(|&zk| (zk - max).exp()).sum();
        let lse = max + sum_exp.ln();
        lse_rows[i] = lse;
        let w = |k: usize| spec.weight()[k] as f64;
        let smooth = if per_class {
            // (eps/C) sum_c alpha_c (LSE - z_c), PyTorch's weighted smoothing
            eps / c as f64 * (0..c).map(|k| w(k) * (lse - z[k])).sum::<f64>()
        } else {
            alpha * eps * (lse - z.iter().sum::<f64>() / c as f64)
        };
        per_row[i] = alpha * (1.0 - eps) * (lse - z[y]) + smooth + lambda * lse * lse;

        if with_grad {
            let g = match upstream {
                Upstream::Scalar(g) => g as f64,
                Upstream::PerRow(g) => g[i] as f64,
            };
            let scale = if denom == 0.0 { 0.0 } else { g / denom };
            let weight_sum: f64 = (0..c).map(w).sum();
            for (k, &zk) in z.iter().enumerate() {
                let p = (zk - lse).exp();
                let hit = if k == y { 1.0 } else { 0.0 };
                let ce = if per_class {
                    alpha * (1.0 - eps) * (p - hit) + eps / c as f64 * (weight_sum * p - w(k))
                } else {
                    alpha * (p - ((1.0 - eps) * hit + eps / c as f64))
                };
                grad[i * c + k] = scale * s * (ce + 2.0 * lambda * lse * p);
            }
        }
    }
    let loss = match spec.reduction() {
        Reduction::None => None,
        _ if denom == 0.0 => Some(0.0),
        _ => Some(per_row.iter().sum::<f64>() / denom),
    };
    Ok(LossOutput {
        loss,
        per_row,
        lse: lse_rows,
        grad: with_grad.then_some(grad),
    })
}
