//! The logit-adjusted softmax cross-entropy of `logit-adjust` as a burn
//! autodiff op, on burn's own wgpu device and burn's own buffers.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use logit_adjust::{ClassPrior, LossSpec};
//! use logit_adjust_burn::LogitAdjustedLoss;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // burn's wgpu device, registered so that our kernels share it.
//! let device = logit_adjust_burn::init(Device::wgpu_options())?.autodiff();
//! let prior = ClassPrior::from_counts(&[900.0, 90.0, 10.0])?;
//! let loss = LogitAdjustedLoss::new(&device, &LossSpec::logit_adjusted(&prior, 1.0)?)?;
//!
//! let logits = Tensor::<2>::zeros([4, 3], &device).require_grad();
//! let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 0], &device);
//! let value = loss.forward(logits.clone(), labels)?;
//! let grads = value.backward();
//! let d_logits = logits.grad(&grads);
//! # Ok(()) }
//! ```
//!
//! The forward binds burn's logits and labels where they lie (regions of
//! burn's pooled buffers, at any offset, labels and logits in one buffer
//! or not) and writes the loss and the per-row log-sum-exps into tensors
//! burn allocates; the backward is the core's backward from those
//! log-sum-exps. Nothing is copied, unless burn hands over a strided view,
//! which is made contiguous first. The op runs with burn's fusion on
//! (feature `fusion`, the default) and off.

mod device;
mod error;
mod loss;
mod ops;
mod run;

pub use device::{context, init, register};
pub use error::{Error, Result};
pub use loss::LogitAdjustedLoss;
pub use ops::LogitAdjustOps;

/// `[runs, runs with a tensor at a non-zero offset, runs whose logits share
/// a buffer with another tensor of the run]` since the process started:
/// evidence, for tests and benches, of where burn's tensors were bound.
#[doc(hidden)]
pub fn placement_counts() -> [u64; 3] {
    run::placements::counts()
}

/// `loss.forward(logits, labels)`: the free-function form.
pub fn logit_adjusted_cross_entropy(
    logits: burn::tensor::Tensor<2>,
    labels: burn::tensor::Tensor<1, burn::tensor::Int>,
    loss: &LogitAdjustedLoss,
) -> Result<burn::tensor::Tensor<1>> {
    loss.forward(logits, labels)
}
