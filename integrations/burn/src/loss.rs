//! [`LogitAdjustedLoss`]: one [`LossSpec`] prepared on one registered burn
//! device, and the checks a call passes before anything is queued.

use std::fmt;
use std::sync::{Arc, RwLock};

use burn::tensor::{DType, Device, Int, Tensor};
use burn_cubecl::CubeDevice;
use logit_adjust::{Context, LabelType, LossSpec, Reduction, SoftmaxXent};

use crate::device;
use crate::error::{Error, Result};
use crate::ops::LogitAdjustOps;

/// The logit-adjusted softmax cross-entropy of a [`LossSpec`], ready on one
/// burn wgpu device: the core's pipelines and class vectors live on burn's
/// `wgpu::Device`, and each call binds burn's own tensors in place.
///
/// Cheap to clone (one shared op). The reduction is the spec's: `Mean`
/// and `Sum` give a tensor of shape `[1]`, `None` one of shape `[N]`.
#[derive(Clone)]
pub struct LogitAdjustedLoss {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    device: Device,
    cube: CubeDevice,
    op: RwLock<SoftmaxXent>,
}

impl fmt::Debug for LogitAdjustedLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.read();
        f.debug_struct("LogitAdjustedLoss")
            .field("classes", &op.spec().classes())
            .field("reduction", &op.spec().reduction())
            .field("device", &self.inner.device)
            .finish()
    }
}

impl LogitAdjustedLoss {
    /// Prepare `spec` on `device`, which [`crate::init`] opened or
    /// [`crate::register`] registered (with or without autodiff).
    pub fn new(device: &Device, spec: &LossSpec) -> Result<Self> {
        let cube = device::cube_device(device)?;
        let ctx = device::context_for(&cube)?;
        let op = ctx.softmax_xent(spec)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                device: device.clone().without_autodiff(),
                cube,
                op: RwLock::new(op),
            }),
        })
    }

    /// The spec, with the class vectors as last set.
    pub fn spec(&self) -> LossSpec {
        self.read().spec().clone()
    }

    /// `C`, the number of classes.
    pub fn classes(&self) -> usize {
        self.read().spec().classes()
    }

    /// Replace `b`, `m` and `alpha` on the device between steps, keeping
    /// the op (LDAM-DRW's switch to effective-number weights). burn's
    /// queued work is flushed first, so that steps already taken, fused or
    /// not, keep the vectors they were taken with. On error nothing changes.
    pub fn set_class_vectors(
        &self,
        bias: Vec<f32>,
        margin: Vec<f32>,
        weight: Vec<f32>,
    ) -> Result<()> {
        self.inner
            .device
            .flush()
            .map_err(|e| Error::Core(logit_adjust::Error::Gpu(format!("{e:?}"))))?;
        let mut op = self.inner.op.write().unwrap_or_else(|p| p.into_inner());
        op.set_class_vectors(bias, margin, weight)?;
        Ok(())
    }

    /// The loss of `logits` (`[N, C]`, f32) against `labels` (`[N]`, i32 or
    /// i64): shape `[1]` when reduced, `[N]` with [`Reduction::None`].
    /// Differentiable on an autodiff device: its backward is the core's
    /// backward from the saved log-sum-exps.
    pub fn forward(&self, logits: Tensor<2>, labels: Tensor<1, Int>) -> Result<Tensor<1>> {
        self.forward_with_lse(logits, labels).map(|(loss, _)| loss)
    }

    /// As [`LogitAdjustedLoss::forward`], with the per-row log-sum-exp of the
    /// adjusted logits (`[N]`, not differentiated).
    pub fn forward_with_lse(
        &self,
        logits: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        self.check(&logits, &labels)?;
        let (loss, lse) = <burn::backend::Dispatch as LogitAdjustOps>::logit_adjusted_forward(
            logits.into_dispatch(),
            labels.into_dispatch(),
            self.clone(),
        );
        Ok((Tensor::from_dispatch(loss), Tensor::from_dispatch(lse)))
    }

    /// Everything that can be refused, refused before anything is queued.
    fn check(&self, logits: &Tensor<2>, labels: &Tensor<1, Int>) -> Result<()> {
        let [n, c] = logits.dims();
        let classes = self.classes();
        if c != classes {
            return Err(Error::Shape(format!(
                "logits have {c} columns, the loss has {classes} classes"
            )));
        }
        let [m] = labels.dims();
        if m != n {
            return Err(Error::Shape(format!("{n} rows of logits but {m} labels")));
        }
        if n == 0 {
            return Err(Error::Shape("a batch of 0 rows".into()));
        }
        if logits.dtype() != DType::F32 {
            return Err(Error::Unsupported(format!(
                "logits of {:?}: the op takes f32",
                logits.dtype()
            )));
        }
        label_type(labels.dtype())?;
        for (what, dev) in [("logits", logits.device()), ("labels", labels.device())] {
            if device::cube_device(&dev)? != self.inner.cube {
                return Err(Error::Unsupported(format!(
                    "the {what} are on {dev:?}, the loss on {:?}",
                    self.inner.device
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, SoftmaxXent> {
        self.inner.op.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The core's context on burn's `wgpu::Device`.
    pub(crate) fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Whether the loss is reduced to one value.
    pub(crate) fn reduced(&self) -> bool {
        self.read().spec().reduction() != Reduction::None
    }
}

/// The core's label type for a burn int dtype.
pub(crate) fn label_type(dtype: DType) -> Result<LabelType> {
    match dtype {
        DType::I32 => Ok(LabelType::I32),
        DType::I64 => Ok(LabelType::I64),
        DType::U32 => Ok(LabelType::U32),
        other => Err(Error::Unsupported(format!(
            "labels of {other:?}: the op takes i32, i64 or u32"
        ))),
    }
}
