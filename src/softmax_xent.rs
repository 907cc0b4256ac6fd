//! The GPU loss operation: the fused logit-adjusted softmax cross-entropy of
//! `shaders/softmax_xent.wgsl`, around it the normalizer and finalize passes
//! of `shaders/loss_reduce.wgsl`.
//!
//! Two ways in: [`SoftmaxXent::bind`] + [`SoftmaxXent::record`] work on the
//! caller's own buffers and encoder (no host wait, no allocation per call);
//! the host methods ([`SoftmaxXent::forward_backward`], ...) upload slices,
//! run that same recording path, and read the results back.

use bytemuck::{Pod, Zeroable};

use crate::buffers::{self, plan_chunks, range};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{unrolled_rows_per_thread, Entry, Family, SegmentCache, SegmentView};
use crate::loss::{LossOutput, LossSpec, Reduction, Upstream};

const FLAG_WRITE_GRAD: u32 = 1;
const FLAG_IN_PLACE: u32 = 2;
const FLAG_UPSTREAM_PER_ROW: u32 = 4;
const FLAG_UPSTREAM_ONE: u32 = 8;
const FLAG_TABLE_MARGINS: u32 = 16;

/// Threads per workgroup of the row pass (a power of two, at most 256).
const DEFAULT_WORKGROUP_SIZE: u32 = 64;
/// Up to this many classes, one thread per row beats a workgroup per row.
const ROW_PER_THREAD_AUTO_MAX_CLASSES: usize = 32;
/// The row-per-thread layout makes 2*C loop trips per invocation; llvmpipe
/// and lavapipe end an invocation after about 65,535 trips, so it is
/// refused above this `C` (where it would be slow anyway).
pub const ROW_PER_THREAD_MAX_CLASSES: usize = 4096;
/// Rows per workgroup of the partial reduce passes (and their most
/// workgroups, which one 256-thread workgroup then combines). Each
/// workgroup ends in a 256-thread tree, which costs CPU adapters about
/// 240,000 instructions (callgrind, lavapipe): at 1024 rows per workgroup
/// the trees cost more than reading the rows. With 16384 a thread reads 16
/// quads of rows per pass.
const REDUCE_ROWS_PER_GROUP: usize = 16384;
const REDUCE_MAX_GROUPS: usize = 256;
/// The row-per-group layout makes 2*C/WG trips per invocation.
const MAX_LOOP_TRIPS: usize = 65_000;

/// Which workgroup layout the row pass uses (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// Picked from `C`, the adapter and its tuning
    /// ([`SoftmaxXent::resolved_variant`] says which).
    #[default]
    Auto,
    /// One thread per row; no barriers.
    RowPerThread,
    /// One workgroup per row, partials reduced in workgroup memory; the row
    /// is read twice.
    RowPerGroup,
    /// One workgroup per row with the row held in registers: one read of the
    /// logits, one write of the gradient. Up to [`ROW_CACHED_MAX_CLASSES`]
    /// on adapters with 1024 invocations per workgroup.
    RowCached,
    /// [`Variant::RowCached`] with subgroup reductions (two barriers per
    /// reduction instead of a tree's `log2(WG)`); only on devices with
    /// subgroups (`Capabilities::subgroups`), any subgroup size.
    RowCachedSubgroup,
    /// Each row split into `P` contiguous segments of at most
    /// [`SEGMENT_MAX_CLASSES`], one thread each, held in registers: one read,
    /// one write, `P` threads per row and `WG / P` rows per workgroup
    /// (`P = 1`: a row per thread). `b` comes from a uniform buffer up to
    /// [`BIAS_TABLE_CLASSES`]. The fastest layout on CPU adapters
    /// (lavapipe, llvmpipe), where each thread runs as a SIMD lane.
    RowSegments,
    /// One thread per row with `C` fixed per pipeline (a pipeline
    /// constant), so the row stays in registers: one read, one write, no
    /// barriers. For `C <=` [`ROW_UNROLLED_MAX_CLASSES`]. Where `N * C` is a
    /// multiple of 4 and `C` is small, a thread takes `4 / gcd(C, 4)` rows
    /// and reads and writes them as whole vec4s.
    RowUnrolled,
    /// Each row cut into chunks of up to [`SPLIT_CHUNK_CLASSES`], a
    /// workgroup per (chunk, row), so a few rows of a huge `C` still fill the
    /// device: per-chunk online-softmax partials, a combine pass per row,
    /// then a second read for the gradient (8 bytes read and 4 written per
    /// element). `b` from a storage buffer; any `C`.
    SplitRow,
    /// [`Variant::SplitRow`] laid out for CPU adapters: `b` from 64 KiB
    /// uniform windows (one dispatch per window of 16,384 classes), a chunk
    /// per window, a thread per row taking the whole chunk (so every lane
    /// reads the same `b_c` from a uniform buffer, and no workgroup tree).
    SplitRowWindowed,
}

/// Classes each thread of [`Variant::RowSegments`] holds at most.
pub const SEGMENT_MAX_CLASSES: usize = 512;
/// Up to this `C`, [`Variant::RowSegments`] reads `b` from a 64 KiB uniform
/// buffer; above it, from a storage buffer.
pub const BIAS_TABLE_CLASSES: usize = 32768;
/// Bytes of each of the two uniform `b` tables (`bias_table`, `bias_table_hi`).
const BIAS_TABLE_BYTES: usize = BIAS_TABLE_CLASSES * 2;

/// The largest `C` of [`Variant::RowUnrolled`] (`ROW_C_MAX` in the shader).
pub const ROW_UNROLLED_MAX_CLASSES: usize = 32;

