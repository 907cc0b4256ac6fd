//! The GPU loss operation: the logit-adjusted softmax cross-entropy of
//! `shaders/softmax_xent.wgsl`, with the normalizer and reduction passes of
//! `shaders/loss_reduce.wgsl` around it.
//!
//! Two ways in. [`SoftmaxXent::bind`] / [`SoftmaxXent::bind_backward`] plus
//! [`SoftmaxXent::record`] work on the caller's own buffer regions and
//! encoder: no host wait, and once a bind has succeeded, recording raises
//! no wgpu error. The host methods ([`SoftmaxXent::forward_backward`], ...)
//! upload slices, run that same path and read the results back.

mod bind;
mod cpu;
mod formats;
pub(crate) mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::buffers;
use crate::context::Context;
use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::loss::{LossOutput, LossSpec, Reduction, Upstream};
use crate::pipelines::{Binding, Shader};
use crate::region::Region;

pub use bind::BoundLoss;
pub use plan::Variant;

use formats::Flavor;

/// How f16 logits and gradients are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HalfPath {
    /// WGSL's native `f16` where the device has `SHADER_F16`, else two
    /// halves packed in a `u32`.
    #[default]
    Auto,
    /// Packed in `u32` words even where `SHADER_F16` is there (tests and
    /// benchmarks; the bits are the same).
    Packed,
}

/// Element type of a labels buffer on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelType {
    /// `i32` labels (burn's int tensors on wgpu, the host path).
    #[default]
    I32,
    /// `u32` labels (a negative `ignore_index` matches none of them).
    U32,
    /// `i64` labels (PyTorch's), little-endian.
    I64,
}

impl LabelType {
    pub(crate) fn bytes(self) -> u64 {
        match self {
            LabelType::I64 => 8,
            _ => 4,
        }
    }

    pub(crate) fn code(self) -> u32 {
        match self {
            LabelType::I32 => 0,
            LabelType::U32 => 1,
            LabelType::I64 => 2,
        }
    }
}

/// Where the gradient of a device-resident run goes.
#[derive(Debug, Clone, Copy)]
pub enum GradOutput<'a> {
    /// No gradient (a forward-only run).
    None,
    /// Into this region, with the logits' row stride.
    Separate(Region<'a>),
    /// Over the logits (an explicit opt-in: the logits are lost).
    InPlace,
}

/// The upstream gradient `g` of a device-resident run.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamBuffer<'a> {
    /// `g = 1`.
    One,
    /// One f32 `g` at the start of this region, e.g. written by an engine's
    /// backward pass.
    Scalar(Region<'a>),
    /// `g_i` for each row (`N` f32); only with [`Reduction::None`].
    PerRow(Region<'a>),
}

/// The caller's regions for a forward or fused forward+backward run.
/// [`LossBuffers::new`] fills the optional ones with their defaults.
#[derive(Debug, Clone, Copy)]
pub struct LossBuffers<'a> {
    /// `N` rows of logits of `dtype`, `row_stride` elements apart (the
    /// last row needs only `C`; for the halves, rounded up to whole 4-byte
    /// words, whose last half is read and masked, never written).
    pub logits: Region<'a>,
    /// The logits' element format (f32 unless set).
    pub dtype: Dtype,
    /// Write the gradient in f32 instead of the logits' format.
    pub grad_f32: bool,
    /// Elements between row starts; 0 means `C` (packed rows).
    pub row_stride: usize,
    /// `N` labels of `label_type`.
    pub labels: Region<'a>,
    /// The labels' element type.
    pub label_type: LabelType,
    /// `N`, the number of rows.
    pub rows: usize,
    /// Where the gradient goes, if anywhere.
    pub grad: GradOutput<'a>,
    /// The upstream gradient.
    pub upstream: UpstreamBuffer<'a>,
    /// `N` f32 per-row losses `l_i`, if wanted.
    pub row_loss: Option<Region<'a>>,
    /// `N` f32 per-row log-sum-exp of the adjusted logits (what
    /// [`SoftmaxXent::bind_backward`] takes), if wanted.
    pub lse: Option<Region<'a>>,
    /// One f32: the reduced loss (not written for [`Reduction::None`]).
    pub loss: Option<Region<'a>>,
    /// One u32: how many labels were neither in `[0, C)` nor the ignore
    /// index (their rows get NaN).
    pub bad_labels: Option<Region<'a>>,
}

