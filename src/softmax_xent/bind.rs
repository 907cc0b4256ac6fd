//! Binding a run: check the caller's regions, plan, and turn the plan into
//! dispatches (pipeline, bind group, grid) that `record` replays.

use bytemuck::{Pod, Zeroable};

use super::formats::Flavor;
use super::plan::{self, Layout, Plan, REDUCE_WG};
use super::{
    BackwardBuffers, GradOutput, LabelType, LossBuffers, Scratch, SoftmaxXent, UpstreamBuffer,
};
use crate::buffers;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::loss::Reduction;
use crate::pipelines::Shader;
use crate::region::{check_uses, Region, Use};

// Params.flags of softmax_xent.wgsl.
const FLAG_UPSTREAM_SCALAR: u32 = 1;
const FLAG_UPSTREAM_PER_ROW: u32 = 2;
const FLAG_ROW_LOSS: u32 = 4;
const FLAG_LSE: u32 = 8;
// Params.flags of loss_reduce.wgsl.
const FLAG_LOSS_OUT: u32 = 1;
const FLAG_BAD_OUT: u32 = 2;

/// `Params` of softmax_xent.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct XentParams {
    rows: u32,
    classes: u32,
    stride: u32,
    flags: u32,
    ignore_lo: i32,
    ignore_hi: i32,
    smoothing: f32,
    span: u32,
    chunks: u32,
    logit_scale: f32,
    split_base: u32,
    norm_base: u32,
    z_loss: f32,
    _pad: [u32; 3],
}

/// Bytes of `XentParams` (a multiple of 16, as a uniform struct is).
const XENT_PARAMS_BYTES: u64 = std::mem::size_of::<XentParams>() as u64;

/// `Params` of loss_reduce.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    rows: u32,
    classes: u32,
    reduction: u32,
    flags: u32,
    ignore_lo: i32,
    ignore_hi: i32,
    span: u32,
    slot: u32,
}

/// One dispatch.
#[derive(Debug)]
pub(super) struct Step {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    grid: [u32; 3],
}

/// A run bound to the caller's regions, made by [`SoftmaxXent::bind`] or
/// [`SoftmaxXent::bind_backward`]: its dispatches, recorded any number of
/// times by [`SoftmaxXent::record`] or [`BoundLoss::record_in_pass`].
#[derive(Debug)]
pub struct BoundLoss {
    steps: Vec<Step>,
    rows: usize,
}

impl BoundLoss {
    /// Record the run's dispatches into a compute pass the caller has open
    /// (an engine's own pass, or one with timestamp writes).
    pub fn record_in_pass(&self, pass: &mut wgpu::ComputePass<'_>) {
        for step in &self.steps {
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.group, &[]);
            pass.dispatch_workgroups(step.grid[0], step.grid[1], step.grid[2]);
        }
    }

    /// Rows `N` this run was bound for.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl crate::trace::Traced for BoundLoss {
    fn raw_steps(&self) -> Vec<crate::trace::RawStep> {
        self.steps
            .iter()
            .map(|s| crate::trace::RawStep::Dispatch(s.pipeline.clone(), s.group.clone(), s.grid))
            .collect()
    }
}

/// What a bind asks of the row pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Forward,
    Fused,
    Backward,
}

/// The regions of a run, whichever way it came in.
pub(super) struct Run<'a> {
    pub(super) mode: Mode,
    logits: Region<'a>,
    pub(super) dtype: Dtype,
    grad_f32: bool,
    pub(super) stride: usize,
    labels: Region<'a>,
    pub(super) label_type: LabelType,
    rows: usize,
    grad: GradOutput<'a>,
    upstream: UpstreamBuffer<'a>,
    row_loss: Option<Region<'a>>,
    lse: Option<Region<'a>>,
    loss: Option<Region<'a>>,
    bad_labels: Option<Region<'a>>,
}

