//! Diagnostics for measuring kernels, as `bench`, `tune` and the criterion
//! benches do: GPU timestamps where the adapter has them (host timing around
//! a device wait otherwise), and what the kernels are measured against: a
//! shader copy and read of the same bytes, the driver's buffer copy, and the
//! unfused sequence of kernels a framework runs (`shaders/baseline.wgsl`).

use bytemuck::{Pod, Zeroable};

use crate::buffers::{self, plan_chunks, range};
use crate::context::Context;
use crate::error::Result;
use crate::kernels::{Entry, Family};
use crate::layouts::{PostHocVariant, Variant};
use crate::loss::LossSpec;
use crate::posthoc::dispatch_chunks;
use crate::prior::ClassPrior;
use crate::region::Region;
use crate::softmax_xent::{GradOutput, LossBuffers};
use crate::tuning::{LossChoice, PostHocChoice, Tuning, LOSS_VARIANTS, TUNED_CLASSES};

const WG: usize = 64;

/// How a [`Timer`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Timestamp queries written by the GPU at the start and end of each pass.
    GpuTimestamps,
    /// Wall time around submit and a device wait (includes submission overhead).
    Host,
}

impl Timing {
    /// `"gpu-timestamps"` or `"host"`.
    pub fn name(self) -> &'static str {
        match self {
            Timing::GpuTimestamps => "gpu-timestamps",
            Timing::Host => "host",
        }
    }
}

/// Times recorded GPU work; reports the median over repetitions, in ms.
#[derive(Debug)]
pub struct Timer {
    ctx: Context,
    timing: Timing,
}

/// The `q`-quantile of `v` (`q` in [0, 1]), linear between order
/// statistics as numpy's default; NaN when empty.
pub fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let at = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

impl Timer {
    /// GPU timestamps when the device has `TIMESTAMP_QUERY`, else host timing.
    pub fn new(ctx: &Context) -> Self {
        let timing = if ctx.capabilities().timestamps {
            Timing::GpuTimestamps
        } else {
            Timing::Host
        };
        Self {
            ctx: ctx.clone(),
            timing,
        }
    }

    /// How this timer measures.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Median ms of `reps` runs of `record`, each in its own compute pass,
    /// after one warm-up run.
    pub fn time_pass(
        &self,
        reps: usize,
        record: &dyn Fn(&mut wgpu::ComputePass<'_>),
    ) -> Result<f64> {
        self.time_pass_samples(reps, record).map(median)
    }

    /// The ms of each of `reps` runs of `record` (as [`Timer::time_pass`]),
    /// for percentiles.
    pub fn time_pass_samples(
        &self,
        reps: usize,
        record: &dyn Fn(&mut wgpu::ComputePass<'_>),
    ) -> Result<Vec<f64>> {
        self.time(reps, &|encoder, writes| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed"),
                timestamp_writes: writes,
            });
            record(&mut pass);
        })
    }

    /// Median ms of `reps` runs of `record` on the encoder (for work that is
    /// not a compute pass, such as `copy_buffer_to_buffer`).
    pub fn time_encoder(
        &self,
        reps: usize,
        record: &dyn Fn(&mut wgpu::CommandEncoder),
    ) -> Result<f64> {
        self.time_encoder_samples(reps, record).map(median)
    }

    /// The ms of each of `reps` runs of `record` on the encoder.
    pub fn time_encoder_samples(
        &self,
        reps: usize,
        record: &dyn Fn(&mut wgpu::CommandEncoder),
    ) -> Result<Vec<f64>> {
        self.time(reps, &|encoder, writes| match writes {
            Some(w) => {
                let begin = wgpu::ComputePassTimestampWrites {
                    query_set: w.query_set,
                    beginning_of_pass_write_index: w.beginning_of_pass_write_index,
                    end_of_pass_write_index: None,
                };
                let end = wgpu::ComputePassTimestampWrites {
                    query_set: w.query_set,
                    beginning_of_pass_write_index: None,
                    end_of_pass_write_index: w.end_of_pass_write_index,
                };
                drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(begin),
                }));
                record(encoder);
                drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(end),
                }));
            }
            None => record(encoder),
        })
    }

    fn time(
        &self,
        reps: usize,
        run: &dyn Fn(&mut wgpu::CommandEncoder, Option<wgpu::ComputePassTimestampWrites<'_>>),
    ) -> Result<Vec<f64>> {
        let ctx = &self.ctx;
        let device = ctx.device();
        let reps = reps.max(1);
        ctx.scoped(|| {
            // Warm-up: pipelines, caches, first-touch page faults.
            let mut encoder = device.create_command_encoder(&Default::default());
            run(&mut encoder, None);
            ctx.queue().submit([encoder.finish()]);
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| crate::Error::Gpu(e.to_string()))?;
            match self.timing {
                Timing::Host => {
                    let mut times = Vec::with_capacity(reps);
                    for _ in 0..reps {
                        let start = std::time::Instant::now();
                        let mut encoder = device.create_command_encoder(&Default::default());
                        run(&mut encoder, None);
                        ctx.queue().submit([encoder.finish()]);
                        device
                            .poll(wgpu::PollType::wait_indefinitely())
                            .map_err(|e| crate::Error::Gpu(e.to_string()))?;
                        times.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(times)
                }
                Timing::GpuTimestamps => {
                    let count = 2 * reps as u32;
                    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("timer"),
                        ty: wgpu::QueryType::Timestamp,
                        count,
                    });
                    let resolve = buffers::storage(
                        ctx,
                        "timestamps",
                        count as u64 * 8,
                        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    )?;
                    let mut encoder = device.create_command_encoder(&Default::default());
                    for r in 0..reps as u32 {
                        run(
                            &mut encoder,
                            Some(wgpu::ComputePassTimestampWrites {
                                query_set: &queries,
                                beginning_of_pass_write_index: Some(2 * r),
                                end_of_pass_write_index: Some(2 * r + 1),
                            }),
                        );
                    }
                    encoder.resolve_query_set(&queries, 0..count, &resolve, 0);
                    ctx.queue().submit([encoder.finish()]);
                    let ticks =
                        buffers::read::<u64>(ctx, &[(&resolve, 0, count as usize)])?.remove(0);
                    let period_ns = ctx.queue().get_timestamp_period() as f64;
                    Ok(ticks
                        .chunks(2)
                        .map(|t| t[1].wrapping_sub(t[0]) as f64 * period_ns * 1e-6)
                        .collect())
                }
            }
        })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    classes: u32,
    scale: f32,
    _pad: u32,
}

