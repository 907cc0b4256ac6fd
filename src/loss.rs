//! What loss to compute: the per-class general form of docs/MATH.md section 2,
//! its presets, label smoothing, `ignore_index` and the reduction. Shared by
//! the GPU operation ([`crate::SoftmaxXent`]) and the CPU reference.

use crate::error::{Error, Result};
use crate::prior::ClassPrior;

/// PyTorch's default `ignore_index`.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

/// How per-row losses `l_i` become the loss (docs/MATH.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `l_i` per row; gradient row `i` scaled by the upstream `g_i`.
    None,
    /// `sum_i l_i`; gradient scaled by `g`.
    Sum,
    /// `sum_i l_i / #valid`; gradient scaled by `g / #valid`. Over zero
    /// valid rows the loss is 0 with a zero gradient (PyTorch gives NaN).
    #[default]
    Mean,
    /// `sum_i l_i / sum_valid alpha_{y_i}` (PyTorch's mean with class
    /// weights); gradient scaled by `g / sum_valid alpha`.
    WeightedMean,
}

impl Reduction {
    /// The code the shaders use.
    pub(crate) fn code(self) -> u32 {
        match self {
            Reduction::None => 0,
            Reduction::Sum => 1,
            Reduction::Mean => 2,
            Reduction::WeightedMean => 3,
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Reduction::None),
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            "weighted-mean" => Ok(Reduction::WeightedMean),
            other => Err(Error::InvalidArgument(format!(
                "unknown reduction {other:?}: expected none, sum, mean or weighted-mean"
            ))),
        }
    }
}

/// The upstream gradient `g` (docs/MATH.md section 5) for a host-side call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Upstream<'a> {
    /// One scale for every row (the reduced loss's upstream gradient).
    Scalar(f32),
    /// `g_i` per row; only with [`Reduction::None`].
    PerRow(&'a [f32]),
}

impl Default for Upstream<'_> {
    fn default() -> Self {
        Upstream::Scalar(1.0)
    }
}

/// The loss: per-class bias `b`, true-label margin `m` and weight `alpha`,
///
/// `z_ic = s (f_ic + b_c - m_{y_i} [c == y_i])`,
/// `l_i = alpha_{y_i} ((1-eps)(LSE_i - z_{i,y_i}) + eps (LSE_i - mean_c z_ic)) + lambda LSE_i^2`,
///
/// plus `ignore_index` and the [`Reduction`]. The logit scale `s` (1 by
/// default; LDAM as published uses 30) and the z-loss weight `lambda` (0 by
/// default) are set with [`LossSpec::with_logit_scale`] and
/// [`LossSpec::with_z_loss`]. The class vectors are stored
/// in f32, exactly as the GPU sees them, so the CPU reference computes the
/// same function of the same numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    bias: Vec<f32>,
    margin: Vec<f32>,
    weight: Vec<f32>,
    label_smoothing: f32,
    ignore_index: i64,
    reduction: Reduction,
    logit_scale: f32,
    z_loss: f32,
    smoothing: Smoothing,
}

/// How label smoothing meets class weights `alpha` (they agree when the
/// weights are uniform; docs/MATH.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Smoothing {
    /// The row's label weight multiplies the whole smoothed loss:
    /// `alpha_y ((1-eps)(LSE - z_y) + eps (LSE - mean_c z_c))`.
    #[default]
    RowWeight,
    /// PyTorch's `F.cross_entropy(weight=alpha, label_smoothing=eps)`: the
    /// smoothing term weighted per class inside the sum,
    /// `(1-eps) alpha_y (LSE - z_y) + (eps/C) sum_c alpha_c (LSE - z_c)`.
    PerClass,
}

impl LossSpec {
    /// Plain softmax cross-entropy over `classes` classes (ERM).
    pub fn cross_entropy(classes: usize) -> Self {
        Self {
            bias: vec![0.0; classes],
            margin: vec![0.0; classes],
            weight: vec![1.0; classes],
            label_smoothing: 0.0,
            ignore_index: DEFAULT_IGNORE_INDEX,
            reduction: Reduction::Mean,
            logit_scale: 1.0,
            z_loss: 0.0,
            smoothing: Smoothing::RowWeight,
        }
    }

