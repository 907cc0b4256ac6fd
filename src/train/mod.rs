//! A linear classifier trained entirely on the GPU, as a training engine
//! embedding the library would: `logits = X W` (bias folded into `W`), the
//! fused loss recorded into the same command encoder, the weight gradient
//! and an SGD step with momentum and weight decay. One host round trip per
//! epoch, for the running loss (and, with a validation set, its per-class
//! counts: `validation.rs`; the loop, early stopping and the best weights:
//! `fit.rs`). Shaders: `gather.wgsl`, `linear.wgsl`.
//!
//! This is also classifier re-training on frozen features: train a linear
//! head with a logit-adjusted loss on embeddings from a pretrained network.

use bytemuck::{Pod, Zeroable};

use crate::buffers;
use crate::context::Context;
use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::kernels::{Entry, Family};
use crate::loss::{LossSpec, Reduction, Upstream};
use crate::region::Region;
use crate::softmax_xent::{BoundLoss, GradOutput, LossBuffers, SoftmaxXent};
use crate::synthetic::Rng;

mod fit;
mod standardize;
mod validation;

pub use fit::{EpochRecord, FitReport, Progress};
pub use standardize::Standardizer;
use validation::ValidationSet;

const WG: usize = 64;
const FLAG_WRITE_GRAD: u32 = 1;
/// The update loops over the batch's rows, and llvmpipe and lavapipe end an
/// invocation after about 65,535 loop trips: the largest batch on CPU
/// adapters (GPUs take any).
pub const MAX_BATCH: usize = 16_384;

/// The largest batch `ctx` takes: [`MAX_BATCH`] on CPU adapters.
fn max_batch(ctx: &Context) -> usize {
    if ctx.info().device_type == wgpu::DeviceType::Cpu {
        MAX_BATCH
    } else {
        usize::MAX
    }
}

/// Optimisation settings; the defaults suit standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per mini-batch (the last batch of an epoch holds the rest;
    /// rows are reshuffled every epoch).
    pub batch_size: usize,
    /// SGD learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// L2 weight decay (not on the bias).
    pub weight_decay: f32,
    /// Seed of the shuffling; the same seed gives the same weights on the same adapter.
    pub seed: u64,
    /// With a validation set: evaluate after every `eval_every` epochs (and
    /// after the last).
    pub eval_every: usize,
    /// With a validation set: stop when the validation balanced error has
    /// not improved for this many evaluations (`None`: run every epoch).
    /// Either way the weights of the best evaluation are the ones kept.
    pub patience: Option<usize>,
    /// With a validation set: evaluations before this epoch are recorded
    /// but neither kept nor counted toward `patience` (`None`: a tenth of
    /// `epochs`). An evaluation's balanced error moves in steps of
    /// `1 / (C n_c)`, and a few lucky rows of the rarest classes must not
    /// end a run that has only begun to learn.
    pub warmup: Option<usize>,
    /// Deferred re-weighting (LDAM-DRW): from this epoch on, the loss's
    /// class weights `alpha` become these (e.g.
    /// [`crate::effective_number_weights`]); the op is kept, only its
    /// vectors change on the device.
    pub drw: Option<Drw>,
    /// The format of the batch's logits and of their gradient, which the
    /// linear forward writes, the loss reads and writes, and the update
    /// reads: [`Dtype::F16`] or [`Dtype::Bf16`] halve the loss's traffic.
    /// Features, weights, the loss and every sum stay f32; a half logit is
    /// the f32 sum rounded once, to nearest even.
    pub logits: Dtype,
}

/// A deferred re-weighting: the epoch it starts (1-based) and the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Drw {
    /// The first epoch trained with `weights`.
    pub epoch: usize,
    /// The class weights `alpha` from then on (`C` of them).
    pub weights: Vec<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 128,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            eval_every: 1,
            patience: None,
            warmup: None,
            drw: None,
            logits: Dtype::F32,
        }
    }
}

