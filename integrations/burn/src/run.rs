//! The core's kernels on burn's own buffers: each tensor is a region of one
//! of burn's pooled `wgpu::Buffer`s (often at a non-zero offset, often
//! sharing the buffer with the other inputs), bound in place.
//!
//! Order on the one queue: `get_resource` moves burn's queued work for a
//! tensor into burn's encoder, `flush` submits it, then our encoder is
//! submitted; anything burn records later is submitted after ours. The
//! resources are held (which pins the allocations) until our submission is
//! made.

use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::wgpu;
use burn::backend::wgpu::WgpuResource;
use burn::backend::FloatDType;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::kernel::{copy_contiguous, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use logit_adjust::{
    BackwardBuffers, BoundLoss, GradOutput, LossBuffers, Region, SoftmaxXent, UpstreamBuffer,
};

use crate::loss::{label_type, LogitAdjustedLoss};

/// A pinned wgpu resource of one of burn's tensors.
type Resource = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// Where the runs found burn's tensors: for tests that must show the op
/// ran on pooled regions, not on fresh offset-0 buffers.
pub(crate) mod placements {
    use std::sync::atomic::{AtomicU64, Ordering};

    static RUNS: AtomicU64 = AtomicU64::new(0);
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    static SHARED: AtomicU64 = AtomicU64::new(0);

    /// Count one run over `held` (inputs first, then outputs).
    pub(crate) fn note(held: &[super::Resource]) {
        let first = held[0].resource();
        RUNS.fetch_add(1, Ordering::Relaxed);
        if held.iter().any(|r| r.resource().offset != 0) {
            OFFSET.fetch_add(1, Ordering::Relaxed);
        }
        if held[1..]
            .iter()
            .any(|r| r.resource().buffer == first.buffer)
        {
            SHARED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs so far, runs with a tensor at a non-zero offset, runs whose
    /// logits share a buffer with another of the run's tensors.
    pub fn counts() -> [u64; 3] {
        [&RUNS, &OFFSET, &SHARED].map(|c| c.load(Ordering::Relaxed))
    }
}

/// Pin `tensor`'s allocation and return where it lives.
fn resource(tensor: &CubeTensor) -> Resource {
    tensor
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
        .unwrap_or_else(|e| panic!("logit-adjust-burn: burn could not hand over a buffer: {e:?}"))
}

fn region(r: &Resource) -> Region<'_> {
    let r = r.resource();
    Region::new(&r.buffer, r.offset, r.size)
}

/// A new f32 tensor of `shape` on `like`'s device.
fn empty(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    CubeBackend::float_empty(shape.into(), &like.device, FloatDType::F32)
}

/// Submit `op`'s run on the pinned resources. The inputs are tried in
/// place; if the core refuses a binding (an offset off the storage
/// alignment, say) they are copied once into fresh allocations and tried
/// again. A second refusal cannot come from burn's layout and is a bug.
fn submit(
    loss: &LogitAdjustedLoss,
    inputs: Vec<CubeTensor>,
    outputs: &[&CubeTensor],
    bind: impl Fn(&SoftmaxXent, &[Resource]) -> logit_adjust::Result<BoundLoss>,
) {
    let op = loss.read();
    let ctx = loss.context();
    let mut inputs: Vec<CubeTensor> = inputs.into_iter().map(into_contiguous).collect();
    for attempt in 0..2 {
        let held: Vec<Resource> = inputs
            .iter()
            .chain(outputs.iter().copied())
            .map(resource)
            .collect();
        match bind(&op, &held) {
            Ok(bound) => {
                placements::note(&held);
                inputs[0]
                    .client
                    .flush()
                    .unwrap_or_else(|e| panic!("logit-adjust-burn: burn's flush failed: {e:?}"));
                let mut encoder =
                    ctx.device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("logit-adjust-burn"),
                        });
                op.record(&mut encoder, &bound);
                ctx.queue().submit([encoder.finish()]);
                return;
            }
            Err(_) if attempt == 0 => {
                drop(held);
                inputs = inputs.into_iter().map(copy_contiguous).collect();
            }
            Err(e) => panic!("logit-adjust-burn: the core refused burn's buffers: {e}"),
        }
    }
}

/// The forward: the reduced (or per-row) loss and the per-row LSE.
pub(crate) fn forward(
    loss: &LogitAdjustedLoss,
    logits: CubeTensor,
    labels: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    let rows = logits.meta.shape()[0];
    let label_type = label_type(labels.dtype).expect("checked by LogitAdjustedLoss::forward");
    let out = empty(&logits, vec![if loss.reduced() { 1 } else { rows }]);
    let lse = empty(&logits, vec![rows]);
    let reduced = loss.reduced();
    submit(loss, vec![logits, labels], &[&out, &lse], |op, held| {
        let mut b = LossBuffers::new(region(&held[0]), region(&held[1]), rows);
        b.label_type = label_type;
        b.lse = Some(region(&held[3]));
        if reduced {
            b.loss = Some(region(&held[2]));
        } else {
            b.row_loss = Some(region(&held[2]));
        }
        op.bind(&b)
    });
    (out, lse)
}

/// The backward from LSE: `d loss / d logits`, `[N, C]`.
pub(crate) fn backward(
    loss: &LogitAdjustedLoss,
    logits: CubeTensor,
    labels: CubeTensor,
    lse: CubeTensor,
    upstream: CubeTensor,
) -> CubeTensor {
    let shape = logits.meta.shape().to_vec();
    let rows = shape[0];
    let label_type = label_type(labels.dtype).expect("checked by LogitAdjustedLoss::forward");
    let per_row = upstream.meta.shape().num_elements() == rows && !loss.reduced();
    let grad = empty(&logits, shape);
    submit(
        loss,
        vec![logits, labels, lse, upstream],
        &[&grad],
        |op, held| {
            let g = region(&held[3]);
            op.bind_backward(&BackwardBuffers {
                logits: region(&held[0]),
                dtype: logit_adjust::Dtype::F32,
                grad_f32: false,
                row_stride: 0,
                labels: region(&held[1]),
                label_type,
                rows,
                lse: region(&held[2]),
                grad: GradOutput::Separate(region(&held[4])),
                upstream: if per_row {
                    UpstreamBuffer::PerRow(g)
                } else {
                    UpstreamBuffer::Scalar(g)
                },
            })
        },
    );
    grad
}
