//! The shader registry: WGSL sources pulled in with `include_str!`, their
//! bind-group layouts, and compute pipelines built once per
//! (entry point, workgroup size) and cached on the context.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

/// `shaders/softmax_xent.wgsl`: the fused loss forward(+backward).
pub const SOFTMAX_XENT_WGSL: &str = include_str!("../shaders/softmax_xent.wgsl");
/// `shaders/softmax_xent_subgroup.wgsl`: the row-cached reductions with
/// subgroup operations, put in `softmax_xent.wgsl` on devices with subgroups.
pub const SOFTMAX_XENT_SUBGROUP_WGSL: &str = include_str!("../shaders/softmax_xent_subgroup.wgsl");
/// `shaders/softmax_xent_split.wgsl`: the split-row layout's three passes,
/// appended to `softmax_xent.wgsl` (whose bindings and helpers it uses).
pub const SOFTMAX_XENT_SPLIT_WGSL: &str = include_str!("../shaders/softmax_xent_split.wgsl");
/// `shaders/softmax_xent_unrolled.wgsl`: the row-unrolled layout (C fixed
/// per pipeline), appended to `softmax_xent.wgsl`.
pub const SOFTMAX_XENT_UNROLLED_WGSL: &str = include_str!("../shaders/softmax_xent_unrolled.wgsl");
/// `shaders/loss_reduce.wgsl`: the normalizer and the final reduction.
pub const LOSS_REDUCE_WGSL: &str = include_str!("../shaders/loss_reduce.wgsl");
/// `shaders/posthoc.wgsl`: batched post-hoc correction and argmax.
pub const POSTHOC_WGSL: &str = include_str!("../shaders/posthoc.wgsl");
/// `shaders/metrics.wgsl`: exact per-class counts and label histograms.
pub const METRICS_WGSL: &str = include_str!("../shaders/metrics.wgsl");
/// `shaders/gather.wgsl`: mini-batch assembly and the running loss.
pub const GATHER_WGSL: &str = include_str!("../shaders/gather.wgsl");
/// `shaders/linear.wgsl`: the linear classifier's forward and SGD step.
pub const LINEAR_WGSL: &str = include_str!("../shaders/linear.wgsl");
/// `shaders/baseline.wgsl`: the copy floor and the unfused sequence (bench only).
pub const BASELINE_WGSL: &str = include_str!("../shaders/baseline.wgsl");

/// How many classes each thread of `xent_row_segments` holds: the private
/// array's size is fixed per shader module (WGSL has no override-sized
/// private arrays), and a large one costs its zero-initialisation on every
/// row when the rows are short, so there are three modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SegmentCache {
    /// 16 classes (4 vec4).
    Small,
    /// 128 classes (32 vec4).
    Mid,
    /// 512 classes (128 vec4), the shader file as written. (LLVM's compile
    /// time on lavapipe grows fast with it: about 6 s per pipeline at 1024.)
    Full,
}

impl SegmentCache {
    /// The smallest cache holding a segment of `len` classes.
    pub(crate) fn for_len(len: usize) -> Self {
        match len {
            0..=16 => SegmentCache::Small,
            17..=128 => SegmentCache::Mid,
            _ => SegmentCache::Full,
        }
    }

    fn family(self) -> Family {
        match self {
            SegmentCache::Small => Family::SoftmaxXentSmall,
            SegmentCache::Mid => Family::SoftmaxXentMid,
            SegmentCache::Full => Family::SoftmaxXent,
        }
    }
}

/// How the row-segments entries reach the logits and the gradient (`VIEW_*`
/// in softmax_xent.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SegmentView {
    /// The f32 views: any `C`, four scalar loads and stores per vec4.
    Scalar,
    /// The vec4 views, rows of whole vec4s (`C % 4 == 0`).
    Vec4,
    /// The vec4 views, rows starting anywhere in a vec4 (`C % 4 != 0`, every
    /// chunk's `N * C % 4 == 0`): a thread takes whole vec4s of the buffer,
    /// `b` shifted to match, and the row's shared first and last vec4s are
    /// stored component by component.
    Shifted,
}

