//! The trainer's held-out set, evaluated where the weights live: logits
//! `X_val W` (`linear.wgsl`), their argmax (`posthoc.wgsl` at tau = 0) and
//! the per-class counts (`metrics.wgsl`), recorded after an epoch's steps in
//! the same encoder. Only the `2C + 1` counters come back, never the logits;
//! the balanced error is formed from those integers in f64 on the host.

use crate::buffers;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{Entry, Family};
use crate::metrics::{check_labels, report, BoundCounts, CountsBuffers};
use crate::posthoc::{BoundPostHoc, PostHoc, PostHocBuffers};
use crate::prior::ClassPrior;
use crate::region::Region;

use super::{check_features, dispatch_groups, with_bias_column, BatchBuffers, LinearParams};

/// A validation set on the device and the bound passes that score it.
#[derive(Debug)]
pub(super) struct ValidationSet {
    rows: usize,
    classes: usize,
    linear_group: wgpu::BindGroup,
    posthoc: PostHoc,
    bound_posthoc: BoundPostHoc,
    bound_counts: BoundCounts,
    counts: wgpu::Buffer,
    _buffers: [wgpu::Buffer; 4],
    _params: buffers::ParamSlots,
}

impl ValidationSet {
    /// Upload `features` (`N x D`, without the bias column) and `labels`
    /// (each in `[0, C)`), and bind the three passes to the model's weights.
    pub(super) fn new(
        ctx: &Context,
        model: &BatchBuffers,
        features: &[f32],
        labels: &[i64],
    ) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let (dim, c) = (model.dim - 1, model.classes);
        let n = check(ctx, features, labels, dim, c)?;
        let x = with_bias_column(features, dim);
        let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        let features_buf = buffers::upload(
            ctx,
            "validation features",
            bytemuck::cast_slice(&x),
            U::STORAGE,
        )?;
        let labels_buf = buffers::upload(
            ctx,
            "validation labels",
            bytemuck::cast_slice(&labels32),
            U::STORAGE,
        )?;
        let logits = buffers::storage(ctx, "validation logits", (n * c * 4) as u64, U::STORAGE)?;
        let predictions =
            buffers::storage(ctx, "validation predictions", (n * 4) as u64, U::STORAGE)?;
        let counts = buffers::storage(
            ctx,
            "validation counts",
            ((2 * c + 1) * 4) as u64,
            U::STORAGE | U::COPY_SRC | U::COPY_DST,
        )?;
        let params = buffers::param_slots(
            ctx,
            &[LinearParams {
                rows: n as u32,
                dim: model.dim as u32,
                classes: c as u32,
                flags: 0,
                lr: 0.0,
                momentum: 0.0,
                weight_decay: 0.0,
                _pad: 0,
            }],
        )?;
        let linear_group = buffers::bind_group(
            ctx,
            "validation linear",
            &ctx.kernels().layout(Family::Linear),
            vec![
                params.slot(0),
                features_buf.as_entire_binding(),
                model.weights.as_entire_binding(),
                model.velocity.as_entire_binding(),
                model.grad.as_entire_binding(),
                model.unused.as_entire_binding(),
                logits.as_entire_binding(),
            ],
        );
        // The plain argmax: a uniform prior at tau = 0 adds nothing.
        let uniform = ClassPrior::from_probabilities(&vec![1.0; c])?;
        let posthoc = PostHoc::new(ctx, &uniform, &[0.0])?;
        let bound_posthoc = posthoc.bind(&PostHocBuffers {
            logits: Region::whole(&logits),
            dtype: crate::Dtype::F32,
            rows: n,
            predictions: Region::whole(&predictions),
        })?;
        let bound_counts = ctx.bind_counts(&CountsBuffers {
            labels: Region::whole(&labels_buf),
            predictions: Some(Region::whole(&predictions)),
            rows: n,
            classes: c,
            taus: 1,
            counts: Region::whole(&counts),
        })?;
        Ok(Self {
            rows: n,
            classes: c,
            linear_group,
            posthoc,
            bound_posthoc,
            bound_counts,
            counts,
            _buffers: [features_buf, labels_buf, logits, predictions],
            _params: params,
        })
    }

    /// Record logits, argmax and counts of the current weights.
    pub(super) fn record(&self, ctx: &Context, encoder: &mut wgpu::CommandEncoder) {
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("logit-adjust validation logits"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&ctx.kernels().pipeline(Entry::LinearForward, 0));
            pass.set_bind_group(0, &self.linear_group, &[]);
            pass.dispatch_workgroups(dispatch_groups(self.rows * self.classes), 1, 1);
        }
        self.posthoc.record(encoder, &self.bound_posthoc);
        self.bound_counts.record(encoder);
    }

    /// The counters to read back: buffer and element count.
    pub(super) fn counts(&self) -> (&wgpu::Buffer, usize) {
        (&self.counts, 2 * self.classes + 1)
    }

    /// The balanced error (docs/MATH.md section 7) from the counters.
    pub(super) fn balanced_error(&self, raw: &[u32]) -> Result<f64> {
        let c = self.classes;
        if raw.get(2 * c) != Some(&0) {
            return Err(Error::Gpu(
                "the device saw validation labels the host had checked".into(),
            ));
        }
        let total: Vec<u64> = raw[..c].iter().map(|&k| k as u64).collect();
        let correct: Vec<u64> = raw[c..2 * c].iter().map(|&k| k as u64).collect();
        Ok(report(&total, &correct, None)?.balanced_error)
    }
}

/// Check a validation set against the model (`dim` features without the
/// bias, `c` classes) and the binding limit; returns its rows.
fn check(ctx: &Context, features: &[f32], labels: &[i64], dim: usize, c: usize) -> Result<usize> {
    let n = check_features(features, dim, "validation features")?;
    if labels.len() != n {
        return Err(Error::ShapeMismatch {
            what: "validation labels (rows of the validation features)".into(),
            expected: n,
            got: labels.len(),
        });
    }
    if n == 0 {
        return Err(Error::InvalidArgument("the validation set is empty".into()));
    }
    check_labels(labels, c)?;
    let limit = ctx.limits().max_storage_buffer_binding_size;
    for (what, bytes) in [
        ("validation features", (n * (dim + 1)) as u64 * 4),
        ("validation logits", (n * c) as u64 * 4),
    ] {
        if bytes > limit {
            return Err(Error::TooLarge(format!(
                "{what}: {bytes} bytes exceed the storage binding limit of {limit}"
            )));
        }
    }
    Ok(n)
}
