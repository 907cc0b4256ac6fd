//! Post-hoc logit adjustment on the GPU (docs/MATH.md section 6): from one read
//! of the logits, the predictions `argmax_c f_ic - tau_t log pi_c` for up to
//! [`MAX_TAUS`] values of tau at once, and the corrected logits for one tau.
//! Shader: `shaders/posthoc.wgsl`.

use bytemuck::{Pod, Zeroable};

use crate::buffers::{self, plan_chunks, range};
use crate::context::Context;
use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::kernels::{Entry, Family};
use crate::prior::ClassPrior;
use crate::region::{check_uses, Region, Use};

pub use crate::layouts::PostHocVariant;

/// The most taus one pass evaluates.
pub const MAX_TAUS: usize = 64;
/// The largest `k` of [`PostHoc::top_k`].
pub const MAX_TOP_K: usize = 8;
const WG: usize = 64;
const TILE: usize = 1024;
/// Up to this C*T, one thread per row is the faster layout.
const ROW_PER_THREAD_AUTO_MAX: usize = 4096;
/// ... and up to this many taus: each holds two registers per tau.
const ROW_PER_THREAD_AUTO_MAX_TAUS: usize = 16;
/// The windowed 16-tau argmax takes two rows per thread from this many rows
/// (16 workgroups of pairs): each `log pi_c` read and its 16 products then
/// serve two rows; with fewer rows, halving the threads costs more than it
/// saves (docs/PERFORMANCE.md has the figures).
const WINDOWS_PAIRS_MIN_ROWS: usize = 2048;
/// Up to this C (and T <= 16) the windowed layout runs `argmax_unrolled16`,
/// with C a pipeline constant and one straight-line block per class (32 in
/// the shader): no loop, no window state.
const UNROLLED_MAX_CLASSES: usize = 32;
/// llvmpipe/lavapipe end an invocation after about 65,535 loop trips; the
/// bound applies on CPU adapters only (see `trip_limit`).
const MAX_LOOP_TRIPS: usize = 60_000;

/// Floats in one window of the uniform table (64 KiB).
const TABLE_FLOATS: usize = 16384;
const TABLE_BYTES: u64 = TABLE_FLOATS as u64 * 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    taus: u32,
    slices: u32,
    tau_index: u32,
    k: u32,
    window_start: u32,
    window_len: u32,
    /// Always 0. `argmax_windows16` and `argmax_unrolled16` pass each
    /// `tau_t * log pi_c` through an xor with it, so no compiler can fuse
    /// the product into the subtraction that follows (see the shader).
    opaque_zero: u32,
    _pad: [u32; 3],
    /// The taus as f32, padded with 0 to 16, for the same two kernels.
    tau16: [[f32; 4]; 4],
}

/// Predictions for every tau: `by_tau[t][i]` is row `i`'s class under `taus[t]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// The taus, in the order of `by_tau`.
    pub taus: Vec<f64>,
    /// `T x N` class indices.
    pub by_tau: Vec<Vec<u32>>,
}

/// The caller's buffers for a device-resident post-hoc run.
#[derive(Debug, Clone, Copy)]
pub struct PostHocBuffers<'a> {
    /// `N x C` logits of `dtype` (`STORAGE`; for the halves the region is
    /// read in whole 4-byte words, so an odd `N x C`'s last word must lie
    /// in the buffer).
    pub logits: Region<'a>,
    /// The logits' format: f32, or f16 and bf16 for the row-per-thread and
    /// row-per-group layouts (which `Auto` then picks on CPU adapters too).
    pub dtype: Dtype,
    /// `N`.
    pub rows: usize,
    /// `N x T` u32 predictions, row-major (`pred[i * T + t]`), so that row
    /// chunks stay contiguous (`STORAGE`); [`crate::CountsBuffers`] takes
    /// them as they are.
    pub predictions: Region<'a>,
}

/// Logits uploaded once by [`PostHoc::upload`] (checked: `N x C`, no NaN),
/// for any number of [`PostHoc::predict_on`], [`PostHoc::corrected_on`] and
/// [`PostHoc::top_k_on`] calls without a second upload.
#[derive(Debug)]
pub struct DeviceLogits {
    buffer: wgpu::Buffer,
    rows: usize,
    classes: usize,
    dtype: Dtype,
}

impl DeviceLogits {
    /// `N`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The device copy, as a region (for [`PostHocBuffers`] and the loss).
    pub fn region(&self) -> Region<'_> {
        let bytes = (self.rows * self.classes) as u64 * self.dtype.bytes();
        Region::new(&self.buffer, 0, bytes)
    }

    /// The logits' format.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// A post-hoc run bound to buffers; record it any number of times.
