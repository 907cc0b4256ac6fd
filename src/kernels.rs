//! The shader registry: WGSL sources pulled in with `include_str!`, their
//! bind-group layouts, and compute pipelines built once per
//! (entry point, workgroup size) and cached on the context.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::dtype::Dtype;

/// `shaders/posthoc.wgsl`: batched post-hoc correction and argmax.
pub(crate) const POSTHOC_WGSL: &str = include_str!("../shaders/posthoc.wgsl");
/// `shaders/cpu_posthoc.wgsl`: the argmax layouts of CPU adapters only.
pub(crate) const CPU_POSTHOC_WGSL: &str = include_str!("../shaders/cpu_posthoc.wgsl");
/// `shaders/metrics.wgsl`: exact per-class counts and label histograms.
pub(crate) const METRICS_WGSL: &str = include_str!("../shaders/metrics.wgsl");
/// `shaders/em.wgsl`: the EM estimate of a test prior, one step.
pub(crate) const EM_WGSL: &str = include_str!("../shaders/em.wgsl");
/// `shaders/gather.wgsl`: mini-batch assembly and the running loss.
pub(crate) const GATHER_WGSL: &str = include_str!("../shaders/gather.wgsl");
/// `shaders/linear.wgsl`: the linear classifier's forward and SGD step.
pub(crate) const LINEAR_WGSL: &str = include_str!("../shaders/linear.wgsl");
/// `shaders/baseline.wgsl`: the copy floor and the unfused sequence (bench only).
pub(crate) const BASELINE_WGSL: &str = include_str!("../shaders/baseline.wgsl");
/// `shaders/blocks/posthoc_formats.wgsl`: posthoc.wgsl's half logits.
const POSTHOC_BLOCKS_WGSL: &str = include_str!("../shaders/blocks/posthoc_formats.wgsl");
/// `shaders/blocks/linear_formats.wgsl`: linear.wgsl's half logits.
const LINEAR_BLOCKS_WGSL: &str = include_str!("../shaders/blocks/linear_formats.wgsl");

/// The text wgpu compiles for shader file `label`: the file as it is. In a
/// debug build (the tests' build), `LOGIT_ADJUST_FAULT=grad-ulp` makes
/// softmax_xent.wgsl (every format's module) put its first gradient
/// element one f32 ulp off before storing it, so the tests can see
/// `logit-adjust check` catch a wrong kernel; release builds never read
/// the variable.
pub(crate) fn wgsl(label: &str, text: Cow<'static, str>) -> Cow<'static, str> {
    #[cfg(debug_assertions)]
    if label.starts_with("softmax_xent.wgsl")
        && std::env::var("LOGIT_ADJUST_FAULT").is_ok_and(|f| f == "grad-ulp")
    {
        let at = "fn stored(e: u32, g: f32) -> f32 {\n    return g;";
        assert!(text.contains(at), "softmax_xent.wgsl: stored moved");
        return Cow::Owned(text.replace(
            at,
            "fn stored(e: u32, g_true: f32) -> f32 {\n    \
             let g = bitcast<f32>(bitcast<u32>(g_true) + select(0u, 1u, e == 0u));\n    \
             return g;",
        ));
    }
    let _ = label;
    text
}

/// The half-format modules of the files in the registry (label, text).
pub(crate) fn format_variants() -> Vec<(&'static str, String)> {
    [
        (Dtype::F16, true),
        (Dtype::F16, false),
        (Dtype::Bf16, false),
    ]
    .into_iter()
    .map(|(dtype, native)| Family::posthoc(dtype, native))
    .chain([Dtype::F16, Dtype::Bf16].map(Family::linear))
    .map(|family| {
        let (label, text) = family.source();
        (label, text.into_owned())
    })
    .collect()
}

/// A shader file and the bind-group layout its entry points share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    PostHoc,
    /// posthoc.wgsl on f16 (native or packed) or bf16 (packed) logits.
    PostHocHalf {
        dtype: Dtype,
        native: bool,
    },
    CpuPostHoc,
    Metrics,
    Em,
    Gather,
    Linear,
    /// linear.wgsl with f16 or bf16 logits (always packed).
    LinearHalf {
        dtype: Dtype,
    },
    Baseline,
}

