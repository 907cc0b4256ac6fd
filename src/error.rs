//! The one error type of the crate. Every variant names the input at fault,
//! so a caller (or the command-line tool) can print it as one line.

use std::fmt;

/// Everything that can go wrong, as a value. Nothing in the library panics
/// on user input.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No adapter matched the request (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`).
    NoAdapter(String),
    /// The adapter exists but cannot run the kernels (no compute shaders,
    /// too few storage buffers, ...).
    UnsupportedAdapter(String),
    /// wgpu refused a request (device creation, pipeline, submission).
    Gpu(String),
    /// The device is gone (destroyed, reset by the driver, unplugged): open
    /// a new [`crate::Context`]. The text is wgpu's reason.
    DeviceLost(String),
    /// A label is neither in `[0, C)` nor equal to `ignore_index`.
    LabelOutOfRange {
        /// Row of the offending label.
        row: usize,
        /// The label value.
        label: i64,
        /// Number of classes `C`.
        classes: usize,
        /// The ignore index the check allowed besides `[0, C)`, if any.
        ignore_index: Option<i64>,
    },
    /// Two inputs disagree about a size.
    ShapeMismatch {
        /// Which input.
        what: String,
        /// The size it should have.
        expected: usize,
        /// The size it has.
        got: usize,
    },
    /// A value that must be finite is NaN or infinite.
    NonFinite {
        /// Which input.
        what: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The value found.
        value: f64,
    },
    /// A class prior or count that cannot define `log pi`.
    InvalidPrior {
        /// Class index.
        class: usize,
        /// The value found.
        value: f64,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A caller's buffer is smaller than the operation needs.
    BufferTooSmall {
        /// Which buffer.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes it has.
        got: u64,
    },
    /// A size the adapter (or this version of the library) cannot handle.
    TooLarge(String),
    /// Any other argument outside its domain (e.g. label smoothing >= 1).
    InvalidArgument(String),
    /// Two caller regions bound to one run share bytes of one buffer (an
    /// in-place gradient is asked for with `GradOutput::InPlace`, never by
    /// aliasing).
    Overlap {
        /// One binding.
        first: String,
        /// The other.
        second: String,
    },
    /// The device reported labels out of range after a device-resident run.
    BadLabelsOnDevice {
        /// How many labels were out of range.
        count: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(why) => write!(f, "no GPU adapter: {why}"),
            Error::UnsupportedAdapter(why) => write!(f, "unsupported adapter: {why}"),
            Error::Gpu(why) => write!(f, "GPU error: {why}"),
            Error::DeviceLost(why) => write!(
                f,
                "the GPU device was lost ({why}); open a new context to go on"
            ),
            Error::LabelOutOfRange {
                row,
                label,
                classes,
                ignore_index,
            } => {
                write!(
                    f,
                    "label out of range: row {row} has label {label}, but there are {classes} classes (valid: 0..{classes}"
                )?;
                match ignore_index {
                    Some(i) => write!(f, " or the ignore index {i})"),
                    None => write!(f, ")"),
                }
            }
            Error::ShapeMismatch {
                what,
                expected,
                got,
            } => write!(f, "shape mismatch: {what}: expected {expected}, got {got}"),
            Error::NonFinite { what, index, value } => {
                write!(f, "non-finite value: {what}[{index}] = {value}")
            }
            Error::InvalidPrior {
                class,
                value,
                reason,
            } => write!(f, "invalid prior: class {class} has {value}: {reason}"),
            Error::BufferTooSmall { what, needed, got } => write!(
                f,
                "buffer too small: {what} needs {needed} bytes, has {got}"
            ),
            Error::TooLarge(why) => write!(f, "too large: {why}"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::Overlap { first, second } => write!(
                f,
                "the {first} and {second} regions overlap in one buffer; give each its own bytes"
            ),
            Error::BadLabelsOnDevice { count } => write!(
                f,
                "label out of range: {count} label(s) on the device are neither in [0, C) nor the ignore index"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