impl SoftmaxXent {
    /// Prepare a forward (or fused forward+backward, with a gradient) run on
    /// the caller's regions: checks usages, alignment, sizes and overlaps,
    /// plans, builds bind groups. Cheap enough to do every step; reuses the
    /// op's scratch. Once it succeeds, recording raises no wgpu error.
    pub fn bind(&self, b: &LossBuffers) -> Result<BoundLoss> {
        self.ctx.scoped(|| self.bind_unscoped(b))
    }

    /// Prepare a backward run: the gradient from the forward's saved
    /// log-sum-exps, into a separate region or in place.
    pub fn bind_backward(&self, b: &BackwardBuffers) -> Result<BoundLoss> {
        self.ctx.scoped(|| self.bind_backward_unscoped(b))
    }

    pub(super) fn bind_unscoped(&self, b: &LossBuffers) -> Result<BoundLoss> {
        self.bind_run(Run {
            mode: match b.grad {
                GradOutput::None => Mode::Forward,
                _ => Mode::Fused,
            },
            logits: b.logits,
            dtype: b.dtype,
            grad_f32: b.grad_f32,
            stride: b.row_stride,
            labels: b.labels,
            label_type: b.label_type,
            rows: b.rows,
            grad: b.grad,
            upstream: b.upstream,
            row_loss: b.row_loss,
            lse: b.lse,
            loss: b.loss,
            bad_labels: b.bad_labels,
        })
    }

    pub(super) fn bind_backward_unscoped(&self, b: &BackwardBuffers) -> Result<BoundLoss> {
        if matches!(b.grad, GradOutput::None) {
            return Err(Error::InvalidArgument(
                "a backward run needs a gradient: GradOutput::Separate or InPlace".into(),
            ));
        }
        self.bind_run(Run {
            mode: Mode::Backward,
            logits: b.logits,
            dtype: b.dtype,
            grad_f32: b.grad_f32,
            stride: b.row_stride,
            labels: b.labels,
            label_type: b.label_type,
            rows: b.rows,
            grad: b.grad,
            upstream: b.upstream,
            row_loss: None,
            lse: Some(b.lse),
            loss: None,
            bad_labels: None,
        })
    }

    /// Check every caller region the run touches.
    fn check_run(&self, r: &Run) -> Result<()> {
        let (n, c) = (r.rows as u64, self.spec.classes() as u64);
        if (r.stride as u64) < c {
            return Err(Error::InvalidArgument(format!(
                "row stride {} is less than the {c} classes",
                r.stride
            )));
        }
        if r.grad_f32 && matches!(r.grad, GradOutput::InPlace) {
            return Err(Error::InvalidArgument(
                "an in-place gradient is in the logits' format; an f32 gradient needs \
                 GradOutput::Separate"
                    .into(),
            ));
        }
        let elements = if n == 0 {
            0
        } else {
            n.checked_sub(1)
                .and_then(|m| m.checked_mul(r.stride as u64))
                .and_then(|e| e.checked_add(c))
                .filter(|e| e.checked_mul(4).is_some())
                .ok_or_else(|| Error::TooLarge(format!("{n} rows of stride {}", r.stride)))?
        };
        let logit_bytes = elements * r.dtype.bytes();
        let grad_bytes = elements * r.grad_dtype().bytes();
        let mut uses = vec![
            Use {
                what: "logits",
                region: r.logits,
                bytes: logit_bytes,
            },
            Use {
                what: "labels",
                region: r.labels,
                bytes: n * r.label_type.bytes(),
            },
        ];
        if let GradOutput::Separate(g) = r.grad {
            uses.push(Use {
                what: "grad",
                region: g,
                bytes: grad_bytes,
            });
        }
        match r.upstream {
            UpstreamBuffer::One => {}
            UpstreamBuffer::Scalar(g) => uses.push(Use {
                what: "upstream",
                region: g,
                bytes: 4,
            }),
            UpstreamBuffer::PerRow(g) => {
                if self.spec.reduction() != Reduction::None {
                    return Err(Error::InvalidArgument(
                        "a per-row upstream gradient needs reduction none".into(),
                    ));
                }
                uses.push(Use {
                    what: "upstream",
                    region: g,
                    bytes: 4 * n,
                });
            }
        }
        let outputs = [
            ("row_loss", r.row_loss, 4 * n),
            ("lse", r.lse, 4 * n),
            ("loss", r.loss, 4),
            ("bad_labels", r.bad_labels, 4),
        ];
        for (what, region, bytes) in outputs {
            if let Some(region) = region {
                uses.push(Use {
                    what,
                    region,
                    bytes,
                });
            }
        }
        check_uses(self.ctx.limits(), &uses)?;
        // Halves are bound as whole u32 words: an odd count's last word
        // must lie in the buffer (its other half is read, never written).
        let mut words = vec![("logits", r.logits, logit_bytes)];
        if let GradOutput::Separate(g) = r.grad {
            words.push(("grad", g, grad_bytes));
        }
        for (what, region, bytes) in words {
            let room = region.buffer.size().saturating_sub(region.offset);
            if bytes % 4 != 0 && room < bytes.next_multiple_of(4) {
                return Err(Error::BufferTooSmall {
                    what: format!("{what} (bound as whole 4-byte words, past the region's end)"),
                    needed: bytes.next_multiple_of(4),
                    got: room,
                });
            }
        }
        Ok(())
    }