impl<'a> LossBuffers<'a> {
    /// A forward-only run over `rows` packed rows with `g = 1` and no
    /// outputs; set the fields you need.
    pub fn new(logits: Region<'a>, labels: Region<'a>, rows: usize) -> Self {
        Self {
            logits,
            dtype: Dtype::F32,
            grad_f32: false,
            row_stride: 0,
            labels,
            label_type: LabelType::I32,
            rows,
            grad: GradOutput::None,
            upstream: UpstreamBuffer::One,
            row_loss: None,
            lse: None,
            loss: None,
            bad_labels: None,
        }
    }
}

/// The caller's regions for a backward run from saved log-sum-exps.
#[derive(Debug, Clone, Copy)]
pub struct BackwardBuffers<'a> {
    /// The logits the forward saw, `row_stride` apart.
    pub logits: Region<'a>,
    /// The logits' element format.
    pub dtype: Dtype,
    /// Write the gradient in f32 instead of the logits' format.
    pub grad_f32: bool,
    /// Elements between row starts; 0 means `C`.
    pub row_stride: usize,
    /// `N` labels.
    pub labels: Region<'a>,
    /// The labels' element type.
    pub label_type: LabelType,
    /// `N`.
    pub rows: usize,
    /// `N` f32: the forward's [`LossBuffers::lse`].
    pub lse: Region<'a>,
    /// Where the gradient goes: [`GradOutput::Separate`] or
    /// [`GradOutput::InPlace`].
    pub grad: GradOutput<'a>,
    /// The upstream gradient (of the reduced loss, or per row).
    pub upstream: UpstreamBuffer<'a>,
}

/// Every half-format module of softmax_xent.wgsl (label, text).
pub(crate) fn format_variants() -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    for logits in [Dtype::F16, Dtype::Bf16] {
        for grad_f32 in [false, true] {
            for native in [false, true] {
                let flavor = Flavor::of(logits, grad_f32, native);
                if !out.iter().any(|(l, _)| *l == flavor.label()) {
                    out.push((flavor.label(), flavor.source()?));
                }
            }
        }
    }
    for module in cpu::HALF_MODULES {
        out.push((module.label(), module.source()?));
    }
    Ok(out)
}

impl<'a> BackwardBuffers<'a> {
    /// A backward run over `rows` packed rows of f32 logits with i32
    /// labels and `g = 1`, into `grad`; set the fields you need.
    pub fn new(
        logits: Region<'a>,
        labels: Region<'a>,
        rows: usize,
        lse: Region<'a>,
        grad: GradOutput<'a>,
    ) -> Self {
        Self {
            logits,
            dtype: Dtype::F32,
            grad_f32: false,
            row_stride: 0,
            labels,
            label_type: LabelType::I32,
            rows,
            lse,
            grad,
            upstream: UpstreamBuffer::One,
        }
    }
}

/// `[b, m, alpha, W = sum_c alpha_c]` as the kernels read them, padded to
/// whole vec4s for cpu_xent.wgsl's vec4 view.
fn class_vectors(spec: &LossSpec) -> Vec<f32> {
    let weight_sum: f64 = spec.weight().iter().map(|&w| f64::from(w)).sum();
    let mut v: Vec<f32> = [spec.bias(), spec.margin(), spec.weight()].concat();
    v.push(weight_sum as f32);
    v.resize(v.len().next_multiple_of(4), 0.0);
    v
}

