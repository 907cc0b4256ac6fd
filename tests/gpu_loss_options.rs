//! The options engines ask for, against the f64 reference on every adapter
//! and every layout that takes them: a logit scale `s`
//! (`z = s (f + b - m [c = y])`, LDAM's s = 30) and the z-loss
//! `lambda LSE^2`, in the fused run and the backward from the saved LSE,
//! with ignored labels, smoothing and every reduction; and the bad values
//! refused.

mod common;

use common::{contexts, max_abs, name, worst, Rng};
use logit_adjust::{
    reference, ClassPrior, Context, LossSpec, Reduction, Smoothing, Upstream, Variant,
};

/// The layouts that resolve for `op`'s spec on this context (the CPU
/// adapters' own layouts take neither option, so they drop out).
fn variants(ctx: &Context, spec: &LossSpec, n: usize) -> Vec<Variant> {
    [
        Variant::Auto,
        Variant::Rows,
        Variant::Split,
        Variant::Segments,
        Variant::RowGroups,
    ]
    .into_iter()
    .filter(|&v| {
        ctx.softmax_xent(spec)
            .unwrap()
            .with_variant(v)
            .resolved_variant(n)
            .is_ok()
    })
    .collect()
}

struct Case {
    n: usize,
    c: usize,
    s: f32,
    lambda: f32,
    reduction: Reduction,
    smoothing: f32,
    /// Non-uniform class weights, smoothing weighted per class (PyTorch's).
    per_class: bool,
}

