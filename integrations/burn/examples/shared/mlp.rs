//! The long-tailed MLP experiment: shared by `examples/long_tail_mlp.rs`
//! and `tests/example_bars.rs`, so that the test checks the loop the
//! example prints.
#![allow(dead_code)]

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use logit_adjust::synthetic::{exponential_profile, GaussianMixture, Rng, Sample};
use logit_adjust_burn::LogitAdjustedLoss;

/// A two-layer perceptron: `out(relu(hidden(x)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    /// Weights drawn from `device`'s generator after seeding it.
    ///
    /// Every parameter is initialised here, in the order a forward pass
    /// first reads them: burn initialises a parameter lazily, at its first
    /// read, through a persistent allocation on the device; in a training
    /// step that allocation can wait forever on the fusion stream's matmul
    /// autotune, which holds the device exclusively (a test hung so on GL
    /// with fusion on, burn 0.23.0-pre.1).
    pub fn new(dim: usize, width: usize, classes: usize, device: &Device, seed: u64) -> Self {
        device.seed(seed);
        let mlp = Self {
            hidden: LinearConfig::new(dim, width).init(device),
            out: LinearConfig::new(width, classes).init(device),
        };
        for linear in [&mlp.hidden, &mlp.out] {
            let _ = linear.weight.val();
            if let Some(bias) = &linear.bias {
                let _ = bias.val();
            }
        }
        mlp
    }

    /// The logits, `[N, C]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }

    /// LDAM's cosine head, as published: `cos(h, w_c)` between the hidden
    /// features and each class's weights (no bias), in `[-1, 1]`; the loss's
    /// logit scale `s` turns it into logits.
    pub fn forward_cosine(&self, x: Tensor<2>) -> Tensor<2> {
        let h = relu(self.hidden.forward(x));
        let h = h.clone() / (h.powi_scalar(2).sum_dim(1).sqrt() + 1e-6);
        let w = self.out.weight.val();
        let w = w.clone() / (w.powi_scalar(2).sum_dim(0).sqrt() + 1e-6);
        h.matmul(w)
    }

    /// Every parameter's values, in a fixed order.
    pub fn parameters(&self) -> Vec<Vec<f32>> {
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().expect("f32");
        let read1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().expect("f32");
        let mut p = vec![read(self.hidden.weight.val()), read(self.out.weight.val())];
        p.extend(self.hidden.bias.iter().map(|b| read1(b.val())));
        p.extend(self.out.bias.iter().map(|b| read1(b.val())));
        p
    }
}

/// The built-in long-tailed problem (the main job's first): ten Gaussian
/// classes in 16 dimensions, CIFAR-10-LT's exponential profile (5000 down
/// to 50 rows, rho = 100), and a balanced test set.
pub struct Problem {
    pub classes: usize,
    pub dim: usize,
    pub counts: Vec<usize>,
    pub train: Sample,
    pub test: Sample,
}

impl Problem {
    pub fn long_tailed(seed: u64) -> Self {
        let (classes, dim) = (10, 16);
        let mut rng = Rng::new(seed);
        let mixture = GaussianMixture::random(classes, dim, 0.75, &mut rng);
        let counts = exponential_profile(classes, 5000, 100.0);
        let train = mixture.sample(&counts, &mut rng);
        let test = mixture.sample(&vec![2000; classes], &mut rng);
        Self {
            classes,
            dim,
            counts,
            train,
            test,
        }
    }
}

/// What a run minimises.
#[derive(Clone, Debug)]
pub enum Objective {
    /// burn's own `CrossEntropyLoss`.
    BurnCrossEntropy,
    /// Our loss as a burn op.
    Ours(LogitAdjustedLoss),
    /// Our loss on the cosine head ([`Mlp::forward_cosine`]).
    OursCosine(LogitAdjustedLoss),
    /// Our loss on the cosine head, its class weights switched to these at
    /// this step (deferred re-weighting, LDAM-DRW).
    OursCosineDrw(LogitAdjustedLoss, usize, Vec<f32>),
}

impl Objective {
    fn logits(&self, model: &Mlp, x: Tensor<2>) -> Tensor<2> {
        match self {
            Objective::OursCosine(_) | Objective::OursCosineDrw(..) => model.forward_cosine(x),
            _ => model.forward(x),
        }
    }
}

/// The loop's settings.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// SGD's weight decay (0 for none).
    pub weight_decay: f64,
    /// Seed of the batch order.
    pub seed: u64,
}

/// `x` and `y` tensors for the rows `order[from..from + batch]`.
fn batch(sample: &Sample, order: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let dim = sample.dim;
    let x: Vec<f32> = order
        .iter()
        .flat_map(|&i| sample.features[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let y: Vec<i32> = order.iter().map(|&i| sample.labels[i] as i32).collect();
    (
        Tensor::from_data(TensorData::new(x, [order.len(), dim]), device),
        Tensor::from_data(TensorData::new(y, [order.len()]), device),
    )
}

/// Train `model` with burn's SGD (momentum 0.9) on shuffled batches.
pub fn train(
    mut model: Mlp,
    problem: &Problem,
    objective: &Objective,
    schedule: Schedule,
    device: &Device,
) -> Result<Mlp, logit_adjust_burn::Error> {
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
        .with_weight_decay(
            (schedule.weight_decay > 0.0)
                .then(|| WeightDecayConfig::new(schedule.weight_decay as f32)),
        )
        .init();
    let burn_ce = CrossEntropyLossConfig::new().init(device);
    let n = problem.train.labels.len();
    let mut rng = Rng::new(schedule.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut at = n;
    for step in 0..schedule.steps {
        if let Objective::OursCosineDrw(loss, at, weights) = objective {
            if step == *at {
                let spec = loss.spec();
                loss.set_class_vectors(
                    spec.bias().to_vec(),
                    spec.margin().to_vec(),
                    weights.clone(),
                )?;
            }
        }
        if at + schedule.batch > n {
            for i in (1..n).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            at = 0;
        }
        let (x, y) = batch(&problem.train, &order[at..at + schedule.batch], device);
        at += schedule.batch;
        let logits = objective.logits(&model, x);
        let loss = match objective {
            Objective::BurnCrossEntropy => burn_ce.forward(logits, y),
            Objective::Ours(loss)
            | Objective::OursCosine(loss)
            | Objective::OursCosineDrw(loss, ..) => loss.forward(logits, y)?,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(schedule.lr, model, grads);
    }
    Ok(model)
}

/// Balanced error on the test set: the mean over classes of the class's
/// error rate.
pub fn balanced_error(
    model: &Mlp,
    objective: &Objective,
    problem: &Problem,
    device: &Device,
) -> f64 {
    let test = &problem.test;
    let order: Vec<usize> = (0..test.labels.len()).collect();
    let (x, _) = batch(test, &order, device);
    let pred = objective
        .logits(model, x)
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("i64");
    let c = problem.classes;
    let (mut wrong, mut total) = (vec![0usize; c], vec![0usize; c]);
    for (&y, &p) in test.labels.iter().zip(&pred) {
        total[y as usize] += 1;
        wrong[y as usize] += usize::from(p != y);
    }
    (0..c)
        .map(|k| wrong[k] as f64 / total[k].max(1) as f64)
        .sum::<f64>()
        / c as f64
}

/// `max |a - b| / max |b|` over all parameters.
pub fn relative_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        for (&u, &v) in x.iter().zip(y) {
            diff = diff.max((u as f64 - v as f64).abs());
            scale = scale.max((v as f64).abs());
        }
    }
    diff / scale.max(f64::MIN_POSITIVE)
}
