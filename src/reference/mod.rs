//! The CPU reference: the same functions as the GPU path, written for
//! clarity and accumulated in f64, never tuned. Every GPU result in the test
//! suite is checked against it.

mod loss;

pub use loss::{forward, forward_backward, forward_backward_scaled};