/// A shader copy and a shader read over `elements` f32, in chunks under the
/// binding limit; both record into an open pass.
#[derive(Debug)]
pub struct CopyBaseline {
    copy: Vec<(wgpu::BindGroup, u32)>,
    copy_wide: Vec<(wgpu::BindGroup, u32)>,
    read: Vec<(wgpu::BindGroup, u32)>,
    read_wide: Vec<(wgpu::BindGroup, u32)>,
    copy_pipeline: wgpu::ComputePipeline,
    read_pipeline: wgpu::ComputePipeline,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    _keep: Vec<wgpu::Buffer>,
    _params: buffers::ParamSlots,
}

impl CopyBaseline {
    /// Buffers and bind groups for copying (and reading) `elements` f32
    /// (rounded up to a multiple of 4 for the vec4 loads).
    pub fn new(ctx: &Context, elements: usize) -> Result<Self> {
        let vec4s = elements.div_ceil(4).max(1);
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let data: Vec<f32> = (0..vec4s * 4).map(|i| (i % 977) as f32 * 0.001).collect();
            let src = buffers::upload(
                ctx,
                "copy src",
                bytemuck::cast_slice(&data),
                U::STORAGE | U::COPY_SRC,
            )?;
            let dst = buffers::storage(
                ctx,
                "copy dst",
                (vec4s * 16) as u64,
                U::STORAGE | U::COPY_DST,
            )?;
            let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
            let chunks = plan_chunks(ctx.limits(), vec4s, 16, 16, usize::MAX)?;
            let sums =
                buffers::storage(ctx, "read sums", (groups_max * WG * 4) as u64, U::STORAGE)?;
            // Unused bindings: one buffer for the read-only slots, another for
            // the writable ones (one buffer cannot be both in a dispatch).
            let unused = buffers::storage(ctx, "unused", 16, U::STORAGE)?;
            let unused_rw = buffers::storage(ctx, "unused rw", 16, U::STORAGE)?;
            let slots: Vec<Params> = chunks
                .iter()
                .map(|ch| Params {
                    count: ch.rows as u32,
                    classes: 1,
                    scale: 0.0,
                    _pad: 0,
                })
                .collect();
            let params = buffers::param_slots(ctx, &slots)?;
            let layout = ctx.kernels().layout(Family::Baseline);
            let mut copy = Vec::new();
            let mut copy_wide = Vec::new();
            let mut read = Vec::new();
            let mut read_wide = Vec::new();
            for (k, ch) in chunks.iter().enumerate() {
                let (at, bytes) = (ch.start as u64 * 16, ch.rows as u64 * 16);
                let groups = ch.rows.div_ceil(WG).min(groups_max) as u32;
                for (list, dst_binding) in [
                    (&mut copy, range(&dst, at, bytes)),
                    (&mut read, unused_rw.as_entire_binding()),
                ] {
                    let group = buffers::bind_group(
                        ctx,
                        "baseline copy",
                        &layout,
                        vec![
                            params.slot(k),
                            range(&src, at, bytes),
                            dst_binding,
                            unused.as_entire_binding(),
                            unused.as_entire_binding(),
                            sums.as_entire_binding(),
                            unused.as_entire_binding(),
                        ],
                    );
                    list.push((group, groups));
                }
                // The same copy and read with four trips per thread (for the
                // read, a quarter of the per-thread sums to write). The bench
                // keeps the faster of each pair, whichever suits the adapter.
                let wide_groups = ch.rows.div_ceil(4 * WG).min(groups_max) as u32;
                let (last, _) = read.last().cloned().unwrap_or_else(|| unreachable!());
                read_wide.push((last, wide_groups));
                let (last, _) = copy.last().cloned().unwrap_or_else(|| unreachable!());
                copy_wide.push((last, wide_groups));
            }
            Ok(Self {
                copy,
                copy_wide,
                read,
                read_wide,
                copy_pipeline: ctx.kernels().pipeline(Entry::CopyVec4, 0),
                read_pipeline: ctx.kernels().pipeline(Entry::ReadVec4, 0),
                src,
                dst,
                _keep: vec![sums, unused, unused_rw],
                _params: params,
            })
        })
    }

    /// Record the shader copy.
    pub fn record_copy(&self, pass: &mut wgpu::ComputePass<'_>) {
        dispatch_chunks(pass, &self.copy_pipeline, &self.copy);
    }

    /// Record the shader copy with about four vec4s per thread.
    pub fn record_copy_wide(&self, pass: &mut wgpu::ComputePass<'_>) {
        dispatch_chunks(pass, &self.copy_pipeline, &self.copy_wide);
    }

    /// Record the shader read (one vec4 per thread where the dispatch limit
    /// allows).
    pub fn record_read(&self, pass: &mut wgpu::ComputePass<'_>) {
        dispatch_chunks(pass, &self.read_pipeline, &self.read);
    }

    /// Record the shader read with about four vec4s per thread (fewer
    /// per-thread sums written).
    pub fn record_read_wide(&self, pass: &mut wgpu::ComputePass<'_>) {
        dispatch_chunks(pass, &self.read_pipeline, &self.read_wide);
    }

    /// Record the driver's buffer copy of the same bytes.
    pub fn record_driver_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.src, 0, &self.dst, 0, self.src.size());
    }
}

