//! The shader registry: WGSL sources pulled in with `include_str!`, their
//! bind-group layouts, and compute pipelines built once per
//! (entry point, workgroup size) and cached on the context.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

/// `shaders/softmax_xent.wgsl`: the fused loss forward(+backward).
pub const SOFTMAX_XENT_WGSL: &str = include_str!("../shaders/softmax_xent.wgsl");
/// `shaders/loss_reduce.wgsl`: the normalizer and the final reduction.
pub const LOSS_REDUCE_WGSL: &str = include_str!("../shaders/loss_reduce.wgsl");

/// A compute entry point of one of the shaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    XentRowPerGroup,
    XentRowPerThread,
    Normalizer,
    Finalize,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::XentRowPerGroup => "xent_row_per_group",
            Entry::XentRowPerThread => "xent_row_per_thread",
            Entry::Normalizer => "normalizer",
            Entry::Finalize => "finalize",
        }
    }

    fn is_xent(self) -> bool {
        matches!(self, Entry::XentRowPerGroup | Entry::XentRowPerThread)
    }
}

/// Layouts and modules, built on first use (inside an error scope).
struct Built {
    xent_module: wgpu::ShaderModule,
    reduce_module: wgpu::ShaderModule,
    xent_layout: wgpu::BindGroupLayout,
    reduce_layout: wgpu::BindGroupLayout,
    xent_pipeline_layout: wgpu::PipelineLayout,
    reduce_pipeline_layout: wgpu::PipelineLayout,
    pipelines: HashMap<(Entry, u32), wgpu::ComputePipeline>,
}

pub(crate) struct Kernels {
    device: wgpu::Device,
    built: Mutex<Option<Built>>,
}

fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Built {
    fn new(device: &wgpu::Device) -> Self {
        let module = |label, source: &'static str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(source)),
            })
        };
        // Binding numbers and access modes mirror the WGSL declarations.
        let xent_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("softmax_xent"),
            entries: &[
                uniform_entry(0),
                storage_entry(1, false), // logits (read_write for in-place)
                storage_entry(2, true),  // labels
                storage_entry(3, true),  // class_params
                storage_entry(4, false), // grad
                storage_entry(5, false), // row_loss
                storage_entry(6, true),  // upstream
                storage_entry(7, true),  // norm (status)
            ],
        });
        let reduce_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("loss_reduce"),
            entries: &[
                uniform_entry(0),
                storage_entry(1, true),  // labels
                storage_entry(2, true),  // class_params
                storage_entry(3, true),  // row_loss
                storage_entry(4, false), // status
            ],
        });
        let pipeline_layout = |label, layout: &wgpu::BindGroupLayout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            })
        };
        Built {
            xent_module: module("softmax_xent.wgsl", SOFTMAX_XENT_WGSL),
            reduce_module: module("loss_reduce.wgsl", LOSS_REDUCE_WGSL),
            xent_pipeline_layout: pipeline_layout("softmax_xent", &xent_layout),
            reduce_pipeline_layout: pipeline_layout("loss_reduce", &reduce_layout),
            xent_layout,
            reduce_layout,
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

    /// The bind-group layout of the loss row pass.
    pub(crate) fn xent_layout(&self) -> wgpu::BindGroupLayout {
        self.with_built(|b| b.xent_layout.clone())
    }

    /// The bind-group layout of the normalizer and finalize passes.
    pub(crate) fn reduce_layout(&self) -> wgpu::BindGroupLayout {
        self.with_built(|b| b.reduce_layout.clone())
    }

    /// The pipeline for `entry` at `workgroup_size` (ignored by the
    /// fixed-size reduce entries), built on first request.
    pub(crate) fn pipeline(&self, entry: Entry, workgroup_size: u32) -> wgpu::ComputePipeline {
        let device = self.device.clone();
        self.with_built(|b| {
            let key = (entry, if entry.is_xent() { workgroup_size } else { 0 });
            if let Some(p) = b.pipelines.get(&key) {
                return p.clone();
            }
            let (module, layout) = if entry.is_xent() {
                (&b.xent_module, &b.xent_pipeline_layout)
            } else {
                (&b.reduce_module, &b.reduce_pipeline_layout)
            };
            let constants: &[(&str, f64)] = if entry.is_xent() {
                &[("WG_SIZE", workgroup_size as f64)]
            } else {
                &[]
            };
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry.name()),
                layout: Some(layout),
                module,
                entry_point: Some(entry.name()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            b.pipelines.insert(key, pipeline.clone());
            pipeline
        })
    }
}