/// The row-unrolled layout's vec4 form (R = 4 / gcd(C, 4) rows per thread,
/// read and written as whole vec4s) is used up to R * C floats per thread.
/// Lavapipe instruction counts per row pass against the scalar form: -24%
/// at C = 1, -27% at C = 3, -29% at C = 10, -2% at C = 16, but +100% at
/// C = 31 and 32, where the thread's vec4s leave the registers.
const ROW_UNROLLED4_MAX_FLOATS: usize = 20;

/// Classes per chunk of [`Variant::SplitRow`] (fewer when `C` is smaller:
/// the chunk is a power of two, so it divides a 16,384-class window of `b`).
pub const SPLIT_CHUNK_CLASSES: usize = 4096;
/// Threads per workgroup of [`Variant::SplitRowWindowed`] unless set or
/// tuned: one SIMD row of a CPU adapter.
const WINDOWED_WORKGROUP_SIZE: u32 = 8;
/// Classes per uniform window of `b` (64 KiB).
const WINDOW_CLASSES: usize = BIAS_TABLE_CLASSES / 2;

/// How [`Variant::SplitRow`] cuts a row of `classes`: `K` chunks of `L`
/// classes (`L` a power of two, at least 4, dividing 16,384). With `b`
/// windows ([`Variant::SplitRowWindowed`]) a chunk is up to a whole window.
pub fn split_plan(classes: usize, windowed: bool) -> (usize, usize) {
    let most = if windowed {
        WINDOW_CLASSES
    } else {
        SPLIT_CHUNK_CLASSES
    };
    let len = classes.max(4).next_power_of_two().min(most);
    (classes.div_ceil(len).max(1), len)
}

/// How [`Variant::RowSegments`] splits a row of `classes`: `P` threads per
/// row (a power of two) and `L` classes per thread (a multiple of 4). When
/// `C % 4 != 0` (and `b` comes from the tables), `P * L` covers `C + 3`:
/// the vec4 form for such rows gives each thread whole vec4s of the buffer,
/// and a row starting inside a vec4 touches up to `ceil((C + 3) / 4)` of them.
pub fn segment_plan(classes: usize) -> (usize, usize) {
    let classes = if !classes.is_multiple_of(4) && classes <= BIAS_TABLE_CLASSES {
        classes + 3
    } else {
        classes
    };
    let threads = classes
        .div_ceil(SEGMENT_MAX_CLASSES)
        .max(1)
        .next_power_of_two();
    let len = classes.div_ceil(threads).max(1).next_multiple_of(4);
    (threads, len)
}

/// Values of the row each thread of the row-cached layout holds (`CACHE4 * 4`
/// in the shader).
const ROW_CACHED_PER_THREAD: usize = 64;
/// The largest `C` the row-cached layout takes: 1024 threads x 64 values.
pub const ROW_CACHED_MAX_CLASSES: usize = 1024 * ROW_CACHED_PER_THREAD;

/// Element type of the logits and gradient buffers. Only f32 today; f16 and
/// bf16 will be further variants with their own pipelines, same API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
}

/// Where the gradient of a device-resident run goes.
#[derive(Debug, Clone, Copy)]
pub enum GradOutput<'a> {
    /// Forward only: no gradient.
    None,
    /// Into this buffer (`N * C` elements).
    Separate(&'a wgpu::Buffer),
    /// Over the logits (explicit opt-in: the logits are lost).
    InPlace,
}

/// The upstream gradient of a device-resident run.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamBuffer<'a> {
    /// `g = 1`.
    One,
    /// One f32 `g` in this buffer (first element), e.g. written by an engine's
    /// backward pass.
    Scalar(&'a wgpu::Buffer),
    /// `g_i` for each row (`N` f32); only with [`Reduction::None`].
    PerRow(&'a wgpu::Buffer),
}

/// The caller's buffers for one device-resident run.
#[derive(Debug, Clone, Copy)]
pub struct LossBuffers<'a> {
    /// `N x C` f32 logits, row-major, starting at offset 0. Needs `STORAGE`.
    pub logits: &'a wgpu::Buffer,
    /// `N` i32 labels. Needs `STORAGE`.
    pub labels: &'a wgpu::Buffer,
    /// `N`, the number of rows.
    pub rows: usize,
    /// Where the gradient goes, if anywhere.
    pub grad: GradOutput<'a>,
    /// The upstream gradient.
    pub upstream: UpstreamBuffer<'a>,
    /// `N` f32 per-row losses; when `None` the bound run allocates its own
    /// (see [`BoundLoss::row_loss`]).
    pub row_loss: Option<&'a wgpu::Buffer>,
}

/// Uniform parameters, laid out as `Params` in both shaders (in
/// loss_reduce.wgsl `seg_threads` and `seg_len` are `groups` and `span`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    ignore_index: i32,
    flags: u32,
    smoothing: f32,
    seg_threads: u32,
    seg_len: u32,
    _pad: u32,
}

/// One dispatch of the row pass.
#[derive(Debug)]
struct Step {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    workgroups: [u32; 2],
}

/// A run bound to buffers: bind groups and parameters made once by
/// [`SoftmaxXent::bind`], recorded any number of times.
#[derive(Debug)]
pub struct BoundLoss {
    rows: usize,
    reduction: Reduction,
    normalizer_partial: wgpu::ComputePipeline,
    normalizer: wgpu::ComputePipeline,
    finalize_partial: wgpu::ComputePipeline,
    finalize: wgpu::ComputePipeline,
    /// Workgroups of the partial reduce passes.
    reduce_groups: u32,
    _partials: wgpu::Buffer,
    reduce_group: Option<wgpu::BindGroup>,
    /// The row pass: dispatches in order (one per chunk of rows, or the
    /// split-row layout's partial, combine and gradient passes).
    steps: Vec<Step>,
    /// The split-row layout's partials and LSE buffers.
    _scratch: Vec<wgpu::Buffer>,
    row_loss: wgpu::Buffer,
    status: wgpu::Buffer,
    _params: Vec<buffers::ParamSlots>,
}

