//! Which burn devices the op can run on: burn's own wgpu device, opened
//! through [`init`] or handed over with [`register`], paired with a
//! `logit_adjust::Context` on the same `wgpu::Device` and queue.

use std::sync::{Mutex, OnceLock};

use burn::backend::wgpu::WgpuSetup;
use burn::backend::DispatchDevice;
use burn::tensor::wgpu::WgpuOptions;
use burn::tensor::Device;
use burn_cubecl::CubeDevice;
use logit_adjust::Context;

use crate::error::{Error, Result};

/// Every registered device with its context. A handful of entries at most,
/// so a list searched by equality is enough.
fn registry() -> &'static Mutex<Vec<(CubeDevice, Context)>> {
    static REGISTRY: OnceLock<Mutex<Vec<(CubeDevice, Context)>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// Initialise burn's wgpu runtime with `options` and register it: the
/// returned device runs burn's ops and ours on one `wgpu::Device`. Call
/// before any tensor touches the device (burn's rule for its options).
pub fn init(options: WgpuOptions) -> Result<Device> {
    let (device, setup) = options
        .init_with_setup()
        .map_err(|e| Error::Init(e.to_string()))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Register a device burn already opened, with the setup
/// `Device::wgpu_options().init_with_setup()` returned for it.
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<()> {
    let key = cube_device(device)?;
    let ctx = Context::from_shared_wgpu(
        setup.device.clone(),
        setup.queue.clone(),
        setup.adapter.get_info(),
    )?;
    let mut list = registry().lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(d, _)| *d != key);
    list.push((key, ctx));
    Ok(())
}

/// The context registered for `device` (autodiff or not).
pub fn context(device: &Device) -> Result<Context> {
    context_for(&cube_device(device)?)
}

/// The context registered for a cube device.
pub(crate) fn context_for(device: &CubeDevice) -> Result<Context> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, ctx)| ctx.clone())
        .ok_or(Error::NotRegistered)
}

/// The cubecl device under a burn device, without its autodiff wrapper.
pub(crate) fn cube_device(device: &Device) -> Result<CubeDevice> {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Cube(d) => Ok(d.clone()),
        other => Err(Error::Unsupported(format!(
            "the op runs on burn's wgpu device, not {other:?}"
        ))),
    }
}
