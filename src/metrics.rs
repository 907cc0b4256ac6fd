//! Evaluation metrics (docs/MATH.md section 7) from exact per-class counts, and
//! the GPU pass that counts (`shaders/metrics.wgsl`): per-class totals and
//! correct predictions for every tau, or a plain label histogram.

use bytemuck::{Pod, Zeroable};

use crate::buffers::{self, plan_chunks};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{Entry, Family};
use crate::posthoc::{record_chunks, Predictions, MAX_TAUS};
use crate::region::{check_uses, Region, Use};

const WG: usize = 64;

/// Per-class counts of an evaluation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCounts {
    /// Examples of each class.
    pub total: Vec<u64>,
    /// For each tau, correct predictions of each class.
    pub correct: Vec<Vec<u64>>,
}

/// The metrics of docs/MATH.md section 7 for one set of predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Correct predictions over all rows.
    pub accuracy: f64,
    /// `1 - mean_c r_c` over classes with examples (paper eq. 2).
    pub balanced_error: f64,
    /// `min_c r_c` over classes with examples.
    pub worst_class_recall: f64,
    /// Mean recall of many-shot classes (more than 100 training examples by default, [`ShotGroups`]).
    pub many: Option<f64>,
    /// Mean recall of medium-shot classes (20 to 100 by default).
    pub medium: Option<f64>,
    /// Mean recall of few-shot classes (fewer than 20 by default).
    pub few: Option<f64>,
    /// `r_c = correct_c / total_c`; `None` for a class with no examples.
    pub per_class_recall: Vec<Option<f64>>,
}

/// Evaluation labels must all be classes: `[0, C)`, no ignore index.
pub fn check_labels(labels: &[i64], classes: usize) -> Result<()> {
    match labels
        .iter()
        .position(|&y| usize::try_from(y).map_or(true, |y| y >= classes))
    {
        Some(row) => Err(Error::LabelOutOfRange {
            row,
            label: labels[row],
            classes,
            ignore_index: None,
        }),
        None => Ok(()),
    }
}

/// The training-count thresholds of the many/medium/few-shot groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShotGroups {
    /// Many-shot: more than this many training examples (literature: 100).
    pub many: f64,
    /// Few-shot: fewer than this many (literature: 20); medium is between,
    /// both ends included.
    pub few: f64,
}

impl Default for ShotGroups {
    fn default() -> Self {
        Self {
            many: 100.0,
            few: 20.0,
        }
    }
}

/// The metrics from counts. `train_counts` (length C) defines the
/// many/medium/few groups (the literature's thresholds, [`ShotGroups`]);
/// without it the groups are absent. A group with no class that has
/// evaluation examples is absent, not 0.
pub fn report(total: &[u64], correct: &[u64], train_counts: Option<&[f64]>) -> Result<Report> {
    report_with_groups(total, correct, train_counts, ShotGroups::default())
}

/// [`report`] with the shot groups' thresholds given.
pub fn report_with_groups(
    total: &[u64],
    correct: &[u64],
    train_counts: Option<&[f64]>,
    groups: ShotGroups,
) -> Result<Report> {
    if !(groups.many.is_finite() && groups.few.is_finite() && groups.few <= groups.many) {
        return Err(Error::InvalidArgument(format!(
            "shot groups need finite thresholds with few <= many, got few {} and many {}",
            groups.few, groups.many
        )));
    }
    let c = total.len();
    if correct.len() != c {
        return Err(Error::ShapeMismatch {
            what: "correct counts (classes)".into(),
            expected: c,
            got: correct.len(),
        });
    }
    if let Some(t) = train_counts {
        if t.len() != c {
            return Err(Error::ShapeMismatch {
                what: "training counts (classes)".into(),
                expected: c,
                got: t.len(),
            });
        }
    }
    let rows: u64 = total.iter().sum();
    if rows == 0 {
        return Err(Error::InvalidArgument(
            "no evaluation rows: metrics are undefined".into(),
        ));
    }
    let per_class_recall: Vec<Option<f64>> = total
        .iter()
        .zip(correct)
        .map(|(&n, &k)| (n > 0).then(|| k as f64 / n as f64))
        .collect();
    let present: Vec<f64> = per_class_recall.iter().flatten().copied().collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let group = |keep: &dyn Fn(f64) -> bool| {
        train_counts.and_then(|t| {
            let recalls: Vec<f64> = per_class_recall
                .iter()
                .zip(t)
                .filter(|(_, &n)| keep(n))
                .filter_map(|(r, _)| *r)
                .collect();
            mean(&recalls)
        })
    };
    Ok(Report {
        accuracy: correct.iter().sum::<u64>() as f64 / rows as f64,
        balanced_error: 1.0 - mean(&present).unwrap_or(0.0),
        worst_class_recall: present.iter().cloned().fold(f64::INFINITY, f64::min),
        many: group(&|n| n > groups.many),
        medium: group(&|n| (groups.few..=groups.many).contains(&n)),
        few: group(&|n| n < groups.few),
        per_class_recall,
    })
}

