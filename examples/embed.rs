//! Embedding the loss in a GPU training engine, as an engine does it: the
//! engine opens its device with WebGPU's default limits, keeps its tensors
//! as regions of one pooled buffer (non-zero offsets, padded rows), and
//! records the loss's forward and, later, its backward from the saved
//! log-sum-exps into its own encoder, beside a pass of its own. Nothing is
//! copied to the host inside the step; the check at the end reads back.
//!
//! Run: `cargo run --release --example embed` (pick the backend with
//! `WGPU_BACKEND=vulkan` or `=gl`).

use logit_adjust::{
    BackwardBuffers, ClassPrior, Context, GradOutput, LabelType, LossBuffers, LossSpec, Reduction,
    Region, UpstreamBuffer,
};

/// Byte offset of a region in the pool: the next 256-byte boundary.
fn place(at: &mut u64, bytes: u64) -> u64 {
    let start = at.next_multiple_of(256);
    *at = start + bytes;
    start
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The engine's own device, with WebGPU's default limits.
    let instance = logit_adjust::instance_from_env();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("engine"),
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))?;
    let ctx = Context::from_wgpu(device.clone(), queue.clone(), adapter.get_info())?;

    // A long-tailed 1000-class problem; rows padded to 1024 floats.
    let (n, c, stride) = (300usize, 1000usize, 1024usize);
    let counts: Vec<f64> = (0..c)
        .map(|k| (1000.0 * 100f64.powf(-(k as f64) / (c - 1) as f64)).floor())
        .collect();
    let prior = ClassPrior::from_counts(&counts)?;
    let spec = LossSpec::logit_adjusted(&prior, 1.0)?
        .with_reduction(Reduction::Mean)
        .with_label_smoothing(0.1);
    let op = ctx.softmax_xent(&spec)?;

    let logits: Vec<f32> = (0..n * c)
        .map(|i| ((i * 37 + i / 7) % 101) as f32 * 0.07 - 3.5)
        .collect();
    let labels: Vec<i32> = (0..n)
        .map(|i| {
            if i % 17 == 5 {
                -100
            } else {
                ((i * i * 7) % c) as i32
            }
        })
        .collect();

    // The engine's pool: [pad | logits (padded rows) | labels | grad | lse | loss].
    let mut end = 64;
    let logits_bytes = (((n - 1) * stride + c) * 4) as u64;
    let logits_at = place(&mut end, logits_bytes);
    let labels_at = place(&mut end, (n * 4) as u64);
    let grad_at = place(&mut end, logits_bytes);
    let lse_at = place(&mut end, (n * 4) as u64);
    let loss_at = place(&mut end, 4);
    let pool = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("engine pool"),
        size: end.next_multiple_of(256),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut padded = vec![f32::NAN; (n - 1) * stride + c];
    for (row, values) in logits.chunks(c).enumerate() {
        padded[row * stride..][..c].copy_from_slice(values);
    }
    queue.write_buffer(&pool, logits_at, bytemuck::cast_slice(&padded));
    queue.write_buffer(&pool, labels_at, bytemuck::cast_slice(&labels));
    let logits_region = Region::new(&pool, logits_at, logits_bytes);
    let labels_region = Region::new(&pool, labels_at, (n * 4) as u64);
    let grad_region = Region::new(&pool, grad_at, logits_bytes);
    let lse_region = Region::new(&pool, lse_at, (n * 4) as u64);
    let loss_region = Region::new(&pool, loss_at, 4);

    // Bound once (binding anew every step is cheap too).
    let forward = op.bind(&LossBuffers {
        row_stride: stride,
        label_type: LabelType::I32,
        lse: Some(lse_region),
        loss: Some(loss_region),
        ..LossBuffers::new(logits_region, labels_region, n)
    })?;
    let backward = op.bind_backward(&BackwardBuffers {
        logits: logits_region,
        dtype: logit_adjust::Dtype::F32,
        grad_f32: false,
        row_stride: stride,
        labels: labels_region,
        label_type: LabelType::I32,
        rows: n,
        lse: lse_region,
        grad: GradOutput::Separate(grad_region),
        upstream: UpstreamBuffer::One,
    })?;

    // One step: the forward, a pass of the engine's own, then the backward.
    let mut encoder = device.create_command_encoder(&Default::default());
    op.record(&mut encoder, &forward);
    encoder.clear_buffer(&pool, 0, Some(64)); // the engine's own work
    op.record(&mut encoder, &backward);
    queue.submit([encoder.finish()]);

    check(
        &ctx,
        &spec,
        &pool,
        (n, c, stride),
        (&logits, &labels),
        (loss_at, lse_at, grad_at),
    )
}

/// Both results against the f64 reference; the pool's regions at the given
/// byte offsets.
fn check(
    ctx: &Context,
    spec: &LossSpec,
    pool: &wgpu::Buffer,
    (n, c, stride): (usize, usize, usize),
    (logits, labels): (&[f32], &[i32]),
    (loss_at, lse_at, grad_at): (u64, u64, u64),
) -> Result<(), Box<dyn std::error::Error>> {
    let want = logit_adjust::reference::forward_backward(
        spec,
        logits,
        &labels.iter().map(|&y| i64::from(y)).collect::<Vec<_>>(),
    )?;
    let loss = ctx.read_f32(pool, loss_at, 1)?[0];
    let lse = ctx.read_f32(pool, lse_at, n)?;
    let grad = ctx.read_f32(pool, grad_at, (n - 1) * stride + c)?;
    let want_loss = want.loss.unwrap_or(f64::NAN);
    let mut failures = Vec::new();
    if (f64::from(loss) - want_loss).abs() > 1e-5 * want_loss.abs().max(1.0) {
        failures.push(format!("loss {loss} against {want_loss}"));
    }
    let lse_err = lse
        .iter()
        .zip(&want.lse)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max);
    if lse_err.is_nan() || lse_err > 1e-5 {
        failures.push(format!("LSE off by {lse_err:e} (relative)"));
    }
    let want_grad = want.grad.unwrap_or_default();
    let scale = want_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    let mut grad_err = 0.0f64;
    for row in 0..n {
        for k in 0..c {
            let got = f64::from(grad[row * stride + k]);
            grad_err = grad_err.max((got - want_grad[row * c + k]).abs());
        }
    }
    if grad_err.is_nan() || grad_err > 1e-6 + 1e-5 * scale {
        failures.push(format!(
            "gradient off by {grad_err:e} (largest element {scale:e})"
        ));
    }
    println!(
        "{} ({:?}), WebGPU default limits: loss {loss:.6} (reference {want_loss:.6}); \
         LSE within {lse_err:.1e}; gradient from the saved LSE within {grad_err:.1e}",
        ctx.info().name,
        ctx.info().backend
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
