//! The training loop: epochs, validation evaluations, early stopping and the
//! weights of the best evaluation.
//!
//! The best state is kept on the device: when an evaluation improves on the
//! best so far, the weights and the momentum are copied to a second pair of
//! buffers (a copy recorded after that epoch's submission and before the
//! next epoch's), and the shuffling generator is cloned. At the end the
//! trainer is put back into that state, so its weights are bit for bit
//! those of a run stopped at the best epoch, and a later `fit` continues
//! from there as that run would.

use crate::buffers;
use crate::error::{Error, Result};
use crate::synthetic::Rng;

use super::LinearTrainer;

/// What [`LinearTrainer::fit`] reports after each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Epochs completed in this `fit`, from 1.
    pub epoch: usize,
    /// The epochs this `fit` runs at most.
    pub epochs: usize,
    /// The mean of this epoch's mini-batch losses.
    pub loss: f32,
    /// The validation balanced error after this epoch, where it was evaluated.
    pub validation_balanced_error: Option<f64>,
    /// The best evaluation so far: its epoch and validation balanced error.
    pub best: Option<(usize, f64)>,
}

/// One epoch of the learning curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// Epochs completed, from 1.
    pub epoch: usize,
    /// The mean of the epoch's mini-batch losses.
    pub loss: f32,
    /// The validation balanced error after it, where it was evaluated.
    pub validation_balanced_error: Option<f64>,
}

/// The outcome of [`LinearTrainer::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Every epoch run, in order.
    pub curve: Vec<EpochRecord>,
    /// The best evaluation (lowest validation balanced error, the earliest
    /// of equals): its epoch and balanced error. The trainer now holds its
    /// weights. `None` without a validation set.
    pub best: Option<(usize, f64)>,
    /// Whether `patience` ended the run before `epochs`.
    pub stopped_early: bool,
}

impl FitReport {
    /// Epochs run.
    pub fn epochs_run(&self) -> usize {
        self.curve.len()
    }
}

/// The device copy of the best state.
struct Snapshot {
    weights: wgpu::Buffer,
    velocity: wgpu::Buffer,
    rng: Rng,
}

impl LinearTrainer {
    /// Up to `epochs` epochs, `progress` after each. With a validation set
    /// ([`LinearTrainer::with_validation`]): evaluate every `eval_every`
    /// epochs and after the last, stop after `patience` evaluations without
    /// improvement, and end with the weights of the best evaluation.
    pub fn fit(&mut self, mut progress: impl FnMut(&Progress)) -> Result<FitReport> {
        let epochs = self.config.epochs;
        let every = self.config.eval_every;
        if self.validation.is_some() && every == 0 {
            return Err(Error::InvalidArgument(
                "eval_every must be at least 1".into(),
            ));
        }
        let mut snapshot = match self.validation {
            Some(_) => Some(self.snapshot_buffers()?),
            None => None,
        };
        let mut report = FitReport {
            curve: Vec::with_capacity(epochs),
            best: None,
            stopped_early: false,
        };
        let warmup = self.config.warmup_epochs();
        let drw = self.config.drw.clone();
        if let Some(d) = &drw {
            // Checked before the first epoch, not at the switch.
            let s = self.loss.spec();
            s.clone().with_class_vectors(
                s.bias().to_vec(),
                s.margin().to_vec(),
                d.weights.clone(),
            )?;
            if d.epoch == 0 {
                return Err(Error::InvalidArgument(
                    "the re-weighting epoch counts from 1".into(),
                ));
            }
        }
        let mut since_best = 0;
        for epoch in 1..=epochs {
            if let Some(d) = drw.as_ref().filter(|d| d.epoch == epoch) {
                let s = self.loss.spec().clone();
                self.loss.set_class_vectors(
                    s.bias().to_vec(),
                    s.margin().to_vec(),
                    d.weights.clone(),
                )?;
            }
            let evaluate = self.validation.is_some() && (epoch % every == 0 || epoch == epochs);
            let (loss, balanced_error) = self.run_epoch(evaluate)?;
            if !loss.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "training diverged at epoch {epoch} (loss {loss}); lower the learning rate"
                )));
            }
            let eligible = epoch >= warmup || epoch == epochs;
            if let (Some(e), Some(s), true) = (balanced_error, snapshot.as_mut(), eligible) {
                if report.best.is_none_or(|(_, best)| e < best) {
                    report.best = Some((epoch, e));
                    since_best = 0;
                    self.save(s)?;
                } else {
                    since_best += 1;
                }
            }
            report.curve.push(EpochRecord {
                epoch,
                loss,
                validation_balanced_error: balanced_error,
            });
            progress(&Progress {
                epoch,
                epochs,
                loss,
                validation_balanced_error: balanced_error,
                best: report.best,
            });
            if self.config.patience.is_some_and(|p| since_best >= p) && epoch < epochs {
                report.stopped_early = true;
                break;
            }
        }
        if let (Some(s), Some(_)) = (snapshot, report.best) {
            self.restore(s)?;
        }
        Ok(report)
    }

    fn snapshot_buffers(&self) -> Result<Snapshot> {
        use wgpu::BufferUsages as U;
        let bytes = ((self.dim + 1) * self.classes * 4) as u64;
        self.ctx.scoped(|| {
            Ok(Snapshot {
                weights: buffers::storage(
                    &self.ctx,
                    "best weights",
                    bytes,
                    U::COPY_SRC | U::COPY_DST,
                )?,
                velocity: buffers::storage(
                    &self.ctx,
                    "best velocity",
                    bytes,
                    U::COPY_SRC | U::COPY_DST,
                )?,
                rng: self.rng.clone(),
            })
        })
    }

    /// Copy the current state into `s` (ordered after the epochs submitted
    /// so far, before any later one).
    fn save(&self, s: &mut Snapshot) -> Result<()> {
        copy_state(
            self,
            (&self.batch.weights, &self.batch.velocity),
            (&s.weights, &s.velocity),
        )?;
        s.rng = self.rng.clone();
        Ok(())
    }

    /// Put the trainer back into the state `s` holds.
    fn restore(&mut self, s: Snapshot) -> Result<()> {
        copy_state(
            self,
            (&s.weights, &s.velocity),
            (&self.batch.weights, &self.batch.velocity),
        )?;
        self.rng = s.rng;
        Ok(())
    }
}

/// Copy weights and momentum `from` one pair of buffers `to` another, in
/// one submission.
fn copy_state(
    t: &LinearTrainer,
    from: (&wgpu::Buffer, &wgpu::Buffer),
    to: (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<()> {
    let bytes = ((t.dim + 1) * t.classes * 4) as u64;
    t.ctx.scoped(|| {
        let mut encoder = t.ctx.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(from.0, 0, to.0, 0, bytes);
        encoder.copy_buffer_to_buffer(from.1, 0, to.1, 0, bytes);
        t.ctx.queue().submit([encoder.finish()]);
        Ok(())
    })
}
