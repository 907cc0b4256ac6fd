//! The CPU reference checked against itself: a finite-difference check of
//! its gradient, hand-computed values, and every input error.

mod common;

use common::Rng;
use logit_adjust::{reference, ClassPrior, Error, LossSpec, Reduction, Upstream};

/// Logits on a 1/1024 grid, so `f +- h` with `h = 2^-8` is exact in f32.
fn grid_logits(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.range(-4.0, 4.0) * 1024.0).round() as f32 / 1024.0)
        .collect()
}

#[test]
fn gradient_matches_central_differences() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (4, 6);
    let h = 1.0 / 256.0;
    for reduction in [
        Reduction::None,
        Reduction::Sum,
        Reduction::Mean,
        Reduction::WeightedMean,
    ] {
        for eps in [0.0f32, 0.2] {
            let b: Vec<f32> = (0..c).map(|_| rng.range(-2.0, 0.0) as f32).collect();
            let m: Vec<f32> = (0..c).map(|_| rng.range(0.0, 0.5) as f32).collect();
            let a: Vec<f32> = (0..c).map(|_| rng.range(0.2, 3.0) as f32).collect();
            let spec = LossSpec::custom(b, m, a)
                .unwrap()
                .with_reduction(reduction)
                .with_label_smoothing(eps);
            let logits = grid_logits(&mut rng, n * c);
            let labels = [0i64, 5, -100, 2];
            let g_rows: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
            let upstream = if reduction == Reduction::None {
                Upstream::PerRow(&g_rows)
            } else {
                Upstream::Scalar(0.75)
            };
            // The scalar the gradient differentiates: g * loss, or sum_i g_i l_i.
            let objective = |f: &[f32]| -> f64 {
                let out = reference::forward(&spec, f, &labels).unwrap();
                match upstream {
                    Upstream::Scalar(g) => g as f64 * out.loss.unwrap(),
                    Upstream::PerRow(g) => {
                        out.per_row.iter().zip(g).map(|(l, &g)| l * g as f64).sum()
                    }
                }
            };
            let grad = reference::forward_backward_scaled(&spec, &logits, &labels, upstream)
                .unwrap()
                .grad
                .unwrap();
            for k in 0..n * c {
                let mut plus = logits.clone();
                let mut minus = logits.clone();
                plus[k] += h;
                minus[k] -= h;
                let fd = (objective(&plus) - objective(&minus)) / (2.0 * h as f64);
                assert!(
                    (fd - grad[k]).abs() < 1e-5,
                    "{reduction:?} eps={eps} element {k}: analytic {} vs finite difference {fd} (seed {seed})",
                    grad[k]
                );
            }
        }
    }
}

#[test]
fn hand_computed_two_class_case() {
    // f = [0, 0], prior = [0.8, 0.2], tau = 1, y = 1:
    // z = [ln 0.8, ln 0.2], l = -ln softmax(z)_1 = -ln 0.2.
    let prior = ClassPrior::from_probabilities(&[0.8, 0.2]).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    let out = reference::forward_backward(&spec, &[0.0, 0.0], &[1]).unwrap();
    let want = -(0.2f32 as f64).ln();
    assert!((out.loss.unwrap() - want).abs() < 1e-6, "{out:?}");
    let g = out.grad.unwrap();
    assert!(
        (g[0] - 0.8).abs() < 1e-6 && (g[1] + 0.8).abs() < 1e-6,
        "{g:?}"
    );
    // tau = 0 is plain cross-entropy: ln 2.
    let ce = LossSpec::logit_adjusted(&prior, 0.0).unwrap();
    let out = reference::forward(&ce, &[0.0, 0.0], &[1]).unwrap();
    assert!((out.loss.unwrap() - 2f64.ln()).abs() < 1e-12);
}