/// The unfused sequence of kernels for `F.cross_entropy(f + b, y)` forward
/// and backward (see `shaders/baseline.wgsl`), on the caller's logits.
#[derive(Debug)]
pub struct Unfused {
    steps: Vec<(wgpu::ComputePipeline, Vec<(wgpu::BindGroup, u32)>)>,
    _keep: Vec<wgpu::Buffer>,
    _params: buffers::ParamSlots,
}

/// The unfused sequence's intermediates.
struct Scratch<'a> {
    z: &'a wgpu::Buffer,
    logp: &'a wgpu::Buffer,
    gl: &'a wgpu::Buffer,
    gz: &'a wgpu::Buffer,
    bias: &'a wgpu::Buffer,
    loss: &'a wgpu::Buffer,
    unused: &'a wgpu::Buffer,
    unused_rw: &'a wgpu::Buffer,
}

impl Scratch<'_> {
    /// The five kernels' bind groups and workgroup counts for chunk `k`
    /// (parameter slots `2k` per element, `2k + 1` per row).
    #[allow(clippy::too_many_arguments)]
    fn chunk_groups(
        &self,
        ctx: &Context,
        layout: &wgpu::BindGroupLayout,
        params: &buffers::ParamSlots,
        logits: &wgpu::Buffer,
        labels: &wgpu::Buffer,
        k: usize,
        ch: &buffers::Chunk,
        c: usize,
    ) -> [(wgpu::BindGroup, u32); 5] {
        let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
        let (at, len) = ((ch.start * c * 4) as u64, (ch.rows * c * 4) as u64);
        let (rows_at, rows_len) = ((ch.start * 4) as u64, (ch.rows * 4) as u64);
        let elem_groups = (ch.rows * c).div_ceil(WG).min(groups_max) as u32;
        let row_groups = ch.rows as u32;
        let (elem_slot, row_slot) = (2 * k, 2 * k + 1);
        let make = |slot: usize,
                    a: wgpu::BindingResource<'_>,
                    b: wgpu::BindingResource<'_>,
                    out: wgpu::BindingResource<'_>| {
            buffers::bind_group(
                ctx,
                "unfused",
                layout,
                vec![
                    params.slot(slot),
                    self.unused.as_entire_binding(),
                    self.unused_rw.as_entire_binding(),
                    a,
                    b,
                    out,
                    range(labels, rows_at, rows_len),
                ],
            )
        };
        fn elems(b: &wgpu::Buffer, at: u64, len: u64) -> wgpu::BindingResource<'_> {
            range(b, at, len)
        }
        let none = || self.unused.as_entire_binding();
        [
            (
                make(
                    elem_slot,
                    elems(logits, at, len),
                    self.bias.as_entire_binding(),
                    elems(self.z, at, len),
                ),
                elem_groups,
            ),
            (
                make(
                    row_slot,
                    elems(self.z, at, len),
                    none(),
                    elems(self.logp, at, len),
                ),
                row_groups,
            ),
            (
                make(
                    row_slot,
                    elems(self.logp, at, len),
                    none(),
                    range(self.loss, rows_at, rows_len),
                ),
                ch.rows.div_ceil(WG) as u32,
            ),
            (
                make(elem_slot, none(), none(), elems(self.gl, at, len)),
                elem_groups,
            ),
            (
                make(
                    row_slot,
                    elems(self.gl, at, len),
                    elems(self.logp, at, len),
                    elems(self.gz, at, len),
                ),
                row_groups,
            ),
        ]
    }
}