impl TrainConfig {
    /// The first epoch whose evaluation may be kept: `warmup`, or a tenth of `epochs`.
    pub fn warmup_epochs(&self) -> usize {
        self.warmup.unwrap_or(self.epochs / 10)
    }

    /// Epochs that give at least about 3000 SGD steps (and at least 30
    /// epochs, at most 1000): small training sets need more passes to
    /// converge, large ones fewer.
    pub fn epochs_for(rows: usize, batch_size: usize) -> usize {
        let batches = rows.div_ceil(batch_size.max(1)).max(1);
        3000usize.div_ceil(batches).clamp(30, 1000)
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    rows: u32,
    dim: u32,
    start: u32,
    _pad: u32,
}

/// Workgroups of a grid-stride pass over `elements` outputs.
fn dispatch_groups(elements: usize) -> u32 {
    elements.div_ceil(WG).clamp(1, 65_535) as u32
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    rows: u32,
    dim: u32,
    classes: u32,
    flags: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad: u32,
}

/// Append the constant-1 feature that carries the bias.
fn with_bias_column(features: &[f32], dim: usize) -> Vec<f32> {
    features
        .chunks(dim.max(1))
        .flat_map(|row| row.iter().copied().chain(std::iter::once(1.0)))
        .collect()
}

fn check_features(features: &[f32], dim: usize, what: &str) -> Result<usize> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return Err(Error::ShapeMismatch {
            what: format!("{what} length (a multiple of D = {dim})"),
            expected: features.len().div_ceil(dim.max(1)) * dim,
            got: features.len(),
        });
    }
    if let Some(index) = features.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: what.into(),
            index,
            value: features[index] as f64,
        });
    }
    Ok(features.len() / dim)
}

/// Check a training set and the settings against `spec`; returns `N`.
fn check_training_set(
    spec: &LossSpec,
    features: &[f32],
    labels: &[i64],
    dim: usize,
    config: &TrainConfig,
    max_batch: usize,
) -> Result<usize> {
    let n = check_features(features, dim, "training features")?;
    if labels.len() != n {
        return Err(Error::ShapeMismatch {
            what: "training labels (rows of the features)".into(),
            expected: n,
            got: labels.len(),
        });
    }
    if n == 0 {
        return Err(Error::InvalidArgument("the training set is empty".into()));
    }
    let c = spec.classes();
    spec.validate()?;
    for (row, &y) in labels.iter().enumerate() {
        if y != spec.ignore_index() && !usize::try_from(y).is_ok_and(|y| y < c) {
            return Err(Error::LabelOutOfRange {
                row,
                label: y,
                classes: c,
                ignore_index: None,
            });
        }
    }
    if config.batch_size == 0 || config.batch_size > max_batch {
        return Err(Error::InvalidArgument(format!(
            "batch size must be 1..={max_batch} on this adapter, got {}",
            config.batch_size
        )));
    }
    for (what, v) in [
        ("lr", config.lr),
        ("momentum", config.momentum),
        ("weight decay", config.weight_decay),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "{what} must be finite and >= 0, got {v}"
            )));
        }
    }
    Ok(n)
}

/// One batch size's loss binding and linear bind group.
#[derive(Debug)]
struct Shape {
    rows: usize,
    bound_loss: BoundLoss,
    linear_group: wgpu::BindGroup,
}

/// The per-batch buffers every batch shape binds, and the model's state.
#[derive(Debug)]
struct BatchBuffers {
    features: wgpu::Buffer,
    labels: wgpu::Buffer,
    logits: wgpu::Buffer,
    grad: wgpu::Buffer,
    /// The loss pass's reduced loss, which `accumulate` adds up.
    loss: wgpu::Buffer,
    weights: wgpu::Buffer,
    velocity: wgpu::Buffer,
    unused: wgpu::Buffer,
    dim: usize,
    classes: usize,
    /// The format of `logits` and `grad`.
    dtype: Dtype,
}