/// `softmax_xent.wgsl` with its row-cached reductions (the block between
/// these markers) replaced by `softmax_xent_subgroup.wgsl`.
fn with_subgroup_reductions() -> String {
    const BEGIN: &str = "// BEGIN row-cached reductions";
    const END: &str = "// END row-cached reductions";
    let base = SOFTMAX_XENT_WGSL;
    let (start, end) = (base.find(BEGIN), base.find(END));
    let (Some(start), Some(end)) = (start, end) else {
        unreachable!("softmax_xent.wgsl marks its row-cached reductions");
    };
    format!(
        "{}{}{}",
        &base[..start],
        SOFTMAX_XENT_SUBGROUP_WGSL,
        &base[end..]
    )
}

/// The line of `softmax_xent.wgsl` the smaller segment caches replace.
const SEG_CACHE_LINE: &str = "const SEG_CACHE4: u32 = 128u;";

/// Every shader module the library builds, as (label, WGSL source): the
/// files in `shaders/` plus the segment-cache variants of
/// `softmax_xent.wgsl` (for the translation tests).
pub fn module_sources() -> Vec<(String, String)> {
    Family::ALL
        .into_iter()
        .map(|f| {
            let (label, source) = f.source();
            (label.to_string(), source.into_owned())
        })
        .collect()
}

/// A shader file and the bind-group layout its entry points share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    SoftmaxXent,
    SoftmaxXentMid,
    SoftmaxXentSmall,
    /// `softmax_xent.wgsl` with `softmax_xent_subgroup.wgsl`'s reductions
    /// (devices with subgroups only).
    SoftmaxXentSubgroup,
    /// `softmax_xent.wgsl` followed by `softmax_xent_split.wgsl`: its layout
    /// adds the split-row partials and LSE bindings (12, 13).
    SoftmaxXentSplit,
    /// `softmax_xent.wgsl` followed by `softmax_xent_unrolled.wgsl`.
    SoftmaxXentUnrolled,
    LossReduce,
    PostHoc,
    Metrics,
    Gather,
    Linear,
    Baseline,
}

impl Family {
    const ALL: [Family; 12] = [
        Family::SoftmaxXent,
        Family::SoftmaxXentMid,
        Family::SoftmaxXentSmall,
        Family::SoftmaxXentSubgroup,
        Family::SoftmaxXentSplit,
        Family::SoftmaxXentUnrolled,
        Family::LossReduce,
        Family::PostHoc,
        Family::Metrics,
        Family::Gather,
        Family::Linear,
        Family::Baseline,
    ];

    fn source(self) -> (&'static str, Cow<'static, str>) {
        let small = |vec4s: u32| {
            assert!(SOFTMAX_XENT_WGSL.contains(SEG_CACHE_LINE));
            Cow::Owned(SOFTMAX_XENT_WGSL.replace(
                SEG_CACHE_LINE,
                &format!("const SEG_CACHE4: u32 = {vec4s}u;"),
            ))
        };
        let (label, text) = match self {
            Family::SoftmaxXentSubgroup => {
                return (
                    "softmax_xent.wgsl with softmax_xent_subgroup.wgsl",
                    Cow::Owned(with_subgroup_reductions()),
                )
            }
            Family::SoftmaxXentSplit => {
                return (
                    "softmax_xent.wgsl with softmax_xent_split.wgsl",
                    Cow::Owned(format!("{SOFTMAX_XENT_WGSL}\n{SOFTMAX_XENT_SPLIT_WGSL}")),
                )
            }
            Family::SoftmaxXentUnrolled => {
                return (
                    "softmax_xent.wgsl with softmax_xent_unrolled.wgsl",
                    Cow::Owned(format!("{SOFTMAX_XENT_WGSL}\n{SOFTMAX_XENT_UNROLLED_WGSL}")),
                )
            }
            Family::SoftmaxXentMid => return ("softmax_xent.wgsl (mid cache)", small(32)),
            Family::SoftmaxXentSmall => return ("softmax_xent.wgsl (small cache)", small(4)),
            Family::SoftmaxXent => ("softmax_xent.wgsl", SOFTMAX_XENT_WGSL),
            Family::LossReduce => ("loss_reduce.wgsl", LOSS_REDUCE_WGSL),
            Family::PostHoc => ("posthoc.wgsl", POSTHOC_WGSL),
            Family::Metrics => ("metrics.wgsl", METRICS_WGSL),
            Family::Gather => ("gather.wgsl", GATHER_WGSL),
            Family::Linear => ("linear.wgsl", LINEAR_WGSL),
            Family::Baseline => ("baseline.wgsl", BASELINE_WGSL),
        };
        (label, Cow::Borrowed(text))
    }