impl ClassCounts {
    /// The report for tau number `t`.
    pub fn report(&self, t: usize, train_counts: Option<&[f64]>) -> Result<Report> {
        self.report_with_groups(t, train_counts, ShotGroups::default())
    }

    /// [`ClassCounts::report`] with the shot groups' thresholds given.
    pub fn report_with_groups(
        &self,
        t: usize,
        train_counts: Option<&[f64]>,
        groups: ShotGroups,
    ) -> Result<Report> {
        let correct = self.correct.get(t).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tau index {t} out of range: {} taus",
                self.correct.len()
            ))
        })?;
        report_with_groups(&self.total, correct, train_counts, groups)
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    taus: u32,
    _pad: u32,
}

/// The caller's buffers for device-resident counting.
#[derive(Debug, Clone, Copy)]
pub struct CountsBuffers<'a> {
    /// `N` i32 labels in `[0, C)` (`STORAGE`).
    pub labels: Region<'a>,
    /// `N x T` u32 predictions as [`crate::PostHoc`] writes them, or `None`
    /// for a plain histogram (T = 0).
    pub predictions: Option<Region<'a>>,
    /// `N`.
    pub rows: usize,
    /// `C`.
    pub classes: usize,
    /// `T` (ignored without predictions).
    pub taus: usize,
    /// `C * (T + 1) + 1` u32 counters, laid out `[total, correct per tau,
    /// invalid labels]` (`STORAGE`, `COPY_DST`: cleared by each record).
    pub counts: Region<'a>,
}

/// A counting run bound to buffers; record it any number of times.
#[derive(Debug)]
pub struct BoundCounts {
    pipeline: wgpu::ComputePipeline,
    /// The counters: buffer, byte offset, bytes.
    counts: (wgpu::Buffer, u64, u64),
    chunks: Vec<(wgpu::BindGroup, u32)>,
    _params: buffers::ParamSlots,
    _unused: wgpu::Buffer,
}

impl BoundCounts {
    /// Record: clear the counters, then count every chunk.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let (buffer, offset, bytes) = &self.counts;
        encoder.clear_buffer(buffer, *offset, Some(*bytes));
        record_chunks(
            encoder,
            "logit-adjust class_counts",
            &self.pipeline,
            &self.chunks,
        );
    }
}

impl crate::trace::Traced for BoundCounts {
    fn raw_steps(&self) -> Vec<crate::trace::RawStep> {
        let (buffer, offset, bytes) = &self.counts;
        std::iter::once(crate::trace::RawStep::Clear(
            buffer.clone(),
            *offset,
            *bytes,
        ))
        .chain(self.chunks.iter().map(|(group, x)| {
            crate::trace::RawStep::Dispatch(self.pipeline.clone(), group.clone(), [*x, 1, 1])
        }))
        .collect()
    }
}

impl Context {
    /// Prepare device-resident counting on the caller's buffers.
    pub fn bind_counts(&self, b: &CountsBuffers) -> Result<BoundCounts> {
        self.scoped(|| bind_counts(self, b))
    }

    /// Per-class totals and correct counts for every tau, on the GPU.
    pub fn class_counts(
        &self,
        labels: &[i64],
        classes: usize,
        predictions: &Predictions,
    ) -> Result<ClassCounts> {
        for (t, p) in predictions.by_tau.iter().enumerate() {
            if p.len() != labels.len() {
                return Err(Error::ShapeMismatch {
                    what: format!("predictions for tau #{t} (rows)"),
                    expected: labels.len(),
                    got: p.len(),
                });
            }
        }
        let t = predictions.by_tau.len();
        let n = labels.len();
        let interleaved: Vec<u32> = (0..n)
            .flat_map(|i| predictions.by_tau.iter().map(move |p| p[i]))
            .collect();
        let raw = self.count_on_device(labels, classes, t, Some(&interleaved))?;
        Ok(ClassCounts {
            total: raw[..classes].to_vec(),
            correct: (0..t)
                .map(|k| raw[(k + 1) * classes..(k + 2) * classes].to_vec())
                .collect(),
        })
    }

    /// The label histogram `n_c` on the GPU (for a prior computed where the labels live).
    pub fn label_histogram(&self, labels: &[i64], classes: usize) -> Result<Vec<u64>> {
        let raw = self.count_on_device(labels, classes, 0, None)?;
        Ok(raw[..classes].to_vec())
    }