fn check(case: Case) {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let Case {
        n,
        c,
        s,
        lambda,
        reduction,
        smoothing,
        per_class,
    } = case;
    let prior = ClassPrior::from_counts(&rng.counts(c, 50.0)).unwrap();
    let mut spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    if per_class {
        let weights = (0..c).map(|_| rng.range(0.2, 3.0) as f32).collect();
        spec = LossSpec::custom(spec.bias().to_vec(), spec.margin().to_vec(), weights)
            .unwrap()
            .with_smoothing_convention(Smoothing::PerClass);
    }
    let spec = spec
        .with_reduction(reduction)
        .with_label_smoothing(smoothing)
        .with_logit_scale(s)
        .with_z_loss(lambda);
    let logits = rng.logits(n * c, 4.0);
    let labels = rng.labels(n, c, 0.2, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    let g = want.grad.as_ref().unwrap();
    // f32 rounding of z (|z| up to max_z) carries into LSE and every p_c.
    let max_z = f64::from(s) * (4.0 + max_abs(&prior.log_prior()) + 1.0);
    let big = max_abs(g).max(if per_class {
        3.0 * f64::from(smoothing) / c as f64
    } else {
        0.0
    });
    let loss_tol =
        |r: f64| 1e-5 * r.abs().max(1.0) + 4e-7 * max_z * (1.0 + 2.0 * f64::from(lambda) * max_z);
    let grad_tol = |_: f64| 1e-6 + 1e-5 * big + 4e-7 * max_z * big;
    for ctx in contexts() {
        for variant in variants(ctx, &spec, n) {
            let what = format!(
                "{} {variant:?} {n}x{c} s={s} lambda={lambda} {reduction:?} eps={smoothing} seed={seed}",
                name(ctx)
            );
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let got = op.forward_backward(&logits, &labels).unwrap();
            if let (Some(gl), Some(wl)) = (got.loss, want.loss) {
                assert!(
                    (f64::from(gl) - wl).abs() <= loss_tol(wl),
                    "{what}: loss {gl} vs {wl}"
                );
            }
            assert_eq!(got.loss.is_some(), want.loss.is_some(), "{what}");
            if let Some((i, gv, wv)) = worst(&got.per_row, &want.per_row, loss_tol) {
                panic!("{what}: per-row loss [{i}] = {gv}, reference {wv}");
            }
            if let Some((i, gv, wv)) = worst(&got.lse, &want.lse, loss_tol) {
                panic!("{what}: LSE [{i}] = {gv}, reference {wv}");
            }
            if let Some((i, gv, wv)) = worst(got.grad.as_ref().unwrap(), g, grad_tol) {
                panic!("{what}: grad [{i}] (row {}) = {gv}, reference {wv}", i / c);
            }
            // The backward from the saved LSE, as an autodiff engine calls it.
            let from_lse = op
                .backward(&logits, &labels, &got.lse, Upstream::default())
                .unwrap();
            let lse_ulps = 4e-7 * max_abs(&want.lse) * big * (1.0 + 2.0 * f64::from(lambda));
            if let Some((i, gv, wv)) = worst(&from_lse, g, |w| grad_tol(w) + lse_ulps) {
                panic!("{what}: backward from LSE [{i}] = {gv}, reference {wv}");
            }
        }
    }
}

#[test]
fn a_logit_scale_matches_the_reference() {
    for (k, (n, c)) in [(67, 1), (67, 10), (9, 1000), (3, 40_000)]
        .into_iter()
        .enumerate()
    {
        for s in [0.5, 30.0] {
            check(Case {
                n,
                c,
                s,
                lambda: 0.0,
                reduction: [Reduction::Mean, Reduction::Sum, Reduction::WeightedMean][k % 3],
                smoothing: [0.0, 0.1][k % 2],
                per_class: false,
            });
        }
    }
}

#[test]
fn the_z_loss_matches_the_reference() {
    for (k, (n, c)) in [(67, 1), (67, 10), (9, 1000), (3, 40_000)]
        .into_iter()
        .enumerate()
    {
        for lambda in [1e-4, 0.1] {
            check(Case {
                n,
                c,
                s: [1.0, 30.0][k % 2],
                lambda,
                reduction: [Reduction::Mean, Reduction::None, Reduction::Sum][k % 3],
                smoothing: [0.1, 0.0][k % 2],
                per_class: false,
            });
        }
    }
}

#[test]
fn pytorch_weighted_smoothing_matches_the_reference() {
    for (k, (n, c)) in [(67, 1), (67, 10), (9, 1000), (3, 40_000)]
        .into_iter()
        .enumerate()
    {
        for reduction in [Reduction::WeightedMean, Reduction::Sum, Reduction::None] {
            check(Case {
                n,
                c,
                s: [1.0, 30.0][k % 2],
                lambda: [0.0, 1e-4][k % 2],
                reduction,
                smoothing: 0.1,
                per_class: true,
            });
        }
    }
}

#[test]
fn the_two_smoothing_conventions_agree_when_the_weights_are_uniform() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (40, 13);
    let logits = rng.logits(n * c, 4.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let base = LossSpec::custom(vec![0.0; c], vec![0.0; c], vec![2.5; c])
        .unwrap()
        .with_label_smoothing(0.2)
        .with_reduction(Reduction::WeightedMean);
    let pytorch = base.clone().with_smoothing_convention(Smoothing::PerClass);
    let a = reference::forward_backward(&base, &logits, &labels).unwrap();
    let b = reference::forward_backward(&pytorch, &logits, &labels).unwrap();
    assert!(
        (a.loss.unwrap() - b.loss.unwrap()).abs() < 1e-12,
        "seed={seed}"
    );
    for ctx in contexts() {
        let x = ctx
            .softmax_xent(&base)
            .unwrap()
            .forward_backward(&logits, &labels)
            .unwrap();
        let y = ctx
            .softmax_xent(&pytorch)
            .unwrap()
            .forward_backward(&logits, &labels)
            .unwrap();
        let what = format!("{} seed={seed}", name(ctx));
        assert!((x.loss.unwrap() - y.loss.unwrap()).abs() <= 1e-5, "{what}");
        for (g, h) in x.grad.unwrap().iter().zip(y.grad.unwrap()) {
            assert!((g - h).abs() <= 1e-6, "{what}: {g} vs {h}");
        }
    }
}

#[test]
fn the_scale_scales_the_logits_and_the_z_loss_adds_lse_squared() {
    // Independent of the reference: with b = m = 0, s on f is s f with
    // s = 1, and the gradient with respect to f is s times that with
    // respect to s f; the z-loss adds lambda LSE^2 to each row's loss.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c, s, lambda) = (33, 17, 3.0f32, 0.01f32);
    let logits = rng.logits(n * c, 3.0);
    let scaled: Vec<f32> = logits.iter().map(|&x| x * s).collect();
    let labels = rng.labels(n, c, 0.0, -100);
    let base = LossSpec::cross_entropy(c).with_reduction(Reduction::Sum);
    for ctx in contexts() {
        let what = format!("{} seed={seed}", name(ctx));
        let with_s = ctx
            .softmax_xent(&base.clone().with_logit_scale(s))
            .unwrap()
            .forward_backward(&logits, &labels)
            .unwrap();
        let plain = ctx
            .softmax_xent(&base)
            .unwrap()
            .forward_backward(&scaled, &labels)
            .unwrap();
        for (i, (a, b)) in with_s.per_row.iter().zip(&plain.per_row).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{what}: row {i}: {a} vs {b}"
            );
        }
        let (ga, gb) = (with_s.grad.unwrap(), plain.grad.unwrap());
        for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
            assert!(
                (a - s * b).abs() <= 1e-5,
                "{what}: grad [{i}]: {a} vs s * {b}"
            );
        }
        let z = ctx
            .softmax_xent(&base.clone().with_z_loss(lambda))
            .unwrap()
            .forward(&scaled, &labels)
            .unwrap();
        for i in 0..n {
            let want = plain.per_row[i] + lambda * plain.lse[i] * plain.lse[i];
            assert!(
                (z.per_row[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{what}: row {i}"
            );
        }
    }
}

#[test]
fn a_bad_scale_or_z_loss_is_refused() {
    let spec = LossSpec::cross_entropy(4);
    for (bad, expect) in [
        (spec.clone().with_logit_scale(0.0), "logit scale"),
        (spec.clone().with_logit_scale(f32::NAN), "logit scale"),
        (spec.clone().with_logit_scale(-1.0), "logit scale"),
        (spec.clone().with_z_loss(-1e-4), "z-loss"),
        (spec.clone().with_z_loss(f32::INFINITY), "z-loss"),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
        for ctx in contexts() {
            let err = ctx.softmax_xent(&bad).unwrap_err().to_string();
            assert!(err.contains(expect), "{}: {err}", name(ctx));
        }
        let err = reference::forward(&bad, &[0.0; 4], &[1])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "reference: {err}");
    }
}

