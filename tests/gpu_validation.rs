//! The trainer's validation set: each evaluation against a host count of the
//! same weights' logits, the kept weights against a run stopped at that
//! epoch (bit for bit), which epochs are evaluated and counted, and bad
//! validation sets refused.

mod common;

use common::{contexts, name, Rng};
use logit_adjust::synthetic::{GaussianMixture, Rng as DataRng, Sample};
use logit_adjust::{ClassPrior, Context, Error, LinearTrainer, LossSpec, TrainConfig};

/// A long-tailed training set, a balanced validation set, the loss.
fn problem(seed: u64) -> (Sample, Sample, LossSpec) {
    let mut rng = DataRng::new(seed);
    let mixture = GaussianMixture::random(5, 6, 0.8, &mut rng);
    let counts = [300, 120, 50, 20, 9];
    let train = mixture.sample(&counts, &mut rng);
    let val = mixture.sample(&[30; 5], &mut rng);
    let prior = ClassPrior::from_counts(&counts.map(|n| n as f64)).unwrap();
    (train, val, LossSpec::logit_adjusted(&prior, 1.0).unwrap())
}

fn trainer(ctx: &Context, data: &Sample, spec: &LossSpec, config: &TrainConfig) -> LinearTrainer {
    LinearTrainer::new(
        ctx,
        spec,
        &data.features,
        &data.labels,
        data.dim,
        config.clone(),
    )
    .unwrap()
}

/// The balanced error of `logits` on `labels`, on the host: first maximum,
/// recalls in f64 over the classes present, in class order.
fn host_balanced_error(logits: &[f32], labels: &[i64], c: usize) -> f64 {
    let mut total = vec![0u64; c];
    let mut correct = vec![0u64; c];
    for (row, &y) in logits.chunks(c).zip(labels) {
        let mut best = 0;
        for k in 1..c {
            if row[k] > row[best] {
                best = k;
            }
        }
        total[y as usize] += 1;
        correct[y as usize] += u64::from(best == y as usize);
    }
    let recalls: Vec<f64> = total
        .iter()
        .zip(&correct)
        .filter(|(&n, _)| n > 0)
        .map(|(&n, &k)| k as f64 / n as f64)
        .collect();
    1.0 - recalls.iter().sum::<f64>() / recalls.len() as f64
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn each_evaluation_equals_a_host_count_of_that_epochs_logits() {
    let seed = Rng::fresh().seed();
    let (train, val, spec) = problem(seed);
    let config = TrainConfig {
        epochs: 8,
        batch_size: 64,
        seed: 3,
        warmup: Some(0),
        ..TrainConfig::default()
    };
    for ctx in contexts() {
        let what = format!("{} (seed {seed})", name(ctx));
        let mut validated = trainer(ctx, &train, &spec, &config)
            .with_validation(&val.features, &val.labels)
            .unwrap();
        let report = validated.fit(|_| {}).unwrap();
        // The same run, one epoch at a time, the logits read back after each.
        let mut stepped = trainer(ctx, &train, &spec, &config);
        for record in &report.curve {
            stepped.epoch().unwrap();
            let logits = stepped.logits(&val.features).unwrap();
            let want = host_balanced_error(&logits, &val.labels, 5);
            assert_eq!(
                record.validation_balanced_error,
                Some(want),
                "{what}: epoch {}",
                record.epoch
            );
        }
        assert_eq!(report.curve.len(), 8, "{what}: no patience, every epoch");
        let (epoch, best) = report.best.unwrap();
        let lowest = report
            .curve
            .iter()
            .filter_map(|r| r.validation_balanced_error)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best, lowest, "{what}");
        let first_of_equals = report
            .curve
            .iter()
            .find(|r| r.validation_balanced_error == Some(lowest))
            .unwrap()
            .epoch;
        assert_eq!(
            epoch, first_of_equals,
            "{what}: the earliest of equals is kept"
        );
        // What the trainer now holds is the kept evaluation's weights.
        assert_eq!(
            validated.validation_balanced_error().unwrap(),
            best,
            "{what}"
        );
    }
}