    fn bind_run(&self, mut r: Run) -> Result<BoundLoss> {
        let c = self.spec.classes();
        if r.stride == 0 {
            r.stride = c;
        }
        self.check_run(&r)?;
        let flavor = Flavor::of(r.dtype, r.grad_f32, self.native_f16());
        let shape = plan::Shape {
            rows: r.rows,
            classes: c,
            stride: r.stride,
            label_bytes: r.label_type.bytes(),
            vec4: self.cpu_xent.is_some() && vec4_room(&r, c),
            lanes: flavor.lanes(),
            elem_bytes: r.dtype.bytes().max(r.grad_dtype().bytes()),
        };
        let plan = self.plan_for(&shape)?;
        let xent = self.xent_for(flavor)?;
        let reduced = self.spec.reduction() != Reduction::None && r.mode != Mode::Backward;
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let work = scratch.work(&self.ctx, 4 * plan.work_words as u64)?;
        let standins = scratch.standins(&self.ctx)?;
        // Per-row losses feed the reduction even when the caller wants none.
        let own_rows = (reduced && r.row_loss.is_none())
            .then(|| scratch.rows(&self.ctx, 4 * r.rows as u64))
            .transpose()?;
        let builder = Builder {
            op: self,
            xent: &xent,
            lanes: flavor.lanes(),
            plan: &plan,
            run: &r,
            work: &work,
            standins: &standins,
            own_rows: own_rows.as_ref(),
        };
        let (xent_slots, reduce_slots) = builder.params();
        let stride = self.param_stride();
        let params = scratch.params(&self.ctx, stride, &xent_slots, &reduce_slots)?;
        let slot = |k: usize| buffers::range(&params, stride * k as u64, XENT_PARAMS_BYTES);
        let reduce_slot =
            |k: usize| buffers::range(&params, stride * (xent_slots.len() + k) as u64, 32);
        let mut steps = builder.reduce_steps(0, &reduce_slot)?;
        match plan.layout {
            Layout::Rows { .. } | Layout::Segments { .. } | Layout::RowGroups { .. }
                if r.mode == Mode::Backward =>
            {
                steps.extend(builder.backward_steps(&slot, false)?)
            }
            Layout::Rows { .. } => steps.extend(builder.row_steps(&slot)?),
            Layout::Segments { .. } | Layout::RowGroups { .. } => {
                steps.extend(builder.cpu_steps(&slot)?)
            }
            Layout::Split { .. } => steps.extend(builder.split_steps(&slot)?),
        }
        if reduced {
            steps.extend(builder.reduce_steps(1, &reduce_slot)?);
        }
        Ok(BoundLoss {
            steps,
            rows: r.rows,
        })
    }