    /// The family whose bind-group layout this one shares (the segment-cache
    /// variants bind exactly what `softmax_xent.wgsl` binds).
    fn layout_family(self) -> Family {
        match self {
            Family::SoftmaxXentMid
            | Family::SoftmaxXentSmall
            | Family::SoftmaxXentSubgroup
            | Family::SoftmaxXentUnrolled => Family::SoftmaxXent,
            f => f,
        }
    }

    /// Uniform bindings after the storage ones (binding numbers), besides
    /// binding 0's `params`.
    fn table_bindings(self) -> &'static [u32] {
        match self {
            // bias_table, bias_table_hi: b in two 64 KiB uniform windows
            Family::SoftmaxXent
            | Family::SoftmaxXentMid
            | Family::SoftmaxXentSmall
            | Family::SoftmaxXentSubgroup
            | Family::SoftmaxXentSplit
            | Family::SoftmaxXentUnrolled => &[8, 9],
            // adjust_table: a window of a_tc in a 64 KiB uniform buffer
            Family::PostHoc => &[6],
            _ => &[],
        }
    }

    /// Writable storage bindings after the uniform tables (binding numbers).
    fn late_storage_bindings(self) -> &'static [u32] {
        match self {
            // logits4, grad4: vec4 views of the logits and the gradient
            Family::SoftmaxXent
            | Family::SoftmaxXentMid
            | Family::SoftmaxXentSmall
            | Family::SoftmaxXentSubgroup
            | Family::SoftmaxXentUnrolled => &[10, 11],
            // and partials, row_norm
            Family::SoftmaxXentSplit => &[10, 11, 12, 13],
            // pred4: a vec4 view of the predictions
            Family::PostHoc => &[7],
            _ => &[],
        }
    }

    /// Binding 0 is the uniform `params`; then storage buffers, `true` for
    /// read-only. Mirrors the WGSL declarations.
    fn storage_bindings(self) -> &'static [bool] {
        match self {
            // logits (read_write for in-place), labels, class_params, grad, row_loss, upstream, norm
            Family::SoftmaxXent
            | Family::SoftmaxXentMid
            | Family::SoftmaxXentSmall
            | Family::SoftmaxXentSubgroup
            | Family::SoftmaxXentSplit
            | Family::SoftmaxXentUnrolled => &[false, true, true, false, false, true, true],
            // labels, class_params, row_loss, status, partials, labels4, row_loss4
            Family::LossReduce => &[true, true, true, false, false, true, true],
            // logits, adjust, pred, corrected_out, best_state
            Family::PostHoc => &[true, true, false, false, false],
            // labels, pred, counts
            Family::Metrics => &[true, true, false],
            // features, perm, labels, batch_features, batch_labels, status, acc
            Family::Gather => &[true, true, true, false, false, true, false],
            // a, w, velocity, g_logits, wgrad, out
            Family::Linear => &[true, false, false, true, false, false],
            // src, dst, a, b, out, labels
            Family::Baseline => &[true, false, true, true, false, true],
        }
    }
}

