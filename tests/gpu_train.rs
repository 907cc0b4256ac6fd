//! The GPU trainer: its weight gradient against CPU finite differences, two
//! SGD steps against a CPU implementation, the same seed giving the same
//! bits, and the paper's finding on synthetic data.

mod common;

use common::{balanced_error, contexts, name, Rng};
use logit_adjust::synthetic::{exponential_profile, normal_cdf, GaussianMixture, Rng as DataRng};
use logit_adjust::{reference, ClassPrior, LinearTrainer, LossSpec, Reduction, TrainConfig};

/// The mean loss of `X W` (bias row last) in f64 on the CPU.
fn cpu_loss(spec: &LossSpec, x: &[f32], labels: &[i64], w: &[f64], dim: usize) -> f64 {
    let c = spec.classes();
    let n = labels.len();
    let logits: Vec<f32> = (0..n * c)
        .map(|e| {
            let (i, k) = (e / c, e % c);
            let mut s = w[dim * c + k];
            for d in 0..dim {
                s += x[i * dim + d] as f64 * w[d * c + k];
            }
            s as f32
        })
        .collect();
    reference::forward(spec, &logits, labels)
        .unwrap()
        .loss
        .unwrap()
}

#[test]
fn weight_gradient_matches_finite_differences() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, dim, c) = (40, 5, 4);
    let x: Vec<f32> = (0..n * dim).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let prior = ClassPrior::from_counts(&[20.0, 10.0, 6.0, 4.0]).unwrap();
    for spec in [
        LossSpec::logit_adjusted(&prior, 1.0).unwrap(),
        LossSpec::ldam(&prior),
        LossSpec::balanced(&prior),
    ] {
        let spec = spec.with_reduction(Reduction::WeightedMean);
        let w: Vec<f32> = (0..(dim + 1) * c)
            .map(|_| rng.range(-0.5, 0.5) as f32)
            .collect();
        for ctx in contexts() {
            let mut trainer =
                LinearTrainer::new(ctx, &spec, &x, &labels, dim, TrainConfig::default()).unwrap();
            trainer.set_weights(&w).unwrap();
            let g = trainer.weight_gradient(&x, &labels).unwrap();
            // Central differences in f64 around the same weights. The loss goes
            // through f32 logits, so h is large enough to clear their rounding.
            let h = 1e-2;
            let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            for k in 0..w.len() {
                let (mut plus, mut minus) = (w64.clone(), w64.clone());
                plus[k] += h;
                minus[k] -= h;
                let fd = (cpu_loss(&spec, &x, &labels, &plus, dim)
                    - cpu_loss(&spec, &x, &labels, &minus, dim))
                    / (2.0 * h);
                assert!(
                    (fd - g[k] as f64).abs() < 2e-3 * fd.abs().max(0.1),
                    "{} weight {k}: GPU {} vs finite difference {fd} (seed {seed})",
                    name(ctx),
                    g[k]
                );
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_weights() {
    let mut rng = DataRng::new(Rng::fresh().seed());
    let mixture = GaussianMixture::random(5, 6, 1.0, &mut rng);
    let data = mixture.sample(&[300, 120, 50, 20, 9], &mut rng);
    let prior = ClassPrior::from_counts(&[300.0, 120.0, 50.0, 20.0, 9.0]).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    for ctx in contexts() {
        let config = TrainConfig {
            epochs: 3,
            batch_size: 64,
            seed: 7,
            ..TrainConfig::default()
        };
        let run = |config: &TrainConfig| {
            let mut t = LinearTrainer::new(
                ctx,
                &spec,
                &data.features,
                &data.labels,
                data.dim,
                config.clone(),
            )
            .unwrap();
            t.fit(|_| {}).unwrap();
            t.weights().unwrap()
        };
        let (a, b) = (run(&config), run(&config));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}",
            name(ctx)
        );
        let other = run(&TrainConfig {
            seed: 8,
            ..config.clone()
        });
        assert_ne!(
            a,
            other,
            "{}: the seed changes the shuffle, so the weights",
            name(ctx)
        );
    }
}

#[test]
fn logit_adjustment_beats_erm_on_a_long_tail_and_reaches_bayes_on_two_gaussians() {
    let seed = Rng::fresh().seed();
    let mut rng = DataRng::new(seed);
    let config = TrainConfig {
        epochs: 20,
        batch_size: 256,
        lr: 0.1,
        ..TrainConfig::default()
    };
    let (c, dim) = (10, 16);
    let mixture = GaussianMixture::random(c, dim, 0.75, &mut rng);
    let counts = exponential_profile(c, 5000, 100.0);
    let train = mixture.sample(&counts, &mut rng);
    let test = mixture.sample(&vec![1000; c], &mut rng);
    let prior =
        ClassPrior::from_counts(&counts.iter().map(|&n| n as f64).collect::<Vec<_>>()).unwrap();

    let two = GaussianMixture {
        means: vec![vec![-1.0, -1.0], vec![1.0, 1.0]],
    };
    let train2 = two.sample(&[9500, 500], &mut rng);
    let test2 = two.sample(&[20_000, 20_000], &mut rng);
    let prior2 = ClassPrior::from_counts(&[9500.0, 500.0]).unwrap();
    let bayes2 = normal_cdf(-std::f64::consts::SQRT_2);

    for ctx in contexts() {
        let fit = |spec: &LossSpec,
                   data: &logit_adjust::synthetic::Sample,
                   test: &logit_adjust::synthetic::Sample,
                   c: usize| {
            let mut t = LinearTrainer::new(
                ctx,
                spec,
                &data.features,
                &data.labels,
                data.dim,
                config.clone(),
            )
            .unwrap();
            t.fit(|_| {}).unwrap();
            let logits = t.logits(&test.features).unwrap();
            let uniform = ClassPrior::from_probabilities(&vec![1.0; c]).unwrap();
            (
                balanced_error(ctx, &uniform, 0.0, &logits, &test.labels),
                logits,
            )
        };
        let (erm, erm_logits) = fit(&LossSpec::cross_entropy(c), &train, &test, c);
        let (la, _) = fit(
            &LossSpec::logit_adjusted(&prior, 1.0).unwrap(),
            &train,
            &test,
            c,
        );
        let posthoc = balanced_error(ctx, &prior, 1.0, &erm_logits, &test.labels);
        let what = format!(
            "{} seed={seed}: ERM {erm:.4}, LA {la:.4}, post-hoc {posthoc:.4}",
            name(ctx)
        );
        assert!(la <= 0.8 * erm && posthoc <= 0.8 * erm, "{what}");

        let (la2, _) = fit(
            &LossSpec::logit_adjusted(&prior2, 1.0).unwrap(),
            &train2,
            &test2,
            2,
        );
        assert!(
            (la2 - bayes2).abs() < 0.01,
            "{}: two Gaussians: LA {la2:.4} vs Bayes {bayes2:.4} (seed {seed})",
            name(ctx)
        );
    }
}

#[test]
fn two_sgd_steps_match_a_cpu_implementation() {
    // One batch of all rows, so each epoch is one step whatever the shuffle:
    // W1 = -lr g0; v1 = g0; v2 = m v1 + g1 + wd W1 (no decay on the bias
    // row); W2 = W1 - lr v2, with g = X^T dL/dlogits of the weighted-mean
    // loss from the f64 reference at the f32 logits the GPU would see.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, dim, c) = (96, 5, 4);
    let x: Vec<f32> = (0..n * dim).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let prior = ClassPrior::from_counts(&[40.0, 30.0, 20.0, 6.0]).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: n,
        lr: 0.3,
        momentum: 0.9,
        weight_decay: 0.01,
        seed: 5,
        ..TrainConfig::default()
    };
    let d = dim + 1;
    let gradient = |w: &[f64]| -> Vec<f64> {
        let logits: Vec<f32> = (0..n * c)
            .map(|e| {
                let (i, k) = (e / c, e % c);
                let mut s = w[dim * c + k];
                for j in 0..dim {
                    s += f64::from(x[i * dim + j]) * w[j * c + k];
                }
                s as f32
            })
            .collect();
        let weighted = spec.clone().with_reduction(Reduction::WeightedMean);
        let g = reference::forward_backward(&weighted, &logits, &labels)
            .unwrap()
            .grad
            .unwrap();
        (0..d * c)
            .map(|e| {
                let (j, k) = (e / c, e % c);
                (0..n)
                    .map(|i| {
                        let a = if j == dim {
                            1.0
                        } else {
                            f64::from(x[i * dim + j])
                        };
                        a * g[i * c + k]
                    })
                    .sum()
            })
            .collect()
    };
    let (lr, m, wd) = (
        f64::from(config.lr),
        f64::from(config.momentum),
        f64::from(config.weight_decay),
    );
    let g0 = gradient(&vec![0.0; d * c]);
    let w1: Vec<f64> = g0.iter().map(|g| -lr * g).collect();
    let g1 = gradient(&w1);
    let want: Vec<f64> = (0..d * c)
        .map(|e| {
            let decay = if e / c == dim { 0.0 } else { wd };
            w1[e] - lr * (m * g0[e] + g1[e] + decay * w1[e])
        })
        .collect();
    for ctx in contexts() {
        let mut trainer = LinearTrainer::new(ctx, &spec, &x, &labels, dim, config.clone()).unwrap();
        trainer.fit(|_| {}).unwrap();
        let got = trainer.weights().unwrap();
        let bad = common::worst(&got, &want, |w| 1e-5 + 1e-4 * w.abs());
        assert!(bad.is_none(), "{} seed={seed}: weight {bad:?}", name(ctx));
    }
}

