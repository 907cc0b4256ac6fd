//! The crate's error type: what can go wrong before the op is queued.

use std::fmt;

/// Why a call was refused. Every check runs before anything is queued, so
/// on error no tensor was written.
#[derive(Debug)]
pub enum Error {
    /// The core refused (a bad spec, a binding it cannot make, ...).
    Core(logit_adjust::Error),
    /// burn's wgpu runtime could not be initialised.
    Init(String),
    /// The tensor's device was never passed to [`crate::init`] or
    /// [`crate::register`], so there is no context on its `wgpu::Device`.
    NotRegistered,
    /// Logits or labels whose shapes do not fit each other or the loss.
    Shape(String),
    /// Something this op does not take: a dtype, a backend.
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Init(e) => write!(f, "burn's wgpu runtime did not start: {e}"),
            Error::NotRegistered => write!(
                f,
                "the tensors' device is not registered: open it with logit_adjust_burn::init \
                 or pass its WgpuSetup to logit_adjust_burn::register"
            ),
            Error::Shape(e) => write!(f, "shape mismatch: {e}"),
            Error::Unsupported(e) => write!(f, "unsupported: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Core(e) => Some(e),
            _ => None,
        }
    }
}

impl From<logit_adjust::Error> for Error {
    fn from(e: logit_adjust::Error) -> Self {
        Error::Core(e)
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
