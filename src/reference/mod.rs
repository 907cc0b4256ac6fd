//! The CPU reference: the same functions as the GPU path, written for
//! clarity and accumulated in f64 (the loss) or computed exactly (post-hoc
//! predictions and counts), never tuned. Every GPU result in the test suite
//! is checked against it.

mod loss;
mod posthoc;

pub use loss::{forward, forward_backward, forward_backward_scaled};
pub use posthoc::{class_counts, corrected, label_histogram, predict, top_k};