impl BatchBuffers {
    /// Buffers for batches of up to `batch` rows of `dim` (bias included)
    /// features and `classes` logits of `dtype`; weights and velocity at zero.
    fn new(ctx: &Context, batch: usize, dim: usize, classes: usize, dtype: Dtype) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let zeros = vec![0.0f32; dim * classes];
        let bytes = |per_row: usize| (batch * per_row * 4) as u64;
        // Whole u32 words: the last one of an odd count of halves is padding.
        let logit_bytes = (batch * classes) as u64 * dtype.bytes();
        let logit_bytes = logit_bytes.div_ceil(4) * 4;
        if bytes(dim) > ctx.limits().max_storage_buffer_binding_size {
            return Err(Error::TooLarge(format!(
                "batch features: {} bytes exceed the storage binding limit of {}",
                bytes(dim),
                ctx.limits().max_storage_buffer_binding_size
            )));
        }
        Ok(Self {
            features: buffers::storage(ctx, "batch features", bytes(dim), U::STORAGE)?,
            labels: buffers::storage(ctx, "batch labels", bytes(1), U::STORAGE)?,
            logits: buffers::storage(ctx, "batch logits", logit_bytes, U::STORAGE)?,
            grad: buffers::storage(ctx, "batch dlogits", logit_bytes, U::STORAGE)?,
            loss: buffers::storage(ctx, "batch loss", 4, U::STORAGE)?,
            weights: buffers::upload(
                ctx,
                "weights",
                bytemuck::cast_slice(&zeros),
                U::STORAGE | U::COPY_SRC | U::COPY_DST,
            )?,
            velocity: buffers::upload(
                ctx,
                "velocity",
                bytemuck::cast_slice(&zeros),
                U::STORAGE | U::COPY_SRC | U::COPY_DST,
            )?,
            unused: buffers::storage(ctx, "unused", 4, U::STORAGE)?,
            dim,
            classes,
            dtype,
        })
    }

    /// The loss binding and the linear bind group of a batch of `rows`.
    fn bind_shape(
        &self,
        ctx: &Context,
        loss: &SoftmaxXent,
        rows: usize,
        config: &TrainConfig,
    ) -> Result<(Shape, buffers::ParamSlots)> {
        let bound_loss = loss.bind(&LossBuffers {
            grad: GradOutput::Separate(Region::whole(&self.grad)),
            loss: Some(Region::new(&self.loss, 0, 4)),
            dtype: self.dtype,
            ..LossBuffers::new(
                Region::whole(&self.logits),
                Region::whole(&self.labels),
                rows,
            )
        })?;
        let linear_params = buffers::param_slots(
            ctx,
            &[LinearParams {
                rows: rows as u32,
                dim: self.dim as u32,
                classes: self.classes as u32,
                flags: 0,
                lr: config.lr,
                momentum: config.momentum,
                weight_decay: config.weight_decay,
                _pad: 0,
            }],
        )?;
        let linear_group = buffers::bind_group(
            ctx,
            "linear",
            &ctx.kernels().layout(Family::linear(self.dtype)),
            vec![
                linear_params.slot(0),
                self.features.as_entire_binding(),
                self.weights.as_entire_binding(),
                self.velocity.as_entire_binding(),
                self.grad.as_entire_binding(),
                self.unused.as_entire_binding(),
                self.logits.as_entire_binding(),
            ],
        );
        Ok((
            Shape {
                rows,
                bound_loss,
                linear_group,
            },
            linear_params,
        ))
    }
}

/// The training set on the device, the epoch's permutation and the running loss.
#[derive(Debug)]
struct TrainingData {
    features: wgpu::Buffer,
    labels: wgpu::Buffer,
    perm: wgpu::Buffer,
    acc: wgpu::Buffer,
}