#[test]
fn deferred_re_weighting_switches_alpha_at_its_epoch() {
    // LDAM-DRW on the device: a switch at epoch 1 is training with those
    // weights throughout, bit for bit; a switch after the last epoch
    // changes nothing; a switch in the middle is neither.
    let mut rng = DataRng::new(Rng::fresh().seed());
    let counts = [300.0, 120.0, 50.0, 20.0, 9.0];
    let mixture = GaussianMixture::random(5, 6, 1.0, &mut rng);
    let data = mixture.sample(&[300, 120, 50, 20, 9], &mut rng);
    let prior = ClassPrior::from_counts(&counts).unwrap();
    let ldam = LossSpec::ldam(&prior);
    let weights = logit_adjust::effective_number_weights(&counts, 0.999).unwrap();
    let reweighted = LossSpec::custom(
        ldam.bias().to_vec(),
        ldam.margin().to_vec(),
        weights.clone(),
    )
    .unwrap();
    for ctx in contexts() {
        let run = |spec: &LossSpec, drw: Option<usize>| {
            let config = TrainConfig {
                epochs: 4,
                batch_size: 64,
                seed: 3,
                drw: drw.map(|epoch| logit_adjust::Drw {
                    epoch,
                    weights: weights.clone(),
                }),
                ..TrainConfig::default()
            };
            let mut t =
                LinearTrainer::new(ctx, spec, &data.features, &data.labels, data.dim, config)
                    .unwrap();
            t.fit(|_| {}).unwrap();
            t.weights().unwrap()
        };
        let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let from_start = run(&reweighted, None);
        let plain = run(&ldam, None);
        assert_eq!(
            bits(&run(&ldam, Some(1))),
            bits(&from_start),
            "{}",
            name(ctx)
        );
        assert_eq!(bits(&run(&ldam, Some(5))), bits(&plain), "{}", name(ctx));
        let middle = run(&ldam, Some(3));
        assert_ne!(bits(&middle), bits(&plain), "{}", name(ctx));
        assert_ne!(bits(&middle), bits(&from_start), "{}", name(ctx));
        // A wrong number of weights is refused before training.
        let mut t = LinearTrainer::new(
            ctx,
            &ldam,
            &data.features,
            &data.labels,
            data.dim,
            TrainConfig {
                drw: Some(logit_adjust::Drw {
                    epoch: 2,
                    weights: vec![1.0; 4],
                }),
                ..TrainConfig::default()
            },
        )
        .unwrap();
        assert!(t.fit(|_| {}).is_err(), "{}", name(ctx));
    }
}