impl BoundLoss {
    /// The status buffer: three f32, `[denom, bad labels, reduced loss]`.
    /// `denom` is 1 (none, sum), the number of valid rows (mean) or the sum of
    /// their weights (weighted-mean); `bad labels` counts labels that are
    /// neither in `[0, C)` nor the ignore index (their rows get NaN);
    /// the reduced loss is absent (left as is) for [`Reduction::None`].
    pub fn status(&self) -> &wgpu::Buffer {
        &self.status
    }

    /// Byte offset of the reduced loss in [`BoundLoss::status`].
    pub const LOSS_OFFSET: u64 = 8;

    /// The per-row losses `l_i` (`N` f32), the caller's or the bound run's own.
    pub fn row_loss(&self) -> &wgpu::Buffer {
        &self.row_loss
    }

    /// Rows `N` this run was bound for.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// The loss operation on one device for one [`LossSpec`]: the class vectors
/// are uploaded once, pipelines come from the context's cache.
#[derive(Debug)]
pub struct SoftmaxXent {
    ctx: Context,
    spec: LossSpec,
    variant: Variant,
    workgroup_size: u32,
    /// `workgroup_size` was set by the caller, so a tuned size does not
    /// replace it.
    explicit_size: bool,
    class_params: wgpu::Buffer,
    /// `b` (then `m`, `alpha` as far as they fit) zero-padded to whole
    /// 64 KiB windows, at least two, uniform: the row-segments layout's two
    /// tables (bound at 0 and 64 KiB), the split-row layout's windows.
    bias_table: wgpu::Buffer,
    /// `[1.0]`: the default upstream.
    one: wgpu::Buffer,
    /// Stands in for the gradient binding when there is no separate gradient
    /// (it is writable, so it cannot be `one`, which is bound read-only).
    unused_grad: wgpu::Buffer,
    /// Stand-ins for the vec4 views where they are unused (one buffer per
    /// binding, so that no buffer is bound twice in a dispatch).
    unused_view: [wgpu::Buffer; 2],
    /// Stands in for the reduce passes' vec4 views when `N < 4` (read-only).
    unused_quad: wgpu::Buffer,
}

impl Context {
    /// The loss operation for `spec` on this device.
    pub fn softmax_xent(&self, spec: &LossSpec) -> Result<SoftmaxXent> {
        SoftmaxXent::new(self, spec)
    }
}

impl SoftmaxXent {
    /// Validate `spec`, upload `[b, m, alpha]`.
    pub fn new(ctx: &Context, spec: &LossSpec) -> Result<Self> {
        spec.validate()?;
        let class_params: Vec<f32> = [spec.bias(), spec.margin(), spec.weight()].concat();
        // b, and when they fit also m and alpha (the layout of class_params).
        // Whole 64 KiB windows: at least the two tables, and every window
        // of b for the split-row layout's windowed entries.
        let windows = spec.classes().div_ceil(WINDOW_CLASSES).max(2);
        let mut table = vec![0f32; windows * WINDOW_CLASSES];
        let fits = class_params.len().min(table.len());
        table[..fits].copy_from_slice(&class_params[..fits]);
        ctx.scoped(|| {
            Ok(Self {
                ctx: ctx.clone(),
                spec: spec.clone(),
                variant: Variant::Auto,
                workgroup_size: DEFAULT_WORKGROUP_SIZE,
                explicit_size: false,
                class_params: buffers::upload(
                    ctx,
                    "class_params",
                    bytemuck::cast_slice(&class_params),
                    wgpu::BufferUsages::STORAGE,
                )?,
                bias_table: buffers::upload(
                    ctx,
                    "bias_table",
                    bytemuck::cast_slice(&table),
                    wgpu::BufferUsages::UNIFORM,
                )?,
                one: buffers::upload(
                    ctx,
                    "one",
                    bytemuck::bytes_of(&1.0f32),
                    wgpu::BufferUsages::STORAGE,
                )?,
                unused_grad: buffers::storage(ctx, "unused grad", 16, wgpu::BufferUsages::STORAGE)?,
                unused_view: [
                    buffers::storage(ctx, "unused logits4", 16, wgpu::BufferUsages::STORAGE)?,
                    buffers::storage(ctx, "unused grad4", 16, wgpu::BufferUsages::STORAGE)?,
                ],
                unused_quad: buffers::storage(ctx, "unused quad", 16, wgpu::BufferUsages::STORAGE)?,
            })
        })
    }

    /// Force a workgroup layout (tests and benchmarks use this; `Auto` is right otherwise).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// The element type of the logits and gradient buffers. Only
    /// [`Dtype::F32`] exists today; the f16/bf16 variants will be chosen here.
    pub fn with_dtype(self, dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => self,
        }
    }

    /// Threads per workgroup (a power of two from 8 to the device's limit;
    /// default 64, or the tuned size). The row-cached and row-segments
    /// layouts raise it where `C` needs more threads.
    pub fn with_workgroup_size(mut self, size: u32) -> Result<Self> {
        if !size.is_power_of_two() || size < 8 || size as usize > self.max_workgroup() {
            return Err(Error::InvalidArgument(format!(
                "workgroup size {size}: need a power of two from 8 to {}",
                self.max_workgroup()
            )));
        }
        self.workgroup_size = size;
        self.explicit_size = true;
        Ok(self)
    }

    /// The spec this operation computes.
    pub fn spec(&self) -> &LossSpec {
        &self.spec
    }

    /// The largest `C` the row-cached layout takes on this device.
    fn row_cached_capacity(&self) -> usize {
        self.max_workgroup() * ROW_CACHED_PER_THREAD
    }