#[derive(Debug)]
pub struct BoundPostHoc {
    pipeline: wgpu::ComputePipeline,
    chunks: Vec<(wgpu::BindGroup, u32)>,
    _state: wgpu::Buffer,
    _params: buffers::ParamSlots,
}

impl crate::trace::Traced for BoundPostHoc {
    fn raw_steps(&self) -> Vec<crate::trace::RawStep> {
        self.chunks
            .iter()
            .map(|(group, x)| {
                crate::trace::RawStep::Dispatch(self.pipeline.clone(), group.clone(), [*x, 1, 1])
            })
            .collect()
    }
}

/// Batched post-hoc correction for one prior and a list of taus.
#[derive(Debug)]
pub struct PostHoc {
    ctx: Context,
    classes: usize,
    taus: Vec<f64>,
    adjustments: Vec<f32>,
    /// `f32(log pi_c)`, the table of `argmax_windows16` and
    /// `argmax_unrolled16`.
    log_prior: Vec<f32>,
    /// `log pi_train_c - log pi_test_c` (f64), what a unit of tau subtracts.
    offsets: Vec<f64>,
    adjust: wgpu::Buffer,
    /// Stands in for the writable binding an entry point does not use.
    unused: wgpu::Buffer,
    /// cpu_posthoc.wgsl: stands in for `best_state` with a single window.
    unused_state: wgpu::Buffer,
    /// cpu_posthoc.wgsl: stands in for the vec4 view of the predictions
    /// where it is not used.
    unused_pred4: wgpu::Buffer,
    /// The windowed uniform table, built on first use.
    table: std::sync::OnceLock<wgpu::Buffer>,
    variant: PostHocVariant,
}

impl Context {
    /// Post-hoc correction for `prior` at each of `taus` (1 to [`MAX_TAUS`]).
    pub fn posthoc(&self, prior: &ClassPrior, taus: &[f64]) -> Result<PostHoc> {
        PostHoc::new(self, prior, taus)
    }
}

/// `a_tc = f32(tau_t) * f32(log pi_c)`, multiplied in f32: the numbers both
/// paths subtract. The product is formed in f32 (not rounded from f64) so
/// that the windowed layout can form it in the shader, from one `log pi_c`
/// per class, and get the same bits (an f32 multiply is correctly rounded in
/// WGSL, SPIR-V and GLSL alike).
pub fn adjustments(prior: &ClassPrior, taus: &[f64]) -> Result<Vec<f32>> {
    adjustments_for_test_prior(prior, None, taus)
}

/// `log pi_train_c - log pi_test_c` in f64, what a unit of tau subtracts;
/// `log pi_train_c` alone for a balanced test set (the constant `log C`
/// changes no argmax).
fn log_offsets(prior: &ClassPrior, test: Option<&ClassPrior>) -> Result<Vec<f64>> {
    let mut offsets = prior.log_prior();
    if let Some(test) = test {
        if test.classes() != prior.classes() {
            return Err(Error::ShapeMismatch {
                what: "test prior (classes of the training prior)".into(),
                expected: prior.classes(),
                got: test.classes(),
            });
        }
        for (o, t) in offsets.iter_mut().zip(test.log_prior()) {
            *o -= t;
        }
    }
    Ok(offsets)
}

/// [`adjustments`] for a test set drawn from the prior `test` (docs/MATH.md
/// section 6): `a_tc = f32(tau) * f32(log pi_train_c - log pi_test_c)`, the
/// difference formed in f64. `None` is the balanced test set.
pub fn adjustments_for_test_prior(
    prior: &ClassPrior,
    test: Option<&ClassPrior>,
    taus: &[f64],
) -> Result<Vec<f32>> {
    adjustments_from(&log_offsets(prior, test)?, taus)
}

fn adjustments_from(offsets: &[f64], taus: &[f64]) -> Result<Vec<f32>> {
    if taus.is_empty() || taus.len() > MAX_TAUS {
        return Err(Error::InvalidArgument(format!(
            "need 1 to {MAX_TAUS} taus, got {}",
            taus.len()
        )));
    }
    if let Some(index) = taus.iter().position(|t| !t.is_finite()) {
        return Err(Error::NonFinite {
            what: "taus".into(),
            index,
            value: taus[index],
        });
    }
    Ok(taus
        .iter()
        .flat_map(|&tau| offsets.iter().map(move |&l| tau as f32 * l as f32))
        .collect())
}

