//! Criterion benches of the kernels, device-resident (no uploads in the
//! loop), timed with the GPU's own clock (timestamp queries, through
//! `iter_custom`) where the adapter has them, else on the host around a
//! device wait. `Throughput::Bytes` counts the bytes each kernel must move:
//! fused forward+backward reads the logits once and writes the gradient
//! once; forward reads them once; the 16-tau post-hoc sweep reads them once.
//! The shader copy of the same bytes is benched beside them.
//!
//! Run: `cargo bench --bench softmax_xent` (pick the adapter with WGPU_BACKEND).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use logit_adjust::diagnostics::{CopyBaseline, Timer};
use logit_adjust::{
    ClassPrior, Context, GradOutput, LossBuffers, LossSpec, PostHocBuffers, Region,
};
use wgpu::util::DeviceExt;

fn bench(c: &mut Criterion) {
    let ctx = Context::new().expect("a GPU adapter (set WGPU_BACKEND)");
    let timer = Timer::new(&ctx);
    let mut group = c.benchmark_group(format!(
        "{} ({:?}, {})",
        ctx.info().name,
        ctx.info().backend,
        timer.timing().name()
    ));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for (n, classes) in [(16_384usize, 1000usize), (2048, 32_768), (65_536, 10)] {
        let counts: Vec<f64> = (0..classes).map(|k| 1000.0 / (1.0 + k as f64)).collect();
        let prior = ClassPrior::from_counts(&counts).unwrap();
        let op = ctx
            .softmax_xent(&LossSpec::logit_adjusted(&prior, 1.0).unwrap())
            .unwrap();
        let logits: Vec<f32> = (0..n * classes)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let labels: Vec<i32> = (0..n).map(|i| ((i * 31) % classes) as i32).collect();
        let usage = wgpu::BufferUsages::STORAGE;
        let device = ctx.device();
        let init = |data: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: data,
                usage,
            })
        };
        let logits_buf = init(bytemuck::cast_slice(&logits));
        let labels_buf = init(bytemuck::cast_slice(&labels));
        let scratch = |bytes: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let grad_buf = scratch(n * classes * 4);
        let pred_buf = scratch(n * 16 * 4);
        let bind = |grad| {
            op.bind(&LossBuffers {
                grad,
                ..LossBuffers::new(Region::whole(&logits_buf), Region::whole(&labels_buf), n)
            })
            .unwrap()
        };
        let fused = bind(GradOutput::Separate(Region::whole(&grad_buf)));
        let forward = bind(GradOutput::None);
        let taus: Vec<f64> = (0..16).map(|k| k as f64 * 0.125).collect();
        let posthoc = ctx.posthoc(&prior, &taus).unwrap();
        let bound_posthoc = posthoc
            .bind(&PostHocBuffers {
                logits: Region::whole(&logits_buf),
                dtype: logit_adjust::Dtype::F32,
                rows: n,
                predictions: Region::whole(&pred_buf),
            })
            .unwrap();
        let copy = CopyBaseline::new(&ctx, n * classes).unwrap();
        let shape = format!("{n}x{classes}");
        let bytes = (n * classes * 4) as u64;
        let mut run = |name: &str, moved: u64, record: &dyn Fn(&mut wgpu::ComputePass<'_>)| {
            group.throughput(Throughput::Bytes(moved));
            group.bench_function(BenchmarkId::new(name, &shape), |b| {
                b.iter_custom(|iters| {
                    let ms = timer.time_pass(iters as usize, record).unwrap();
                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                })
            });
        };
        run("fused", 2 * bytes, &|p| fused.record_in_pass(p));
        run("forward", bytes, &|p| forward.record_in_pass(p));
        run("posthoc16", bytes, &|p| {
            posthoc.record_in_pass(p, &bound_posthoc)
        });
        run("shader-copy", 2 * bytes, &|p| copy.record_copy(p));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
