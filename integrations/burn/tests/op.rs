//! The burn op against the core's f64 reference, on burn's own device and
//! burn's pooled tensors, with autodiff: loss, per-row LSE and the logits'
//! gradient. Run with the default features (burn's fusion on) and with
//! `--no-default-features` (off); CI runs both, on Vulkan and on GL.

mod common;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::{devices, max_abs, seed, values, worst};
use logit_adjust::synthetic::Rng;
use logit_adjust::{reference, ClassPrior, LossOutput, LossSpec, Reduction, Smoothing, Upstream};
use logit_adjust_burn::{Error, LogitAdjustedLoss};

/// One batch: logits in [-4, 4], labels in [0, C) with about one row in
/// eight ignored, and an upstream weight per row.
struct Batch {
    n: usize,
    c: usize,
    logits: Vec<f32>,
    labels: Vec<i64>,
    upstream: Vec<f32>,
}

impl Batch {
    fn random(n: usize, c: usize, rng: &mut Rng) -> Self {
        Self {
            n,
            c,
            logits: (0..n * c)
                .map(|_| (8.0 * rng.uniform() - 4.0) as f32)
                .collect(),
            labels: (0..n)
                .map(|_| {
                    if rng.uniform() < 0.125 {
                        -100
                    } else {
                        (rng.next_u64() % c as u64) as i64
                    }
                })
                .collect(),
            upstream: (0..n).map(|_| (0.5 + rng.uniform()) as f32).collect(),
        }
    }

    fn logits(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.logits.clone(), [self.n, self.c]),
            device,
        )
    }

    fn labels(&self, device: &Device, dtype: DType) -> Tensor<1, Int> {
        let t = match dtype {
            DType::I64 => Tensor::<1, Int>::from_data(
                TensorData::new(self.labels.clone(), [self.n]),
                (device, DType::I64),
            ),
            _ => Tensor::<1, Int>::from_data(
                TensorData::new(
                    self.labels.iter().map(|&y| y as i32).collect::<Vec<_>>(),
                    [self.n],
                ),
                (device, DType::I32),
            ),
        };
        assert_eq!(t.dtype(), dtype, "burn kept the labels' dtype");
        t
    }
}

fn random_prior(c: usize, rng: &mut Rng) -> ClassPrior {
    let counts: Vec<f64> = (0..c)
        .map(|_| 1.0 + 1000.0 * rng.uniform().powi(3))
        .collect();
    ClassPrior::from_counts(&counts).expect("positive counts")
}

/// Run `spec` on `batch` through the burn op with autodiff and compare the
/// loss, the LSE and the gradient with the f64 reference.
fn check(what: &str, device: &Device, spec: &LossSpec, batch: &Batch, labels: DType) {
    let device = device.clone().autodiff();
    let loss = LogitAdjustedLoss::new(&device, spec).expect("the op on burn's device");
    // Tensors made before and between the inputs, so that the inputs land
    // in burn's pool beside others, not at the start of fresh buffers.
    let _spacer = Tensor::<1>::ones([37], &device);
    let logits = batch.logits(&device).require_grad();
    let _between = Tensor::<1>::ones([5], &device);
    let (value, lse) = loss
        .forward_with_lse(logits.clone(), batch.labels(&device, labels))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let reduced = spec.reduction() != Reduction::None;
    let upstream = if reduced {
        Upstream::Scalar(1.0)
    } else {
        Upstream::PerRow(&batch.upstream)
    };
    let want = reference::forward_backward_scaled(spec, &batch.logits, &batch.labels, upstream)
        .expect("reference");
    let grads = if reduced {
        value.clone().backward()
    } else {
        let g = Tensor::<1>::from_data(TensorData::new(batch.upstream.clone(), [batch.n]), &device);
        (value.clone() * g).sum().backward()
    };
    let grad = values(
        logits
            .grad(&grads)
            .unwrap_or_else(|| panic!("{what}: no gradient")),
    );
    let got = values(value.inner());
    let got_lse = values(lse.inner());

    let loss_tol = |r: f64| 1e-5 * r.abs().max(1.0);
    let want_loss: Vec<f64> = match want.loss {
        Some(l) => vec![l],
        None => want.per_row.clone(),
    };
    if let Some((i, g, w)) = worst(&got, &want_loss, loss_tol) {
        panic!("{what}: loss [{i}] = {g}, reference {w}");
    }
    if let Some((i, g, w)) = worst(&got_lse, &want.lse, loss_tol) {
        panic!("{what}: LSE [{i}] = {g}, reference {w}");
    }
    let want_grad = want.grad.expect("reference gradient");
    let scale = max_abs(&want_grad);
    // The backward reads the saved LSE: its rounding adds a few ulps.
    let grad_tol = 1e-6 + 1e-5 * scale + 4e-7 * max_abs(&want.lse) * scale;
    if let Some((i, g, w)) = worst(&grad, &want_grad, |_| grad_tol) {
        panic!(
            "{what}: grad [{i}] (row {}) = {g}, reference {w}",
            i / batch.c
        );
    }
}

