//! The options engines ask for, against the f64 reference on every adapter
//! and every layout that takes them: a logit scale `s`
//! (`z = s (f + b - m [c = y])`, LDAM's s = 30) and the z-loss
//! `lambda LSE^2`, in the fused run and the backward from the saved LSE,
//! with ignored labels, smoothing and every reduction; and the bad values
//! refused.

mod common;

use common::{contexts, max_abs, name, worst, Rng};
use logit_adjust::{reference, ClassPrior, Context, LossSpec, Reduction, Upstream, Variant};

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
    } = case;
    let prior = ClassPrior::from_counts(&rng.counts(c, 50.0)).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0)
        .unwrap()
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
    let big = max_abs(g);
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
            });
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