    /// The logit-adjusted loss (paper eq. 10): `b_c = tau * log pi_c`.
    /// `tau = 0` is plain cross-entropy; the paper's default is `tau = 1`.
    pub fn logit_adjusted(prior: &ClassPrior, tau: f64) -> Result<Self> {
        if !tau.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "tau must be finite, got {tau}"
            )));
        }
        let bias: Vec<f32> = prior.log_prior().iter().map(|l| (tau * l) as f32).collect();
        let mut spec = Self::cross_entropy(prior.classes());
        spec.bias = bias;
        Ok(spec)
    }

    /// The balanced (re-weighted) loss (paper eq. 4): `alpha_c = 1 / pi_c`.
    pub fn balanced(prior: &ClassPrior) -> Self {
        let mut spec = Self::cross_entropy(prior.classes());
        spec.weight = prior
            .probabilities()
            .iter()
            .map(|p| (1.0 / p) as f32)
            .collect();
        spec
    }

    /// The adaptive-margin loss, LDAM (paper eq. 5): `m_c = K n_c^(-1/4)`
    /// with `K` so that the largest margin is 0.5. `n_c` proportional to
    /// `pi_c` gives the same margins, so the prior suffices.
    pub fn ldam(prior: &ClassPrior) -> Self {
        let mut spec = Self::cross_entropy(prior.classes());
        spec.margin = adaptive_margins(prior);
        spec
    }

    /// The equalised loss (paper eq. 6, `F(z) = z^tau`):
    /// `b_c = m_c = tau log pi_c`.
    pub fn equalised(prior: &ClassPrior, tau: f64) -> Result<Self> {
        let mut spec = Self::logit_adjusted(prior, tau)?;
        spec.margin = spec.bias.clone();
        Ok(spec)
    }

    /// The Theorem 1 family for a given `delta > 0` (length C):
    /// `b_c = log delta_c`, `alpha_c = delta_c / pi_c`. Fisher-consistent for
    /// the balanced error; `delta = pi` is the logit-adjusted loss and
    /// `delta = 1` the balanced loss.
    pub fn theorem1(prior: &ClassPrior, delta: &[f64]) -> Result<Self> {
        if delta.len() != prior.classes() {
            return Err(Error::ShapeMismatch {
                what: "delta length (classes)".into(),
                expected: prior.classes(),
                got: delta.len(),
            });
        }
        if let Some(class) = delta.iter().position(|d| !(d.is_finite() && *d > 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "delta[{class}] = {} must be finite and > 0",
                delta[class]
            )));
        }
        let mut spec = Self::cross_entropy(prior.classes());
        spec.bias = delta.iter().map(|d| d.ln() as f32).collect();
        spec.weight = delta
            .iter()
            .zip(prior.probabilities())
            .map(|(d, p)| (d / p) as f32)
            .collect();
        Ok(spec)
    }

    /// Logit adjustment plus adaptive margins (the paper's Table 4):
    /// `b_c = tau log pi_c`, `m_c = K pi_c^(-1/4)` with the largest margin 0.5.
    pub fn logit_adjusted_adaptive(prior: &ClassPrior, tau: f64) -> Result<Self> {
        let mut spec = Self::logit_adjusted(prior, tau)?;
        spec.margin = adaptive_margins(prior);
        Ok(spec)
    }

    /// Any per-class `b`, `m`, `alpha` (equal lengths, finite, `alpha >= 0`).
    pub fn custom(bias: Vec<f32>, margin: Vec<f32>, weight: Vec<f32>) -> Result<Self> {
        let spec = Self {
            bias,
            margin,
            weight,
            ..Self::cross_entropy(0)
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Set the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Set PyTorch-style label smoothing `eps` in `[0, 1)` (checked when the
    /// spec is used).
    pub fn with_label_smoothing(mut self, eps: f32) -> Self {
        self.label_smoothing = eps;
        self
    }

    /// This spec with other class vectors (each of length `C`), checked.
    pub(crate) fn with_class_vectors(
        mut self,
        bias: Vec<f32>,
        margin: Vec<f32>,
        weight: Vec<f32>,
    ) -> Result<Self> {
        let c = self.classes();
        if bias.len() != c {
            return Err(Error::ShapeMismatch {
                what: "bias b length (classes of the op)".into(),
                expected: c,
                got: bias.len(),
            });
        }
        self.bias = bias;
        self.margin = margin;
        self.weight = weight;
        self.validate()?;
        Ok(self)
    }

    /// Scale every adjusted logit by `s > 0`: `z = s (f + b - m [c = y])`
    /// (checked when the spec is used). LDAM as published (Cao et al.,
    /// 2019) trains with `s = 30`; without it the margins barely act.
    pub fn with_logit_scale(mut self, s: f32) -> Self {
        self.logit_scale = s;
        self
    }

    /// Add the z-loss `lambda LSE_i^2` to every row that is not ignored
    /// (`lambda >= 0`, checked when the spec is used; PaLM uses 1e-4). It
    /// keeps the log-partition function near 0; it is not weighted by
    /// `alpha`, and the reductions divide it as they divide the rest.
    pub fn with_z_loss(mut self, lambda: f32) -> Self {
        self.z_loss = lambda;
        self
    }

    /// Choose how label smoothing meets the class weights ([`Smoothing`]).
    pub fn with_smoothing_convention(mut self, convention: Smoothing) -> Self {
        self.smoothing = convention;
        self
    }

    /// How label smoothing meets the class weights.
    pub fn smoothing_convention(&self) -> Smoothing {
        self.smoothing
    }

    /// Whether smoothing is weighted per class inside the sum (PyTorch's
    /// convention with smoothing on): the kernels' PER_CLASS path.
    pub(crate) fn per_class_smoothing(&self) -> bool {
        self.smoothing == Smoothing::PerClass && self.label_smoothing > 0.0
    }

    /// The logit scale `s`.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The z-loss weight `lambda`.
    pub fn z_loss(&self) -> f32 {
        self.z_loss
    }

    /// Set the label value whose rows are ignored (loss 0, zero gradient).
    pub fn with_ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// Number of classes `C`.
    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    /// The per-class additive bias `b`.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The per-class true-label margin `m`.
    pub fn margin(&self) -> &[f32] {
        &self.margin
    }

    /// The per-class weight `alpha`.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// Label smoothing `eps`.
    pub fn label_smoothing(&self) -> f32 {
        self.label_smoothing
    }

    /// The ignored label value.
    pub fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    /// The reduction in force.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// Check the spec itself: at least one class, equal lengths, finite
    /// vectors, `alpha >= 0`, `eps` in `[0, 1)`, `ignore_index` within i32
    /// (labels live as i32 on the GPU).
    pub fn validate(&self) -> Result<()> {
        let c = self.bias.len();
        if c == 0 {
            return Err(Error::InvalidArgument(
                "the loss needs at least one class".into(),
            ));
        }
        for (what, v) in [("margin m", &self.margin), ("weight alpha", &self.weight)] {
            if v.len() != c {
                return Err(Error::ShapeMismatch {
                    what: format!("{what} length (classes)"),
                    expected: c,
                    got: v.len(),
                });
            }
        }
        for (what, v) in [
            ("bias b", &self.bias),
            ("margin m", &self.margin),
            ("weight alpha", &self.weight),
        ] {
            if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: what.into(),
                    index,
                    value: v[index] as f64,
                });
            }
        }
        if let Some(class) = self.weight.iter().position(|&a| a < 0.0) {
            return Err(Error::InvalidArgument(format!(
                "weight alpha[{class}] = {} is negative",
                self.weight[class]
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::InvalidArgument(format!(
                "label smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the logit scale must be finite and positive, got {}",
                self.logit_scale
            )));
        }
        if !(self.z_loss.is_finite() && self.z_loss >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the z-loss weight must be finite and non-negative, got {}",
                self.z_loss
            )));
        }
        if i32::try_from(self.ignore_index).is_err() {
            return Err(Error::InvalidArgument(format!(
                "ignore_index {} does not fit in i32",
                self.ignore_index
            )));
        }
        Ok(())
    }

    /// Check one batch against the spec and return its row count `N`:
    /// `logits.len() == N * C`, every label in `[0, C)` or `ignore_index`,
    /// every logit finite, a per-row upstream of length `N` (and only with
    /// [`Reduction::None`]).
    pub fn check_batch(&self, logits: &[f32], labels: &[i64], upstream: Upstream) -> Result<usize> {
        self.check_batch_of(logits, labels, upstream)
    }

    /// [`LossSpec::check_batch`] for logits of any element format.
    pub(crate) fn check_batch_of<T: crate::Element>(
        &self,
        logits: &[T],
        labels: &[i64],
        upstream: Upstream,
    ) -> Result<usize> {
        self.validate()?;
        let c = self.classes();
        let n = labels.len();
        let expected = n
            .checked_mul(c)
            .ok_or_else(|| Error::TooLarge(format!("{n} rows x {c} classes overflows usize")))?;
        if logits.len() != expected {
            return Err(Error::ShapeMismatch {
                what: format!("logits length (labels give N = {n}, C = {c}, so N*C)"),
                expected,
                got: logits.len(),
            });
        }
        for (row, &label) in labels.iter().enumerate() {
            let in_range = usize::try_from(label).is_ok_and(|y| y < c);
            if label != self.ignore_index && !in_range {
                return Err(Error::LabelOutOfRange {
                    row,
                    label,
                    classes: c,
                    ignore_index: Some(self.ignore_index),
                });
            }
        }
        if let Some(index) = logits.iter().position(|x| !x.to_f32().is_finite()) {
            return Err(Error::NonFinite {
                what: "logits".into(),
                index,
                value: f64::from(logits[index].to_f32()),
            });
        }
        match upstream {
            Upstream::Scalar(g) if !g.is_finite() => Err(Error::NonFinite {
                what: "upstream gradient".into(),
                index: 0,
                value: g as f64,
            }),
            Upstream::PerRow(_) if self.reduction != Reduction::None => {
                Err(Error::InvalidArgument(
                    "a per-row upstream gradient needs reduction none; reduced losses take one scalar"
                        .into(),
                ))
            }
            Upstream::PerRow(g) if g.len() != n => Err(Error::ShapeMismatch {
                what: "per-row upstream gradient length (rows)".into(),
                expected: n,
                got: g.len(),
            }),
            Upstream::PerRow(g) => match g.iter().position(|x| !x.is_finite()) {
                Some(index) => Err(Error::NonFinite {
                    what: "upstream gradient".into(),
                    index,
                    value: g[index] as f64,
                }),
                None => Ok(n),
            },
            Upstream::Scalar(_) => Ok(n),
        }
    }
}

