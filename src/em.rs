//! An unknown test prior estimated from unlabelled logits by EM (Saerens,
//! Latinne and Decaestecker, 2002; docs/MATH.md section 6): starting from the
//! training prior, reweight each row's softmax by `pi_test / pi_train`,
//! average the posteriors into the next `pi_test`, and repeat to a fixed
//! point. The posterior sums run on the GPU (`shaders/em.wgsl`); the loop,
//! in f64, is shared with the CPU reference.

use bytemuck::{Pod, Zeroable};

use crate::buffers;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{Entry, Family};
use crate::posthoc::check_logits;
use crate::prior::ClassPrior;

const WG: usize = 64;
/// The partial sums take at most this many bytes (G x C floats).
const PARTIAL_BUDGET: u64 = 64 << 20;
/// llvmpipe/lavapipe end an invocation after about 65,535 loop trips.
const MAX_LOOP_TRIPS: usize = 60_000;

/// When EM stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmOptions {
    /// At most this many steps.
    pub max_iterations: usize,
    /// Stop when no class's estimate moves by more than this in a step.
    pub tolerance: f64,
}

impl Default for EmOptions {
    fn default() -> Self {
        Self {
            max_iterations: 1000,
            tolerance: 1e-6,
        }
    }
}

/// An estimated test prior.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorEstimate {
    /// `pi_test`, summing to 1.
    pub prior: Vec<f64>,
    /// Steps taken.
    pub iterations: usize,
    /// Whether the last step moved every class by at most the tolerance.
    pub converged: bool,
    /// The largest move of the last step.
    pub last_change: f64,
}

fn check(logits: &[f32], train: &ClassPrior, options: &EmOptions) -> Result<usize> {
    let n = check_logits(logits, train.classes())?;
    if n == 0 {
        return Err(Error::InvalidArgument(
            "no rows: a test prior cannot be estimated from empty logits".into(),
        ));
    }
    if let Some(index) = logits.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "logits (EM needs finite logits)".into(),
            index,
            value: logits[index] as f64,
        });
    }
    if options.max_iterations == 0 || options.tolerance.is_nan() || options.tolerance < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "EM needs at least 1 iteration and a tolerance >= 0, got {} and {}",
            options.max_iterations, options.tolerance
        )));
    }
    Ok(n)
}

/// The EM loop over `sums(shift)`, which returns `sum_i q_ic` for
/// `shift_c = log pi_test_c - log pi_train_c`.
pub(crate) fn iterate(
    n: usize,
    train: &ClassPrior,
    options: EmOptions,
    mut sums: impl FnMut(&[f64]) -> Result<Vec<f64>>,
) -> Result<PriorEstimate> {
    let log_train = train.log_prior();
    let mut prior = train.probabilities().to_vec();
    let mut last_change = f64::INFINITY;
    for step in 1..=options.max_iterations {
        let shift: Vec<f64> = prior
            .iter()
            .zip(&log_train)
            .map(|(p, l)| p.ln() - l)
            .collect();
        let next: Vec<f64> = sums(&shift)?.iter().map(|s| s / n as f64).collect();
        let total: f64 = next.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return Err(Error::Gpu(format!(
                "EM step {step}: the posteriors sum to {total}"
            )));
        }
        let next: Vec<f64> = next.iter().map(|p| p / total).collect();
        last_change = next
            .iter()
            .zip(&prior)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        prior = next;
        if last_change <= options.tolerance {
            return Ok(PriorEstimate {
                prior,
                iterations: step,
                converged: true,
                last_change,
            });
        }
    }
    Ok(PriorEstimate {
        prior,
        iterations: options.max_iterations,
        converged: false,
        last_change,
    })
}

/// The CPU step: `sum_i q_ic` in f64.
pub(crate) fn cpu_sums(logits: &[f32], c: usize, shift: &[f64]) -> Vec<f64> {
    let mut sums = vec![0.0; c];
    let mut z = vec![0.0; c];
    for row in logits.chunks(c) {
        for ((z, &f), s) in z.iter_mut().zip(row).zip(shift) {
            *z = f as f64 + s;
        }
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let denom: f64 = z.iter().map(|v| (v - m).exp()).sum();
        for (acc, v) in sums.iter_mut().zip(&z) {
            *acc += (v - m).exp() / denom;
        }
    }
    sums
}