impl TrainingData {
    /// One gather bind group per mini-batch (rows `k * batch ..` of the
    /// permutation), with the shape index each batch uses (0 for full
    /// batches, 1 for a shorter last one).
    fn gather_steps(
        &self,
        ctx: &Context,
        b: &BatchBuffers,
        batch_rows: &[usize],
        batch: usize,
    ) -> Result<(Vec<(wgpu::BindGroup, usize)>, buffers::ParamSlots)> {
        let gather_params = buffers::param_slots(
            ctx,
            &batch_rows
                .iter()
                .enumerate()
                .map(|(k, &rows)| GatherParams {
                    rows: rows as u32,
                    dim: b.dim as u32,
                    start: (k * batch) as u32,
                    _pad: 0,
                })
                .collect::<Vec<_>>(),
        )?;
        let layout = ctx.kernels().layout(Family::Gather);
        let steps = batch_rows
            .iter()
            .enumerate()
            .map(|(k, &rows)| {
                let group = buffers::bind_group(
                    ctx,
                    "gather",
                    &layout,
                    vec![
                        gather_params.slot(k),
                        self.features.as_entire_binding(),
                        self.perm.as_entire_binding(),
                        self.labels.as_entire_binding(),
                        b.features.as_entire_binding(),
                        b.labels.as_entire_binding(),
                        b.loss.as_entire_binding(),
                        self.acc.as_entire_binding(),
                    ],
                );
                (group, usize::from(rows != batch))
            })
            .collect();
        Ok((steps, gather_params))
    }
}

/// A linear classifier and its training state on the GPU.
#[derive(Debug)]
pub struct LinearTrainer {
    ctx: Context,
    config: TrainConfig,
    loss: SoftmaxXent,
    /// The full batch and, when the rows do not divide evenly, the last one.
    shapes: Vec<Shape>,
    /// Each mini-batch of an epoch: its gather bind group and its shape.
    steps: Vec<(wgpu::BindGroup, usize)>,
    dim: usize,
    classes: usize,
    rows: usize,
    rng: Rng,
    data: TrainingData,
    batch: BatchBuffers,
    /// The held-out set [`LinearTrainer::fit`] evaluates and stops on.
    validation: Option<ValidationSet>,
    _params: Vec<buffers::ParamSlots>,
}

