//! The GPU trainer on half-precision logits (`TrainConfig::logits`): the
//! forward writes the f32 logits rounded to nearest even, the weight
//! gradient is `A^T G` of the loss's half gradient, and training on halves
//! learns what training on f32 learns.

mod common;

use common::{balanced_error, contexts, name, Rng};
use half::{bf16, f16};
use logit_adjust::synthetic::{exponential_profile, GaussianMixture, Rng as DataRng};
use logit_adjust::{reference, ClassPrior, Dtype, LinearTrainer, LossSpec, Reduction, TrainConfig};

const HALVES: [Dtype; 2] = [Dtype::F16, Dtype::Bf16];

/// `x` rounded to `dtype` (nearest even), widened back.
fn round_to(dtype: Dtype, x: f32) -> f32 {
    match dtype {
        Dtype::F16 => f16::from_f32(x).to_f32(),
        Dtype::Bf16 => bf16::from_f32(x).to_f32(),
        Dtype::F32 => x,
    }
}

/// The gap from `x` (a value of `dtype`) to the next one away from zero.
fn ulp_above(dtype: Dtype, x: f32) -> f64 {
    let up = match dtype {
        Dtype::F16 => f16::from_bits(f16::from_f32(x).to_bits() + 1).to_f32(),
        Dtype::Bf16 => bf16::from_bits(bf16::from_f32(x).to_bits() + 1).to_f32(),
        Dtype::F32 => f32::from_bits(x.to_bits() + 1),
    };
    (up.abs() as f64 - x.abs() as f64).abs()
}

/// A small problem whose `N x C` is odd, so the last word of the half
/// logits holds one element and the padding.
struct Batch {
    x: Vec<f32>,
    labels: Vec<i64>,
    w: Vec<f32>,
    dim: usize,
    c: usize,
}

fn batch(rng: &mut Rng) -> Batch {
    let (n, dim, c) = (33, 5, 7);
    Batch {
        x: (0..n * dim).map(|_| rng.range(-1.0, 1.0) as f32).collect(),
        labels: (0..n).map(|_| rng.below(c) as i64).collect(),
        w: (0..(dim + 1) * c)
            .map(|_| rng.range(-2.0, 2.0) as f32)
            .collect(),
        dim,
        c,
    }
}

fn spec(c: usize) -> LossSpec {
    let counts: Vec<f64> = (0..c).map(|k| (50 >> k.min(5)) as f64 + 1.0).collect();
    LossSpec::logit_adjusted(&ClassPrior::from_counts(&counts).unwrap(), 1.0)
        .unwrap()
        .with_reduction(Reduction::WeightedMean)
}

fn trainer(ctx: &logit_adjust::Context, b: &Batch, logits: Dtype) -> LinearTrainer {
    let config = TrainConfig {
        logits,
        ..TrainConfig::default()
    };
    let mut t = LinearTrainer::new(ctx, &spec(b.c), &b.x, &b.labels, b.dim, config).unwrap();
    t.set_weights(&b.w).unwrap();
    t
}

#[test]
fn half_training_logits_are_the_f32_logits_rounded_to_nearest_even() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let b = batch(&mut rng);
    for ctx in contexts() {
        let exact = trainer(ctx, &b, Dtype::F32).loss_logits(&b.x).unwrap();
        for dtype in HALVES {
            let t = trainer(ctx, &b, dtype);
            let halves = t.loss_logits(&b.x).unwrap();
            assert_eq!(halves.len(), exact.len());
            for (e, (&h, &f)) in halves.iter().zip(&exact).enumerate() {
                assert_eq!(
                    h.to_bits(),
                    round_to(dtype, f).to_bits(),
                    "{} {}: logit {e} is {h}, the f32 logit {f} rounded is {} (seed {seed})",
                    name(ctx),
                    dtype.name(),
                    round_to(dtype, f)
                );
            }
            // Evaluation's logits stay f32.
            assert_eq!(
                t.logits(&b.x).unwrap(),
                exact,
                "{} (seed {seed})",
                name(ctx)
            );
        }
    }
}

#[test]
fn half_weight_gradient_is_a_transpose_g_of_the_half_loss_gradient() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let b = batch(&mut rng);
    let (d, c) = (b.dim + 1, b.c);
    let n = b.labels.len();
    let a = |i: usize, k: usize| {
        if k == b.dim {
            1.0
        } else {
            b.x[i * b.dim + k] as f64
        }
    };
    for ctx in contexts() {
        for dtype in HALVES {
            let t = trainer(ctx, &b, dtype);
            // G: the f64 reference's gradient on the logits the loss saw,
            // rounded to the format; the kernel's is within one unit of it.
            let logits = t.loss_logits(&b.x).unwrap();
            let g64 = reference::forward_backward(&spec(c), &logits, &b.labels)
                .unwrap()
                .grad
                .unwrap();
            let g: Vec<f32> = g64.iter().map(|&v| round_to(dtype, v as f32)).collect();
            let got = t.weight_gradient(&b.x, &b.labels).unwrap();
            for k in 0..d {
                for j in 0..c {
                    let (mut want, mut slack) = (0.0f64, 0.0f64);
                    for i in 0..n {
                        want += a(i, k) * g[i * c + j] as f64;
                        slack += a(i, k).abs() * (ulp_above(dtype, g[i * c + j]) + 1e-6);
                    }
                    let have = got[k * c + j] as f64;
                    assert!(
                        (have - want).abs() <= slack,
                        "{} {}: dW[{k}, {j}] = {have}, A^T G = {want} +- {slack} (seed {seed})",
                        name(ctx),
                        dtype.name()
                    );
                }
            }
        }
    }
}

#[test]
fn training_on_half_logits_learns_what_f32_learns() {
    let seed = Rng::fresh().seed();
    let mut rng = DataRng::new(seed);
    let (c, dim) = (10, 16);
    let mixture = GaussianMixture::random(c, dim, 0.75, &mut rng);
    let counts = exponential_profile(c, 2000, 100.0);
    let train = mixture.sample(&counts, &mut rng);
    let test = mixture.sample(&vec![500; c], &mut rng);
    let prior =
        ClassPrior::from_counts(&counts.iter().map(|&n| n as f64).collect::<Vec<_>>()).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    for ctx in contexts() {
        let fit = |logits: Dtype| {
            let config = TrainConfig {
                epochs: 10,
                batch_size: 256,
                lr: 0.1,
                logits,
                ..TrainConfig::default()
            };
            let mut t = LinearTrainer::new(ctx, &spec, &train.features, &train.labels, dim, config)
                .unwrap();
            let curve = t.fit(|_| {}).unwrap().curve;
            let losses: Vec<f32> = curve.iter().map(|r| r.loss).collect();
            let logits = t.logits(&test.features).unwrap();
            let error = balanced_error(ctx, &prior, 0.0, &logits, &test.labels);
            (error, losses)
        };
        let (f32_error, f32_losses) = fit(Dtype::F32);
        for dtype in HALVES {
            let (error, losses) = fit(dtype);
            let what = format!(
                "{} {} (seed {seed}): balanced error {error:.4} vs f32 {f32_error:.4}, \
                 losses {:?} vs f32 {:?}",
                name(ctx),
                dtype.name(),
                (losses[0], losses[losses.len() - 1]),
                (f32_losses[0], f32_losses[f32_losses.len() - 1]),
            );
            assert!((error - f32_error).abs() < 0.015, "{what}");
            assert!(losses[losses.len() - 1] < 0.7 * losses[0], "{what}");
        }
    }
}