/// The CPU reference of [`Context::estimate_test_prior`], in f64.
pub(crate) fn estimate_on_cpu(
    logits: &[f32],
    train: &ClassPrior,
    options: EmOptions,
) -> Result<PriorEstimate> {
    let n = check(logits, train, &options)?;
    iterate(n, train, options, |shift| {
        Ok(cpu_sums(logits, train.classes(), shift))
    })
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    rows_per_group: u32,
    groups: u32,
}

impl Context {
    /// Estimate the prior of the test set whose logits these are (`N x C`,
    /// finite, from a model trained under `train`) by EM. Each step runs on
    /// the GPU and reads back `C` sums; the logits are uploaded once.
    pub fn estimate_test_prior(
        &self,
        logits: &[f32],
        train: &ClassPrior,
        options: EmOptions,
    ) -> Result<PriorEstimate> {
        let n = check(logits, train, &options)?;
        let c = train.classes();
        let bytes = (n * c * 4) as u64;
        let limit = self.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::TooLarge(format!(
                "EM over {n} x {c} logits: {bytes} bytes exceed the storage binding limit of {limit}"
            )));
        }
        let blocks = n.div_ceil(WG);
        let by_budget = (PARTIAL_BUDGET.min(limit) / (c as u64 * 4)).max(1) as usize;
        let groups = blocks.min(MAX_LOOP_TRIPS).min(by_budget);
        let rows_per_group = blocks.div_ceil(groups) * WG;
        let cpu = self.info().device_type == wgpu::DeviceType::Cpu;
        if cpu && (rows_per_group / WG) * 3 * c > MAX_LOOP_TRIPS {
            return Err(Error::TooLarge(format!(
                "EM over {n} x {c} logits: too many loop trips per invocation on a CPU adapter"
            )));
        }
        self.scoped(|| {
            use wgpu::BufferUsages as U;
            let logits_buf =
                buffers::upload(self, "em logits", bytemuck::cast_slice(logits), U::STORAGE)?;
            let shift =
                buffers::storage(self, "em shift", (c * 4) as u64, U::STORAGE | U::COPY_DST)?;
            let partial =
                buffers::storage(self, "em partials", (groups * c * 4) as u64, U::STORAGE)?;
            let sums = buffers::storage(self, "em sums", (c * 4) as u64, U::STORAGE | U::COPY_SRC)?;
            let params = buffers::param_slots(
                self,
                &[Params {
                    rows: n as u32,
                    classes: c as u32,
                    rows_per_group: rows_per_group as u32,
                    groups: groups as u32,
                }],
            )?;
            let group = buffers::bind_group(
                self,
                "em",
                &self.kernels().layout(Family::Em),
                vec![
                    params.slot(0),
                    logits_buf.as_entire_binding(),
                    shift.as_entire_binding(),
                    partial.as_entire_binding(),
                    sums.as_entire_binding(),
                ],
            );
            let partials = self.kernels().pipeline(Entry::EmPartials, 0);
            let reduce = self.kernels().pipeline(Entry::EmReduce, 0);
            iterate(n, train, options, |s| {
                let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
                self.queue()
                    .write_buffer(&shift, 0, bytemuck::cast_slice(&s32));
                let mut encoder = self.device().create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("logit-adjust em"),
                        timestamp_writes: None,
                    });
                    pass.set_bind_group(0, &group, &[]);
                    pass.set_pipeline(&partials);
                    pass.dispatch_workgroups(groups as u32, 1, 1);
                    pass.set_pipeline(&reduce);
                    pass.dispatch_workgroups(c.div_ceil(WG) as u32, 1, 1);
                }
                self.queue().submit([encoder.finish()]);
                let out = buffers::read::<f32>(self, &[(&sums, 0, c)])?;
                Ok(out[0].iter().map(|&v| v as f64).collect())
            })
        })
    }
}
