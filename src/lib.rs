//! # logit-adjust
//!
//! GPU compute-shader kernels (WGSL on [`wgpu`]) for long-tail learning by
//! logit adjustment (Menon et al., "Long-tail learning via logit
//! adjustment", ICLR 2021, arXiv 2007.07314).
//!
//! Train on `f(x) + tau log pi` (the logit-adjusted softmax cross-entropy,
//! eq. 10), or predict `argmax f(x) - tau log pi` after training (post-hoc,
//! eq. 9). The kernels implement the paper's whole margin family in
//! per-class form, `z_ic = f_ic + b_c - m_{y_i}[c = y_i]`,
//! `l_i = alpha_{y_i} (logsumexp_c z_ic - z_{i,y_i})` ([`LossSpec`]).
//!
//! ```no_run
//! use logit_adjust::{ClassPrior, Context, LossSpec, Reduction};
//! # fn main() -> logit_adjust::Result<()> {
//! let ctx = Context::new()?;
//! let prior = ClassPrior::from_counts(&[500.0, 50.0, 5.0])?;
//! let spec = LossSpec::logit_adjusted(&prior, 1.0)?.with_reduction(Reduction::Mean);
//! let op = ctx.softmax_xent(&spec)?;
//! let out = op.forward_backward(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5], &[0, 2])?;
//! let check = logit_adjust::reference::forward_backward(&spec, &[1.0, 0.0, -1.0, 0.5, 0.5, 0.5], &[0, 2])?;
//! assert!((out.loss.unwrap() as f64 - check.loss.unwrap()).abs() < 1e-5);
//! # Ok(()) }
//! ```
//!
//! Every GPU result is checked against [`reference`](mod@reference), an f64 CPU path with
//! the same function shapes.

#![warn(missing_docs)]

mod buffers;
pub mod conformance;
mod context;
pub mod diagnostics;
mod dtype;
mod em;
mod error;
mod evaluation;
mod kernels;
mod layouts;
mod loss;
mod metrics;
mod pipelines;
mod posthoc;
mod prior;
pub mod reference;
mod region;
mod softmax_xent;
mod splice;
mod split;
pub mod synthetic;
pub mod trace;
mod train;
pub mod tuning;

pub use context::{adapters_from_env, instance_from_env, Capabilities, Context};
pub use dtype::{Dtype, Element};
pub use em::{EmOptions, PriorEstimate};
pub use error::{Error, Result};
pub use evaluation::{
    expected_calibration_error, first_best, prior_weighted_accuracy, top_k_accuracy, Select,
    TauSelection, ECE_BINS,
};
pub use loss::{
    effective_number_weights, LossOutput, LossSpec, Reduction, Smoothing, Upstream,
    DEFAULT_IGNORE_INDEX,
};
pub use metrics::{
    check_labels, report, report_with_groups, BoundCounts, ClassCounts, CountsBuffers, Report,
    ShotGroups,
};
pub use posthoc::{
    adjustments, adjustments_for_test_prior, check_logits, BoundPostHoc, DeviceLogits, PostHoc,
    PostHocBuffers, PostHocVariant, Predictions, MAX_TAUS, MAX_TOP_K,
};
pub use prior::{count_labels, ClassPrior};
pub use region::Region;
pub use softmax_xent::{
    BackwardBuffers, BoundLoss, GradOutput, HalfPath, LabelType, LossBuffers, SoftmaxXent,
    UpstreamBuffer, Variant,
};
pub use split::{stratified_split, Split};
pub use train::{
    Drw, EpochRecord, FitReport, LinearTrainer, Progress, Standardizer, TrainConfig, MAX_BATCH,
};
pub use tuning::Tuning;

/// Every format variant of the shader files that the loader builds (label,
/// WGSL text): for the shader tests, which translate each for every
/// backend.
#[doc(hidden)]
pub fn shader_variants() -> Result<Vec<(&'static str, String)>> {
    let mut out = softmax_xent::format_variants()?;
    out.extend(kernels::format_variants());
    Ok(out)
}