    /// Whether `variant` takes this `C` on this device.
    fn accepts(&self, variant: Variant) -> bool {
        let c = self.spec.classes();
        match variant {
            Variant::Auto | Variant::RowPerGroup => true,
            Variant::RowPerThread => c <= ROW_PER_THREAD_MAX_CLASSES,
            Variant::RowUnrolled => c <= ROW_UNROLLED_MAX_CLASSES,
            Variant::RowCached => c <= self.row_cached_capacity(),
            Variant::RowCachedSubgroup => {
                c <= self.row_cached_capacity() && self.ctx.capabilities().subgroups
            }
            Variant::RowSegments => c <= self.segments_capacity(),
            Variant::SplitRow | Variant::SplitRowWindowed => true,
        }
    }

    /// The tuned layout and workgroup size for this `C`, if the context has
    /// a tuning that covers it with a layout that takes it.
    fn tuned(&self) -> Option<(Variant, u32)> {
        let choice = self.ctx.tuning()?.loss_for(self.spec.classes())?;
        let wg = choice.workgroup_size.clamp(8, self.max_workgroup() as u32);
        self.accepts(choice.variant).then_some((choice.variant, wg))
    }

    /// The layout the row pass will use for this `C`: the forced one, else
    /// the tuned one (see [`crate::tuning`]), else the built-in rule:
    /// row-unrolled up to 32 classes; then on CPU adapters row-segments up
    /// to 32,768 classes (b from the uniform tables), split-row with windows
    /// of `b` beyond; on GPUs row-cached up
    /// to its capacity, split-row beyond (the two reads of row-per-group,
    /// but a few rows of a huge `C` still fill the device).
    pub fn resolved_variant(&self) -> Variant {
        if self.variant == Variant::Auto {
            if let Some((v, _)) = self.tuned() {
                return v;
            }
        }
        let c = self.spec.classes();
        let cpu = self.ctx.info().device_type == wgpu::DeviceType::Cpu;
        match self.variant {
            Variant::Auto if c <= ROW_UNROLLED_MAX_CLASSES => Variant::RowUnrolled,
            // Above the uniform b tables, row-segments reads b from storage,
            // which costs CPU adapters more than split-row's second read
            // (lavapipe, 256 x 262144: 730 against 629 ms; 512 x 65536: 423
            // against 345 ms).
            Variant::Auto if cpu && c <= BIAS_TABLE_CLASSES => Variant::RowSegments,
            Variant::Auto if cpu => Variant::SplitRowWindowed,
            Variant::Auto if c <= ROW_PER_THREAD_AUTO_MAX_CLASSES => Variant::RowPerThread,
            Variant::Auto if c <= self.row_cached_capacity() => Variant::RowCached,
            Variant::Auto => Variant::SplitRow,
            v => v,
        }
    }

    /// The largest power of two within the device's invocations per
    /// workgroup (at most 1024).
    fn max_workgroup(&self) -> usize {
        let invocations = self
            .ctx
            .limits()
            .max_compute_invocations_per_workgroup
            .min(1024);
        1usize << (31 - invocations.max(1).leading_zeros())
    }

    /// The largest `C` the row-segments layout takes on this device.
    fn segments_capacity(&self) -> usize {
        self.max_workgroup() * SEGMENT_MAX_CLASSES
    }

    /// Threads per workgroup for `variant`: the row-cached layout grows its
    /// workgroup with `C` so each thread holds at most 64 values; the
    /// row-segments layout needs at least `P` threads.
    fn workgroup_size_for(&self, variant: Variant) -> u32 {
        let tuned = match self.tuned() {
            Some((v, wg))
                if !self.explicit_size && self.variant == Variant::Auto && v == variant =>
            {
                Some(wg)
            }
            _ => None,
        };
        let base = tuned.unwrap_or(self.workgroup_size);
        match variant {
            // A thread per row: small workgroups, so that a few rows still
            // make several workgroups (lavapipe, 16 x 262144: 37-50 ms at 8
            // threads against 161 ms at 64).
            Variant::SplitRowWindowed if tuned.is_none() && !self.explicit_size => {
                WINDOWED_WORKGROUP_SIZE
            }
            Variant::RowSegments => {
                let (threads, _) = segment_plan(self.spec.classes());
                threads.max(base as usize) as u32
            }
            Variant::RowCached | Variant::RowCachedSubgroup => {
                let need = self.spec.classes().div_ceil(ROW_CACHED_PER_THREAD);
                need.next_power_of_two().clamp(base as usize, 1024) as u32
            }
            _ => base,
        }
    }

    /// Prepare a device-resident run on the caller's buffers: checks sizes
    /// and usages, builds the per-chunk bind groups and parameters. Do this
    /// once; [`SoftmaxXent::record`] it as often as needed.
    pub fn bind(&self, b: &LossBuffers) -> Result<BoundLoss> {
        self.ctx.scoped(|| self.bind_unscoped(b))
    }

