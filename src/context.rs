//! The device context: a wgpu device and queue the library owns or borrows,
//! what the adapter can do, and the pipeline cache.

use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::kernels::Kernels;
use crate::trace::Tracer;
use crate::tuning::Tuning;

/// Optional features the kernels use when the adapter offers them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::SHADER_F16);

/// Bytes of one uniform binding the post-hoc argmax needs (its 64 KiB table).
const UNIFORM_BINDING_NEEDED: u64 = 64 << 10;

/// Storage buffers a kernel binds at most (the loss's row pass: eight, the
/// most WebGPU's default limits allow).
const STORAGE_BUFFERS_NEEDED: u32 = 8;

/// What the device offers that matters to the kernels.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `Features::SUBGROUP` is enabled.
    pub subgroups: bool,
    /// `Features::SHADER_F16` is enabled.
    pub shader_f16: bool,
    /// `Features::TIMESTAMP_QUERY` is enabled.
    pub timestamps: bool,
    /// The device's limits (the adapter's own, not wgpu's defaults).
    pub limits: wgpu::Limits,
}

/// A wgpu device and queue plus the library's pipelines for it. Cheap to
/// clone; clones share the device and the pipeline cache.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    capabilities: Capabilities,
    kernels: Kernels,
    tuning: RwLock<Option<Tuning>>,
    /// Why the device was lost, once it was (set by its lost callback).
    lost: Arc<Mutex<Option<String>>>,
    /// GL only: one thread at a time in the library's device work.
    turn: Option<Turn>,
    /// The record of pipelines, bind groups and uploads, once tracing is on.
    tracer: Tracer,
}

/// A reentrant turn: wgpu's GL backend guards its one GL context with a lock
/// that gives up (and panics) after a timeout, so a thread compiling a large
/// pipeline or waiting on a long submission makes other threads' calls
/// panic. On GL every host operation and every bind takes this turn first,
/// so the library's threads queue here, without a timeout, instead.
#[derive(Default)]
struct Turn {
    /// The thread holding the turn, and how many times it has taken it.
    owner: Mutex<(Option<std::thread::ThreadId>, usize)>,
    freed: Condvar,
}

struct TurnGuard<'a>(&'a Turn);

