//! Per-feature standardisation, fitted on the training set and applied to
//! every set the model sees.

use crate::error::{Error, Result};

use super::check_features;

/// Per-feature standardisation fitted on training features: `(x - mean) / std`
/// (a feature with zero spread is only centred).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Standardizer {
    /// Fit on `N x D` features.
    pub fn fit(features: &[f32], dim: usize) -> Result<Self> {
        let n = check_features(features, dim, "features")?;
        if n == 0 {
            return Err(Error::InvalidArgument(
                "cannot standardise an empty set".into(),
            ));
        }
        let mut mean = vec![0.0; dim];
        for row in features.chunks(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0; dim];
        for row in features.chunks(dim) {
            for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
                *v += (x as f64 - m).powi(2);
            }
        }
        let scale = var
            .iter()
            .map(|v| {
                let sd = (v / n as f64).sqrt();
                if sd > 0.0 {
                    1.0 / sd
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, scale })
    }

    /// Apply to `N x D` features.
    pub fn apply(&self, features: &[f32]) -> Result<Vec<f32>> {
        let dim = self.mean.len();
        check_features(features, dim, "features")?;
        Ok(features
            .chunks(dim)
            .flat_map(|row| {
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .map(|((&x, m), s)| ((x as f64 - m) * s) as f32)
            })
            .collect())
    }
}
