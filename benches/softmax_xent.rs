//! Criterion benches of the fused loss, device-resident (no uploads in the
//! loop), timed on the host around a device wait. `Throughput::Bytes` counts
//! the bytes the kernel must move: logits read once, gradient written once
//! (forward: logits read once).
//!
//! Run: `cargo bench --bench softmax_xent` (pick the adapter with WGPU_BACKEND).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use logit_adjust::{Context, GradOutput, LossBuffers, LossSpec, UpstreamBuffer};
use wgpu::util::DeviceExt;

fn bench(c: &mut Criterion) {
    let ctx = Context::new().expect("a GPU adapter (set WGPU_BACKEND)");
    let mut group = c.benchmark_group(format!("softmax_xent/{}", ctx.info().name));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (n, classes) in [(16_384usize, 1000usize), (2048, 32_768), (262_144, 10)] {
        let spec = LossSpec::cross_entropy(classes);
        let op = ctx.softmax_xent(&spec).unwrap();
        let logits: Vec<f32> = (0..n * classes)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let labels: Vec<i32> = (0..n).map(|i| ((i * 31) % classes) as i32).collect();
        let usage = wgpu::BufferUsages::STORAGE;
        let device = ctx.device();
        let logits_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&logits),
            usage,
        });
        let labels_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&labels),
            usage,
        });
        let grad_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (n * classes * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        for (name, grad, bytes) in [
            ("fused", GradOutput::Separate(&grad_buf), 8 * n * classes),
            ("forward", GradOutput::None, 4 * n * classes),
        ] {
            let bound = op
                .bind(&LossBuffers {
                    logits: &logits_buf,
                    labels: &labels_buf,
                    rows: n,
                    grad,
                    upstream: UpstreamBuffer::One,
                    row_loss: None,
                })
                .unwrap();
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_function(BenchmarkId::new(name, format!("{n}x{classes}")), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut encoder = device.create_command_encoder(&Default::default());
                        op.record(&mut encoder, &bound);
                        ctx.queue().submit([encoder.finish()]);
                        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                    }
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