    /// Bytes between parameter slots: a multiple of the uniform offset
    /// alignment holding the larger `Params`.
    fn param_stride(&self) -> u64 {
        let align = u64::from(
            self.ctx
                .limits()
                .min_uniform_buffer_offset_alignment
                .max(16),
        );
        XENT_PARAMS_BYTES.next_multiple_of(align)
    }

    pub(super) fn label_constant(label_type: LabelType) -> (&'static str, f64) {
        ("LABEL_KIND", f64::from(label_type.code()))
    }
}

impl Scratch {
    /// The work buffer, grown to at least `bytes`.
    fn work(&mut self, ctx: &crate::Context, bytes: u64) -> Result<wgpu::Buffer> {
        grow(ctx, &mut self.work, "softmax_xent work", bytes.max(16))
    }

    /// The stand-in slots: one per binding number, each at its own
    /// storage-offset-aligned place.
    fn standins(&mut self, ctx: &crate::Context) -> Result<wgpu::Buffer> {
        let bytes = standin_align(ctx) * STANDIN_SLOTS;
        grow(ctx, &mut self.standins, "softmax_xent stand-ins", bytes)
    }

    /// The op's own per-row losses, grown to at least `bytes`.
    fn rows(&mut self, ctx: &crate::Context, bytes: u64) -> Result<wgpu::Buffer> {
        grow(
            ctx,
            &mut self.rows,
            "softmax_xent row losses",
            bytes.max(16),
        )
    }

    /// A uniform buffer holding these parameter slots, reused whenever the
    /// same shape is bound again.
    fn params(
        &mut self,
        ctx: &crate::Context,
        stride: u64,
        xent: &[XentParams],
        reduce: &[ReduceParams],
    ) -> Result<wgpu::Buffer> {
        let stride = stride as usize;
        let mut bytes = vec![0u8; stride * (xent.len() + reduce.len()).max(1)];
        for (k, p) in xent.iter().enumerate() {
            bytes[stride * k..][..XENT_PARAMS_BYTES as usize]
                .copy_from_slice(bytemuck::bytes_of(p));
        }
        for (k, p) in reduce.iter().enumerate() {
            bytes[stride * (xent.len() + k)..][..32].copy_from_slice(bytemuck::bytes_of(p));
        }
        if let Some(buffer) = self.params.get(&bytes) {
            return Ok(buffer.clone());
        }
        // A bounded cache: engines bind few shapes, a sweep many.
        if self.params.len() >= 64 {
            self.params.clear();
        }
        let buffer = buffers::upload(
            ctx,
            "softmax_xent params",
            &bytes,
            wgpu::BufferUsages::UNIFORM,
        )?;
        self.params.insert(bytes, buffer.clone());
        Ok(buffer)
    }
}

fn grow(
    ctx: &crate::Context,
    slot: &mut Option<wgpu::Buffer>,
    label: &str,
    bytes: u64,
) -> Result<wgpu::Buffer> {
    match slot {
        Some(b) if b.size() >= bytes => Ok(b.clone()),
        _ => {
            let b = buffers::storage(ctx, label, bytes, wgpu::BufferUsages::STORAGE)?;
            *slot = Some(b.clone());
            Ok(b)
        }
    }
}

/// Binding numbers a stand-in slot exists for (the files bind at most 9).
const STANDIN_SLOTS: u64 = 10;

fn standin_align(ctx: &crate::Context) -> u64 {
    u64::from(ctx.limits().min_storage_buffer_offset_alignment).max(16)
}

/// Whether the run's logits and gradient regions take vec4 views (4
/// elements: 16 bytes of f32, 8 of halves): aligned to a vec4, with room in their buffers for
/// the bytes rounded up to whole vec4s (the few past the region are read
/// and masked, never written).
fn vec4_room(r: &Run, classes: usize) -> bool {
    if r.rows == 0 {
        return true; // nothing is bound
    }
    let fits = |g: Region, dtype: Dtype| {
        let vec4 = 4 * dtype.bytes();
        let bytes = (r.rows.saturating_sub(1) as u64)
            .saturating_mul(r.stride as u64)
            .saturating_add(classes as u64)
            .saturating_mul(dtype.bytes())
            .next_multiple_of(vec4);
        g.offset.is_multiple_of(vec4) && g.offset.saturating_add(bytes) <= g.buffer.size()
    };
    fits(r.logits, r.dtype)
        && match r.grad {
            GradOutput::Separate(g) => fits(g, r.grad_dtype()),
            _ => true,
        }
}

