//! Which softmax_xent.wgsl module a run needs: the file as it is for f32,
//! or the file with its f32 binding blocks swapped for the half formats'
//! (`shaders/blocks/xent_formats.wgsl`, see [`crate::splice`]). One module per (logits format,
//! gradient format, native or packed f16), built on first use.

use crate::dtype::Dtype;
use crate::error::Result;

const XENT_WGSL: &str = include_str!("../../shaders/softmax_xent.wgsl");
const BLOCKS_WGSL: &str = include_str!("../../shaders/blocks/xent_formats.wgsl");

/// How a run's logits and gradient are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Flavor {
    pub logits: Dtype,
    pub grad: Dtype,
    /// f16 through WGSL's `f16` (SHADER_F16), not packed in u32 words.
    pub native: bool,
}

impl Flavor {
    pub(crate) const F32: Flavor = Flavor {
        logits: Dtype::F32,
        grad: Dtype::F32,
        native: false,
    };

    /// The flavor of logits in `logits`, the gradient in their format or
    /// (`grad_f32`) in f32; `native`: the device has SHADER_F16 and the op
    /// may use it.
    pub(crate) fn of(logits: Dtype, grad_f32: bool, native: bool) -> Flavor {
        Flavor {
            logits,
            grad: if grad_f32 { Dtype::F32 } else { logits },
            native: native && logits == Dtype::F16,
        }
    }

    /// Elements per unit of the kernels (the `LANES` override).
    pub(crate) fn lanes(self) -> u32 {
        match self.logits {
            Dtype::F32 => 1,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The module's label (in traces and error messages).
    pub(crate) fn label(self) -> &'static str {
        use Dtype::{Bf16, F16, F32};
        match (self.logits, self.grad == F32, self.native) {
            (F32, _, _) => "softmax_xent.wgsl",
            (F16, false, true) => "softmax_xent.wgsl (f16 native)",
            (F16, true, true) => "softmax_xent.wgsl (f16 native, f32 gradient)",
            (F16, false, false) => "softmax_xent.wgsl (f16 packed)",
            (F16, true, false) => "softmax_xent.wgsl (f16 packed, f32 gradient)",
            (Bf16, false, _) => "softmax_xent.wgsl (bf16 packed)",
            (Bf16, true, _) => "softmax_xent.wgsl (bf16 packed, f32 gradient)",
        }
    }

    /// The module's WGSL text.
    pub(crate) fn source(self) -> Result<String> {
        if self.logits == Dtype::F32 {
            return Ok(XENT_WGSL.to_string());
        }
        let grad = self.grad != Dtype::F32;
        crate::splice::halves(
            XENT_WGSL,
            BLOCKS_WGSL,
            "xent_formats.wgsl",
            self.logits,
            self.native,
            grad,
        )
    }
}