impl Unfused {
    /// Intermediate buffers (`z`, `logp`, the two gradients: 4 x N x C f32)
    /// and bind groups for `n x c` logits and `n` i32 labels.
    pub fn new(
        ctx: &Context,
        logits: &wgpu::Buffer,
        labels: &wgpu::Buffer,
        n: usize,
        c: usize,
    ) -> Result<Self> {
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let bytes = (n * c * 4) as u64;
            let z = buffers::storage(ctx, "z", bytes, U::STORAGE)?;
            let logp = buffers::storage(ctx, "logp", bytes, U::STORAGE)?;
            let gl = buffers::storage(ctx, "grad logp", bytes, U::STORAGE)?;
            let gz = buffers::storage(ctx, "grad z", bytes, U::STORAGE)?;
            let bias = buffers::upload(
                ctx,
                "bias",
                bytemuck::cast_slice(&vec![-0.5f32; c]),
                U::STORAGE,
            )?;
            let loss = buffers::storage(ctx, "loss", (n * 4) as u64, U::STORAGE)?;
            let unused = buffers::storage(ctx, "unused", 16, U::STORAGE)?;
            let unused_rw = buffers::storage(ctx, "unused rw", 16, U::STORAGE)?;
            let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
            let chunks = plan_chunks(ctx.limits(), n, (c * 4) as u64, (c * 4) as u64, groups_max)?;
            let scale = -1.0 / n.max(1) as f32;
            let mut slots = Vec::new();
            for ch in &chunks {
                slots.push(Params {
                    count: (ch.rows * c) as u32,
                    classes: c as u32,
                    scale,
                    _pad: 0,
                });
                slots.push(Params {
                    count: ch.rows as u32,
                    classes: c as u32,
                    scale,
                    _pad: 0,
                });
            }
            let params = buffers::param_slots(ctx, &slots)?;
            let layout = ctx.kernels().layout(Family::Baseline);
            let mut steps: Vec<(Entry, Vec<(wgpu::BindGroup, u32)>)> = [
                Entry::AddBias,
                Entry::LogSoftmax,
                Entry::Nll,
                Entry::NllBackward,
                Entry::LogSoftmaxBackward,
            ]
            .into_iter()
            .map(|e| (e, Vec::new()))
            .collect();
            let scratch = Scratch {
                z: &z,
                logp: &logp,
                gl: &gl,
                gz: &gz,
                bias: &bias,
                loss: &loss,
                unused: &unused,
                unused_rw: &unused_rw,
            };
            for (k, ch) in chunks.iter().enumerate() {
                let groups = scratch.chunk_groups(ctx, &layout, &params, logits, labels, k, ch, c);
                for (step, group) in steps.iter_mut().zip(groups) {
                    step.1.push(group);
                }
            }
            Ok(Self {
                steps: steps
                    .into_iter()
                    .map(|(e, groups)| (ctx.kernels().pipeline(e, 0), groups))
                    .collect(),
                _keep: vec![z, logp, gl, gz, bias, loss, unused, unused_rw],
                _params: params,
            })
        })
    }

    /// Record the five kernels in order into an open pass.
    pub fn record_in_pass(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (pipeline, groups) in &self.steps {
            dispatch_chunks(pass, pipeline, groups);
        }
    }

    /// Record the forward part only (add bias, log-softmax, gather the loss).
    pub fn record_forward_in_pass(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (pipeline, groups) in &self.steps[..3] {
            dispatch_chunks(pass, pipeline, groups);
        }
    }
}