/// The loss operation on one device for one [`LossSpec`]: the class vectors
/// are uploaded and the two shader files compiled when it is made; each
/// pipeline is built on first use and kept. `Send + Sync`; recording needs
/// only `&self`.
#[derive(Debug)]
pub struct SoftmaxXent {
    ctx: Context,
    spec: LossSpec,
    variant: Variant,
    /// `[b, m, alpha]`, 3C f32.
    class_vecs: wgpu::Buffer,
    /// softmax_xent.wgsl for f32 logits, compiled with the op.
    xent: Arc<Shader>,
    /// The half formats' modules, each compiled on its first bind.
    halves: Mutex<HashMap<Flavor, Arc<Shader>>>,
    half_path: HalfPath,
    /// `cpu_xent.wgsl` and its uniform `b` table, on CPU adapters only.
    cpu_xent: Option<cpu::Kernels>,
    reduce: Shader,
    /// Scratch every bind shares (denom, reduction slots, split partials;
    /// and per-row losses when the caller wants none but a reduced loss),
    /// grown when a larger batch is bound, never per step.
    scratch: Mutex<Scratch>,
}

#[derive(Debug, Default)]
struct Scratch {
    work: Option<wgpu::Buffer>,
    /// Disjoint slots that stand in for the bindings a dispatch does not
    /// use (see `Builder::standin`).
    standins: Option<wgpu::Buffer>,
    rows: Option<wgpu::Buffer>,
    params: std::collections::HashMap<Vec<u8>, wgpu::Buffer>,
}

impl Context {
    /// The loss operation for `spec` on this device.
    pub fn softmax_xent(&self, spec: &LossSpec) -> Result<SoftmaxXent> {
        SoftmaxXent::new(self, spec)
    }
}

pub(super) const XENT_BINDINGS: [Binding; 9] = [
    Binding::Uniform,   // params
    Binding::ReadWrite, // logits
    Binding::ReadWrite, // labels
    Binding::ReadOnly,  // class_vecs
    Binding::ReadWrite, // grad
    Binding::ReadWrite, // row_loss
    Binding::ReadWrite, // lse
    Binding::ReadWrite, // work
    Binding::ReadWrite, // upstream
];

const REDUCE_BINDINGS: [Binding; 7] = [
    Binding::Uniform,   // params
    Binding::ReadWrite, // labels
    Binding::ReadOnly,  // class_vecs
    Binding::ReadWrite, // row_loss
    Binding::ReadWrite, // work
    Binding::ReadWrite, // loss_out
    Binding::ReadWrite, // bad_out
];

impl SoftmaxXent {
    /// Validate `spec`, upload `[b, m, alpha]`, compile the loss's shaders.
    pub fn new(ctx: &Context, spec: &LossSpec) -> Result<Self> {
        spec.validate()?;
        let class_vecs = class_vectors(spec);
        let cpu = ctx.info().device_type == wgpu::DeviceType::Cpu;
        ctx.scoped(|| {
            Ok(Self {
                ctx: ctx.clone(),
                spec: spec.clone(),
                variant: Variant::Auto,
                class_vecs: buffers::upload(
                    ctx,
                    "class_vecs",
                    bytemuck::cast_slice(&class_vecs),
                    wgpu::BufferUsages::STORAGE,
                )?,
                xent: Arc::new(Shader::new(
                    ctx,
                    Flavor::F32.label(),
                    Flavor::F32.source()?,
                    &XENT_BINDINGS,
                )),
                halves: Mutex::new(HashMap::new()),
                half_path: HalfPath::Auto,
                // The CPU layouts implement neither a logit scale nor the
                // z-loss: such a spec takes the GPU path's layouts there.
                cpu_xent: if cpu && !cpu::takes_options(spec) {
                    Some(cpu::Kernels::new(ctx, &class_vecs)?)
                } else {
                    None
                },
                reduce: Shader::new(
                    ctx,
                    "loss_reduce.wgsl",
                    include_str!("../../shaders/loss_reduce.wgsl"),
                    &REDUCE_BINDINGS,
                ),
                scratch: Mutex::new(Scratch::default()),
            })
        })
    }