/// Check post-hoc logits: a multiple of `C` long, no NaN (+-inf are fine).
/// Returns `N`.
pub fn check_logits(logits: &[f32], classes: usize) -> Result<usize> {
    check_logits_of(logits, classes)
}

/// [`check_logits`] for logits of any format.
fn check_logits_of<T: Element>(logits: &[T], classes: usize) -> Result<usize> {
    if classes == 0 || !logits.len().is_multiple_of(classes) {
        return Err(Error::ShapeMismatch {
            what: format!("logits length (a multiple of C = {classes})"),
            expected: logits.len().div_ceil(classes.max(1)) * classes,
            got: logits.len(),
        });
    }
    if let Some(index) = logits.iter().position(|x| x.to_f32().is_nan()) {
        return Err(Error::NonFinite {
            what: "logits (NaN)".into(),
            index,
            value: f64::NAN,
        });
    }
    Ok(logits.len() / classes)
}

impl PostHoc {
    /// Validate the taus and upload the `T x C` adjustments.
    pub fn new(ctx: &Context, prior: &ClassPrior, taus: &[f64]) -> Result<Self> {
        Self::for_test_prior(ctx, prior, None, taus)
    }

    /// Correction toward a test set drawn from `test` (`None`: balanced):
    /// `argmax_c f_c - tau (log pi_train_c - log pi_test_c)`, where tau = 1
    /// is the Bayes rule for that test distribution.
    pub fn for_test_prior(
        ctx: &Context,
        prior: &ClassPrior,
        test: Option<&ClassPrior>,
        taus: &[f64],
    ) -> Result<Self> {
        Self::from_offsets(ctx, log_offsets(prior, test)?, taus)
    }

    /// The same correction at the single tau number `t`.
    pub fn at_tau(&self, t: usize) -> Result<Self> {
        self.check_tau_index(t)?;
        Self::from_offsets(&self.ctx, self.offsets.clone(), &[self.taus[t]])
    }