/// A compute entry point of one of the shaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    XentRowPerGroup,
    XentRowPerThread,
    XentRowCached,
    XentRowCachedSubgroup,
    /// `xent_row_segments` with this cache, in place or not, through these
    /// views of the logits and gradient, b from the low uniform table only
    /// (`C <= 16384`) or from both.
    XentRowSegments(SegmentCache, bool, SegmentView, bool),
    /// `xent_row_segments_wide`, in place or not (b from storage).
    XentRowSegmentsWide(bool),
    /// `xent_row_unrolled` for this `C`, in place or not.
    XentRowUnrolled {
        classes: u32,
        in_place: bool,
        /// The vec4 form: R = 4 / gcd(C, 4) rows per thread, whole vec4s.
        vec4s: bool,
        /// The forward alone: no gradient code at all (`in_place` unused).
        forward: bool,
    },
    /// `xent_split_partial`: b from uniform windows or not, vec4 loads or not.
    XentSplitPartial {
        windowed: bool,
        aligned: bool,
    },
    /// `xent_split_combine`, vec4 view of the logits or not.
    XentSplitCombine {
        aligned: bool,
    },
    /// `xent_split_grad`: b windows, vec4, in place.
    XentSplitGrad {
        windowed: bool,
        aligned: bool,
        in_place: bool,
    },
    NormalizerPartial,
    Normalizer,
    FinalizePartial,
    Finalize,
    ArgmaxRowPerThread,
    ArgmaxRowPerGroup,
    ArgmaxWindows,
    /// `argmax_windows16`, two rows per thread or one (`pairs`).
    ArgmaxWindows16 {
        pairs: bool,
    },
    /// `argmax_unrolled16`: C fixed per pipeline, and whether the
    /// predictions are stored as vec4s (`T % 4 == 0`).
    ArgmaxUnrolled16 {
        classes: u32,
        vec4_out: bool,
    },
    Corrected,
    TopK,
    ClassCounts,
    Gather,
    Accumulate,
    LinearForward,
    LinearUpdate,
    CopyVec4,
    ReadVec4,
    AddBias,
    LogSoftmax,
    Nll,
    NllBackward,
    LogSoftmaxBackward,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::XentRowPerGroup => "xent_row_per_group",
            Entry::XentRowPerThread => "xent_row_per_thread",
            Entry::XentRowCached => "xent_row_cached",
            // The same entry point, in the module with subgroup reductions.
            Entry::XentRowCachedSubgroup => "xent_row_cached",
            Entry::XentRowSegments(_, in_place, view, both_tables) => {
                use SegmentView as V;
                match (view, both_tables, in_place) {
                    (V::Scalar, false, false) => "xent_row_segments",
                    (V::Scalar, false, true) => "xent_row_segments_in_place",
                    (V::Vec4, false, false) => "xent_row_segments4",
                    (V::Vec4, false, true) => "xent_row_segments4_in_place",
                    (V::Shifted, false, false) => "xent_row_segments4s",
                    (V::Shifted, false, true) => "xent_row_segments4s_in_place",
                    (V::Scalar, true, false) => "xent_row_segments_t2",
                    (V::Scalar, true, true) => "xent_row_segments_t2_in_place",
                    (V::Vec4, true, false) => "xent_row_segments4_t2",
                    (V::Vec4, true, true) => "xent_row_segments4_t2_in_place",
                    (V::Shifted, true, false) => "xent_row_segments4s_t2",
                    (V::Shifted, true, true) => "xent_row_segments4s_t2_in_place",
                }
            }
            Entry::XentRowSegmentsWide(false) => "xent_row_segments_wide",
            Entry::XentRowSegmentsWide(true) => "xent_row_segments_wide_in_place",
            Entry::XentSplitPartial { windowed, aligned } => match (windowed, aligned) {
                (false, false) => "xent_split_partial",
                (false, true) => "xent_split_partial4",
                (true, false) => "xent_split_partial_windowed",
                (true, true) => "xent_split_partial4_windowed",
            },
            Entry::XentRowUnrolled {
                in_place,
                vec4s,
                forward,
                ..
            } => match (vec4s, in_place, forward) {
                (false, _, true) => "xent_row_unrolled_forward",
                (true, _, true) => "xent_rows_unrolled4_forward",
                (false, false, false) => "xent_row_unrolled",
                (false, true, false) => "xent_row_unrolled_in_place",
                (true, false, false) => "xent_rows_unrolled4",
                (true, true, false) => "xent_rows_unrolled4_in_place",
            },
            Entry::XentSplitCombine { aligned: false } => "xent_split_combine",
            Entry::XentSplitCombine { aligned: true } => "xent_split_combine4",
            Entry::XentSplitGrad {
                windowed,
                aligned,
                in_place,
            } => match (windowed, aligned, in_place) {
                (false, false, false) => "xent_split_grad",
                (false, false, true) => "xent_split_grad_in_place",
                (false, true, false) => "xent_split_grad4",
                (false, true, true) => "xent_split_grad4_in_place",
                (true, false, false) => "xent_split_grad_windowed",
                (true, false, true) => "xent_split_grad_windowed_in_place",
                (true, true, false) => "xent_split_grad4_windowed",
                (true, true, true) => "xent_split_grad4_windowed_in_place",
            },
            Entry::NormalizerPartial => "normalizer_partial",
            Entry::Normalizer => "normalizer",
            Entry::FinalizePartial => "finalize_partial",
            Entry::Finalize => "finalize",
            Entry::ArgmaxRowPerThread => "argmax_row_per_thread",
            Entry::ArgmaxRowPerGroup => "argmax_row_per_group",
            Entry::ArgmaxWindows => "argmax_windows",
            Entry::ArgmaxUnrolled16 { .. } => "argmax_unrolled16",
            Entry::ArgmaxWindows16 { pairs: false } => "argmax_windows16",
            Entry::ArgmaxWindows16 { pairs: true } => "argmax_windows16_pairs",
            Entry::Corrected => "corrected",
            Entry::TopK => "topk_row_per_group",
            Entry::ClassCounts => "class_counts",
            Entry::Gather => "gather",
            Entry::Accumulate => "accumulate",
            Entry::LinearForward => "forward",
            Entry::LinearUpdate => "update",
            Entry::CopyVec4 => "copy_vec4",
            Entry::ReadVec4 => "read_vec4",
            Entry::AddBias => "add_bias",
            Entry::LogSoftmax => "log_softmax",
            Entry::Nll => "nll",
            Entry::NllBackward => "nll_backward",
            Entry::LogSoftmaxBackward => "log_softmax_bw",
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Entry::XentRowSegments(cache, ..) => cache.family(),
            Entry::XentRowCachedSubgroup => Family::SoftmaxXentSubgroup,
            Entry::XentRowUnrolled { .. } => Family::SoftmaxXentUnrolled,
            Entry::XentSplitPartial { .. }
            | Entry::XentSplitCombine { .. }
            | Entry::XentSplitGrad { .. } => Family::SoftmaxXentSplit,
            Entry::XentRowPerGroup
            | Entry::XentRowPerThread
            | Entry::XentRowCached
            | Entry::XentRowSegmentsWide(_) => Family::SoftmaxXent,
            Entry::NormalizerPartial
            | Entry::Normalizer
            | Entry::FinalizePartial
            | Entry::Finalize => Family::LossReduce,
            Entry::ArgmaxRowPerThread
            | Entry::ArgmaxRowPerGroup
            | Entry::ArgmaxWindows
            | Entry::ArgmaxWindows16 { .. }
            | Entry::ArgmaxUnrolled16 { .. }
            | Entry::Corrected
            | Entry::TopK => Family::PostHoc,
            Entry::ClassCounts => Family::Metrics,
            Entry::Gather | Entry::Accumulate => Family::Gather,
            Entry::LinearForward | Entry::LinearUpdate => Family::Linear,
            Entry::CopyVec4
            | Entry::ReadVec4
            | Entry::AddBias
            | Entry::LogSoftmax
            | Entry::Nll
            | Entry::NllBackward
            | Entry::LogSoftmaxBackward => Family::Baseline,
        }
    }

    /// Whether the shader declares `override WG_SIZE`.
    fn has_workgroup_override(self) -> bool {
        matches!(
            self.family().layout_family(),
            Family::SoftmaxXent | Family::SoftmaxXentSplit
        )
    }
}

