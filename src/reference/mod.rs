//! The CPU reference: the same functions as the GPU path, written for
//! clarity and accumulated in f64 (the loss) or computed exactly (post-hoc
//! predictions and counts), never tuned. Every GPU result in the test suite
//! is checked against it.

mod loss;
mod posthoc;

pub use loss::{forward, forward_backward, forward_backward_scaled};
pub use posthoc::{
    class_counts, corrected, corrected_for_test_prior, label_histogram, predict,
    predict_for_test_prior, top_k, top_k_for_test_prior,
};

/// The EM estimate of a test prior from unlabelled logits, in f64: the same
/// loop as [`crate::Context::estimate_test_prior`], each step's posterior
/// sums on the CPU.
pub fn estimate_test_prior(
    logits: &[f32],
    train: &crate::ClassPrior,
    options: crate::EmOptions,
) -> crate::Result<crate::PriorEstimate> {
    crate::em::estimate_on_cpu(logits, train, options)
}