#[test]
fn loss_lse_and_gradient_match_the_f64_reference() {
    let seed = seed("loss_lse_and_gradient_match_the_f64_reference");
    let before = logit_adjust_burn::placement_counts();
    for (backend, device) in devices() {
        let mut rng = Rng::new(seed);
        for &(n, c) in &[(9, 1), (33, 10), (70, 1000), (3, 100_000)] {
            let prior = random_prior(c, &mut rng);
            let batch = Batch::random(n, c, &mut rng);
            let specs = [
                (
                    "logit-adjusted mean",
                    LossSpec::logit_adjusted(&prior, 1.0).unwrap(),
                ),
                (
                    "balanced weighted-mean",
                    LossSpec::balanced(&prior).with_reduction(Reduction::WeightedMean),
                ),
                (
                    "ldam s=30 none",
                    LossSpec::ldam(&prior)
                        .with_logit_scale(30.0)
                        .with_reduction(Reduction::None),
                ),
                (
                    "smoothing (pytorch) + z-loss sum",
                    LossSpec::balanced(&prior)
                        .with_label_smoothing(0.1)
                        .with_smoothing_convention(Smoothing::PerClass)
                        .with_z_loss(1e-3)
                        .with_reduction(Reduction::Sum),
                ),
            ];
            for (name, spec) in &specs {
                for labels in [DType::I32, DType::I64] {
                    let what =
                        format!("{backend} N={n} C={c} {name} labels {labels:?} (seed {seed})");
                    check(&what, &device, spec, &batch, labels);
                }
            }
        }
    }
    let after = logit_adjust_burn::placement_counts();
    let [runs, offset, shared] = [0, 1, 2].map(|k| after[k] - before[k]);
    assert!(runs > 0, "the op never ran");
    assert!(
        offset > 0 && shared > 0,
        "burn's tensors were never at a non-zero offset ({offset} of {runs} runs) or never \
         shared a buffer ({shared} of {runs}): the test did not exercise pooled tensors"
    );
}

/// The op's reduced loss `got` (`[1]`) against the reference's.
fn assert_reduced_loss(got: &[f32], want: &LossOutput<f64>, what: &str) {
    let w = want.loss.expect("a reduced reference loss");
    assert!(
        (got[0] as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
        "{what}: {} vs reference {w}",
        got[0]
    );
}

#[test]
fn a_plain_device_runs_the_forward_without_autodiff() {
    let seed = seed("a_plain_device_runs_the_forward_without_autodiff");
    for (backend, device) in devices() {
        let mut rng = Rng::new(seed);
        let batch = Batch::random(50, 20, &mut rng);
        let spec = LossSpec::logit_adjusted(&random_prior(20, &mut rng), 1.5).unwrap();
        let loss = LogitAdjustedLoss::new(&device, &spec).unwrap();
        let value = loss
            .forward(batch.logits(&device), batch.labels(&device, DType::I32))
            .unwrap();
        let want = reference::forward(&spec, &batch.logits, &batch.labels).unwrap();
        assert_reduced_loss(&values(value), &want, &format!("{backend} (seed {seed})"));
    }
}

#[test]
fn the_class_vectors_switch_between_steps() {
    let seed = seed("the_class_vectors_switch_between_steps");
    for (backend, device) in devices() {
        let mut rng = Rng::new(seed);
        let c = 12;
        let batch = Batch::random(40, c, &mut rng);
        let prior = random_prior(c, &mut rng);
        let first = LossSpec::ldam(&prior).with_reduction(Reduction::WeightedMean);
        let loss = LogitAdjustedLoss::new(&device, &first).unwrap();
        let before = values(
            loss.forward(batch.logits(&device), batch.labels(&device, DType::I32))
                .unwrap(),
        );
        let weights: Vec<f32> = (0..c).map(|k| 0.25 + k as f32 / 4.0).collect();
        loss.set_class_vectors(
            first.bias().to_vec(),
            first.margin().to_vec(),
            weights.clone(),
        )
        .unwrap();
        let after = values(
            loss.forward(batch.logits(&device), batch.labels(&device, DType::I32))
                .unwrap(),
        );
        let spec = LossSpec::custom(first.bias().to_vec(), first.margin().to_vec(), weights)
            .unwrap()
            .with_reduction(Reduction::WeightedMean);
        let want_before = reference::forward(&first, &batch.logits, &batch.labels).unwrap();
        let want_after = reference::forward(&spec, &batch.logits, &batch.labels).unwrap();
        for (got, want, when) in [
            (before, want_before, "before"),
            (after, want_after, "after"),
        ] {
            assert_reduced_loss(
                &got,
                &want,
                &format!("{backend} {when} the switch (seed {seed})"),
            );
        }
    }
}

#[test]
fn bad_shapes_and_dtypes_are_refused_before_anything_runs() {
    for (backend, device) in devices() {
        let spec = LossSpec::cross_entropy(10);
        let loss = LogitAdjustedLoss::new(&device, &spec).unwrap();
        let labels = Tensor::<1, Int>::zeros([4], &device);
        let cases: Vec<(&str, Result<Tensor<1>, Error>, &str)> = vec![
            (
                "columns",
                loss.forward(Tensor::<2>::zeros([4, 9], &device), labels.clone()),
                "9 columns",
            ),
            (
                "rows",
                loss.forward(Tensor::<2>::zeros([5, 10], &device), labels.clone()),
                "5 rows of logits but 4 labels",
            ),
            (
                "empty",
                loss.forward(
                    Tensor::<2>::zeros([0, 10], &device),
                    Tensor::<1, Int>::zeros([0], &device),
                ),
                "0 rows",
            ),
        ];
        for (what, result, expect) in cases {
            match result {
                Err(e) => assert!(
                    e.to_string().contains(expect),
                    "{backend} {what}: {e} does not say {expect:?}"
                ),
                Ok(_) => panic!("{backend} {what}: accepted"),
            }
        }
        // Half-precision logits wait for the core's half kernels.
        if device.supports_dtype(DType::F16) {
            let half = Tensor::<2>::zeros([4, 10], &device).cast(DType::F16);
            let e = loss
                .forward(half, Tensor::<1, Int>::zeros([4], &device))
                .expect_err("f16 logits");
            assert!(e.to_string().contains("F16"), "{backend}: {e}");
        }
    }
}