impl Run<'_> {
    /// The gradient's element format.
    pub(super) fn grad_dtype(&self) -> Dtype {
        if self.grad_f32 {
            Dtype::F32
        } else {
            self.dtype
        }
    }
}

/// Turns a plan and a run into steps.
pub(super) struct Builder<'a, 'r> {
    pub(super) op: &'a SoftmaxXent,
    /// The softmax_xent.wgsl module of the run's formats.
    xent: &'a Shader,
    /// Its units' elements (the `LANES` override).
    lanes: u32,
    pub(super) plan: &'a Plan,
    pub(super) run: &'a Run<'r>,
    work: &'a wgpu::Buffer,
    standins: &'a wgpu::Buffer,
    own_rows: Option<&'a wgpu::Buffer>,
}

pub(super) type SlotFn<'s> = dyn Fn(usize) -> wgpu::BindingResource<'s> + 's;

impl<'a, 'r> Builder<'a, 'r> {
    /// What binding `binding` gets when the dispatch does not use it (its
    /// flags keep the shader from touching it): a small slot of its own.
    /// WebGPU (Dawn) refuses a dispatch whose writable storage bindings
    /// overlap, even unused ones, so no stand-in may share a range with
    /// another binding, and each binding number has its own slot.
    fn standin(&self, binding: u64) -> wgpu::BindingResource<'a> {
        let align = standin_align(&self.op.ctx);
        buffers::range(self.standins, binding * align, 16)
    }

    /// softmax_xent.wgsl's GRAD_IN_LOGITS: an in-place gradient is
    /// written through the `logits` binding itself.
    fn grad_in_logits(&self) -> (&'static str, f64) {
        let in_place = matches!(self.run.grad, GradOutput::InPlace);
        ("GRAD_IN_LOGITS", f64::from(u8::from(in_place)))
    }

    fn ignore_words(&self) -> (i32, i32) {
        let ignore = self.op.spec.ignore_index();
        (ignore as i32, (ignore >> 32) as i32)
    }

    /// One xent slot per chunk, then (reduce) the normalizer and loss
    /// partial slots per chunk and the two final slots.
    fn params(&self) -> (Vec<XentParams>, Vec<ReduceParams>) {
        let (r, plan) = (self.run, self.plan);
        let (ignore_lo, ignore_hi) = self.ignore_words();
        let mut flags = 0;
        match r.upstream {
            UpstreamBuffer::One => {}
            UpstreamBuffer::Scalar(_) => flags |= FLAG_UPSTREAM_SCALAR,
            UpstreamBuffer::PerRow(_) => flags |= FLAG_UPSTREAM_PER_ROW,
        }
        if r.row_loss.is_some() || self.own_rows.is_some() {
            flags |= FLAG_ROW_LOSS;
        }
        if r.lse.is_some() && r.mode != Mode::Backward {
            flags |= FLAG_LSE;
        }
        let (span, chunks) = match plan.layout {
            Layout::Split { span, chunks, .. } => (span, chunks),
            _ => (0, 0),
        };
        let classes = self.op.spec.classes() as u32;
        let xent = plan
            .chunks
            .iter()
            .map(|ch| XentParams {
                rows: ch.rows as u32,
                classes,
                stride: r.stride as u32,
                flags,
                ignore_lo,
                ignore_hi,
                smoothing: self.op.spec.label_smoothing(),
                span,
                chunks,
                logit_scale: self.op.spec.logit_scale(),
                z_loss: self.op.spec.z_loss(),
                _pad: [0; 3],
                split_base: plan.split_base as u32,
                norm_base: plan.norm_base as u32,
            })
            .collect();
        let reduce_base = ReduceParams {
            rows: 0,
            classes,
            reduction: self.op.spec.reduction().code(),
            flags: (if r.loss.is_some() { FLAG_LOSS_OUT } else { 0 })
                | (if r.bad_labels.is_some() {
                    FLAG_BAD_OUT
                } else {
                    0
                }),
            ignore_lo,
            ignore_hi,
            span: plan.reduce_span as u32,
            slot: plan.slots as u32,
        };
        let reduce = plan
            .chunks
            .iter()
            .map(|ch| ReduceParams {
                rows: ch.rows as u32,
                slot: ch.slot as u32,
                ..reduce_base
            })
            .chain(std::iter::once(reduce_base))
            .collect();
        (xent, reduce)
    }

    fn pipeline(
        &self,
        shader: &crate::pipelines::Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> wgpu::ComputePipeline {
        // softmax_xent.wgsl's options, set only where the spec uses them,
        // so a spec without them gets the pipelines it always had.
        // LANES likewise: set for the halves only.
        let spec = &self.op.spec;
        let options = [
            ("SCALED", spec.logit_scale() != 1.0),
            ("Z_LOSS", spec.z_loss() != 0.0),
            ("PER_CLASS", spec.per_class_smoothing()),
        ];
        if std::ptr::eq(shader, self.xent) {
            let mut all = constants.to_vec();
            all.extend(options.iter().filter(|o| o.1).map(|&(k, _)| (k, 1.0)));
            if self.lanes != 1 {
                all.push(("LANES", f64::from(self.lanes)));
            }
            return shader.pipeline(self.op.ctx.device(), entry, &all);
        }
        shader.pipeline(self.op.ctx.device(), entry, constants)
    }

    fn group(
        &self,
        shader: &crate::pipelines::Shader,
        resources: Vec<wgpu::BindingResource<'_>>,
    ) -> wgpu::BindGroup {
        buffers::bind_group(
            &self.op.ctx,
            shader.label(),
            shader.bind_layout(),
            resources,
        )
    }

    /// Per-row region `region` of a chunk: `per_row` bytes a row.
    fn rows_of<'b>(
        region: Region<'b>,
        ch: &plan::Chunk,
        per_row: u64,
    ) -> wgpu::BindingResource<'b> {
        region.binding(ch.first as u64 * per_row, (ch.rows as u64 * per_row).max(4))
    }

    /// Chunk `ch`'s per-row losses: the caller's, the op's own (a reduced
    /// loss the caller wants no rows of), or none (the work buffer stands
    /// in, never written).
    fn row_loss_of(&self, ch: &plan::Chunk, binding: u64) -> wgpu::BindingResource<'a> {
        match (self.run.row_loss, self.own_rows) {
            (Some(region), _) => Self::rows_of(region, ch, 4),
            (None, Some(own)) => Self::rows_of(Region::whole(own), ch, 4),
            (None, None) => self.standin(binding),
        }
    }

    /// Chunk `ch`'s rows of the logits or the gradient, of `dtype`
    /// elements (rounded up to whole words, and to whole vec4s for the
    /// segments layout's vec4 views; `check_run` and `vec4_room` checked
    /// the buffers hold them).
    fn logits_of(
        &self,
        region: Region<'r>,
        dtype: Dtype,
        ch: &plan::Chunk,
    ) -> wgpu::BindingResource<'r> {
        let stride = self.run.stride as u64;
        let classes = self.op.spec.classes() as u64;
        let size = dtype.bytes();
        let mut bytes = (((ch.rows as u64 - 1) * stride + classes) * size).next_multiple_of(4);
        if matches!(self.plan.layout, Layout::Segments { .. }) {
            bytes = bytes.next_multiple_of(4 * size);
        }
        region.binding(ch.first as u64 * stride * size, bytes)
    }

    /// The normalizer (`what` 0) or the loss (1): partials per chunk, then
    /// the final pass.
    fn reduce_steps(&self, what: u32, slot: &SlotFn<'_>) -> Result<Vec<Step>> {
        let r = self.run;
        let constants = [
            ("WG", f64::from(REDUCE_WG)),
            ("WHAT", f64::from(what)),
            SoftmaxXent::label_constant(r.label_type),
        ];
        let shader = &self.op.reduce;
        let partial = self.pipeline(shader, "reduce_partial", &constants);
        let finish = self.pipeline(shader, "reduce_final", &constants);
        let work = || self.work.as_entire_binding();
        let mut steps = Vec::new();
        for (k, ch) in self.plan.chunks.iter().enumerate() {
            let group = self.group(
                shader,
                vec![
                    slot(k),
                    Self::rows_of(r.labels, ch, r.label_type.bytes()),
                    self.op.class_vecs.as_entire_binding(),
                    self.row_loss_of(ch, 3),
                    work(),
                    self.standin(5),
                    self.standin(6),
                ],
            );
            steps.push(Step {
                pipeline: partial.clone(),
                group,
                grid: [ch.groups as u32, 1, 1],
            });
        }
        let out = |region: Option<Region<'r>>, binding| match region {
            Some(region) => region.binding(0, 4),
            None => self.standin(binding),
        };
        let group = self.group(
            shader,
            vec![
                slot(self.plan.chunks.len()),
                self.standin(1),
                self.op.class_vecs.as_entire_binding(),
                self.standin(3),
                work(),
                if what == 1 {
                    out(r.loss, 5)
                } else {
                    self.standin(5)
                },
                if what == 0 {
                    out(r.bad_labels, 6)
                } else {
                    self.standin(6)
                },
            ],
        );
        steps.push(Step {
            pipeline: finish,
            group,
            grid: [1, 1, 1],
        });
        Ok(steps)
    }

    /// The bind group of chunk `k` for softmax_xent.wgsl, or (`cpu`) for
    /// cpu_xent.wgsl, whose bindings are the same plus its `b` table.
    fn xent_group(
        &self,
        cpu: Option<&super::cpu::Kernels>,
        k: usize,
        slot: &SlotFn<'_>,
    ) -> wgpu::BindGroup {
        let r = self.run;
        let ch = &self.plan.chunks[k];
        let logits = self.logits_of(r.logits, r.dtype, ch);
        let grad = match r.grad {
            GradOutput::Separate(g) => self.logits_of(g, r.grad_dtype(), ch),
            // cpu_xent.wgsl writes an in-place gradient through this
            // binding (CPU adapters only); softmax_xent.wgsl through
            // `logits` (GRAD_IN_LOGITS), so nothing aliases there.
            GradOutput::InPlace if cpu.is_some() => self.logits_of(r.logits, r.dtype, ch),
            _ => self.standin(4),
        };
        let row_loss = self.row_loss_of(ch, 5);
        let lse = match r.lse {
            Some(region) => Self::rows_of(region, ch, 4),
            None => self.standin(6),
        };
        let upstream = match r.upstream {
            UpstreamBuffer::One => self.standin(8),
            UpstreamBuffer::Scalar(g) => g.binding(0, 4),
            UpstreamBuffer::PerRow(g) => Self::rows_of(g, ch, 4),
        };
        let mut resources = vec![
            slot(k),
            logits,
            Self::rows_of(r.labels, ch, r.label_type.bytes()),
            self.op.class_vecs.as_entire_binding(),
            grad,
            row_loss,
            lse,
            self.work.as_entire_binding(),
            upstream,
        ];
        match cpu {
            Some(cpu) => {
                resources.push(cpu.table.as_entire_binding());
                self.group(&cpu.shader, resources)
            }
            None => self.group(self.xent, resources),
        }
    }

    fn row_steps(&self, slot: &SlotFn<'_>) -> Result<Vec<Step>> {
        let Layout::Rows {
            wg,
            tpr,
            vpt,
            segmented,
        } = self.plan.layout
        else {
            return Ok(Vec::new());
        };
        let pipeline = self.pipeline(
            self.xent,
            "xent_rows",
            &[
                ("WG", f64::from(wg)),
                ("TPR", f64::from(tpr)),
                ("VPT", f64::from(vpt)),
                (
                    "WRITE_GRAD",
                    f64::from(u8::from(self.run.mode == Mode::Fused)),
                ),
                ("SEGMENTED", f64::from(u8::from(segmented))),
                self.grad_in_logits(),
                SoftmaxXent::label_constant(self.run.label_type),
            ],
        );
        Ok(self.chunk_steps(&pipeline, slot, |rows| {
            self.plan.grid(1, self.plan.row_groups(rows))
        }))
    }

    /// One dispatch of `pipeline` (of softmax_xent.wgsl) per row chunk,
    /// over `grid(rows)`.
    fn chunk_steps(
        &self,
        pipeline: &wgpu::ComputePipeline,
        slot: &SlotFn<'_>,
        grid: impl Fn(usize) -> [u32; 3],
    ) -> Vec<Step> {
        self.chunk_steps_on(None, pipeline, slot, grid)
    }

    /// One dispatch of `pipeline` (of cpu_xent.wgsl with `cpu`) per row chunk.
    pub(super) fn chunk_steps_on(
        &self,
        cpu: Option<&super::cpu::Kernels>,
        pipeline: &wgpu::ComputePipeline,
        slot: &SlotFn<'_>,
        grid: impl Fn(usize) -> [u32; 3],
    ) -> Vec<Step> {
        (0..self.plan.chunks.len())
            .map(|k| Step {
                pipeline: pipeline.clone(),
                group: self.xent_group(cpu, k, slot),
                grid: grid(self.plan.chunks[k].rows),
            })
            .collect()
    }

    fn backward_steps(&self, slot: &SlotFn<'_>, from_norm: bool) -> Result<Vec<Step>> {
        let b = self.plan.backward;
        let pipeline = self.pipeline(
            self.xent,
            "xent_backward",
            &[
                ("WG", f64::from(b.wg)),
                ("TPR", f64::from(b.tpr)),
                ("VPT", f64::from(b.vpt)),
                ("SEGMENTED", f64::from(u8::from(b.segmented))),
                ("FROM_NORM", f64::from(u8::from(from_norm))),
                self.grad_in_logits(),
                SoftmaxXent::label_constant(self.run.label_type),
            ],
        );
        Ok(self.chunk_steps(&pipeline, slot, |rows| {
            self.plan.grid(b.blocks, self.plan.backward_groups(rows))
        }))
    }

    /// Per chunk: partials, combine, and (fused) the gradient from (M, 1/S, p_y - 1);
    /// a backward run from the caller's LSE needs only the gradient pass.
    fn split_steps(&self, slot: &SlotFn<'_>) -> Result<Vec<Step>> {
        let Layout::Split {
            wg, vpt, chunks, ..
        } = self.plan.layout
        else {
            return Ok(Vec::new());
        };
        if self.run.mode == Mode::Backward {
            return self.backward_steps(slot, false);
        }
        let label = SoftmaxXent::label_constant(self.run.label_type);
        let partial = self.pipeline(
            self.xent,
            "xent_split_partial",
            &[("WG", f64::from(wg)), ("VPT", f64::from(vpt)), label],
        );
        let combine = self.pipeline(
            self.xent,
            "xent_split_combine",
            &[("WG", f64::from(wg)), label],
        );
        let grad = (self.run.mode == Mode::Fused)
            .then(|| self.backward_steps(slot, true))
            .transpose()?;
        let mut grad = grad.map(Vec::into_iter);
        let mut steps = Vec::new();
        for (k, ch) in self.plan.chunks.iter().enumerate() {
            let group = self.xent_group(None, k, slot);
            steps.push(Step {
                pipeline: partial.clone(),
                group: group.clone(),
                grid: [chunks, ch.rows as u32, 1],
            });
            steps.push(Step {
                pipeline: combine.clone(),
                group,
                grid: [ch.rows.div_ceil(wg as usize) as u32, 1, 1],
            });
            if let Some(step) = grad.as_mut().and_then(Iterator::next) {
                steps.push(step);
            }
        }
        Ok(steps)
    }
}
