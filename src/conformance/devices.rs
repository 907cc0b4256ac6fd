//! The devices one adapter's cells run on: its own limits or a 1 MiB
//! storage binding limit (the past-binding class), each with the GPU path
//! or, on a CPU adapter, the CPU layouts.

use std::collections::HashMap;

use super::{KernelSet, SMALL_BINDING};
use crate::context::open_device;
use crate::error::Result;
use crate::Context;

/// One adapter's contexts, opened on first use.
pub struct Devices {
    adapter: wgpu::Adapter,
    info: wgpu::AdapterInfo,
    /// The limits requested: the adapter's own, or others (WebGPU's
    /// defaults, for the browser harness's export).
    limits: wgpu::Limits,
    trace: bool,
    contexts: HashMap<(KernelSet, bool), Context>,
}

impl Devices {
    /// The adapter's devices (none is opened yet).
    pub fn new(adapter: wgpu::Adapter) -> Self {
        Self {
            info: adapter.get_info(),
            limits: adapter.limits(),
            adapter,
            trace: false,
            contexts: HashMap::new(),
        }
    }

    /// Devices with `limits` instead of the adapter's own (at most the
    /// adapter's), tracing every op (see [`crate::trace`]): the plans a
    /// device with those limits makes, as data.
    pub fn traced_with_limits(adapter: wgpu::Adapter, limits: wgpu::Limits) -> Self {
        Self {
            limits,
            trace: true,
            ..Self::new(adapter)
        }
    }

    /// The adapter's name, backend, driver.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether the adapter runs `kernels`: every adapter the GPU path, a
    /// CPU adapter also the CPU layouts.
    pub fn runs(&self, kernels: KernelSet) -> bool {
        kernels == KernelSet::Gpu || self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The context for `kernels`, with the lowered binding limit if
    /// `small_binding`; without tuning, so that every run plans alike.
    pub fn context(&mut self, kernels: KernelSet, small_binding: bool) -> Result<Context> {
        if let Some(ctx) = self.contexts.get(&(kernels, small_binding)) {
            return Ok(ctx.clone());
        }
        let mut limits = self.limits.clone();
        if small_binding {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(SMALL_BINDING);
        }
        let (device, queue) = open_device(&self.adapter, limits)?;
        let mut info = self.info.clone();
        info.device_type = match kernels {
            KernelSet::Cpu => wgpu::DeviceType::Cpu,
            KernelSet::Gpu if info.device_type == wgpu::DeviceType::Cpu => {
                wgpu::DeviceType::DiscreteGpu
            }
            KernelSet::Gpu => info.device_type,
        };
        let ctx = Context::from_wgpu(device, queue, info)?;
        ctx.set_tuning(None);
        if self.trace {
            ctx.enable_trace();
        }
        self.contexts.insert((kernels, small_binding), ctx.clone());
        Ok(ctx)
    }
}