    /// The context it runs on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn from_offsets(ctx: &Context, offsets: Vec<f64>, taus: &[f64]) -> Result<Self> {
        let adjustments = adjustments_from(&offsets, taus)?;
        let (adjust, unused, unused_state, unused_pred4) = ctx.scoped(|| {
            Ok((
                buffers::upload(
                    ctx,
                    "adjust",
                    bytemuck::cast_slice(&adjustments),
                    wgpu::BufferUsages::STORAGE,
                )?,
                buffers::storage(ctx, "unused", 4, wgpu::BufferUsages::STORAGE)?,
                buffers::storage(ctx, "unused state", 4, wgpu::BufferUsages::STORAGE)?,
                buffers::storage(ctx, "unused pred4", 16, wgpu::BufferUsages::STORAGE)?,
            ))
        })?;
        Ok(Self {
            ctx: ctx.clone(),
            classes: offsets.len(),
            taus: taus.to_vec(),
            adjustments,
            log_prior: offsets.iter().map(|&l| l as f32).collect(),
            offsets,
            adjust,
            unused,
            unused_state,
            unused_pred4,
            table: std::sync::OnceLock::new(),
            variant: PostHocVariant::Auto,
        })
    }

    /// Force a workgroup layout (tests use this).
    pub fn with_variant(mut self, variant: PostHocVariant) -> Self {
        self.variant = variant;
        self
    }

    /// The taus, in output order.
    pub fn taus(&self) -> &[f64] {
        &self.taus
    }

    /// `C`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `a_tc = f32(tau_t) * f32(log pi_c)` at `[t * C + c]`.
    pub fn adjustments(&self) -> &[f32] {
        &self.adjustments
    }

    /// Vec4s of taus per class in the windowed table.
    fn tau4(&self) -> usize {
        self.taus.len().div_ceil(4)
    }

    /// Whether the windowed layout runs `argmax_windows16` or
    /// `argmax_unrolled16` (T <= 16), whose table holds `f32(log pi_c)` and
    /// which form `a_tc` in the shader.
    fn table_holds_log_prior(&self) -> bool {
        self.taus.len() <= 16
    }

    /// Classes per window of the windowed layout: every class of a 64 KiB
    /// table for T <= 16 (one f32 each), else a multiple of 4
    /// (so the windows of a row start on vec4 boundaries when `C % 4 == 0`).
    fn window_len(&self) -> usize {
        if self.table_holds_log_prior() {
            TABLE_FLOATS
        } else {
            TABLE_FLOATS / (4 * self.tau4()) / 4 * 4
        }
    }

    /// The windowed table: window `w` at byte `w * 64 KiB`, holding
    /// `f32(log pi_c)` at `[c - w * W]` for T <= 16, else `a_tc`
    /// at `[(c - w * W) * T4 + t]` (taus padded to `T4` with 0).
    fn window_table(&self) -> Result<&wgpu::Buffer> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let (c, t, t4) = (self.classes, self.taus.len(), 4 * self.tau4());
        let w_len = self.window_len();
        let windows = c.div_ceil(w_len);
        let mut data = vec![0f32; windows * TABLE_FLOATS];
        if self.table_holds_log_prior() {
            for (class, &l) in self.log_prior.iter().enumerate() {
                data[(class / w_len) * TABLE_FLOATS + class % w_len] = l;
            }
        } else {
            for class in 0..c {
                let at = (class / w_len) * TABLE_FLOATS + (class % w_len) * t4;
                for tau in 0..t {
                    data[at + tau] = self.adjustments[tau * c + class];
                }
            }
        }
        let table = buffers::upload(
            &self.ctx,
            "posthoc window table",
            bytemuck::cast_slice(&data),
            wgpu::BufferUsages::UNIFORM,
        )?;
        Ok(self.table.get_or_init(|| table))
    }

    /// Loop trips one invocation may make: bounded on CPU adapters, which
    /// end an invocation past about 65,535, and not on GPUs.
    fn trip_limit(&self) -> usize {
        if self.ctx.info().device_type == wgpu::DeviceType::Cpu {
            MAX_LOOP_TRIPS
        } else {
            usize::MAX
        }
    }

    fn t_pad(&self) -> usize {
        self.taus.len().next_power_of_two()
    }

    fn trips(&self, variant: PostHocVariant) -> usize {
        let (c, t) = (self.classes, self.taus.len());
        match variant {
            PostHocVariant::RowPerThread => c.saturating_mul(t) + 2 * t,
            PostHocVariant::Windows if self.table_holds_log_prior() => self.window_len().min(c) + 8,
            PostHocVariant::Windows => self.window_len().min(c) * self.tau4() + 3 * self.tau4(),
            _ => {
                let per_slice = TILE / (WG / self.t_pad());
                c.div_ceil(TILE) * (TILE / (4 * WG) + per_slice / 4) + 8
            }
        }
    }

    /// The layout used for this `C` and `T`: the forced one, else the tuned
    /// one (see [`crate::tuning`]), else windows on CPU adapters and on GPUs a
    /// row per thread for small `C * T`, a workgroup per row beyond.
    pub fn resolved_variant(&self) -> PostHocVariant {
        if self.variant == PostHocVariant::Auto {
            let tuned = self.ctx.tuning().and_then(|t| t.posthoc_for(self.classes));
            if let Some(choice) = tuned.filter(|c| self.trips(c.variant) <= self.trip_limit()) {
                return choice.variant;
            }
        }
        let cpu = self.ctx.info().device_type == wgpu::DeviceType::Cpu;
        match self.variant {
            PostHocVariant::Auto if cpu => PostHocVariant::Windows,
            PostHocVariant::Auto
                if self.taus.len() <= ROW_PER_THREAD_AUTO_MAX_TAUS
                    && self.classes * self.taus.len() <= ROW_PER_THREAD_AUTO_MAX =>
            {
                PostHocVariant::RowPerThread
            }
            PostHocVariant::Auto => PostHocVariant::RowPerGroup,
            v => v,
        }
    }

    /// The layout for logits of `dtype`: the windowed argmax of CPU
    /// adapters reads f32 only, so half logits take the GPU layouts' rule
    /// (and forcing the windows on them is an error).
    fn variant_for(&self, dtype: Dtype) -> Result<PostHocVariant> {
        let variant = self.resolved_variant();
        if dtype == Dtype::F32 || variant != PostHocVariant::Windows {
            return Ok(variant);
        }
        if self.variant == PostHocVariant::Windows {
            return Err(Error::InvalidArgument(format!(
                "the windows layout reads f32 logits only, not {}",
                dtype.name()
            )));
        }
        let (c, t) = (self.classes, self.taus.len());
        Ok(
            if t <= ROW_PER_THREAD_AUTO_MAX_TAUS && c * t <= ROW_PER_THREAD_AUTO_MAX {
                PostHocVariant::RowPerThread
            } else {
                PostHocVariant::RowPerGroup
            },
        )
    }

    /// posthoc.wgsl's module for logits of `dtype`.
    fn family(&self, dtype: Dtype) -> Family {
        Family::posthoc(dtype, self.ctx.capabilities().shader_f16)
    }

    /// Prepare a device-resident run on the caller's buffers.
    pub fn bind(&self, b: &PostHocBuffers) -> Result<BoundPostHoc> {
        self.ctx.scoped(|| self.bind_unscoped(b))
    }

    /// The argmax entry for `variant` over `n` rows, and rows per workgroup.
    fn entry_for(&self, variant: PostHocVariant, n: usize) -> (Entry, usize) {
        let (c, t) = (self.classes, self.taus.len());
        match variant {
            PostHocVariant::RowPerThread => (Entry::ArgmaxRowPerThread { taus: t as u32 }, WG),
            PostHocVariant::Windows if t <= 16 && c <= UNROLLED_MAX_CLASSES => (
                Entry::ArgmaxUnrolled16 {
                    classes: c as u32,
                    vec4_out: t.is_multiple_of(4),
                },
                WG,
            ),
            // Two rows per thread where that still leaves 16 workgroups.
            PostHocVariant::Windows if t <= 16 => {
                let pairs = n >= WINDOWS_PAIRS_MIN_ROWS;
                let rows = if pairs { 2 * WG } else { WG };
                (Entry::ArgmaxWindows16 { pairs }, rows)
            }
            PostHocVariant::Windows => (Entry::ArgmaxWindows, WG),
            _ => (Entry::ArgmaxRowPerGroup, 1),
        }
    }

    /// (window start, window length, table window): one window, with no
    /// table, for the layouts without one.
    fn windows(
        &self,
        variant: PostHocVariant,
    ) -> Result<Vec<(usize, usize, Option<wgpu::BindingResource<'_>>)>> {
        if variant != PostHocVariant::Windows {
            return Ok(vec![(0, 0, None)]);
        }
        let table = self.window_table()?;
        let w_len = self.window_len();
        Ok((0..self.classes.div_ceil(w_len))
            .map(|w| {
                (
                    w * w_len,
                    w_len,
                    Some(range(table, w as u64 * TABLE_BYTES, TABLE_BYTES)),
                )
            })
            .collect())
    }

    /// The caller's regions: usage, alignment, size, no shared bytes.
    fn check_regions(&self, b: &PostHocBuffers) -> Result<()> {
        let (n, c, t) = (b.rows, self.classes, self.taus.len());
        let logit_bytes = (n * c) as u64 * b.dtype.bytes();
        check_uses(
            self.ctx.limits(),
            &[
                Use {
                    what: "logits",
                    region: b.logits,
                    bytes: logit_bytes,
                },
                Use {
                    what: "predictions",
                    region: b.predictions,
                    bytes: (n * t * 4) as u64,
                },
            ],
        )?;
        let room = b.logits.buffer.size().saturating_sub(b.logits.offset);
        if room < logit_bytes.next_multiple_of(4) {
            return Err(Error::BufferTooSmall {
                what: "logits (bound as whole 4-byte words, past the region's end)".into(),
                needed: logit_bytes.next_multiple_of(4),
                got: room,
            });
        }
        Ok(())
    }

    /// The argmax's parameter slots: one per (chunk, window).
    fn argmax_slots(
        &self,
        chunks: &[buffers::Chunk],
        windows: &[(usize, usize, Option<wgpu::BindingResource<'_>>)],
    ) -> Vec<Params> {
        let (c, t) = (self.classes, self.taus.len());
        let mut tau16 = [[0f32; 4]; 4];
        for (t, &tau) in self.taus.iter().enumerate().take(16) {
            tau16[t / 4][t % 4] = tau as f32;
        }
        chunks
            .iter()
            .flat_map(|ch| {
                windows.iter().map(move |&(start, len, _)| Params {
                    rows: ch.rows as u32,
                    classes: c as u32,
                    taus: t as u32,
                    slices: (WG / self.t_pad()) as u32,
                    tau_index: 0,
                    k: 0,
                    window_start: start as u32,
                    window_len: len as u32,
                    tau16,
                    ..Params::zeroed()
                })
            })
            .collect()
    }

    fn bind_unscoped(&self, b: &PostHocBuffers) -> Result<BoundPostHoc> {
        let ctx = &self.ctx;
        let (n, c, t) = (b.rows, self.classes, self.taus.len());
        self.check_regions(b)?;
        let variant = self.variant_for(b.dtype)?;
        if self.trips(variant) > self.trip_limit() {
            return Err(Error::TooLarge(format!(
                "{c} classes x {t} taus with the {variant:?} layout: over {MAX_LOOP_TRIPS} loop trips per invocation, \
                 which this CPU adapter ends"
            )));
        }
        let (entry, rows_per_group) = self.entry_for(variant, n);
        let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
        let logit_row = c as u64 * b.dtype.bytes();
        let row_bytes = logit_row.max(4 * t as u64);
        let chunks = plan_chunks(
            ctx.limits(),
            n,
            row_bytes,
            logit_row,
            groups_max * rows_per_group,
        )?;
        let windows = self.windows(variant)?;
        // The running argmax between windows, reused by every chunk (their
        // dispatches run in order).
        let state_row = 8 * self.tau4() as u64;
        let max_rows = chunks.iter().map(|ch| ch.rows).max().unwrap_or(0) as u64;
        let state = if windows.len() > 1 {
            buffers::storage(
                ctx,
                "posthoc state",
                max_rows * state_row * 4,
                wgpu::BufferUsages::STORAGE,
            )?
        } else {
            self.unused_state.clone()
        };
        let slots = self.argmax_slots(&chunks, &windows);
        let params = buffers::param_slots(ctx, &slots)?;
        let family = if entry.family() == Family::PostHoc {
            self.family(b.dtype)
        } else {
            entry.family()
        };
        let layout = ctx.kernels().layout(family);
        let mut groups = Vec::with_capacity(slots.len());
        for (k, ch) in chunks.iter().enumerate() {
            let (first, rows) = (ch.start as u64, ch.rows as u64);
            for (w, (_, _, table)) in windows.iter().enumerate() {
                let state_range = if windows.len() > 1 {
                    range(&state, 0, rows * state_row * 4)
                } else {
                    state.as_entire_binding()
                };
                let logits = b
                    .logits
                    .binding(first * logit_row, (rows * logit_row).next_multiple_of(4));
                let pred = || {
                    b.predictions
                        .binding(first * t as u64 * 4, rows * t as u64 * 4)
                };
                let resources = match table {
                    // cpu_posthoc.wgsl
                    Some(table) => vec![
                        params.slot(k * windows.len() + w),
                        logits,
                        pred(),
                        state_range,
                        table.clone(),
                        // A row's T predictions start on a vec4 when T % 4 == 0.
                        if matches!(entry, Entry::ArgmaxUnrolled16 { vec4_out: true, .. }) {
                            pred()
                        } else {
                            self.unused_pred4.as_entire_binding()
                        },
                    ],
                    // posthoc.wgsl; `corrected_out` is unused by the argmax.
                    None => vec![
                        params.slot(k * windows.len() + w),
                        logits,
                        self.adjust.as_entire_binding(),
                        pred(),
                        self.unused.as_entire_binding(),
                    ],
                };
                let group = buffers::bind_group(ctx, "posthoc chunk", &layout, resources);
                groups.push((group, ch.rows.div_ceil(rows_per_group) as u32));
            }
        }
        Ok(BoundPostHoc {
            pipeline: ctx.kernels().pipeline_in(entry, family),
            chunks: groups,
            _state: state,
            _params: params,
        })
    }

    /// Record the argmax over every chunk. No host wait, no allocation.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bound: &BoundPostHoc) {
        record_chunks(
            encoder,
            "logit-adjust posthoc",
            &bound.pipeline,
            &bound.chunks,
        );
    }

    /// Record the argmax into a compute pass the caller has open.
    pub fn record_in_pass(&self, pass: &mut wgpu::ComputePass<'_>, bound: &BoundPostHoc) {
        dispatch_chunks(pass, &bound.pipeline, &bound.chunks);
    }

    /// Check `N x C` logits (no NaN) and upload them once, for the `_on`
    /// methods.
    pub fn upload(&self, logits: &[f32]) -> Result<DeviceLogits> {
        self.upload_as(logits)
    }

    /// [`PostHoc::upload`] for logits of any format ([`Element`]: `f32`,
    /// [`half::f16`], [`half::bf16`]); the `_on` methods then read them in
    /// that format.
    pub fn upload_as<T: Element>(&self, logits: &[T]) -> Result<DeviceLogits> {
        let rows = check_logits_of(logits, self.classes)?;
        let buffer = self.ctx.scoped(|| {
            buffers::upload(
                &self.ctx,
                "posthoc logits",
                bytemuck::cast_slice(logits),
                wgpu::BufferUsages::STORAGE,
            )
        })?;
        Ok(DeviceLogits {
            buffer,
            rows,
            classes: self.classes,
            dtype: T::DTYPE,
        })
    }

    fn check_uploaded(&self, logits: &DeviceLogits) -> Result<()> {
        if logits.classes != self.classes {
            return Err(Error::ShapeMismatch {
                what: "classes of the uploaded logits".into(),
                expected: self.classes,
                got: logits.classes,
            });
        }
        Ok(())
    }

    /// Host convenience: predictions for every tau (`T x N`).
    pub fn predict(&self, logits: &[f32]) -> Result<Predictions> {
        self.predict_on(&self.upload(logits)?)
    }

    /// [`PostHoc::predict`] on logits already on the device.
    pub fn predict_on(&self, logits: &DeviceLogits) -> Result<Predictions> {
        self.check_uploaded(logits)?;
        let n = logits.rows;
        let t = self.taus.len();
        if n == 0 {
            return Ok(Predictions {
                taus: self.taus.clone(),
                by_tau: vec![Vec::new(); t],
            });
        }
        let ctx = &self.ctx;
        let rows = ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let pred = buffers::storage(
                ctx,
                "predictions",
                (n * t * 4) as u64,
                U::STORAGE | U::COPY_SRC,
            )?;
            let bound = self.bind_unscoped(&PostHocBuffers {
                logits: logits.region(),
                dtype: logits.dtype,
                rows: n,
                predictions: Region::whole(&pred),
            })?;
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            self.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let out = buffers::read::<u32>(ctx, &[(&pred, 0, n * t)])?;
            Ok(out.into_iter().next().unwrap_or_default())
        })?;
        Ok(Predictions {
            taus: self.taus.clone(),
            by_tau: (0..t)
                .map(|k| (0..n).map(|i| rows[i * t + k]).collect())
                .collect(),
        })
    }

    /// Host convenience: `f_ic - a_tc` for the tau at `tau_index`.
    pub fn corrected(&self, logits: &[f32], tau_index: usize) -> Result<Vec<f32>> {
        self.check_tau_index(tau_index)?;
        self.corrected_on(&self.upload(logits)?, tau_index)
    }

    fn check_tau_index(&self, tau_index: usize) -> Result<()> {
        if tau_index >= self.taus.len() {
            return Err(Error::InvalidArgument(format!(
                "tau index {tau_index} out of range: {} taus",
                self.taus.len()
            )));
        }
        Ok(())
    }

    /// [`PostHoc::corrected`] on logits already on the device.
    pub fn corrected_on(&self, logits: &DeviceLogits, tau_index: usize) -> Result<Vec<f32>> {
        self.check_uploaded(logits)?;
        self.check_tau_index(tau_index)?;
        if logits.rows == 0 {
            return Ok(Vec::new());
        }
        let groups_max = self.ctx.limits().max_compute_workgroups_per_dimension as usize;
        let c = self.classes;
        self.run_rows(
            logits,
            RowJob {
                entry: Entry::Corrected,
                per_row: c,
                into_pred: false,
                tau_index,
                k: 0,
                max_rows_per_dispatch: usize::MAX,
                workgroups: &|rows| (rows * c).div_ceil(WG).min(groups_max) as u32,
            },
        )
    }
}

