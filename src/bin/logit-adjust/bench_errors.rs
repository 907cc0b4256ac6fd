//! The error column of `bench`: each timed kernel run once more on the
//! bench's own buffers and read back, against the f64 reference on the same
//! inputs, so that every row says how right the measured run was.

use logit_adjust::{reference, ClassPrior, Context, LossSpec};

/// The inputs and output buffers of one shape.
pub struct Run<'a> {
    pub spec: &'a LossSpec,
    pub prior: &'a ClassPrior,
    pub taus: &'a [f64],
    pub logits: &'a [f32],
    pub labels: &'a [i64],
    pub grad: &'a wgpu::Buffer,
    pub loss: &'a wgpu::Buffer,
    pub pred: &'a wgpu::Buffer,
}

/// Largest absolute errors (the gradient; the loss for forward) and the
/// number of post-hoc predictions that differ from the reference's.
pub struct Errors {
    pub fused: f64,
    /// On f16 and bf16 logits: the fused runs, then the backward runs
    /// (filled by `half_fused`).
    pub halves: [f64; 4],
    /// The fused run on f16 logits packed in u32 words (filled by the
    /// caller where that row runs).
    pub f16_packed: f64,
    pub forward: f64,
    pub backward: f64,
    pub posthoc: f64,
}

type Record<'a> = &'a dyn Fn(&mut wgpu::CommandEncoder);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Record `record` alone, then read `bytes` of `buffer` back.
fn run_and_read(
    ctx: &Context,
    record: Record,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>, String> {
    let device = ctx.device();
    let stage = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench read-back"),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    record(&mut encoder);
    encoder.copy_buffer_to_buffer(buffer, 0, &stage, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    stage
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(err)?;
    rx.recv().map_err(err)?.map_err(err)?;
    let view = stage.slice(..).get_mapped_range().map_err(err)?;
    Ok(view[..bytes as usize].to_vec())
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let d = (f64::from(g) - w).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// Run the fused, forward, backward (from the fused run's LSE) and 16-tau
/// post-hoc kernels once each and compare.
pub fn measure(
    ctx: &Context,
    r: &Run,
    fused: Record,
    forward: Record,
    backward: Record,
    posthoc: Record,
) -> Result<Errors, String> {
    let (n, c) = (r.labels.len(), r.spec.classes());
    let want = reference::forward_backward(r.spec, r.logits, r.labels).map_err(err)?;
    let want_grad = want.grad.as_deref().unwrap_or_default();
    let grad_bytes = (n * c * 4) as u64;
    let f32s = |b: Vec<u8>| bytemuck::pod_collect_to_vec::<u8, f32>(&b);
    let fused_err = max_abs_diff(
        &f32s(run_and_read(ctx, fused, r.grad, grad_bytes)?),
        want_grad,
    );
    // The backward takes the LSE the fused run just left in `lse`.
    let backward_err = max_abs_diff(
        &f32s(run_and_read(ctx, backward, r.grad, grad_bytes)?),
        want_grad,
    );
    let loss = f32s(run_and_read(ctx, forward, r.loss, 4)?);
    let forward_err = max_abs_diff(&loss, &[want.loss.unwrap_or(f64::NAN)]);
    let t = r.taus.len();
    let pred = bytemuck::pod_collect_to_vec::<u8, u32>(&run_and_read(
        ctx,
        posthoc,
        r.pred,
        (n * t * 4) as u64,
    )?);
    let want_pred = reference::predict(r.prior, r.taus, r.logits).map_err(err)?;
    let mismatches = (0..n * t)
        .filter(|&e| pred[e] != want_pred.by_tau[e % t][e / t])
        .count();
    Ok(Errors {
        fused: fused_err,
        halves: [f64::NAN; 4],
        f16_packed: f64::NAN,
        forward: forward_err,
        backward: backward_err,
        posthoc: mismatches as f64,
    })
}

/// A run on half logits (`logits` widened, the values the kernel saw) once
/// more: its largest absolute gradient error against the f64 reference
/// (the gradient read back as halves).
pub fn half_fused(
    ctx: &Context,
    spec: &LossSpec,
    logits: &[f32],
    labels: &[i64],
    dtype: logit_adjust::Dtype,
    fused: Record,
    grad: &wgpu::Buffer,
) -> Result<f64, String> {
    let want = reference::forward_backward(spec, logits, labels).map_err(err)?;
    let want_grad = want.grad.as_deref().unwrap_or_default();
    let bytes = (logits.len() as u64 * 2).next_multiple_of(4);
    let raw = run_and_read(ctx, fused, grad, bytes)?;
    let halves = bytemuck::pod_collect_to_vec::<u8, u16>(&raw);
    let got: Vec<f32> = halves[..logits.len()]
        .iter()
        .map(|&h| match dtype {
            logit_adjust::Dtype::Bf16 => half::bf16::from_bits(h).to_f32(),
            _ => half::f16::from_bits(h).to_f32(),
        })
        .collect();
    Ok(max_abs_diff(&got, want_grad))
}