/// Read `len` f32 of `buffer` back.
fn read_f32(ctx: &Context, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    let stage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (4 * len) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &stage, 0, (4 * len) as u64);
    ctx.queue().submit([encoder.finish()]);
    stage
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let out = bytemuck::pod_collect_to_vec(&stage.slice(..).get_mapped_range().unwrap());
    out
}

#[test]
fn class_vectors_change_on_the_device_without_a_new_op() {
    // LDAM-DRW: the same op, alpha switched to effective-number weights
    // mid-training. A run bound before the switch computes the new loss.
    use wgpu::util::DeviceExt;
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for (n, c) in [(40, 7), (5, 20_000)] {
        let counts = rng.counts(c, 100.0);
        let prior = ClassPrior::from_counts(&counts).unwrap();
        let before = LossSpec::ldam(&prior).with_reduction(Reduction::WeightedMean);
        let alpha = logit_adjust::effective_number_weights(&counts, 0.999).unwrap();
        let after = LossSpec::custom(
            before.bias().to_vec(),
            before.margin().to_vec(),
            alpha.clone(),
        )
        .unwrap()
        .with_reduction(Reduction::WeightedMean);
        let logits = rng.logits(n * c, 5.0);
        let labels = rng.labels(n, c, 0.1, -100);
        let want = reference::forward_backward(&after, &logits, &labels).unwrap();
        let big = max_abs(want.grad.as_ref().unwrap());
        for ctx in contexts() {
            let what = format!("{} {n}x{c} seed={seed}", name(ctx));
            let mut op = ctx.softmax_xent(&before).unwrap();
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
            let init = |bytes: &[u8]| {
                ctx.device()
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: bytes,
                        usage,
                    })
            };
            let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let (lb, yb) = (
                init(bytemuck::cast_slice(&logits)),
                init(bytemuck::cast_slice(&labels32)),
            );
            let (gb, loss_b) = (init(&vec![0xff; 4 * n * c]), init(&[0xff; 4]));
            let bound = op
                .bind(&logit_adjust::LossBuffers {
                    grad: logit_adjust::GradOutput::Separate(logit_adjust::Region::whole(&gb)),
                    loss: Some(logit_adjust::Region::whole(&loss_b)),
                    ..logit_adjust::LossBuffers::new(
                        logit_adjust::Region::whole(&lb),
                        logit_adjust::Region::whole(&yb),
                        n,
                    )
                })
                .unwrap();
            // A wrong length is refused and changes nothing.
            let err = op
                .set_class_vectors(vec![0.0; c + 1], vec![0.0; c + 1], vec![1.0; c + 1])
                .unwrap_err();
            assert!(err.to_string().contains("classes"), "{what}: {err}");
            assert_eq!(op.spec(), &before);
            op.set_class_vectors(
                after.bias().to_vec(),
                after.margin().to_vec(),
                alpha.clone(),
            )
            .unwrap();
            assert_eq!(op.spec().weight(), &alpha[..]);
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            op.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let loss = read_f32(ctx, &loss_b, 1)[0];
            let w = want.loss.unwrap();
            assert!(
                (f64::from(loss) - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}: loss {loss} vs {w}"
            );
            let grad = read_f32(ctx, &gb, n * c);
            if let Some((i, g, r)) =
                worst(&grad, want.grad.as_ref().unwrap(), |_| 1e-6 + 1e-5 * big)
            {
                panic!("{what}: grad [{i}] = {g}, reference {r}");
            }
            // And the host path of the same op.
            let host = op.forward_backward(&logits, &labels).unwrap();
            assert!(
                (f64::from(host.loss.unwrap()) - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}"
            );
        }
    }
}

#[test]
fn effective_number_weights_follow_cui_et_al() {
    // w_c = (1 - beta) / (1 - beta^n_c), scaled to sum to C.
    let counts = [1000.0, 100.0, 10.0, 1.0];
    let w = logit_adjust::effective_number_weights(&counts, 0.999).unwrap();
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n: &f64| (1.0 - 0.999) / (1.0 - 0.999f64.powf(n)))
        .collect();
    let sum: f64 = raw.iter().sum();
    for (k, (&got, r)) in w.iter().zip(&raw).enumerate() {
        let want = r / sum * 4.0;
        assert!(
            (f64::from(got) - want).abs() <= 1e-6 * want,
            "class {k}: {got} vs {want}"
        );
    }
    assert!(
        w.windows(2).all(|p| p[0] < p[1]),
        "rarer classes weigh more: {w:?}"
    );
    for bad in [[1.0, 0.0, 2.0, 3.0], [1.0, f64::NAN, 2.0, 3.0]] {
        assert!(logit_adjust::effective_number_weights(&bad, 0.999).is_err());
    }
    assert!(logit_adjust::effective_number_weights(&counts, 1.0).is_err());
}