    /// Force a workgroup layout (tests and benchmarks; `Auto` is right otherwise).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// Choose how f16 is read and written ([`HalfPath::Auto`] unless set).
    pub fn with_half_path(mut self, path: HalfPath) -> Self {
        self.half_path = path;
        self
    }

    /// Whether f16 runs use WGSL's native `f16`.
    pub(crate) fn native_f16(&self) -> bool {
        self.half_path == HalfPath::Auto && self.ctx.capabilities().shader_f16
    }

    /// The softmax_xent.wgsl module for `flavor`, compiled on first use.
    pub(crate) fn xent_for(&self, flavor: Flavor) -> Result<Arc<Shader>> {
        if flavor == Flavor::F32 {
            return Ok(self.xent.clone());
        }
        let mut halves = self.halves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shader) = halves.get(&flavor) {
            return Ok(shader.clone());
        }
        let shader = Arc::new(Shader::new(
            &self.ctx,
            flavor.label(),
            flavor.source()?,
            &XENT_BINDINGS,
        ));
        halves.insert(flavor, shader.clone());
        Ok(shader)
    }

    /// The layout forced with [`SoftmaxXent::with_variant`] (`Auto` if none).
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Replace the class vectors `b`, `m` and `alpha` (each of length `C`,
    /// checked as [`LossSpec::custom`] checks them) on the device, keeping
    /// the op's pipelines, scratch and bound runs: for schedules that change
    /// them between steps, such as LDAM-DRW's switch of `alpha` to
    /// effective-number weights. The queue writes them before its next
    /// submission, so they apply to everything submitted after this call,
    /// a run recorded earlier included. On error nothing changes.
    pub fn set_class_vectors(
        &mut self,
        bias: Vec<f32>,
        margin: Vec<f32>,
        weight: Vec<f32>,
    ) -> Result<()> {
        let next = self.spec.clone().with_class_vectors(bias, margin, weight)?;
        let class_vecs = class_vectors(&next);
        self.ctx.scoped(|| {
            let queue = self.ctx.queue();
            queue.write_buffer(&self.class_vecs, 0, bytemuck::cast_slice(&class_vecs));
            if let Some(cpu) = &self.cpu_xent {
                cpu.write_table(queue, &class_vecs);
            }
            Ok(())
        })?;
        self.spec = next;
        Ok(())
    }

    /// The spec this operation computes.
    pub fn spec(&self) -> &LossSpec {
        &self.spec
    }

    /// The layout a batch of `rows` packed rows would use on this device.
    pub fn resolved_variant(&self, rows: usize) -> Result<Variant> {
        let shape = plan::Shape {
            rows,
            classes: self.spec.classes(),
            stride: self.spec.classes(),
            label_bytes: 4,
            vec4: self.cpu_xent.is_some(),
            lanes: 1,
            elem_bytes: 4,
        };
        Ok(match self.plan_for(&shape)?.layout {
            plan::Layout::Rows { .. } => Variant::Rows,
            plan::Layout::Split { .. } => Variant::Split,
            plan::Layout::Segments { .. } => Variant::Segments,
            plan::Layout::RowGroups { .. } => Variant::RowGroups,
        })
    }

    /// The plan for `shape`: the forced layout, else the tuned one (see
    /// [`crate::tuning`]) where it takes this shape, else the built-in rule.
    pub(crate) fn plan_for(&self, shape: &plan::Shape) -> Result<plan::Plan> {
        let caps = self.caps();
        if self.variant == Variant::Auto {
            let tuned = self.ctx.tuning().and_then(|t| t.loss_for(shape.classes));
            if let Some(Ok(p)) = tuned.map(|t| plan::plan(shape, &caps, t.variant)) {
                return Ok(p);
            }
        }
        plan::plan(shape, &caps, self.variant)
    }

    fn caps(&self) -> plan::Caps {
        plan::Caps::of(self.ctx.limits(), self.ctx.info().device_type)
    }

    /// Record a bound run into `encoder`, in a compute pass of its own. No
    /// host wait, no allocation.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bound: &BoundLoss) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("logit-adjust softmax_xent"),
            timestamp_writes: None,
        });
        bound.record_in_pass(&mut pass);
    }

    /// Read back the bad-label count of a finished run bound with
    /// [`LossBuffers::bad_labels`] (which then needs `COPY_SRC`) and fail if
    /// any label was out of range. Waits on the device: call it when you
    /// want the check, not in a hot loop.
    pub fn check_labels(&self, bad_labels: Region) -> Result<()> {
        if !bad_labels
            .buffer
            .usage()
            .contains(wgpu::BufferUsages::COPY_SRC)
        {
            return Err(Error::InvalidArgument(
                "the bad_labels buffer lacks BufferUsages::COPY_SRC, needed to read it back".into(),
            ));
        }
        let count = self.ctx.scoped(|| {
            buffers::read::<u32>(&self.ctx, &[(bad_labels.buffer, bad_labels.offset, 1)])
        })?;
        match count[0].first().copied().unwrap_or(0) {
            0 => Ok(()),
            count => Err(Error::BadLabelsOnDevice {
                count: u64::from(count),
            }),
        }
    }

    /// Host convenience: the loss, per-row losses and log-sum-exps.
    pub fn forward(&self, logits: &[f32], labels: &[i64]) -> Result<LossOutput<f32>> {
        self.forward_as(logits, labels)
    }

    /// Host convenience: loss, per-row losses and the gradient (`g = 1`).
    pub fn forward_backward(&self, logits: &[f32], labels: &[i64]) -> Result<LossOutput<f32>> {
        self.forward_backward_scaled(logits, labels, Upstream::default())
    }

    /// Host convenience with an explicit upstream gradient.
    pub fn forward_backward_scaled(
        &self,
        logits: &[f32],
        labels: &[i64],
        upstream: Upstream,
    ) -> Result<LossOutput<f32>> {
        let (mut out, grad) = self.run_host(logits, labels, upstream, HostGrad::Separate)?;
        out.grad = grad;
        Ok(out)
    }

    /// Host convenience for logits of any format ([`Element`]: `f32`,
    /// [`half::f16`], [`half::bf16`]): the loss, per-row losses and
    /// log-sum-exps, all f32.
    pub fn forward_as<T: Element>(&self, logits: &[T], labels: &[i64]) -> Result<LossOutput<f32>> {
        Ok(self
            .run_host(logits, labels, Upstream::default(), HostGrad::None)?
            .0)
    }

    /// Host convenience for logits of any format: the f32 losses and
    /// log-sum-exps (`grad` left `None`) and the gradient (`g = upstream`)
    /// in the logits' format.
    pub fn forward_backward_as<T: Element>(
        &self,
        logits: &[T],
        labels: &[i64],
        upstream: Upstream,
    ) -> Result<(LossOutput<f32>, Vec<T>)> {
        let (out, grad) = self.run_host(logits, labels, upstream, HostGrad::Separate)?;
        Ok((out, grad.unwrap_or_default()))
    }

    /// Host convenience, in place: the gradient overwrites `logits` (the
    /// returned `grad` is `None`). On error `logits` is untouched.
    pub fn forward_backward_in_place(
        &self,
        logits: &mut [f32],
        labels: &[i64],
    ) -> Result<LossOutput<f32>> {
        self.run_host(&*logits, labels, Upstream::default(), HostGrad::InPlace)
            .map(|(out, grad)| {
                if let Some(grad) = grad {
                    logits.copy_from_slice(&grad);
                }
                out
            })
    }

    /// Host convenience: the gradient from saved log-sum-exps (a forward's
    /// `lse`), as an autodiff engine calls it after the forward.
    pub fn backward(
        &self,
        logits: &[f32],
        labels: &[i64],
        lse: &[f32],
        upstream: Upstream,
    ) -> Result<Vec<f32>> {
        self.backward_as(logits, labels, lse, upstream)
    }

    /// [`SoftmaxXent::backward`] for logits of any format; the gradient is
    /// in their format.
    pub fn backward_as<T: Element>(
        &self,
        logits: &[T],
        labels: &[i64],
        lse: &[f32],
        upstream: Upstream,
    ) -> Result<Vec<T>> {
        let n = self.spec.check_batch_of(logits, labels, upstream)?;
        if lse.len() != n {
            return Err(Error::ShapeMismatch {
                what: "lse length (rows)".into(),
                expected: n,
                got: lse.len(),
            });
        }
        let ctx = &self.ctx;
        ctx.scoped(|| {
            let host = HostBuffers::upload(self, logits, labels, upstream, HostGrad::Separate)?;
            let lse_buf = upload_f32(ctx, "lse", lse)?;
            let bound = self.bind_backward_unscoped(&BackwardBuffers {
                logits: host.logits(),
                dtype: T::DTYPE,
                grad_f32: false,
                row_stride: 0,
                labels: host.labels(),
                label_type: LabelType::I32,
                rows: n,
                lse: Region::whole(&lse_buf),
                grad: host.grad_output(),
                upstream: host.upstream(upstream),
            })?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            self.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let grad = host.grad.as_ref().unwrap_or(&host.logits);
            read_elements(ctx, grad, logits.len())
        })
    }

    fn run_host<T: Element>(
        &self,
        logits: &[T],
        labels: &[i64],
        upstream: Upstream,
        grad_mode: HostGrad,
    ) -> Result<(LossOutput<f32>, Option<Vec<T>>)> {
        let n = self.spec.check_batch_of(logits, labels, upstream)?;
        let reduced = self.spec.reduction() != Reduction::None;
        let ctx = &self.ctx;
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let host = HostBuffers::upload(self, logits, labels, upstream, grad_mode)?;
            // [l_0 .. l_{N-1}] at 0, then at 256-byte boundaries [LSE_i],
            // the loss and the bad-label count.
            let row_bytes = 4 * n as u64;
            let lse_at = row_bytes.next_multiple_of(256);
            let tail_at = (lse_at + row_bytes).next_multiple_of(256);
            let bad_at = tail_at + 256;
            let rows = buffers::storage(ctx, "row outputs", bad_at + 4, U::STORAGE | U::COPY_SRC)?;
            let bound = self.bind_unscoped(&LossBuffers {
                dtype: T::DTYPE,
                grad: host.grad_output(),
                upstream: host.upstream(upstream),
                row_loss: Some(Region::new(&rows, 0, row_bytes)),
                lse: Some(Region::new(&rows, lse_at, row_bytes)),
                loss: reduced.then(|| Region::new(&rows, tail_at, 4)),
                bad_labels: Some(Region::new(&rows, bad_at, 4)),
                ..LossBuffers::new(host.logits(), host.labels(), n)
            })?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            self.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);

            let regions = [
                (&rows, 0, n),
                (&rows, lse_at, n),
                (&rows, tail_at, 1),
                (&rows, bad_at, 1),
            ];
            let mut out = buffers::read_f32(ctx, &regions)?.into_iter();
            let per_row = out.next().unwrap_or_default();
            let lse = out.next().unwrap_or_default();
            let loss = out.next().unwrap_or_default();
            let bad = out.next().unwrap_or_default();
            let grad = match grad_mode {
                HostGrad::None => None,
                HostGrad::Separate => host.grad.as_ref(),
                HostGrad::InPlace => Some(&host.logits),
            }
            .map(|g| read_elements(ctx, g, logits.len()))
            .transpose()?;
            if bad.first().map_or(0, |b| b.to_bits()) != 0 {
                // check_batch rejected bad labels already; this is a device fault.
                return Err(Error::Gpu(
                    "the device saw labels the host had validated".into(),
                ));
            }
            let out = LossOutput {
                loss: reduced.then(|| loss.first().copied().unwrap_or(f32::NAN)),
                per_row,
                lse,
                grad: None,
            };
            Ok((out, grad))
        })
    }
}