    fn bind_unscoped(&self, b: &LossBuffers) -> Result<BoundLoss> {
        let ctx = &self.ctx;
        let (n, c) = (b.rows, self.spec.classes());
        let row_bytes = c as u64 * 4;
        let logit_bytes = n as u64 * row_bytes;
        let need = buffers::check_storage;
        need("logits", b.logits, logit_bytes)?;
        need("labels", b.labels, n as u64 * 4)?;
        let mut flags = 0;
        match b.grad {
            GradOutput::None => {}
            GradOutput::Separate(g) => {
                need("grad", g, logit_bytes)?;
                flags |= FLAG_WRITE_GRAD;
            }
            GradOutput::InPlace => flags |= FLAG_WRITE_GRAD | FLAG_IN_PLACE,
        }
        if 3 * self.spec.classes() <= BIAS_TABLE_CLASSES {
            flags |= FLAG_TABLE_MARGINS;
        }
        match b.upstream {
            UpstreamBuffer::One => flags |= FLAG_UPSTREAM_ONE,
            UpstreamBuffer::Scalar(g) => need("upstream", g, 4)?,
            UpstreamBuffer::PerRow(g) => {
                if self.spec.reduction_kind() != Reduction::None {
                    return Err(Error::InvalidArgument(
                        "a per-row upstream gradient needs reduction none".into(),
                    ));
                }
                need("upstream", g, n as u64 * 4)?;
                flags |= FLAG_UPSTREAM_PER_ROW;
            }
        }
        let row_loss = match b.row_loss {
            Some(r) => {
                need("row_loss", r, n as u64 * 4)?;
                r.clone()
            }
            None => buffers::storage(
                ctx,
                "row_loss",
                n as u64 * 4,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )?,
        };
        let max_binding = ctx.limits().max_storage_buffer_binding_size;
        if n as u64 * 4 > max_binding {
            return Err(Error::TooLarge(format!(
                "{n} rows: the per-row buffers exceed the storage binding limit of {max_binding} bytes"
            )));
        }

        let variant = self.resolved_variant();
        let wg = self.workgroup_size_for(variant);
        if variant == Variant::RowCachedSubgroup && !ctx.capabilities().subgroups {
            return Err(Error::UnsupportedAdapter(format!(
                "{}: the row-cached subgroup layout needs subgroups, which this device does not offer",
                ctx.info().name
            )));
        }
        if matches!(variant, Variant::RowCached | Variant::RowCachedSubgroup)
            && c > self.row_cached_capacity()
        {
            return Err(Error::TooLarge(format!(
                "{c} classes: the row-cached layout holds at most {} on this device",
                self.row_cached_capacity()
            )));
        }
        if variant == Variant::RowUnrolled && c > ROW_UNROLLED_MAX_CLASSES {
            return Err(Error::TooLarge(format!(
                "{c} classes: the row-unrolled layout takes at most {ROW_UNROLLED_MAX_CLASSES}"
            )));
        }
        if variant == Variant::RowSegments && c > self.segments_capacity() {
            return Err(Error::TooLarge(format!(
                "{c} classes: the row-segments layout holds at most {} on this device",
                self.segments_capacity()
            )));
        }
        let (seg_threads, seg_len) = segment_plan(c);
        let trips = match variant {
            Variant::RowPerThread if c > ROW_PER_THREAD_MAX_CLASSES => usize::MAX,
            Variant::RowPerThread => 2 * c,
            Variant::RowUnrolled => 3 * c,
            Variant::RowSegments => 3 * seg_len / 4 + 2 * seg_threads.ilog2() as usize,
            Variant::SplitRow => {
                let (chunks, len) = split_plan(c, false);
                (len / (4 * wg as usize)).max(2 * chunks) + 2 * wg.ilog2() as usize
            }
            Variant::SplitRowWindowed => {
                let (chunks, len) = split_plan(c, true);
                (len / 4).max(2 * chunks)
            }
            _ => 2 * c.div_ceil(wg as usize),
        };
        if trips > MAX_LOOP_TRIPS {
            return Err(Error::TooLarge(format!(
                "{c} classes with the {variant:?} layout: over {MAX_LOOP_TRIPS} loop trips per invocation \
                 (row-per-thread allows C <= {ROW_PER_THREAD_MAX_CLASSES})"
            )));
        }
        let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
        let rows_per_group = match variant {
            Variant::RowPerThread | Variant::RowUnrolled => wg as usize,
            Variant::RowSegments => wg as usize / seg_threads,
            _ => 1,
        };
        let split = matches!(variant, Variant::SplitRow | Variant::SplitRowWindowed);
        let (split_chunks, split_len) = split_plan(c, variant == Variant::SplitRowWindowed);
        // The split-row layout's partials (16 bytes per chunk) of a chunk of
        // rows must fit one storage binding too.
        let rows_max = if split {
            groups_max.min((max_binding / (split_chunks as u64 * 16)).max(1) as usize)
        } else {
            groups_max * rows_per_group
        };
        let chunks = plan_chunks(ctx.limits(), n, row_bytes, rows_max)?;

        // Parameter slots: slot 0 for the reduce passes, slot k + 1 for chunk k.
        let base = Params {
            rows: n as u32,
            classes: c as u32,
            ignore_index: self.spec.ignored_label() as i32,
            flags: self.spec.reduction_kind().code(),
            smoothing: self.spec.smoothing(),
            seg_threads: seg_threads as u32,
            seg_len: seg_len as u32,
            _pad: 0,
        };
        // The reduce passes: G workgroups of rows, then one to combine.
        let reduce_groups = n
            .div_ceil(REDUCE_ROWS_PER_GROUP)
            .clamp(1, REDUCE_MAX_GROUPS);
        let reduce = Params {
            seg_threads: reduce_groups as u32,
            // A multiple of 4: the partial passes read row quads.
            seg_len: n.div_ceil(reduce_groups).max(1).next_multiple_of(4) as u32,
            ..base
        };
        let slots: Vec<Params> = std::iter::once(reduce)
            .chain(chunks.iter().map(|ch| Params {
                rows: ch.rows as u32,
                flags,
                ..base
            }))
            .collect();
        let params = buffers::param_slots(ctx, &slots)?;
        let status = buffers::storage(
            ctx,
            "status",
            12,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;

        let reduce_partials = buffers::storage(
            ctx,
            "reduce partials",
            REDUCE_MAX_GROUPS as u64 * 8,
            wgpu::BufferUsages::STORAGE,
        )?;
        let kernels = ctx.kernels();
        // The vec4 views of the reduce passes: the first floor(N / 4) quads.
        let quads = |buffer| match n / 4 {
            0 => self.unused_quad.as_entire_binding(),
            q => range(buffer, 0, q as u64 * 16),
        };
        let reduce_group = (n > 0).then(|| {
            buffers::bind_group(
                ctx,
                "loss_reduce",
                &kernels.layout(Family::LossReduce),
                vec![
                    params.slot(0),
                    range(b.labels, 0, n as u64 * 4),
                    self.class_params.as_entire_binding(),
                    range(&row_loss, 0, n as u64 * 4),
                    status.as_entire_binding(),
                    reduce_partials.as_entire_binding(),
                    quads(b.labels),
                    quads(&row_loss),
                ],
            )
        });
        let xent_layout = kernels.layout(Family::SoftmaxXent);
        let in_place = matches!(b.grad, GradOutput::InPlace);
        // The row-unrolled layout's vec4 form takes R rows per thread, so
        // each chunk's N * C must be a multiple of 4 (only the last chunk's
        // can fail: the others hold a multiple of 64 rows). Past R * C = 20
        // floats per thread lavapipe no longer keeps them in registers.
        let rows4 = variant == Variant::RowUnrolled
            && unrolled_rows_per_thread(c) * c <= ROW_UNROLLED4_MAX_FLOATS
            && chunks.iter().all(|ch| (ch.rows * c).is_multiple_of(4));
        // vec4 loads and stores: whole rows of vec4s, or (row-segments)
        // rows that start inside a vec4, where every chunk is whole vec4s;
        // b from the tables.
        let segment_view = match variant {
            Variant::RowSegments if c <= BIAS_TABLE_CLASSES && c.is_multiple_of(4) => {
                SegmentView::Vec4
            }
            Variant::RowSegments
                if c <= BIAS_TABLE_CLASSES
                    && chunks.iter().all(|ch| (ch.rows * c).is_multiple_of(4)) =>
            {
                SegmentView::Shifted
            }
            _ => SegmentView::Scalar,
        };
        let aligned = rows4 || segment_view != SegmentView::Scalar;
        let (steps, scratch, extra_params) = if split {
            let windowed = variant == Variant::SplitRowWindowed;
            let aligned = c.is_multiple_of(4);
            let rows_max = chunks.iter().map(|ch| ch.rows).max().unwrap_or(1);
            use wgpu::BufferUsages as U;
            let partials = buffers::storage(
                ctx,
                "split partials",
                (rows_max * split_chunks * 16) as u64,
                U::STORAGE,
            )?;
            // (M, 1 / S) per row.
            let norm = buffers::storage(ctx, "split norm", rows_max as u64 * 8, U::STORAGE)?;
            // Dispatches of the partial and gradient passes: all chunks at
            // once, or one window of b (16384 / L chunks) at a time.
            let per_dispatch = if windowed {
                WINDOW_CLASSES / split_len
            } else {
                split_chunks
            };
            let windows = split_chunks.div_ceil(per_dispatch);
            // Slot i * windows + w: chunk of rows i, window (or all chunks) w.
            let slots: Vec<Params> = chunks
                .iter()
                .flat_map(|ch| {
                    (0..windows).map(move |w| Params {
                        rows: ch.rows as u32,
                        flags,
                        seg_threads: split_chunks as u32,
                        seg_len: split_len as u32,
                        _pad: (w * per_dispatch) as u32,
                        ..base
                    })
                })
                .collect();
            let split_params = buffers::param_slots(ctx, &slots)?;
            let layout = kernels.layout(Family::SoftmaxXentSplit);
            let pipe = |e| kernels.pipeline(e, wg);
            let partial = pipe(Entry::XentSplitPartial { windowed, aligned });
            let combine = pipe(Entry::XentSplitCombine { aligned });
            let grad_pass = pipe(Entry::XentSplitGrad {
                windowed,
                aligned,
                in_place,
            });
            let write_grad = !matches!(b.grad, GradOutput::None);
            let mut steps = Vec::new();
            for (i, ch) in chunks.iter().enumerate() {
                let (first, rows) = (ch.start as u64, ch.rows as u64);
                let groups: Vec<(wgpu::BindGroup, u32)> = (0..windows)
                    .map(|w| {
                        let [logits, grad, upstream, logits4, grad4] =
                            self.chunk_views(b, first, rows, aligned);
                        let window = range(
                            &self.bias_table,
                            (w * WINDOW_CLASSES * 4) as u64,
                            (WINDOW_CLASSES * 4) as u64,
                        );
                        let group = buffers::bind_group(
                            ctx,
                            "softmax_xent split",
                            &layout,
                            vec![
                                split_params.slot(i * windows + w),
                                logits,
                                range(b.labels, first * 4, rows * 4),
                                self.class_params.as_entire_binding(),
                                grad,
                                range(&row_loss, first * 4, rows * 4),
                                upstream,
                                status.as_entire_binding(),
                                window.clone(),
                                window,
                                logits4,
                                grad4,
                                partials.as_entire_binding(),
                                norm.as_entire_binding(),
                            ],
                        );
                        let count = per_dispatch.min(split_chunks - w * per_dispatch);
                        (group, count as u32)
                    })
                    .collect();
                // A workgroup per (chunk, row), or for the windowed entries a
                // thread per row (each dispatch is one window, one chunk).
                let shape = |count: u32| {
                    if windowed {
                        [ch.rows.div_ceil(wg as usize) as u32, 1]
                    } else {
                        [count, ch.rows as u32]
                    }
                };
                for (group, count) in &groups {
                    steps.push(Step {
                        pipeline: partial.clone(),
                        group: group.clone(),
                        workgroups: shape(*count),
                    });
                }
                steps.push(Step {
                    pipeline: combine.clone(),
                    group: groups[0].0.clone(),
                    workgroups: [ch.rows.div_ceil(wg as usize) as u32, 1],
                });
                if write_grad {
                    for (group, count) in groups {
                        steps.push(Step {
                            pipeline: grad_pass.clone(),
                            group,
                            workgroups: shape(count),
                        });
                    }
                }
            }
            (steps, vec![partials, norm], Some(split_params))
        } else {
            let chunk_groups: Vec<(wgpu::BindGroup, u32)> = chunks
                .iter()
                .enumerate()
                .map(|(k, ch)| {
                    let (first, rows) = (ch.start as u64, ch.rows as u64);
                    let [logits, grad, upstream, logits4, grad4] =
                        self.chunk_views(b, first, rows, aligned);
                    let group = buffers::bind_group(
                        ctx,
                        "softmax_xent chunk",
                        &xent_layout,
                        vec![
                            params.slot(k + 1),
                            logits,
                            range(b.labels, first * 4, rows * 4),
                            self.class_params.as_entire_binding(),
                            grad,
                            range(&row_loss, first * 4, rows * 4),
                            upstream,
                            status.as_entire_binding(),
                            range(&self.bias_table, 0, BIAS_TABLE_BYTES as u64),
                            range(
                                &self.bias_table,
                                BIAS_TABLE_BYTES as u64,
                                BIAS_TABLE_BYTES as u64,
                            ),
                            logits4,
                            grad4,
                        ],
                    );
                    let threads = if rows4 {
                        ch.rows / unrolled_rows_per_thread(c)
                    } else {
                        ch.rows
                    };
                    (group, threads.div_ceil(rows_per_group) as u32)
                })
                .collect();
            let xent_entry = match variant {
                Variant::RowPerThread => Entry::XentRowPerThread,
                Variant::RowUnrolled => Entry::XentRowUnrolled {
                    classes: c as u32,
                    in_place,
                    vec4s: rows4,
                    forward: matches!(b.grad, GradOutput::None),
                },
                Variant::RowCached => Entry::XentRowCached,
                Variant::RowCachedSubgroup => Entry::XentRowCachedSubgroup,
                Variant::RowSegments if c <= BIAS_TABLE_CLASSES => {
                    let both_tables = c > BIAS_TABLE_CLASSES / 2;
                    Entry::XentRowSegments(
                        SegmentCache::for_len(seg_len),
                        in_place,
                        segment_view,
                        both_tables,
                    )
                }
                Variant::RowSegments => Entry::XentRowSegmentsWide(in_place),
                _ => Entry::XentRowPerGroup,
            };
            let xent = kernels.pipeline(xent_entry, wg);
            let steps = chunk_groups
                .into_iter()
                .map(|(group, workgroups)| Step {
                    pipeline: xent.clone(),
                    group,
                    workgroups: [workgroups, 1],
                })
                .collect();
            (steps, Vec::new(), None)
        };
        Ok(BoundLoss {
            rows: n,
            reduction: self.spec.reduction_kind(),
            normalizer_partial: kernels.pipeline(Entry::NormalizerPartial, 0),
            normalizer: kernels.pipeline(Entry::Normalizer, 0),
            finalize_partial: kernels.pipeline(Entry::FinalizePartial, 0),
            finalize: kernels.pipeline(Entry::Finalize, 0),
            reduce_groups: reduce_groups as u32,
            _partials: reduce_partials,
            reduce_group,
            steps,
            _scratch: scratch,
            row_loss,
            status,
            _params: std::iter::once(params).chain(extra_params).collect(),
        })
    }

    /// The per-chunk bindings of rows `[first, first + rows)`: logits, grad,
    /// upstream, and the vec4 views of the logits and grad. The vec4 entries
    /// (`aligned`) use only the vec4 views (bindings 10, 11), the others only
    /// the f32 ones (1, 4); the unused pair gets stand-ins, so no buffer is
    /// bound twice in one dispatch (aliased writable views are legal but left
    /// to chance on drivers we cannot test).
    fn chunk_views<'a>(
        &'a self,
        b: &LossBuffers<'a>,
        first: u64,
        rows: u64,
        aligned: bool,
    ) -> [wgpu::BindingResource<'a>; 5] {
        let row_bytes = self.spec.classes() as u64 * 4;
        let (at, bytes) = (first * row_bytes, rows * row_bytes);
        let upstream = match b.upstream {
            UpstreamBuffer::One => self.one.as_entire_binding(),
            UpstreamBuffer::Scalar(g) => range(g, 0, 4),
            UpstreamBuffer::PerRow(g) => range(g, first * 4, rows * 4),
        };
        let grad = match b.grad {
            GradOutput::Separate(g) => Some(range(g, at, bytes)),
            _ => None,
        };
        let logits = range(b.logits, at, bytes);
        let unused_f32 = self.unused_grad.as_entire_binding();
        let [unused4, unused_grad4] = &self.unused_view;
        if aligned {
            [
                unused4.as_entire_binding(),
                unused_f32,
                upstream,
                logits,
                grad.unwrap_or_else(|| unused_grad4.as_entire_binding()),
            ]
        } else {
            [
                logits,
                grad.unwrap_or(unused_f32),
                upstream,
                unused4.as_entire_binding(),
                unused_grad4.as_entire_binding(),
            ]
        }
    }