/// Time both layouts of the fused
/// forward+backward and of the 16-tau post-hoc argmax at each of
/// [`TUNED_CLASSES`], on about `elements` logits each (N = elements / C),
/// and keep the fastest per `C`. `progress` hears each result.
pub fn measure_tuning(
    ctx: &Context,
    elements: usize,
    reps: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Tuning> {
    let timer = Timer::new(ctx);
    let mut tuning = Tuning::default();
    for (k, &c) in TUNED_CLASSES.iter().enumerate() {
        let max_classes = match TUNED_CLASSES.get(k + 1) {
            Some(&next) => ((c * next) as f64).sqrt() as usize,
            None => usize::MAX,
        };
        let n = (elements / c).max(1);
        let mut rng = crate::synthetic::Rng::new(7 + c as u64);
        let logits: Vec<f32> = (0..n * c)
            .map(|_| (rng.uniform() * 20.0 - 10.0) as f32)
            .collect();
        let labels: Vec<i32> = (0..n).map(|_| (rng.next_u64() % c as u64) as i32).collect();
        let counts: Vec<f64> = (0..c)
            .map(|j| (1000.0 * 100f64.powf(-(j as f64) / c as f64)).max(1.0))
            .collect();
        let prior = ClassPrior::from_counts(&counts)?;
        let spec = LossSpec::logit_adjusted(&prior, 1.0)?;
        let (logits_buf, labels_buf, grad, pred) = ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            Ok((
                crate::buffers::upload(
                    ctx,
                    "tune logits",
                    bytemuck::cast_slice(&logits),
                    U::STORAGE,
                )?,
                crate::buffers::upload(
                    ctx,
                    "tune labels",
                    bytemuck::cast_slice(&labels),
                    U::STORAGE,
                )?,
                crate::buffers::storage(ctx, "tune grad", (n * c * 4) as u64, U::STORAGE)?,
                crate::buffers::storage(ctx, "tune pred", (n * 16 * 4) as u64, U::STORAGE)?,
            ))
        })?;
        drop(logits);

        let mut best: Option<(f64, Variant)> = None;
        for variant in LOSS_VARIANTS {
            let op = ctx.softmax_xent(&spec)?.with_variant(variant);
            // A layout that refuses this C is simply not a candidate.
            let Ok(bound) = op.bind(&LossBuffers {
                grad: GradOutput::Separate(Region::whole(&grad)),
                ..LossBuffers::new(Region::whole(&logits_buf), Region::whole(&labels_buf), n)
            }) else {
                continue;
            };
            let ms = timer.time_pass(reps, &|p| bound.record_in_pass(p))?;
            progress(&format!("loss C={c} {variant:?}: {ms:.3} ms"));
            if best.is_none_or(|(b, _)| ms < b) {
                best = Some((ms, variant));
            }
        }
        if let Some((_, variant)) = best {
            tuning.loss.push(LossChoice {
                max_classes,
                variant,
            });
        }

        let taus: Vec<f64> = (0..16).map(|j| j as f64 * 0.125).collect();
        let mut best: Option<(f64, PostHocVariant)> = None;
        for variant in [
            PostHocVariant::RowPerThread,
            PostHocVariant::RowPerGroup,
            PostHocVariant::Windows,
        ] {
            let ph = ctx.posthoc(&prior, &taus)?.with_variant(variant);
            let Ok(bound) = ph.bind(&crate::posthoc::PostHocBuffers {
                logits: Region::whole(&logits_buf),
                dtype: crate::Dtype::F32,
                rows: n,
                predictions: Region::whole(&pred),
            }) else {
                continue;
            };
            let ms = timer.time_pass(reps, &|p| ph.record_in_pass(p, &bound))?;
            progress(&format!("posthoc16 C={c} {variant:?}: {ms:.3} ms"));
            if best.is_none_or(|(b, _)| ms < b) {
                best = Some((ms, variant));
            }
        }
        if let Some((_, variant)) = best {
            tuning.posthoc.push(PostHocChoice {
                max_classes,
                variant,
            });
        }
    }
    Ok(tuning)
}
