//! The op as a burn backend extension: [`LogitAdjustOps`], declared once
//! and routed by burn's dispatch to the cube backend (with or without
//! fusion) and to autodiff.
//!
//! - `CubeBackend` runs the core's kernels on burn's own buffers (see
//!   [`crate::run`]).
//! - `Fusion<CubeBackend>` is generated: the op is registered in burn's
//!   stream with its output shapes and runs, in order, when the stream does.
//! - `Autodiff<B>` saves what the backward needs (the logits, labels and
//!   log-sum-exps: no gradient is computed in the forward) and registers
//!   the backward from LSE as the logits' gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend};
#[cfg(feature = "fusion")]
use burn::tensor::DType;
use burn_cubecl::CubeBackend;

use crate::loss::LogitAdjustedLoss;

/// The loss as burn backend operations. Call it through
/// [`LogitAdjustedLoss::forward`], which checks the inputs first.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"), Autodiff)]
pub trait LogitAdjustOps: Backend {
    /// The reduced loss (`[1]`, or `[N]` per row with reduction none) and
    /// the per-row log-sum-exp of the adjusted logits (`[N]`).
    #[fusion(meta = forward_meta)]
    fn logit_adjusted_forward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `d loss / d logits` (`[N, C]`) from the forward's log-sum-exps and the
    /// upstream gradient of the loss (`[1]` or `[N]`, as the forward's).
    #[fusion(dtype = logits, shape = logits)]
    fn logit_adjusted_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> FloatTensor<Self>;
}

/// The forward's output shapes, known before it runs (fusion registers
/// the op with them).
#[cfg(feature = "fusion")]
fn forward_meta(
    logits: &TensorSpec,
    _labels: &TensorSpec,
    loss: &LogitAdjustedLoss,
) -> (TensorSpec, TensorSpec) {
    let rows = logits.shape[0];
    let out = if loss.reduced() { 1 } else { rows };
    (
        TensorSpec::new([out].into(), DType::F32),
        TensorSpec::new([rows].into(), DType::F32),
    )
}

impl LogitAdjustOps for CubeBackend {
    fn logit_adjusted_forward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::run::forward(&loss, logits, labels)
    }

    fn logit_adjusted_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> FloatTensor<Self> {
        crate::run::backward(&loss, logits, labels, lse, upstream)
    }
}

/// The saved state of one forward: what the backward from LSE reads.
#[derive(Debug)]
struct FromLse;

impl<B: Backend + LogitAdjustOps> Backward<B, 1> for FromLse {
    type State = (
        FloatTensor<B>,
        IntTensor<B>,
        FloatTensor<B>,
        LogitAdjustedLoss,
    );

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, labels, lse, loss) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            B::logit_adjusted_backward(logits, labels, lse, upstream, loss)
        });
    }
}

impl<B: Backend + LogitAdjustOps, C: CheckpointStrategy> LogitAdjustOps for Autodiff<B, C> {
    fn logit_adjusted_forward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let guard = logits.node();
        let logits = logits.into_primitive();
        let (out, lse) = B::logit_adjusted_forward(logits.clone(), labels.clone(), loss.clone());
        // Compute-bound: the state is kept, not recomputed, under
        // checkpointing (recomputing would run the forward again).
        let out = match FromLse.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((logits, labels, lse.clone(), loss), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, Self::from_inner(lse))
    }

    fn logit_adjusted_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        loss: LogitAdjustedLoss,
    ) -> FloatTensor<Self> {
        // The gradient itself is not differentiated again.
        Self::from_inner(B::logit_adjusted_backward(
            Self::inner(logits),
            labels,
            Self::inner(lse),
            Self::inner(upstream),
            loss,
        ))
    }
}