    fn count_on_device(
        &self,
        labels: &[i64],
        classes: usize,
        taus: usize,
        predictions: Option<&[u32]>,
    ) -> Result<Vec<u64>> {
        check_labels(labels, classes)?;
        let n = labels.len();
        let len = classes * (taus + 1) + 1;
        if n == 0 {
            return Ok(vec![0; len]);
        }
        self.scoped(|| {
            use wgpu::BufferUsages as U;
            let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let labels_buf =
                buffers::upload(self, "labels", bytemuck::cast_slice(&labels32), U::STORAGE)?;
            let pred_buf = match predictions {
                Some(p) => Some(buffers::upload(
                    self,
                    "predictions",
                    bytemuck::cast_slice(p),
                    U::STORAGE,
                )?),
                None => None,
            };
            let counts = buffers::storage(
                self,
                "counts",
                (len * 4) as u64,
                U::STORAGE | U::COPY_SRC | U::COPY_DST,
            )?;
            let bound = bind_counts(
                self,
                &CountsBuffers {
                    labels: Region::whole(&labels_buf),
                    predictions: pred_buf.as_ref().map(Region::whole),
                    rows: n,
                    classes,
                    taus,
                    counts: Region::whole(&counts),
                },
            )?;
            let mut encoder = self.device().create_command_encoder(&Default::default());
            bound.record(&mut encoder);
            self.queue().submit([encoder.finish()]);
            let raw = buffers::read::<u32>(self, &[(&counts, 0, len)])?;
            let raw: Vec<u64> = raw
                .into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(u64::from)
                .collect();
            if raw[len - 1] != 0 {
                return Err(Error::Gpu(
                    "the device saw labels the host had validated".into(),
                ));
            }
            Ok(raw)
        })
    }
}

fn bind_counts(ctx: &Context, b: &CountsBuffers) -> Result<BoundCounts> {
    let taus = if b.predictions.is_some() { b.taus } else { 0 };
    if taus > MAX_TAUS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_TAUS} taus, got {taus}"
        )));
    }
    let (n, c) = (b.rows, b.classes);
    let len = (c * (taus + 1) + 1) as u64 * 4;
    let mut uses = vec![
        Use {
            what: "labels",
            region: b.labels,
            bytes: (n * 4) as u64,
        },
        Use {
            what: "counts",
            region: b.counts,
            bytes: len,
        },
    ];
    if let Some(p) = b.predictions {
        uses.push(Use {
            what: "predictions",
            region: p,
            bytes: (n * taus * 4) as u64,
        });
    }
    check_uses(ctx.limits(), &uses)?;
    // Each record clears the counters first.
    if !b
        .counts
        .buffer
        .usage()
        .contains(wgpu::BufferUsages::COPY_DST)
    {
        return Err(Error::InvalidArgument(
            "the counts buffer lacks BufferUsages::COPY_DST (each record clears it)".into(),
        ));
    }
    if len > ctx.limits().max_storage_buffer_binding_size {
        return Err(Error::TooLarge(format!(
            "{c} classes x {taus} taus of counters exceed a storage binding"
        )));
    }
    let groups_max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let chunks = plan_chunks(
        ctx.limits(),
        n,
        (taus.max(1) * 4) as u64,
        4,
        groups_max * WG,
    )?;
    let slots: Vec<Params> = chunks
        .iter()
        .map(|ch| Params {
            rows: ch.rows as u32,
            classes: c as u32,
            taus: taus as u32,
            _pad: 0,
        })
        .collect();
    let params = buffers::param_slots(ctx, &slots)?;
    let unused = buffers::storage(ctx, "unused", 4, wgpu::BufferUsages::STORAGE)?;
    let layout = ctx.kernels().layout(Family::Metrics);
    let groups = chunks
        .iter()
        .enumerate()
        .map(|(k, ch)| {
            let (first, rows) = (ch.start as u64, ch.rows as u64);
            let pred = match b.predictions {
                Some(p) => p.binding(first * taus as u64 * 4, rows * taus as u64 * 4),
                None => unused.as_entire_binding(),
            };
            let group = buffers::bind_group(
                ctx,
                "class_counts chunk",
                &layout,
                vec![
                    params.slot(k),
                    b.labels.binding(first * 4, rows * 4),
                    pred,
                    b.counts.binding(0, len),
                ],
            );
            (group, ch.rows.div_ceil(WG) as u32)
        })
        .collect();
    Ok(BoundCounts {
        pipeline: ctx.kernels().pipeline(Entry::ClassCounts, 0),
        counts: (b.counts.buffer.clone(), b.counts.offset, len),
        chunks: groups,
        _params: params,
        _unused: unused,
    })
}