#[test]
fn one_class_has_zero_loss_and_gradient() {
    let spec = LossSpec::cross_entropy(1).with_label_smoothing(0.3);
    let out = reference::forward_backward(&spec, &[123.0, -5.0], &[0, 0]).unwrap();
    assert_eq!(out.per_row, vec![0.0, 0.0]);
    assert!(out.grad.unwrap().iter().all(|&g| g == 0.0));
}

#[test]
fn bad_inputs_are_named_errors() {
    let spec = LossSpec::cross_entropy(3);
    let f = [0.0f32; 6];
    let e = reference::forward(&spec, &f, &[0, 3]).unwrap_err();
    assert_eq!(
        e,
        Error::LabelOutOfRange {
            row: 1,
            label: 3,
            classes: 3,
            ignore_index: Some(logit_adjust::DEFAULT_IGNORE_INDEX),
        }
    );
    assert!(e.to_string().contains("label out of range"));
    assert!(e.to_string().contains("or the ignore index -100"), "{e}");
    let e = reference::forward(&spec, &f, &[0, -1]).unwrap_err();
    assert!(matches!(e, Error::LabelOutOfRange { label: -1, .. }), "{e}");
    let e = reference::forward(&spec, &f[..5], &[0, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeMismatch {
                expected: 6,
                got: 5,
                ..
            }
        ),
        "{e}"
    );
    let e = reference::forward(&spec, &[0.0, f32::NAN, 0.0], &[0]).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 1, .. }), "{e}");
    let e = reference::forward(&spec.clone().with_label_smoothing(1.0), &f, &[0, 1]).unwrap_err();
    assert!(e.to_string().contains("label smoothing"), "{e}");
    let g = [1.0f32; 2];
    let e =
        reference::forward_backward_scaled(&spec, &f, &[0, 1], Upstream::PerRow(&g)).unwrap_err();
    assert!(e.to_string().contains("reduction none"), "{e}");
    let none = spec.clone().with_reduction(Reduction::None);
    let e = reference::forward_backward_scaled(&none, &f, &[0, 1], Upstream::PerRow(&g[..1]))
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = LossSpec::custom(vec![0.0; 3], vec![0.0; 2], vec![1.0; 3]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = LossSpec::custom(vec![0.0, f32::NEG_INFINITY], vec![0.0; 2], vec![1.0; 2]).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
}

#[test]
fn priors_reject_what_has_no_finite_log() {
    let zero = ClassPrior::from_counts(&[10.0, 0.0, 3.0]).unwrap_err();
    assert!(
        matches!(zero, Error::InvalidPrior { class: 1, .. }),
        "{zero}"
    );
    assert!(zero.to_string().contains("smoothing"), "{zero}");
    let smoothed = ClassPrior::from_counts_smoothed(&[10.0, 0.0, 3.0], 1.0).unwrap();
    let p = smoothed.probabilities();
    assert!((p[1] - 1.0 / 16.0).abs() < 1e-15 && (p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        assert!(matches!(
            ClassPrior::from_counts(&[1.0, bad]),
            Err(Error::InvalidPrior { class: 1, .. })
        ));
        assert!(matches!(
            ClassPrior::from_probabilities(&[0.5, bad]),
            Err(Error::InvalidPrior { class: 1, .. })
        ));
    }
    assert!(matches!(
        ClassPrior::from_probabilities(&[0.5, 0.0]),
        Err(Error::InvalidPrior { class: 1, .. })
    ));
    assert!(ClassPrior::from_counts(&[]).is_err());
    let from_labels = ClassPrior::from_labels(&[0, 1, 1, 2, 2, 2], 3).unwrap();
    assert_eq!(from_labels.counts(), Some(&[1.0, 2.0, 3.0][..]));
    assert!(matches!(
        ClassPrior::from_labels(&[0, 3], 3),
        Err(Error::LabelOutOfRange { row: 1, .. })
    ));
    let tiny = ClassPrior::from_probabilities(&[1e-30, 1.0]).unwrap();
    assert!(tiny.log_prior().iter().all(|l| l.is_finite()));
}