impl PostHoc {
    /// Host convenience: the `k` best classes of each row under the tau at
    /// `tau_index`, best first, ties to the smaller index (`N x k`,
    /// row-major). `1 <= k <= min(C, MAX_TOP_K)`.
    pub fn top_k(&self, logits: &[f32], tau_index: usize, k: usize) -> Result<Vec<u32>> {
        self.check_top_k(tau_index, k)?;
        self.top_k_on(&self.upload(logits)?, tau_index, k)
    }

    /// [`PostHoc::top_k`] on logits already on the device.
    pub fn top_k_on(&self, logits: &DeviceLogits, tau_index: usize, k: usize) -> Result<Vec<u32>> {
        self.check_uploaded(logits)?;
        self.check_top_k(tau_index, k)?;
        let n = logits.rows;
        if n == 0 {
            return Ok(Vec::new());
        }
        let groups_max = self.ctx.limits().max_compute_workgroups_per_dimension as usize;
        self.run_rows(
            logits,
            RowJob {
                entry: Entry::TopK,
                per_row: k,
                into_pred: true,
                tau_index,
                k,
                max_rows_per_dispatch: groups_max,
                workgroups: &|rows| rows as u32,
            },
        )
    }

    fn check_top_k(&self, tau_index: usize, k: usize) -> Result<()> {
        let c = self.classes;
        self.check_tau_index(tau_index)?;
        if k == 0 || k > c.min(MAX_TOP_K) {
            return Err(Error::InvalidArgument(format!(
                "top-k needs 1 <= k <= min(C, {MAX_TOP_K}) = {}, got {k}",
                c.min(MAX_TOP_K)
            )));
        }
        if c.div_ceil(WG) * k > self.trip_limit() {
            return Err(Error::TooLarge(format!(
                "top-{k} over {c} classes: too many loop trips per invocation"
            )));
        }
        Ok(())
    }

