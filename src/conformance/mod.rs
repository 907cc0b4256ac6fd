//! Conformance: the kernels on one adapter against the f64 reference, cell
//! by cell (op x dtype x layout x shape class), with the error, the
//! tolerance, and the time. `logit-adjust check` prints the matrix for every
//! adapter; the browser harness (`tests/webgpu/`) replays the same cells'
//! dispatches, exported by [`export`], through Chromium's WebGPU.
//!
//! A cell runs on the device as an engine would run it: inputs uploaded,
//! outputs poisoned (all bits set: a NaN, or class 4,294,967,295) so that an
//! element the kernels never write fails, the op bound and recorded, the
//! outputs read back. Loss values pass within `abs + rel * |ref|` (the
//! tolerances of the test suite); predictions and counts must be equal; the
//! gradient rows of ignored labels must be exactly zero.

mod cases;
mod devices;
mod run;

pub use cases::{Case, Expect, Expected, IGNORE_INDEX, TAUS, TOP_K};
pub use devices::Devices;
pub use run::{export, run, Exported, Outcome, Role, Tensor};

/// The operation a cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The loss forward: reduced loss, per-row losses, LSE.
    Forward,
    /// The fused forward and backward: the forward's outputs and the gradient.
    Fused,
    /// The gradient from saved log-sum-exps.
    Backward,
    /// The post-hoc argmax for several taus.
    Argmax,
    /// The corrected logits `f - a_t` (host path).
    Corrected,
    /// The post-hoc top-k (host path).
    TopK,
    /// Per-class totals and correct counts.
    Counts,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 7] = [
        Op::Forward,
        Op::Fused,
        Op::Backward,
        Op::Argmax,
        Op::Corrected,
        Op::TopK,
        Op::Counts,
    ];

    /// The op's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Forward => "xent_forward",
            Op::Fused => "xent_fused",
            Op::Backward => "xent_backward",
            Op::Argmax => "posthoc_argmax",
            Op::Corrected => "posthoc_corrected",
            Op::TopK => "posthoc_topk",
            Op::Counts => "class_counts",
        }
    }

    /// `forward`, `backward` or `full` (both), as benchmark tools say.
    pub fn mode(self) -> &'static str {
        match self {
            Op::Fused => "full",
            Op::Backward => "backward",
            _ => "forward",
        }
    }

    /// Whether the op is bound to device buffers (and so timed and
    /// exportable); the others run through the host convenience path.
    pub fn bound(self) -> bool {
        !matches!(self, Op::Corrected | Op::TopK)
    }
}

/// The logits' format.
pub use crate::dtype::Dtype;

/// Which kernels run: those every GPU runs, or the layouts the library
/// keeps for CPU adapters (lavapipe, llvmpipe). A CPU adapter runs both.
/// Reports call this the `layout` of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// The GPU path.
    Gpu,
    /// The CPU adapters' layouts.
    Cpu,
}

impl KernelSet {
    /// Both, in report order.
    pub const ALL: [KernelSet; 2] = [KernelSet::Gpu, KernelSet::Cpu];

    /// The set's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Gpu => "gpu",
            KernelSet::Cpu => "cpu",
        }
    }
}

/// The shape classes of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeClass {
    /// `C = 1`.
    OneClass,
    /// A few classes (CIFAR-10's).
    Small,
    /// About a thousand classes (ImageNet's).
    Mid,
    /// A row longer than one workgroup holds (the split-row layout).
    AboveWorkgroup,
    /// More bytes than one storage binding takes (on a device whose
    /// binding limit is lowered to 1 MiB): the rows run in chunks.
    PastBinding,
    /// More than 65,535 rows.
    ManyRows,
    /// A third of the labels are the ignore index (row 0 among them).
    Ignored,
    /// Logits of +-1e4, whole rows at the extremes, a class of prior 1e-30.
    Extreme,
}

impl ShapeClass {
    /// Every class, in report order.
    pub const ALL: [ShapeClass; 8] = [
        ShapeClass::OneClass,
        ShapeClass::Small,
        ShapeClass::Mid,
        ShapeClass::AboveWorkgroup,
        ShapeClass::PastBinding,
        ShapeClass::ManyRows,
        ShapeClass::Ignored,
        ShapeClass::Extreme,
    ];

    /// The class's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ShapeClass::OneClass => "c1",
            ShapeClass::Small => "small",
            ShapeClass::Mid => "mid",
            ShapeClass::AboveWorkgroup => "above_workgroup",
            ShapeClass::PastBinding => "past_binding",
            ShapeClass::ManyRows => "rows_past_65535",
            ShapeClass::Ignored => "ignored_labels",
            ShapeClass::Extreme => "extreme_logits",
        }
    }

    /// `(N, C)`; `quick` keeps every class but with fewer rows or classes
    /// where that keeps its point (C past a workgroup stays past it).
    pub fn dims(self, quick: bool) -> (usize, usize) {
        match (self, quick) {
            (ShapeClass::OneClass, _) => (257, 1),
            (ShapeClass::Small, _) => (300, 10),
            (ShapeClass::Mid, false) => (256, 1000),
            (ShapeClass::Mid, true) => (64, 1000),
            (ShapeClass::AboveWorkgroup, false) => (4, 100_000),
            (ShapeClass::AboveWorkgroup, true) => (3, 40_000),
            (ShapeClass::PastBinding, false) => (1500, 1000),
            (ShapeClass::PastBinding, true) => (600, 1000),
            (ShapeClass::ManyRows, _) => (70_000, 3),
            (ShapeClass::Ignored, _) => (200, 50),
            (ShapeClass::Extreme, _) => (64, 100),
        }
    }

    /// Whether the cell runs on the device with the lowered binding limit.
    pub fn small_binding(self) -> bool {
        self == ShapeClass::PastBinding
    }
}

/// The storage binding limit of the past-binding device: 1 MiB.
pub const SMALL_BINDING: u64 = 1 << 20;

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell {
    /// What runs.
    pub op: Op,
    /// The logits' format.
    pub dtype: Dtype,
    /// Which kernels.
    pub kernels: KernelSet,
    /// The shape class.
    pub shape: ShapeClass,
}

impl Cell {
    /// `op(dtype,kernels,shape)`, as ggml's test-backend-ops names a case.
    pub fn label(&self) -> String {
        format!(
            "{}(type={},layout={},shape={})",
            self.op.name(),
            self.dtype.name(),
            self.kernels.name(),
            self.shape.name()
        )
    }
}

/// The whole matrix, in report order.
pub fn matrix() -> Vec<Cell> {
    let mut cells = Vec::new();
    for kernels in KernelSet::ALL {
        for op in Op::ALL {
            for dtype in Dtype::ALL {
                for shape in ShapeClass::ALL {
                    cells.push(Cell {
                        op,
                        dtype,
                        kernels,
                        shape,
                    });
                }
            }
        }
    }
    cells
}
