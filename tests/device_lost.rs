//! A lost device (destroyed, as a driver reset or an unplugged GPU looks to
//! wgpu) is an error value in every host operation, never a panic, whether
//! it is lost before an op is made, between bind and record, or between
//! record and read-back; a new context on the same adapter then works. On
//! every adapter wgpu finds.

use logit_adjust::{
    ClassPrior, Context, Error, LinearTrainer, LossBuffers, LossSpec, Region, TrainConfig,
};

/// The tests here take turns: GL adapters share one EGL context.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn each_adapter(check: impl Fn(&wgpu::Adapter)) {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let adapters = logit_adjust::adapters_from_env();
    assert!(
        !adapters.is_empty(),
        "no GPU adapter found (WGPU_BACKEND={:?}); GPU tests must not pass without one",
        std::env::var("WGPU_BACKEND").ok()
    );
    for adapter in &adapters {
        check(adapter);
    }
}

fn is_lost<T: std::fmt::Debug>(what: &str, r: logit_adjust::Result<T>) {
    assert!(
        matches!(r, Err(Error::DeviceLost(_))),
        "{what}: want Error::DeviceLost, got {r:?}"
    );
}

#[test]
fn every_host_op_on_a_lost_device_is_an_error() {
    each_adapter(|adapter| {
        let ctx = Context::from_adapter(adapter).unwrap();
        let name = ctx.info().name.clone();
        let prior = ClassPrior::from_counts(&[50.0, 5.0, 1.0]).unwrap();
        let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
        let op = ctx.softmax_xent(&spec).unwrap();
        let ph = ctx.posthoc(&prior, &[0.0, 1.0]).unwrap();
        let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 1024,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let logits = Region::new(&buf, 0, 24);
        let labels = Region::new(&buf, 256, 8);
        let bound = op.bind(&LossBuffers::new(logits, labels, 2)).unwrap();
        assert_eq!(ctx.lost(), None, "{name}");

        ctx.device().destroy();
        // Between bind and record: recording and submitting do not panic.
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        op.record(&mut encoder, &bound);
        ctx.queue().submit([encoder.finish()]);
        let x = [0.5f32, -1.0, 2.0, 0.0, 0.0, 1.0];
        is_lost("forward", op.forward(&x, &[0, 2]));
        is_lost("forward_backward", op.forward_backward(&x, &[0, 2]));
        is_lost("bind", op.bind(&LossBuffers::new(logits, labels, 2)));
        is_lost("read_f32", ctx.read_f32(&buf, 0, 4));
        is_lost("predict", ph.predict(&x));
        is_lost("label_histogram", ctx.label_histogram(&[0, 1, 2], 3));
        is_lost("a new loss op", ctx.softmax_xent(&spec));
        is_lost("a new post-hoc op", ctx.posthoc(&prior, &[1.0]));
        let features = [0.0f32, 1.0, 1.0, 0.0, 0.5, 0.5];
        is_lost(
            "a trainer",
            LinearTrainer::new(
                &ctx,
                &spec,
                &features,
                &[0, 1, 2],
                2,
                TrainConfig::default(),
            ),
        );
        assert!(ctx.lost().is_some(), "{name}: the context says it is lost");

        // A new context on the same adapter works.
        let fresh = Context::from_adapter(adapter).unwrap();
        let out = fresh.softmax_xent(&spec).unwrap().forward(&x, &[0, 2]);
        assert!(out.is_ok(), "{name}: a new context: {out:?}");
    });
}