impl Family {
    /// posthoc.wgsl's family for logits of `dtype` (`native`: the device's
    /// f16 where it has SHADER_F16).
    pub(crate) fn posthoc(dtype: Dtype, native: bool) -> Family {
        match dtype {
            Dtype::F32 => Family::PostHoc,
            Dtype::F16 => Family::PostHocHalf { dtype, native },
            Dtype::Bf16 => Family::PostHocHalf {
                dtype,
                native: false,
            },
        }
    }

    /// linear.wgsl's family for logits of `dtype`.
    pub(crate) fn linear(dtype: Dtype) -> Family {
        match dtype {
            Dtype::F32 => Family::Linear,
            dtype => Family::LinearHalf { dtype },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Family::LinearHalf { dtype: Dtype::Bf16 } => "linear.wgsl (bf16 packed)",
            Family::LinearHalf { .. } => "linear.wgsl (f16 packed)",
            Family::PostHocHalf { dtype, native } => match (dtype, native) {
                (Dtype::F16, true) => "posthoc.wgsl (f16 native)",
                (Dtype::F16, false) => "posthoc.wgsl (f16 packed)",
                _ => "posthoc.wgsl (bf16 packed)",
            },
            _ => self.source().0,
        }
    }

    fn source(self) -> (&'static str, Cow<'static, str>) {
        // (f32 file, its format blocks, their file name, format, native f16)
        let half = match self {
            Family::PostHocHalf { dtype, native } => Some((
                POSTHOC_WGSL,
                POSTHOC_BLOCKS_WGSL,
                "posthoc_formats.wgsl",
                dtype,
                native,
            )),
            Family::LinearHalf { dtype } => Some((
                LINEAR_WGSL,
                LINEAR_BLOCKS_WGSL,
                "linear_formats.wgsl",
                dtype,
                false,
            )),
            _ => None,
        };
        if let Some((file, blocks, blocks_file, dtype, native)) = half {
            let label = self.label();
            let text = crate::splice::halves(file, blocks, blocks_file, dtype, native, false)
                // A missing block makes a module wgpu refuses: an error
                // value from the op's scope, never a panic.
                .unwrap_or_else(|e| format!("// {e}\n"));
            return (label, wgsl(label, Cow::Owned(text)));
        }
        let (label, text) = match self {
            Family::PostHocHalf { .. } | Family::PostHoc => ("posthoc.wgsl", POSTHOC_WGSL),
            Family::CpuPostHoc => ("cpu_posthoc.wgsl", CPU_POSTHOC_WGSL),
            Family::Metrics => ("metrics.wgsl", METRICS_WGSL),
            Family::Em => ("em.wgsl", EM_WGSL),
            Family::Gather => ("gather.wgsl", GATHER_WGSL),
            Family::Linear | Family::LinearHalf { .. } => ("linear.wgsl", LINEAR_WGSL),
            Family::Baseline => ("baseline.wgsl", BASELINE_WGSL),
        };
        (label, wgsl(label, Cow::Borrowed(text)))
    }

    /// Uniform bindings after the storage ones (binding numbers), besides
    /// binding 0's `params`.
    fn table_bindings(self) -> &'static [u32] {
        match self {
            // adjust_table: a window of a_tc in a 64 KiB uniform buffer
            Family::CpuPostHoc => &[4],
            _ => &[],
        }
    }

    /// Writable storage bindings after the uniform tables (binding numbers).
    fn late_storage_bindings(self) -> &'static [u32] {
        match self {
            // pred4: a vec4 view of the predictions
            Family::CpuPostHoc => &[5],
            _ => &[],
        }
    }

    /// Binding 0 is the uniform `params`; then storage buffers, `true` for
    /// read-only. Mirrors the WGSL declarations.
    fn storage_bindings(self) -> &'static [bool] {
        match self {
            // logits, adjust, pred, corrected_out (caller buffers
            // read_write: regions of one pooled buffer bind together)
            Family::PostHoc | Family::PostHocHalf { .. } => &[false, true, false, false],
            // logits, pred, best_state
            Family::CpuPostHoc => &[false, false, false],
            // labels, pred, counts
            Family::Metrics => &[false, false, false],
            // logits, shift, partial, sums
            Family::Em => &[true, true, false, false],
            // features, perm, labels, batch_features, batch_labels, status, acc
            Family::Gather => &[true, true, true, false, false, true, false],
            // a, w, velocity, g_logits, wgrad, out
            Family::Linear | Family::LinearHalf { .. } => &[true, false, false, true, false, false],
            // src, dst, a, b, out, labels
            Family::Baseline => &[true, false, true, true, false, true],
        }
    }
}

