//! Test priors: an unknown one estimated by EM on the GPU and on the CPU
//! reference from logits whose posteriors are known, and a known one used in
//! the correction `f - tau log pi_train + tau log pi_test`.

mod common;

use common::{contexts, name, Rng};
use logit_adjust::synthetic::{exponential_profile, GaussianMixture, Rng as DataRng, Sample};
use logit_adjust::{reference, ClassPrior, EmOptions, Error, PostHoc};

/// A mixture, its long-tailed training prior, and a test set of `n` rows
/// drawn from a different prior (the tail reversed), with the Bayes logits
/// under the training prior (softmax = the true training posterior).
struct Shifted {
    train: ClassPrior,
    test_prior: Vec<f64>,
    test: Sample,
    logits: Vec<f32>,
}

/// `spread`: how far apart the class means are (standard deviations): EM's
/// own error shrinks with it, what a known prior can correct grows as it
/// falls.
fn shifted(seed: u64, n: usize, spread: f64) -> Shifted {
    let c = 6;
    let mut rng = DataRng::new(seed);
    let mixture = GaussianMixture::random(c, 6, spread, &mut rng);
    let counts: Vec<f64> = exponential_profile(c, 1000, 50.0)
        .iter()
        .map(|&k| k as f64)
        .collect();
    let train = ClassPrior::from_counts(&counts).unwrap();
    // The test prior: the training tail reversed, less steep.
    let raw: Vec<f64> = (0..c).map(|k| 1.0 + k as f64).collect();
    let total: f64 = raw.iter().sum();
    let test_counts: Vec<usize> = raw
        .iter()
        .map(|r| (n as f64 * r / total).round() as usize)
        .collect();
    let m: usize = test_counts.iter().sum();
    let test_prior = test_counts.iter().map(|&k| k as f64 / m as f64).collect();
    let test = mixture.sample(&test_counts, &mut rng);
    let logits = mixture.bayes_logits(&test.features, train.probabilities());
    Shifted {
        train,
        test_prior,
        test,
        logits,
    }
}

fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>()
}

#[test]
fn em_recovers_a_shifted_prior_on_the_gpu_and_the_cpu() {
    let seed = Rng::fresh().seed();
    let s = shifted(seed, 20_000, 2.0);
    let cpu = reference::estimate_test_prior(&s.logits, &s.train, EmOptions::default()).unwrap();
    let tv = total_variation(&cpu.prior, &s.test_prior);
    assert!(
        cpu.converged && tv <= 0.02,
        "seed {seed}: CPU TV {tv}, {cpu:?}"
    );
    let start = total_variation(s.train.probabilities(), &s.test_prior);
    assert!(start > 0.3, "seed {seed}: the shift is large ({start})");
    for ctx in contexts() {
        let what = format!("{} (seed {seed})", name(ctx));
        let gpu = ctx
            .estimate_test_prior(&s.logits, &s.train, EmOptions::default())
            .unwrap();
        let tv = total_variation(&gpu.prior, &s.test_prior);
        assert!(gpu.converged && tv <= 0.02, "{what}: GPU TV {tv}, {gpu:?}");
        // f32 sums against f64 ones: the same fixed point to about 1e-5.
        let apart = total_variation(&gpu.prior, &cpu.prior);
        assert!(apart <= 1e-4, "{what}: GPU and CPU {apart} apart");
        assert!(
            gpu.iterations.abs_diff(cpu.iterations) <= 3,
            "{what}: {} and {} iterations",
            gpu.iterations,
            cpu.iterations
        );
    }
}

#[test]
fn em_takes_rows_past_one_workgroup_and_a_single_class() {
    for ctx in contexts() {
        let what = name(ctx);
        // One class: the estimate is 1 at once.
        let one = ClassPrior::from_counts(&[5.0]).unwrap();
        let e = ctx
            .estimate_test_prior(&[0.5; 70], &one, EmOptions::default())
            .unwrap();
        assert_eq!(e.prior, vec![1.0], "{what}");
        // 70,001 rows (more than one group's share, a ragged last block).
        let s = shifted(3, 70_001, 2.0);
        let gpu = ctx
            .estimate_test_prior(&s.logits, &s.train, EmOptions::default())
            .unwrap();
        let cpu =
            reference::estimate_test_prior(&s.logits, &s.train, EmOptions::default()).unwrap();
        assert!(
            total_variation(&gpu.prior, &cpu.prior) <= 1e-4,
            "{what}: {gpu:?} {cpu:?}"
        );
    }
}

#[test]
fn em_refuses_what_it_cannot_use() {
    let prior = ClassPrior::from_counts(&[3.0, 1.0]).unwrap();
    for ctx in contexts() {
        let what = name(ctx);
        let bad = |logits: &[f32], o: EmOptions| ctx.estimate_test_prior(logits, &prior, o);
        let o = EmOptions::default();
        assert!(
            matches!(bad(&[0.0, f32::INFINITY], o), Err(Error::NonFinite { .. })),
            "{what}"
        );
        assert!(
            matches!(bad(&[0.0, f32::NAN], o), Err(Error::NonFinite { .. })),
            "{what}"
        );
        assert!(
            matches!(bad(&[0.0, 1.0, 2.0], o), Err(Error::ShapeMismatch { .. })),
            "{what}"
        );
        assert!(
            matches!(bad(&[], o), Err(Error::InvalidArgument(_))),
            "{what}"
        );
        let none = EmOptions {
            max_iterations: 0,
            ..o
        };
        assert!(
            matches!(bad(&[0.0, 1.0], none), Err(Error::InvalidArgument(_))),
            "{what}"
        );
    }
}

#[test]
fn a_known_test_prior_beats_the_balanced_correction_on_its_own_test_set() {
    let seed = Rng::fresh().seed();
    let s = shifted(seed, 6_000, 1.0);
    let test = ClassPrior::from_probabilities(&s.test_prior).unwrap();
    let accuracy = |pred: &[u32]| {
        pred.iter()
            .zip(&s.test.labels)
            .filter(|(&p, &y)| p as i64 == y)
            .count() as f64
            / pred.len() as f64
    };
    let want =
        reference::predict_for_test_prior(&s.train, Some(&test), &[0.0, 1.0], &s.logits).unwrap();
    for ctx in contexts() {
        let what = format!("{} (seed {seed})", name(ctx));
        let shifted = PostHoc::for_test_prior(ctx, &s.train, Some(&test), &[0.0, 1.0])
            .unwrap()
            .predict(&s.logits)
            .unwrap();
        assert_eq!(
            shifted, want,
            "{what}: the GPU's predictions are the reference's"
        );
        let balanced = ctx
            .posthoc(&s.train, &[1.0])
            .unwrap()
            .predict(&s.logits)
            .unwrap();
        let (a_shift, a_bal, a_none) = (
            accuracy(&shifted.by_tau[1]),
            accuracy(&balanced.by_tau[0]),
            accuracy(&shifted.by_tau[0]),
        );
        assert!(
            a_shift > a_bal && a_shift > a_none,
            "{what}: accuracy {a_shift} with the test prior, {a_bal} balanced, {a_none} uncorrected"
        );
    }
    // Classes must match.
    let three = ClassPrior::from_counts(&[1.0, 2.0, 3.0]).unwrap();
    assert!(matches!(
        reference::predict_for_test_prior(&s.train, Some(&three), &[1.0], &s.logits),
        Err(Error::ShapeMismatch { .. })
    ));
}