impl LinearTrainer {
    /// Upload the training set (`N x D` features, `N` labels in `[0, C)` or
    /// the spec's ignore index) and set up every buffer and bind group; the
    /// weights start at zero. The loss is `spec` with the weighted-mean
    /// reduction (the mean when every `alpha` is 1).
    pub fn new(
        ctx: &Context,
        spec: &LossSpec,
        features: &[f32],
        labels: &[i64],
        dim: usize,
        config: TrainConfig,
    ) -> Result<Self> {
        let n = check_training_set(spec, features, labels, dim, &config, max_batch(ctx))?;
        let c = spec.classes();
        let d = dim + 1;
        let batch = config.batch_size.min(n);
        let spec = spec.clone().with_reduction(Reduction::WeightedMean);
        let loss = ctx.softmax_xent(&spec)?;
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let x = with_bias_column(features, dim);
            if x.len() as u64 * 4 > ctx.limits().max_storage_buffer_binding_size {
                return Err(Error::TooLarge(format!(
                    "training features: {} bytes exceed the storage binding limit of {}",
                    x.len() * 4,
                    ctx.limits().max_storage_buffer_binding_size
                )));
            }
            let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let data = TrainingData {
                features: buffers::upload(ctx, "features", bytemuck::cast_slice(&x), U::STORAGE)?,
                labels: buffers::upload(
                    ctx,
                    "labels",
                    bytemuck::cast_slice(&labels32),
                    U::STORAGE,
                )?,
                perm: buffers::storage(ctx, "perm", (n * 4) as u64, U::STORAGE | U::COPY_DST)?,
                acc: buffers::storage(
                    ctx,
                    "running loss",
                    4,
                    U::STORAGE | U::COPY_SRC | U::COPY_DST,
                )?,
            };
            let batch_buffers = BatchBuffers::new(ctx, batch, d, c, config.logits)?;
            // Full batches of `batch` rows, then one shorter batch for the
            // rest: every row is used every epoch.
            let batches = n.div_ceil(batch);
            let rest = n - (batches - 1) * batch;
            let mut shapes = Vec::new();
            let mut params = Vec::new();
            for rows in if rest == batch {
                vec![batch]
            } else {
                vec![batch, rest]
            } {
                let (shape, linear_params) = batch_buffers.bind_shape(ctx, &loss, rows, &config)?;
                params.push(linear_params);
                shapes.push(shape);
            }
            let batch_rows: Vec<usize> = (0..batches)
                .map(|k| if k + 1 == batches { rest } else { batch })
                .collect();
            let (steps, gather_params) =
                data.gather_steps(ctx, &batch_buffers, &batch_rows, batch)?;
            params.push(gather_params);
            Ok(Self {
                ctx: ctx.clone(),
                rng: Rng::new(config.seed),
                config,
                loss,
                shapes,
                steps,
                dim,
                classes: c,
                rows: n,
                data,
                batch: batch_buffers,
                validation: None,
                _params: params,
            })
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Hold out `features` (`N x D`) and `labels` (each in `[0, C)`):
    /// [`LinearTrainer::fit`] then evaluates the validation balanced error
    /// on the device every `eval_every` epochs, stops by `patience`, and
    /// keeps the weights of the best evaluation.
    pub fn with_validation(mut self, features: &[f32], labels: &[i64]) -> Result<Self> {
        let ctx = self.ctx.clone();
        let set = ctx.scoped(|| ValidationSet::new(&ctx, &self.batch, features, labels))?;
        self.validation = Some(set);
        Ok(self)
    }

    /// The validation balanced error of the current weights, computed on
    /// the device (only the per-class counts come back).
    pub fn validation_balanced_error(&self) -> Result<f64> {
        let set = self
            .validation
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the trainer has no validation set".into()))?;
        let ctx = &self.ctx;
        ctx.scoped(|| {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            set.record(ctx, &mut encoder);
            ctx.queue().submit([encoder.finish()]);
            let (counts, len) = set.counts();
            let raw = buffers::read::<u32>(ctx, &[(counts, 0, len)])?;
            set.balanced_error(&raw[0])
        })
    }

    /// One epoch: shuffle, then every full mini-batch (gather, logits, fused
    /// loss forward+backward, SGD step) recorded into one encoder and
    /// submitted once. Returns the mean of the batches' losses, the only
    /// value read back.
    pub fn epoch(&mut self) -> Result<f32> {
        Ok(self.run_epoch(false)?.0)
    }

    /// One epoch and, when `evaluate`, the validation pass after its last
    /// step in the same submission: the mean batch loss and the validation
    /// balanced error, read back together.
    fn run_epoch(&mut self, evaluate: bool) -> Result<(f32, Option<f64>)> {
        let mut order: Vec<u32> = (0..self.rows as u32).collect();
        for i in (1..order.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let ctx = &self.ctx;
        let batches = self.steps.len();
        let validation = self.validation.as_ref().filter(|_| evaluate);
        ctx.scoped(|| {
            ctx.queue()
                .write_buffer(&self.data.perm, 0, bytemuck::cast_slice(&order));
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            encoder.clear_buffer(&self.data.acc, 0, None);
            self.record_steps(&mut encoder);
            if let Some(set) = validation {
                set.record(ctx, &mut encoder);
            }
            ctx.queue().submit([encoder.finish()]);
            let mut regions = vec![(&self.data.acc, 0, 1)];
            if let Some(set) = validation {
                let (counts, len) = set.counts();
                regions.push((counts, 0, len));
            }
            let raw = buffers::read::<u32>(ctx, &regions)?;
            let loss = f32::from_bits(raw[0][0]) / batches.max(1) as f32;
            let balanced_error = match validation {
                Some(set) => Some(set.balanced_error(&raw[1])?),
                None => None,
            };
            Ok((loss, balanced_error))
        })
    }

    /// Every mini-batch of an epoch, in the permutation's order.
    fn record_steps(&self, encoder: &mut wgpu::CommandEncoder) {
        let kernels = self.ctx.kernels();
        let gather = kernels.pipeline(Entry::Gather, 0);
        let accumulate = kernels.pipeline(Entry::Accumulate, 0);
        let family = Family::linear(self.config.logits);
        let forward = kernels.pipeline_in(Entry::LinearForward, family);
        let update = kernels.pipeline_in(Entry::LinearUpdate, family);
        let (d, c) = (self.dim + 1, self.classes);
        let units = |rows: usize| logit_words(rows * c, self.config.logits);
        for (gather_group, shape) in &self.steps {
            let shape = &self.shapes[*shape];
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&gather);
                pass.set_bind_group(0, gather_group, &[]);
                pass.dispatch_workgroups(dispatch_groups(shape.rows * d), 1, 1);
                pass.set_pipeline(&forward);
                pass.set_bind_group(0, &shape.linear_group, &[]);
                pass.dispatch_workgroups(dispatch_groups(units(shape.rows)), 1, 1);
            }
            self.loss.record(encoder, &shape.bound_loss);
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&update);
            pass.set_bind_group(0, &shape.linear_group, &[]);
            pass.dispatch_workgroups(dispatch_groups(d * c), 1, 1);
            pass.set_pipeline(&accumulate);
            pass.set_bind_group(0, gather_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
    }

    /// The weights `(D + 1) x C`, row-major; the last row is the bias.
    pub fn weights(&self) -> Result<Vec<f32>> {
        let len = (self.dim + 1) * self.classes;
        self.ctx.read_f32(&self.batch.weights, 0, len)
    }

    /// Replace the weights (and reset the momentum), `(D + 1) x C`.
    pub fn set_weights(&mut self, weights: &[f32]) -> Result<()> {
        let len = (self.dim + 1) * self.classes;
        if weights.len() != len {
            return Err(Error::ShapeMismatch {
                what: "weights ((D + 1) x C)".into(),
                expected: len,
                got: weights.len(),
            });
        }
        self.ctx
            .queue()
            .write_buffer(&self.batch.weights, 0, bytemuck::cast_slice(weights));
        self.ctx.queue().write_buffer(
            &self.batch.velocity,
            0,
            bytemuck::cast_slice(&vec![0.0f32; len]),
        );
        Ok(())
    }

    /// `X W` for any `N x D` features, on the GPU, in f32 whatever the
    /// training logits' format.
    pub fn logits(&self, features: &[f32]) -> Result<Vec<f32>> {
        self.logits_as(features, Dtype::F32)
    }

    /// `X W` as the loss sees it in training: computed by the training
    /// forward, in [`TrainConfig::logits`]' format, widened to f32 (equal
    /// to [`LinearTrainer::logits`] for f32).
    pub fn loss_logits(&self, features: &[f32]) -> Result<Vec<f32>> {
        self.logits_as(features, self.config.logits)
    }

    fn logits_as(&self, features: &[f32], dtype: Dtype) -> Result<Vec<f32>> {
        let n = check_features(features, self.dim, "features")?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = with_bias_column(features, self.dim);
        let raw = self.run_linear(&x, n, None, Entry::LinearForward, dtype)?;
        Ok(widen(&raw, n * self.classes, dtype))
    }

    /// The gradient of the mean loss over this batch with respect to the
    /// weights, `(D + 1) x C`, computed by the same kernels as training, in
    /// the training logits' format (no step is taken). For checking
    /// against finite differences.
    pub fn weight_gradient(&self, features: &[f32], labels: &[i64]) -> Result<Vec<f32>> {
        let n = check_features(features, self.dim, "features")?;
        if labels.len() != n || n == 0 || n > max_batch(&self.ctx) {
            return Err(Error::ShapeMismatch {
                what: "labels (rows, 1..=MAX_BATCH on CPU adapters)".into(),
                expected: n,
                got: labels.len(),
            });
        }
        let dtype = self.config.logits;
        let x = with_bias_column(features, self.dim);
        let logits = self.run_linear(&x, n, None, Entry::LinearForward, dtype)?;
        let len = n * self.classes;
        let grad = match dtype {
            Dtype::F32 => self.loss_gradient::<f32>(&logits, len, labels)?,
            Dtype::F16 => self.loss_gradient::<half::f16>(&logits, len, labels)?,
            Dtype::Bf16 => self.loss_gradient::<half::bf16>(&logits, len, labels)?,
        };
        let wgrad = self.run_linear(&x, n, Some(&grad), Entry::LinearUpdate, dtype)?;
        Ok(bytemuck::pod_collect_to_vec(&wgrad))
    }

    /// The loss's gradient (as bytes) of `len` logits of type `T` in `raw`.
    fn loss_gradient<T: Element>(&self, raw: &[u8], len: usize, labels: &[i64]) -> Result<Vec<u8>> {
        let logits: Vec<T> = bytemuck::pod_collect_to_vec(&raw[..len * std::mem::size_of::<T>()]);
        let (_, grad) = self
            .loss
            .forward_backward_as(&logits, labels, Upstream::default())?;
        Ok(bytemuck::cast_slice(&grad).to_vec())
    }

    /// One forward (`out = A W`, logits of `dtype`) or gradient-only update
    /// (`wgrad = A^T G`, `G` the bytes of `dtype`s), its output as bytes.
    fn run_linear(
        &self,
        a: &[f32],
        n: usize,
        g: Option<&[u8]>,
        entry: Entry,
        dtype: Dtype,
    ) -> Result<Vec<u8>> {
        let ctx = &self.ctx;
        let (d, c) = (self.dim + 1, self.classes);
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let a_buf = buffers::upload(ctx, "features", bytemuck::cast_slice(a), U::STORAGE)?;
            // Whole words (buffers copy in multiples of 4 bytes).
            let mut g = g.unwrap_or(&[]).to_vec();
            g.resize(g.len().div_ceil(4) * 4, 0);
            let g_buf = buffers::upload(ctx, "dlogits", &g, U::STORAGE)?;
            let (out_words, units) = if entry == Entry::LinearForward {
                let words = logit_words(n * c, dtype);
                (words, words)
            } else {
                (d * c, d * c)
            };
            let out =
                buffers::storage(ctx, "out", (out_words * 4) as u64, U::STORAGE | U::COPY_SRC)?;
            let params = buffers::param_slots(
                ctx,
                &[LinearParams {
                    rows: n as u32,
                    dim: d as u32,
                    classes: c as u32,
                    flags: FLAG_WRITE_GRAD,
                    lr: 0.0,
                    momentum: 0.0,
                    weight_decay: 0.0,
                    _pad: 0,
                }],
            )?;
            let unused = buffers::storage(ctx, "unused", 4, U::STORAGE)?;
            let (wgrad, forward_out) = if entry == Entry::LinearForward {
                (&unused, &out)
            } else {
                (&out, &unused)
            };
            let family = Family::linear(dtype);
            let group = buffers::bind_group(
                ctx,
                "linear (host)",
                &ctx.kernels().layout(family),
                vec![
                    params.slot(0),
                    a_buf.as_entire_binding(),
                    self.batch.weights.as_entire_binding(),
                    self.batch.velocity.as_entire_binding(),
                    g_buf.as_entire_binding(),
                    wgrad.as_entire_binding(),
                    forward_out.as_entire_binding(),
                ],
            );
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&ctx.kernels().pipeline_in(entry, family));
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(dispatch_groups(units), 1, 1);
            }
            ctx.queue().submit([encoder.finish()]);
            let words = buffers::read::<u32>(ctx, &[(&out, 0, out_words)])?.remove(0);
            Ok(bytemuck::cast_slice(&words).to_vec())
        })
    }
}

/// The u32 words (the forward's units) of `len` logits of `dtype`.
fn logit_words(len: usize, dtype: Dtype) -> usize {
    (len * dtype.bytes() as usize).div_ceil(4)
}

/// The first `len` values of `dtype` in `raw`, widened to f32.
fn widen(raw: &[u8], len: usize, dtype: Dtype) -> Vec<f32> {
    let take = |size: usize| &raw[..len * size];
    match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec(take(4)),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(take(2))
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::Bf16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(take(2))
            .into_iter()
            .map(f32::from)
            .collect(),
    }
}