impl Turn {
    fn take(&self) -> TurnGuard<'_> {
        let me = std::thread::current().id();
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match owner.0 {
                None => {
                    *owner = (Some(me), 1);
                    break;
                }
                Some(t) if t == me => {
                    owner.1 += 1;
                    break;
                }
                Some(_) => {
                    owner = self.freed.wait(owner).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        TurnGuard(self)
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut owner = self.0.owner.lock().unwrap_or_else(|p| p.into_inner());
        owner.1 -= 1;
        if owner.1 == 0 {
            owner.0 = None;
            self.0.freed.notify_one();
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish()
    }
}

/// A wgpu instance configured from the environment (`WGPU_BACKEND`, ...).
pub fn instance_from_env() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu sees on the backends `WGPU_BACKEND` allows (all when unset).
pub fn adapters_from_env() -> Vec<wgpu::Adapter> {
    let instance = instance_from_env();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

impl Context {
    /// Open the default adapter, honouring `WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME` (a case-insensitive substring of the adapter's
    /// name) and `WGPU_POWER_PREF` (`low` or `high`).
    pub fn new() -> Result<Self> {
        let instance = instance_from_env();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let wanted = wanted.to_lowercase();
                let adapters =
                    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}"
                        ))
                    })?
            }
            Err(_) => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                ..Default::default()
            }))
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{e} (WGPU_BACKEND={})",
                    std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "unset".into())
                ))
            })?,
        };
        Self::from_adapter(&adapter)
    }

    /// Open a device on `adapter` with the adapter's own limits and the
    /// optional features the kernels use (timestamps, subgroups, f16).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let (device, queue) = open_device(adapter, adapter.limits())?;
        Self::from_wgpu(device, queue, adapter.get_info())
    }

    /// Borrow a device and queue the caller already has (e.g. a training
    /// engine's), so that kernels read and write the engine's buffers.
    /// `info` names the adapter in reports, and its `device_type` chooses
    /// the kernels: `Cpu` gets the layouts kept for CPU adapters, any other
    /// type the GPU path (so a CPU adapter can run either). The context sets the device's
    /// lost callback, so that a lost device becomes [`Error::DeviceLost`]
    /// (see [`Context::lost`]).
    pub fn from_wgpu(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Self> {
        Self::build(device, queue, info, true)
    }

    /// As [`Context::from_wgpu`], for a device whose owner keeps its own
    /// lost callback (burn's runtime sets one to poison its device; wgpu
    /// keeps one callback per device, so taking it would blind the owner).
    /// [`Context::lost`] then stays `None`: the owner reports a lost device.
    pub fn from_shared_wgpu(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Self> {
        Self::build(device, queue, info, false)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        watch_lost: bool,
    ) -> Result<Self> {
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_NEEDED {
            return Err(Error::UnsupportedAdapter(format!(
                "{}: the device allows {} storage buffers per shader stage, the kernels need {}",
                info.name, limits.max_storage_buffers_per_shader_stage, STORAGE_BUFFERS_NEEDED
            )));
        }
        if limits.max_uniform_buffer_binding_size < UNIFORM_BINDING_NEEDED {
            return Err(Error::UnsupportedAdapter(format!(
                "{}: the device binds at most {} bytes of uniform buffer, the kernels need {} \
                 (WebGPU's default limit)",
                info.name, limits.max_uniform_buffer_binding_size, UNIFORM_BINDING_NEEDED
            )));
        }
        let features = device.features();
        let capabilities = Capabilities {
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            limits,
        };
        let tracer = Tracer::default();
        let kernels = Kernels::new(&device, tracer.clone());
        let tuning = RwLock::new(Tuning::load_cached(&info));
        let lost = Arc::new(Mutex::new(None));
        if watch_lost {
            let on_lost = Arc::clone(&lost);
            device.set_device_lost_callback(move |reason, message| {
                *on_lost.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{reason:?}: {message}"));
            });
        }
        let turn = (info.backend == wgpu::Backend::Gl).then(Turn::default);
        Ok(Self {
            inner: Arc::new(Inner {
                turn,
                device,
                queue,
                info,
                capabilities,
                kernels,
                tuning,
                lost,
                tracer,
            }),
        })
    }

    /// Record, from now on, every pipeline, bind group and upload the
    /// library makes on this context, so that a bound run's steps can be
    /// read as data ([`crate::trace::Traced`]). For harnesses that replay
    /// the kernels on another host; create the ops after this call.
    pub fn enable_trace(&self) {
        self.inner.tracer.enable();
    }

    /// What the library uploaded into `buffer` when it created it (tracing
    /// only): the initial contents of an op's own buffers (parameters,
    /// class vectors, tables). `None` for buffers it did not upload.
    pub fn initial_contents(&self, buffer: &wgpu::Buffer) -> Option<Vec<u8>> {
        self.inner.tracer.contents(buffer)
    }

    pub(crate) fn tracer(&self) -> &Tracer {
        &self.inner.tracer
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter's name, backend, driver.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// Features and limits in force on the device.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// Limits in force on the device.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.capabilities.limits
    }

    /// The layout choices measured for this adapter (loaded from the tuning
    /// cache when the device was opened; see [`crate::tuning`]), if any.
    pub fn tuning(&self) -> Option<Tuning> {
        self.inner
            .tuning
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the layout choices (`None`: the built-in defaults). Applies to
    /// operations created afterwards.
    pub fn set_tuning(&self, tuning: Option<Tuning>) {
        *self.inner.tuning.write().unwrap_or_else(|p| p.into_inner()) = tuning;
    }

    pub(crate) fn kernels(&self) -> &Kernels {
        &self.inner.kernels
    }

    /// Why the device was lost, if it was: every host operation then
    /// returns [`Error::DeviceLost`].
    pub fn lost(&self) -> Option<String> {
        self.inner
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn check_alive(&self) -> Result<()> {
        match self.lost() {
            Some(why) => Err(Error::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// Run `work` inside validation and out-of-memory error scopes, so that a
    /// wgpu error becomes an [`Error::Gpu`] instead of the default handler's
    /// panic, or [`Error::DeviceLost`] once the device is gone.
    /// On GL it first takes the context's turn (see `Turn`).
    pub(crate) fn scoped<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let _turn = self.inner.turn.as_ref().map(Turn::take);
        self.check_alive()?;
        let oom = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        self.check_alive()?;
        if let Some(e) = validation.or(oom) {
            return Err(Error::Gpu(e.to_string()));
        }
        result
    }
}

/// A device on `adapter` with these limits and the optional features the
/// kernels use.
pub(crate) fn open_device(
    adapter: &wgpu::Adapter,
    limits: wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let info = adapter.get_info();
    check_adapter(adapter, &info)?;
    let features = adapter.features() & WANTED_FEATURES;
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("logit-adjust"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
    .map_err(|e| Error::Gpu(format!("request_device on {}: {e}", info.name)))
}

fn check_adapter(adapter: &wgpu::Adapter, info: &wgpu::AdapterInfo) -> Result<()> {
    let downlevel = adapter.get_downlevel_capabilities();
    if !downlevel
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    {
        return Err(Error::UnsupportedAdapter(format!(
            "{} ({:?}) has no compute shaders",
            info.name, info.backend
        )));
    }
    Ok(())
}