struct FamilyObjects {
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// Modules and layouts, built on first use (inside an error scope).
struct Built {
    families: HashMap<Family, FamilyObjects>,
    pipelines: HashMap<(Entry, u32), wgpu::ComputePipeline>,
}

pub(crate) struct Kernels {
    device: wgpu::Device,
    built: Mutex<Option<Built>>,
}

fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Built {
    fn new(device: &wgpu::Device) -> Self {
        let mut families: HashMap<Family, FamilyObjects> = HashMap::new();
        // Layout owners first, so the variants can share their layouts.
        // The subgroup module only where the device has subgroups (naga
        // refuses the builtins elsewhere).
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        let mut order: Vec<Family> = Family::ALL
            .into_iter()
            .filter(|&f| subgroups || f != Family::SoftmaxXentSubgroup)
            .collect();
        order.sort_by_key(|f| *f != f.layout_family());
        for family in order {
            let (label, source) = family.source();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source),
            });
            let (layout, pipeline_layout) = match families.get(&family.layout_family()) {
                Some(owner) => (owner.layout.clone(), owner.pipeline_layout.clone()),
                None => {
                    let mut entries = vec![layout_entry(0, wgpu::BufferBindingType::Uniform)];
                    for (i, &read_only) in family.storage_bindings().iter().enumerate() {
                        entries.push(layout_entry(
                            i as u32 + 1,
                            wgpu::BufferBindingType::Storage { read_only },
                        ));
                    }
                    for &binding in family.table_bindings() {
                        entries.push(layout_entry(binding, wgpu::BufferBindingType::Uniform));
                    }
                    for &binding in family.late_storage_bindings() {
                        entries.push(layout_entry(
                            binding,
                            wgpu::BufferBindingType::Storage { read_only: false },
                        ));
                    }
                    let layout =
                        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(label),
                            entries: &entries,
                        });
                    let pipeline_layout =
                        device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                            label: Some(label),
                            bind_group_layouts: &[Some(&layout)],
                            immediate_size: 0,
                        });
                    (layout, pipeline_layout)
                }
            };
            families.insert(
                family,
                FamilyObjects {
                    module,
                    layout,
                    pipeline_layout,
                },
            );
        }
        Built {
            families,
            pipelines: HashMap::new(),
        }
    }
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            built: Mutex::new(None),
        }
    }

    fn with_built<T>(&self, f: impl FnOnce(&mut Built) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-build; the
        // cache holds no invariant beyond "entries are valid pipelines".
        let mut guard = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let built = guard.get_or_insert_with(|| Built::new(&self.device));
        f(built)
    }

    /// The bind-group layout shared by a shader file's entry points.
    pub(crate) fn layout(&self, family: Family) -> wgpu::BindGroupLayout {
        self.with_built(|b| b.families[&family].layout.clone())
    }

    /// The pipeline for `entry` at `workgroup_size` (ignored by the shaders
    /// with a fixed size), built on first request.
    pub(crate) fn pipeline(&self, entry: Entry, workgroup_size: u32) -> wgpu::ComputePipeline {
        let device = self.device.clone();
        self.with_built(|b| {
            let overridable = entry.has_workgroup_override();
            let key = (entry, if overridable { workgroup_size } else { 0 });
            if let Some(p) = b.pipelines.get(&key) {
                return p.clone();
            }
            let objects = &b.families[&entry.family()];
            let mut constants: Vec<(&str, f64)> = Vec::new();
            if overridable {
                constants.push(("WG_SIZE", workgroup_size as f64));
            }
            if let Entry::XentRowUnrolled { classes, .. } = entry {
                constants.push(("ROW_C", classes as f64));
                constants.push(("ROW_R", unrolled_rows_per_thread(classes as usize) as f64));
            }
            if let Entry::ArgmaxUnrolled16 { classes, vec4_out } = entry {
                constants.push(("POST_C", classes as f64));
                constants.push(("POST_VEC4_OUT", if vec4_out { 1.0 } else { 0.0 }));
            }
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry.name()),
                layout: Some(&objects.pipeline_layout),
                module: &objects.module,
                entry_point: Some(entry.name()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            b.pipelines.insert(key, pipeline.clone());
            pipeline
        })
    }
}

/// Rows per thread of the vec4 row-unrolled entries: the fewest whole rows
/// that fill whole vec4s, `4 / gcd(C, 4)`.
pub(crate) fn unrolled_rows_per_thread(classes: usize) -> usize {
    match classes % 4 {
        0 => 1,
        2 => 2,
        _ => 4,
    }
}