    /// Record the run into `encoder`: normalizer, the row pass over every
    /// chunk, then the reduction. No host wait, no allocation.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bound: &BoundLoss) {
        if bound.reduce_group.is_none() {
            // N = 0: denom 0, no bad labels, loss 0.
            encoder.clear_buffer(&bound.status, 0, None);
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("logit-adjust softmax_xent"),
            timestamp_writes: None,
        });
        self.record_in_pass(&mut pass, bound);
    }

    /// Record the run's dispatches into a compute pass the caller has open
    /// (e.g. an engine's own pass, or one with timestamp writes). With
    /// `N = 0` this records nothing and leaves the status buffer as it was;
    /// use [`SoftmaxXent::record`] to have it cleared.
    pub fn record_in_pass(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundLoss) {
        let Some(reduce_group) = &bound.reduce_group else {
            return;
        };
        pass.set_bind_group(0, reduce_group, &[]);
        pass.set_pipeline(&bound.normalizer_partial);
        pass.dispatch_workgroups(bound.reduce_groups, 1, 1);
        pass.set_pipeline(&bound.normalizer);
        pass.dispatch_workgroups(1, 1, 1);
        for step in &bound.steps {
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.group, &[]);
            pass.dispatch_workgroups(step.workgroups[0], step.workgroups[1], 1);
        }
        if bound.reduction != Reduction::None {
            pass.set_bind_group(0, reduce_group, &[]);
            pass.set_pipeline(&bound.finalize_partial);
            pass.dispatch_workgroups(bound.reduce_groups, 1, 1);
            pass.set_pipeline(&bound.finalize);
            pass.dispatch_workgroups(1, 1, 1);
        }
    }

    /// Read back the status of a finished device-resident run and fail if
    /// any label was out of range. Waits on the device: call it when you want
    /// the check, not in a hot loop.
    pub fn check_labels(&self, bound: &BoundLoss) -> Result<()> {
        let status = buffers::read_f32(&self.ctx, &[(&bound.status, 0, 3)])?;
        match status[0][1] as u64 {
            0 => Ok(()),
            count => Err(Error::BadLabelsOnDevice { count }),
        }
    }

    /// Host convenience: the loss and per-row losses.
    pub fn forward(&self, logits: &[f32], labels: &[i64]) -> Result<LossOutput<f32>> {
        self.run_host(logits, labels, Upstream::default(), HostGrad::None)
    }

    /// Host convenience: loss, per-row losses and the gradient (`g = 1`).
    pub fn forward_backward(&self, logits: &[f32], labels: &[i64]) -> Result<LossOutput<f32>> {
        self.run_host(logits, labels, Upstream::default(), HostGrad::Separate)
    }

    /// Host convenience with an explicit upstream gradient.
    pub fn forward_backward_scaled(
        &self,
        logits: &[f32],
        labels: &[i64],
        upstream: Upstream,
    ) -> Result<LossOutput<f32>> {
        self.run_host(logits, labels, upstream, HostGrad::Separate)
    }

    /// Host convenience, in place: the gradient overwrites `logits` (the
    /// returned `grad` is `None`). On error `logits` is untouched.
    pub fn forward_backward_in_place(
        &self,
        logits: &mut [f32],
        labels: &[i64],
    ) -> Result<LossOutput<f32>> {
        self.run_host(logits, labels, Upstream::default(), HostGrad::InPlace)
            .map(|mut out| {
                if let Some(grad) = out.grad.take() {
                    logits.copy_from_slice(&grad);
                }
                out
            })
    }

    fn run_host(
        &self,
        logits: &[f32],
        labels: &[i64],
        upstream: Upstream,
        grad_mode: HostGrad,
    ) -> Result<LossOutput<f32>> {
        let n = self.spec.check_batch(logits, labels, upstream)?;
        let reduced = |loss| (self.spec.reduction_kind() != Reduction::None).then_some(loss);
        if n == 0 {
            return Ok(LossOutput {
                loss: reduced(0.0),
                per_row: Vec::new(),
                grad: (grad_mode != HostGrad::None).then(Vec::new),
            });
        }
        let ctx = &self.ctx;
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let labels_i32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let logits_buf = buffers::upload(
                ctx,
                "logits",
                bytemuck::cast_slice(logits),
                U::STORAGE | U::COPY_SRC,
            )?;
            let labels_buf =
                buffers::upload(ctx, "labels", bytemuck::cast_slice(&labels_i32), U::STORAGE)?;
            let grad_buf = match grad_mode {
                HostGrad::Separate => Some(buffers::storage(
                    ctx,
                    "grad",
                    logits.len() as u64 * 4,
                    U::STORAGE | U::COPY_SRC,
                )?),
                _ => None,
            };
            let upstream_buf = match upstream {
                Upstream::Scalar(g) => {
                    buffers::upload(ctx, "upstream", bytemuck::bytes_of(&g), U::STORAGE)?
                }
                Upstream::PerRow(g) => {
                    buffers::upload(ctx, "upstream", bytemuck::cast_slice(g), U::STORAGE)?
                }
            };
            let bound = self.bind_unscoped(&LossBuffers {
                logits: &logits_buf,
                labels: &labels_buf,
                rows: n,
                grad: match (grad_mode, &grad_buf) {
                    (HostGrad::Separate, Some(g)) => GradOutput::Separate(g),
                    (HostGrad::InPlace, _) => GradOutput::InPlace,
                    _ => GradOutput::None,
                },
                upstream: match upstream {
                    Upstream::Scalar(_) => UpstreamBuffer::Scalar(&upstream_buf),
                    Upstream::PerRow(_) => UpstreamBuffer::PerRow(&upstream_buf),
                },
                row_loss: None,
            })?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            self.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);

            let grad_source = match grad_mode {
                HostGrad::None => None,
                HostGrad::Separate => grad_buf.as_ref(),
                HostGrad::InPlace => Some(&logits_buf),
            };
            let mut regions = vec![(&bound.status, 0, 3), (&bound.row_loss, 0, n)];
            if let Some(g) = grad_source {
                regions.push((g, 0, logits.len()));
            }
            let mut out = buffers::read_f32(ctx, &regions)?.into_iter();
            let status = out.next().unwrap_or_default();
            let per_row = out.next().unwrap_or_default();
            let grad = out.next();
            if status.get(1).copied().unwrap_or(0.0) != 0.0 {
                // check_batch rejected bad labels already; this is a device fault.
                return Err(Error::Gpu(
                    "the device saw labels the host had validated".into(),
                ));
            }
            Ok(LossOutput {
                loss: reduced(status.get(2).copied().unwrap_or(f32::NAN)),
                per_row,
                grad,
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostGrad {
    None,
    Separate,
    InPlace,
}