    /// Run `job.entry` over row chunks of the uploaded `logits` and read
    /// back its `job.per_row` 4-byte outputs per row.
    fn run_rows<T: Pod>(&self, logits: &DeviceLogits, job: RowJob) -> Result<Vec<T>> {
        let ctx = &self.ctx;
        let c = self.classes;
        let n = logits.rows;
        let logits_buf = &logits.buffer;
        let per_row = job.per_row as u64;
        ctx.scoped(|| {
            use wgpu::BufferUsages as U;
            let out =
                buffers::storage(ctx, "out", n as u64 * per_row * 4, U::STORAGE | U::COPY_SRC)?;
            let logit_row = c as u64 * logits.dtype.bytes();
            let row_bytes = logit_row.max(4 * per_row);
            let chunks = plan_chunks(
                ctx.limits(),
                n,
                row_bytes,
                logit_row,
                job.max_rows_per_dispatch,
            )?;
            let slots: Vec<Params> = chunks
                .iter()
                .map(|ch| Params {
                    rows: ch.rows as u32,
                    classes: c as u32,
                    taus: self.taus.len() as u32,
                    slices: 1,
                    tau_index: job.tau_index as u32,
                    k: job.k as u32,
                    window_start: 0,
                    window_len: 0,
                    ..Params::zeroed()
                })
                .collect();
            let params = buffers::param_slots(ctx, &slots)?;
            let family = self.family(logits.dtype);
            let layout = ctx.kernels().layout(family);
            let groups: Vec<(wgpu::BindGroup, u32)> = chunks
                .iter()
                .enumerate()
                .map(|(q, ch)| {
                    let (first, rows) = (ch.start as u64, ch.rows as u64);
                    let out_range = range(&out, first * per_row * 4, rows * per_row * 4);
                    let (pred, corrected) = if job.into_pred {
                        (out_range, self.unused.as_entire_binding())
                    } else {
                        (self.unused.as_entire_binding(), out_range)
                    };
                    let group = buffers::bind_group(
                        ctx,
                        "posthoc rows",
                        &layout,
                        vec![
                            params.slot(q),
                            range(
                                logits_buf,
                                first * logit_row,
                                (rows * logit_row).next_multiple_of(4),
                            ),
                            self.adjust.as_entire_binding(),
                            pred,
                            corrected,
                        ],
                    );
                    (group, (job.workgroups)(ch.rows))
                })
                .collect();
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            let pipeline = ctx.kernels().pipeline_in(job.entry, family);
            record_chunks(
                &mut encoder,
                "logit-adjust posthoc rows",
                &pipeline,
                &groups,
            );
            ctx.queue().submit([encoder.finish()]);
            let out = buffers::read::<T>(ctx, &[(&out, 0, n * job.per_row)])?;
            Ok(out.into_iter().next().unwrap_or_default())
        })
    }
}

/// A per-row post-hoc job for [`PostHoc::run_rows`].
struct RowJob<'a> {
    entry: Entry,
    /// 4-byte outputs per row.
    per_row: usize,
    /// Outputs go to the `pred` binding (u32), else to `corrected_out` (f32).
    into_pred: bool,
    tau_index: usize,
    k: usize,
    max_rows_per_dispatch: usize,
    /// Workgroups for a chunk of this many rows.
    workgroups: &'a dyn Fn(usize) -> u32,
}

/// One compute pass: `pipeline` dispatched once per `(bind group, workgroups)`.
pub(crate) fn record_chunks(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    pipeline: &wgpu::ComputePipeline,
    chunks: &[(wgpu::BindGroup, u32)],
) {
    if chunks.is_empty() {
        return;
    }
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    dispatch_chunks(&mut pass, pipeline, chunks);
}

/// `pipeline` dispatched once per `(bind group, workgroups)` in an open pass.
pub(crate) fn dispatch_chunks(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    chunks: &[(wgpu::BindGroup, u32)],
) {
    pass.set_pipeline(pipeline);
    for (group, workgroups) in chunks {
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(*workgroups, 1, 1);
    }
}