/// `m_c = K pi_c^(-1/4)`, `K` so that `max_c m_c = 0.5`.
fn adaptive_margins(prior: &ClassPrior) -> Vec<f32> {
    let p_min = prior
        .probabilities()
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    prior
        .probabilities()
        .iter()
        .map(|p| (0.5 * (p / p_min).powf(-0.25)) as f32)
        .collect()
}

/// What a loss call returns. `T` is `f32` on the GPU and `f64` in the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput<T> {
    /// The reduced loss; `None` for [`Reduction::None`].
    pub loss: Option<T>,
    /// `l_i` for every row (0 for ignored rows), before any reduction.
    pub per_row: Vec<T>,
    /// `LSE_i = logsumexp_c z_ic` for every row (for ignored rows, of
    /// `f + b`): what the backward from saved log-sum-exps takes.
    pub lse: Vec<T>,
    /// The gradient of the reduced loss with respect to the logits, `N x C`
    /// row-major; `None` for a forward-only call.
    pub grad: Option<Vec<T>>,
}

/// Class-balanced weights by the effective number of samples (Cui et al.,
/// CVPR 2019), as LDAM-DRW re-weights with them: `w_c = (1 - beta) / (1 -
/// beta^n_c)`, scaled so that they sum to `C`. Counts must be finite and
/// positive, `beta` in `[0, 1)`.
pub fn effective_number_weights(counts: &[f64], beta: f64) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&beta) {
        return Err(Error::InvalidArgument(format!(
            "beta must be in [0, 1), got {beta}"
        )));
    }
    if counts.is_empty() {
        return Err(Error::InvalidArgument("no class counts".into()));
    }
    if let Some(k) = counts.iter().position(|&n| !(n.is_finite() && n > 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "class count [{k}] = {} is not finite and positive",
            counts[k]
        )));
    }
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powf(n)))
        .collect();
    let scale = counts.len() as f64 / raw.iter().sum::<f64>();
    Ok(raw.iter().map(|&w| (w * scale) as f32).collect())
}
