//! What an engine's device looks like: every op on a device opened with
//! WebGPU's default limits (what browsers and most engines request), and a
//! device below what the kernels need refused by `from_wgpu`, naming the
//! limit. On every adapter wgpu finds.

mod common;

use common::{adapters, name, Rng};
use logit_adjust::{
    reference, ClassPrior, Context, LinearTrainer, LossSpec, Reduction, TrainConfig, Variant,
};

/// The tests here take turns: GL adapters share one EGL context, which
/// another thread may hold only for a few seconds.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn device_with(adapter: &wgpu::Adapter, limits: wgpu::Limits) -> (wgpu::Device, wgpu::Queue) {
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("engine"),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("request_device")
}

#[test]
fn every_op_runs_with_webgpu_default_limits() {
    let _turn = turn();
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for adapter in adapters() {
        let (device, queue) = device_with(&adapter, wgpu::Limits::default());
        let ctx = Context::from_wgpu(device, queue, adapter.get_info()).unwrap();
        let what = format!("{} seed={seed}", name(&ctx));
        // Post-hoc first: it must not need the loss's kernels.
        let (n, c) = (300, 20_000);
        let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
        let logits = rng.logits(n * c, 8.0);
        let labels = rng.labels(n, c, 0.1, -100);
        let taus = [0.0, 1.0];
        let pred = ctx
            .posthoc(&prior, &taus)
            .unwrap()
            .predict(&logits)
            .unwrap();
        assert_eq!(
            pred,
            reference::predict(&prior, &taus, &logits).unwrap(),
            "{what}"
        );
        let kept: Vec<i64> = labels.iter().map(|&y| y.max(0)).collect();
        let counts = ctx.class_counts(&kept, c, &pred).unwrap();
        assert_eq!(
            counts,
            reference::class_counts(&kept, c, &pred).unwrap(),
            "{what}"
        );
        // The loss in both layouts (split rows past what one workgroup of
        // 256 threads holds).
        let spec = LossSpec::logit_adjusted(&prior, 1.0)
            .unwrap()
            .with_reduction(Reduction::Mean);
        let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
        for small in [false, true] {
            let (cc, spec, logits, labels, want) = if small {
                let spec = LossSpec::cross_entropy(1000);
                let logits = rng.logits(n * 1000, 8.0);
                let labels = rng.labels(n, 1000, 0.1, -100);
                let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
                (1000, spec, logits, labels, want)
            } else {
                (
                    c,
                    spec.clone(),
                    logits.clone(),
                    labels.clone(),
                    want.clone(),
                )
            };
            // The generic layout for this C, and what the plan picks: the
            // same on GPUs, the segments layout on CPU adapters.
            let generic = if cc == c {
                Variant::Split
            } else {
                Variant::Rows
            };
            let cpu = ctx.info().device_type == wgpu::DeviceType::Cpu;
            let auto = ctx
                .softmax_xent(&spec)
                .unwrap()
                .resolved_variant(n)
                .unwrap();
            assert_eq!(
                auto,
                if cpu { Variant::Segments } else { generic },
                "{what} C={cc}"
            );
            for layout in [Variant::Auto, generic] {
                let op = ctx.softmax_xent(&spec).unwrap().with_variant(layout);
                let got = op.forward_backward(&logits, &labels).unwrap();
                let loss = want.loss.unwrap();
                assert!(
                    (f64::from(got.loss.unwrap()) - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                    "{what} C={cc} {layout:?}: loss {:?} against {loss}",
                    got.loss
                );
            }
        }
        // The trainer: a few epochs, the loss going down.
        let x: Vec<f32> = (0..400 * 4)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0)
            .collect();
        let y: Vec<i64> = (0..400).map(|i| (i % 3) as i64).collect();
        let config = TrainConfig {
            epochs: 3,
            ..TrainConfig::default()
        };
        let mut trainer =
            LinearTrainer::new(&ctx, &LossSpec::cross_entropy(3), &x, &y, 4, config).unwrap();
        let mut losses = Vec::new();
        trainer.fit(|p| losses.push(p.loss)).unwrap();
        assert!(losses.iter().all(|l| l.is_finite()), "{what}: {losses:?}");
    }
}

#[test]
fn a_device_below_the_kernels_needs_is_refused_by_name() {
    let _turn = turn();
    for adapter in adapters() {
        let (device, queue) = device_with(&adapter, wgpu::Limits::downlevel_defaults());
        let err = Context::from_wgpu(device, queue, adapter.get_info()).unwrap_err();
        assert!(
            matches!(err, logit_adjust::Error::UnsupportedAdapter(_))
                && err.to_string().contains("storage buffers"),
            "{err}"
        );
    }
}

#[test]
fn context_and_ops_are_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<Context>();
    both::<logit_adjust::SoftmaxXent>();
    both::<logit_adjust::BoundLoss>();
    both::<logit_adjust::PostHoc>();
}