/// A compute entry point of one of the shaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    /// `argmax_row_per_thread` for this many taus (a pipeline constant).
    ArgmaxRowPerThread {
        taus: u32,
    },
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
    EmPartials,
    EmReduce,
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
            Entry::ArgmaxRowPerThread { .. } => "argmax_row_per_thread",
            Entry::ArgmaxRowPerGroup => "argmax_row_per_group",
            Entry::ArgmaxWindows => "argmax_windows",
            Entry::ArgmaxUnrolled16 { .. } => "argmax_unrolled16",
            Entry::ArgmaxWindows16 { pairs: false } => "argmax_windows16",
            Entry::ArgmaxWindows16 { pairs: true } => "argmax_windows16_pairs",
            Entry::Corrected => "corrected",
            Entry::TopK => "topk_row_per_group",
            Entry::ClassCounts => "class_counts",
            Entry::EmPartials => "em_partials",
            Entry::EmReduce => "em_reduce",
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
            Entry::ArgmaxRowPerThread { .. }
            | Entry::ArgmaxRowPerGroup
            | Entry::Corrected
            | Entry::TopK => Family::PostHoc,
            Entry::ArgmaxWindows
            | Entry::ArgmaxWindows16 { .. }
            | Entry::ArgmaxUnrolled16 { .. } => Family::CpuPostHoc,
            Entry::ClassCounts => Family::Metrics,
            Entry::EmPartials | Entry::EmReduce => Family::Em,
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
}

struct FamilyObjects {
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// Modules and layouts, each built on its first use (inside an error scope),
/// so that one file's trouble never reaches an op that does not use it.
#[derive(Default)]
struct Built {
    families: HashMap<Family, FamilyObjects>,
    pipelines: HashMap<(Entry, Family), wgpu::ComputePipeline>,
}

pub(crate) struct Kernels {
    device: wgpu::Device,
    tracer: crate::trace::Tracer,
    built: Mutex<Built>,
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

impl FamilyObjects {
    fn new(device: &wgpu::Device, tracer: &crate::trace::Tracer, family: Family) -> Self {
        let (label, source) = family.source();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source),
        });
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
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        tracer.layout(&layout, label, &entries);
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        Self {
            module,
            layout,
            pipeline_layout,
        }
    }
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device, tracer: crate::trace::Tracer) -> Self {
        Self {
            device: device.clone(),
            tracer,
            built: Mutex::new(Built::default()),
        }
    }

    fn with_family<T>(&self, family: Family, f: impl FnOnce(&FamilyObjects) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-build; the
        // cache holds no invariant beyond "entries are valid objects".
        let mut guard = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let objects = guard
            .families
            .entry(family)
            .or_insert_with(|| FamilyObjects::new(&self.device, &self.tracer, family));
        f(objects)
    }

    /// The bind-group layout shared by a shader file's entry points.
    pub(crate) fn layout(&self, family: Family) -> wgpu::BindGroupLayout {
        self.with_family(family, |f| f.layout.clone())
    }

    /// The pipeline for `entry`, built on first request (the workgroup size
    /// argument is unused: these shaders fix theirs).
    pub(crate) fn pipeline(&self, entry: Entry, _workgroup_size: u32) -> wgpu::ComputePipeline {
        self.pipeline_in(entry, entry.family())
    }

    /// The pipeline for `entry` in `family`'s module (a format variant of
    /// its file), built on first request.
    pub(crate) fn pipeline_in(&self, entry: Entry, family: Family) -> wgpu::ComputePipeline {
        let key = (entry, family);
        if let Some(p) = self
            .built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pipelines
            .get(&key)
        {
            return p.clone();
        }
        let pipeline = self.with_family(family, |objects| {
            let mut constants: Vec<(&str, f64)> = Vec::new();
            if let Entry::ArgmaxRowPerThread { taus } = entry {
                constants.push(("POST_T", taus as f64));
            }
            if let Entry::ArgmaxUnrolled16 { classes, vec4_out } = entry {
                constants.push(("POST_C", classes as f64));
                constants.push(("POST_VEC4_OUT", if vec4_out { 1.0 } else { 0.0 }));
            }
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
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
            self.tracer
                .pipeline(&pipeline, family.label(), entry.name(), &constants);
            pipeline
        });
        self.built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pipelines
            .insert(key, pipeline.clone());
        pipeline
    }
}
