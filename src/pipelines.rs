//! One shader file on one device: its module, its bind-group layout, and
//! its compute pipelines, built lazily per (entry point, override values)
//! and cached. Each operation owns the files it uses, so creating one op
//! compiles only its own kernels.

use std::collections::HashMap;
use std::sync::Mutex;

/// How a binding is declared in the shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    Uniform,
    /// `var<storage, read>`: the op's own buffers only.
    ReadOnly,
    /// `var<storage, read_write>`: every caller buffer (see the shaders'
    /// note on usage tracking).
    ReadWrite,
}

/// A compiled shader file, its layout and its pipelines.
#[derive(Debug)]
pub(crate) struct Shader {
    label: &'static str,
    module: wgpu::ShaderModule,
    bind_layout: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
    cache: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    tracer: crate::trace::Tracer,
}

type PipelineKey = (&'static str, Vec<(&'static str, u64)>);

impl Shader {
    /// Compile `source`; binding `i` of group 0 is `bindings[i]`.
    pub(crate) fn new(
        ctx: &crate::Context,
        label: &'static str,
        source: impl Into<std::borrow::Cow<'static, str>>,
        bindings: &[Binding],
    ) -> Self {
        let device = ctx.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(crate::kernels::wgsl(label, source.into())),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        ctx.tracer().layout(&bind_layout, label, &entries);
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        Self {
            label,
            module,
            bind_layout,
            layout,
            cache: Mutex::new(HashMap::new()),
            tracer: ctx.tracer().clone(),
        }
    }

    /// The bind-group layout every entry point of the file shares.
    pub(crate) fn bind_layout(&self) -> &wgpu::BindGroupLayout {
        &self.bind_layout
    }

    /// The pipeline of `entry` with these override values (built on first
    /// use; call inside an error scope).
    pub(crate) fn pipeline(
        &self,
        device: &wgpu::Device,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = (
            entry,
            constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&self.layout),
                    module: &self.module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
                self.tracer
                    .pipeline(&pipeline, self.label, entry, constants);
                pipeline
            })
            .clone()
    }

    /// The file's label, for messages.
    pub(crate) fn label(&self) -> &'static str {
        self.label
    }
}
