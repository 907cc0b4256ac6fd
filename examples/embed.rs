//! Embedding the loss in a GPU training engine: the engine owns the device,
//! the logits and the labels; the library records its passes into the
//! engine's command encoder and writes the gradient into the engine's buffer.
//! Nothing is copied to the host inside the step.
//!
//! Run: `cargo run --example embed`

use logit_adjust::{
    ClassPrior, Context, GradOutput, LossBuffers, LossSpec, Reduction, UpstreamBuffer,
};
use wgpu::util::DeviceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The engine's own device (here opened by hand, as an engine would).
    let instance = logit_adjust::instance_from_env();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let ctx = Context::from_wgpu(device.clone(), queue.clone(), adapter.get_info())?;

    // A long-tailed 4-class problem and a batch the "model" produced.
    let (n, c) = (6usize, 4usize);
    let prior = ClassPrior::from_counts(&[900.0, 80.0, 15.0, 5.0])?;
    let spec = LossSpec::logit_adjusted(&prior, 1.0)?.reduction(Reduction::Mean);
    let op = ctx.softmax_xent(&spec)?;

    let logits: Vec<f32> = (0..n * c)
        .map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.5)
        .collect();
    let labels: Vec<i32> = vec![0, 0, 1, 3, 2, 0];
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let logits_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("engine logits"),
        contents: bytemuck::cast_slice(&logits),
        usage: storage,
    });
    let labels_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("engine labels"),
        contents: bytemuck::cast_slice(&labels),
        usage: storage,
    });
    let grad_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("engine dlogits"),
        size: (n * c * 4) as u64,
        usage: storage,
        mapped_at_creation: false,
    });

    // Once: bind the engine's buffers.
    let bound = op.bind(&LossBuffers {
        logits: &logits_buf,
        labels: &labels_buf,
        rows: n,
        grad: GradOutput::Separate(&grad_buf),
        upstream: UpstreamBuffer::One,
        row_loss: None,
    })?;

    // Every step: record into the engine's encoder (next to its own passes), submit.
    for step in 0..3 {
        let mut encoder = device.create_command_encoder(&Default::default());
        op.record(&mut encoder, &bound);
        // ... the engine would record its backward pass here, reading grad_buf ...
        queue.submit([encoder.finish()]);
        if step == 2 {
            // Only when the user wants to see it: read the loss (a host wait).
            let loss = ctx.read_f32(bound.status(), logit_adjust::BoundLoss::LOSS_OFFSET, 1)?[0];
            let grad = ctx.read_f32(&grad_buf, 0, n * c)?;
            let check = logit_adjust::reference::forward_backward(
                &spec,
                &logits,
                &labels.iter().map(|&y| y as i64).collect::<Vec<_>>(),
            )?;
            println!(
                "loss on {}: {loss:.6} (CPU reference {:.6})",
                ctx.info().name,
                check.loss.unwrap()
            );
            println!("dloss/dlogits row 0: {:?}", &grad[..c]);
        }
    }
    op.check_labels(&bound)?;
    Ok(())
}