#[test]
fn the_kept_weights_are_those_of_a_run_stopped_at_the_best_epoch() {
    let seed = Rng::fresh().seed();
    let (train, val, spec) = problem(seed);
    let config = TrainConfig {
        epochs: 60,
        batch_size: 64,
        lr: 0.2,
        seed: 5,
        patience: Some(4),
        warmup: Some(2),
        ..TrainConfig::default()
    };
    for ctx in contexts() {
        let what = format!("{} (seed {seed})", name(ctx));
        let mut early = trainer(ctx, &train, &spec, &config)
            .with_validation(&val.features, &val.labels)
            .unwrap();
        let report = early.fit(|_| {}).unwrap();
        let (best, _) = report.best.unwrap();
        assert!(
            best >= 2,
            "{what}: no evaluation before the warm-up is kept"
        );
        if report.stopped_early {
            assert_eq!(
                report.epochs_run(),
                best + 4,
                "{what}: 4 evaluations after the best"
            );
        }
        let fixed_config = TrainConfig {
            epochs: best,
            patience: None,
            ..config.clone()
        };
        let mut fixed = trainer(ctx, &train, &spec, &fixed_config);
        fixed.fit(|_| {}).unwrap();
        assert_eq!(
            bits(&early.weights().unwrap()),
            bits(&fixed.weights().unwrap()),
            "{what}: kept epoch {best} of {}",
            report.epochs_run()
        );
        // Training on from there is training on from epoch `best`: the
        // momentum and the shuffling were put back too.
        for t in [&mut early, &mut fixed] {
            for _ in 0..3 {
                t.epoch().unwrap();
            }
        }
        assert_eq!(
            bits(&early.weights().unwrap()),
            bits(&fixed.weights().unwrap()),
            "{what}: 3 epochs after the kept one"
        );
    }
}

#[test]
fn eval_every_and_warmup_choose_the_epochs_evaluated_and_kept() {
    let seed = Rng::fresh().seed();
    let (train, val, spec) = problem(seed);
    let config = TrainConfig {
        epochs: 11,
        batch_size: 128,
        eval_every: 3,
        warmup: Some(7),
        ..TrainConfig::default()
    };
    for ctx in contexts() {
        let what = format!("{} (seed {seed})", name(ctx));
        let mut t = trainer(ctx, &train, &spec, &config)
            .with_validation(&val.features, &val.labels)
            .unwrap();
        let mut seen = Vec::new();
        let report = t
            .fit(|p| {
                if p.validation_balanced_error.is_some() {
                    seen.push(p.epoch);
                }
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![3, 6, 9, 11],
            "{what}: every 3rd epoch and the last"
        );
        let evaluated: Vec<usize> = report
            .curve
            .iter()
            .filter(|r| r.validation_balanced_error.is_some())
            .map(|r| r.epoch)
            .collect();
        assert_eq!(evaluated, seen, "{what}");
        let (best, _) = report.best.unwrap();
        assert!(
            [9, 11].contains(&best),
            "{what}: kept {best}, before the warm-up"
        );
        // A trainer without a validation set evaluates nothing.
        let mut plain = trainer(ctx, &train, &spec, &config);
        let report = plain.fit(|_| {}).unwrap();
        assert!(report.best.is_none() && report.curve.len() == 11, "{what}");
        assert!(matches!(
            plain.validation_balanced_error(),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[test]
fn bad_validation_sets_are_refused() {
    let (train, val, spec) = problem(1);
    let config = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    for ctx in contexts() {
        let what = name(ctx);
        let t = || trainer(ctx, &train, &spec, &config);
        let mut bad_label = val.labels.clone();
        bad_label[7] = 5;
        let mut nan = val.features.clone();
        nan[13] = f32::NAN;
        let cases: Vec<(&str, Vec<f32>, Vec<i64>)> = vec![
            ("label 5 of 5 classes", val.features.clone(), bad_label),
            ("a NaN feature", nan, val.labels.clone()),
            (
                "one label short",
                val.features.clone(),
                val.labels[1..].to_vec(),
            ),
            (
                "a ragged row",
                val.features[1..].to_vec(),
                val.labels.clone(),
            ),
            ("no rows", Vec::new(), Vec::new()),
        ];
        for (case, x, y) in cases {
            let got = t().with_validation(&x, &y);
            assert!(got.is_err(), "{what}: {case} accepted");
        }
        let no_eval = TrainConfig {
            eval_every: 0,
            ..config.clone()
        };
        let mut zero = trainer(ctx, &train, &spec, &no_eval)
            .with_validation(&val.features, &val.labels)
            .unwrap();
        assert!(
            matches!(zero.fit(|_| {}), Err(Error::InvalidArgument(_))),
            "{what}"
        );
    }
}
