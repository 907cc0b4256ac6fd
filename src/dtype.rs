//! The element formats of logits and gradients: f32, and the two halves
//! training engines keep logits in. Arithmetic is f32 whatever the format;
//! a format only says how values are stored.

/// An element format of logits or gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16 ([`half::f16`]).
    F16,
    /// bfloat16, the high half of an f32 ([`half::bf16`]).
    Bf16,
}

impl Dtype {
    /// Every format, in report order.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// The format's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// A host element type of one [`Dtype`]: what the host convenience
/// methods upload and read back.
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static {
    /// Its format.
    const DTYPE: Dtype;
    /// The value, widened (exactly) to f32.
    fn to_f32(self) -> f32;
    /// `x` rounded to nearest, ties to even.
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}
