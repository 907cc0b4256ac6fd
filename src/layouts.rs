//! The layouts a caller or the tuning cache may ask for, by name: plain
//! enums with no dependencies, so that the tuning cache, the context that
//! holds it and the operations that follow it depend on each other one way.

/// Which workgroup layout the loss uses; `Auto` lets the plan choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The plan's choice: [`Variant::Rows`] where the row fits a workgroup's
    /// registers, [`Variant::Split`] beyond.
    #[default]
    Auto,
    /// Row-resident (`xent_rows`): each row held in registers by one or
    /// more threads; one read of the logits, one write of the gradient.
    Rows,
    /// Split rows (`xent_split_*`): a row cut into chunks of 4,096 classes
    /// across workgroups; reads the logits twice for the gradient.
    Split,
    /// CPU adapters only (lavapipe, llvmpipe): row segments on vec4 views
    /// of the logits and the gradient, for rows of up to 512 classes per
    /// thread. `Auto` picks it on CPU adapters where it applies; forcing it
    /// on a GPU is an error.
    Segments,
    /// CPU adapters only: `4 / gcd(C, 4)` packed rows of at most 32
    /// classes per thread, read and written as whole vec4s. `Auto` picks
    /// it on CPU adapters where it applies; forcing it elsewhere is an error.
    RowGroups,
}

/// Which workgroup layout the argmax uses (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostHocVariant {
    /// One thread per row for small `C * T`, else a workgroup per row.
    #[default]
    Auto,
    /// One thread per row.
    RowPerThread,
    /// One workgroup per row, the row tiled through workgroup memory.
    RowPerGroup,
    /// One thread per row over windows of classes whose `a_tc` (for
    /// `T <= 16`: whose `log pi_c`) fit a 64 KiB uniform buffer, one
    /// dispatch per window, the running argmax kept in a state buffer
    /// between windows. The fastest layout on CPU adapters.
    Windows,
}