/// The first `len` elements of `buffer`, read back as whole 4-byte words.
fn read_elements<T: Element>(ctx: &Context, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
    let bytes = (len as u64 * T::DTYPE.bytes()).next_multiple_of(4) as usize;
    let mut words = buffers::read::<u32>(ctx, &[(buffer, 0, bytes / 4)])?;
    let words = words.pop().unwrap_or_default();
    let raw: &[u8] = bytemuck::cast_slice(&words);
    Ok(bytemuck::pod_collect_to_vec(
        &raw[..len * std::mem::size_of::<T>()],
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostGrad {
    None,
    Separate,
    InPlace,
}

fn upload_f32(ctx: &Context, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
    use wgpu::BufferUsages as U;
    buffers::upload(
        ctx,
        label,
        bytemuck::cast_slice(data),
        U::STORAGE | U::COPY_SRC,
    )
}

/// The host path's device copies of its inputs.
struct HostBuffers {
    logits: wgpu::Buffer,
    labels: wgpu::Buffer,
    grad: Option<wgpu::Buffer>,
    upstream: wgpu::Buffer,
    grad_mode: HostGrad,
    n: usize,
}

impl HostBuffers {
    fn upload<T: Element>(
        op: &SoftmaxXent,
        logits: &[T],
        labels: &[i64],
        upstream: Upstream,
        grad_mode: HostGrad,
    ) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let ctx = &op.ctx;
        // check_batch has put every label in [0, C) or at ignore_index,
        // which fits i32.
        let labels_i32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        Ok(Self {
            logits: buffers::upload(
                ctx,
                "logits",
                bytemuck::cast_slice(logits),
                U::STORAGE | U::COPY_SRC,
            )?,
            labels: buffers::upload(ctx, "labels", bytemuck::cast_slice(&labels_i32), U::STORAGE)?,
            grad: match grad_mode {
                HostGrad::Separate => Some(buffers::storage(
                    ctx,
                    "grad",
                    (logits.len() as u64 * T::DTYPE.bytes()).next_multiple_of(4),
                    U::STORAGE | U::COPY_SRC,
                )?),
                _ => None,
            },
            upstream: match upstream {
                Upstream::Scalar(g) => upload_f32(ctx, "upstream", &[g])?,
                Upstream::PerRow(g) => upload_f32(ctx, "upstream", g)?,
            },
            grad_mode,
            n: labels.len(),
        })
    }

    fn logits(&self) -> Region<'_> {
        Region::whole(&self.logits)
    }

    fn labels(&self) -> Region<'_> {
        Region::new(&self.labels, 0, 4 * self.n as u64)
    }

    fn grad_output(&self) -> GradOutput<'_> {
        match (self.grad_mode, &self.grad) {
            (HostGrad::Separate, Some(g)) => GradOutput::Separate(Region::whole(g)),
            (HostGrad::InPlace, _) => GradOutput::InPlace,
            _ => GradOutput::None,
        }
    }

    fn upstream(&self, upstream: Upstream) -> UpstreamBuffer<'_> {
        match upstream {
            Upstream::Scalar(_) => UpstreamBuffer::Scalar(Region::whole(&self.upstream)),
            Upstream::PerRow(_) => UpstreamBuffer::PerRow(Region::whole(&self.upstream)),
        }
    }
}
