//! `logit-adjust bench`: the kernels on the current adapter, each as a
//! ratio to a shader copy of the same bytes, the driver's buffer copy, and
//! the unfused sequence frameworks run, all measured in the same run.

use logit_adjust::diagnostics::{median, quantile, CopyBaseline, Timer, Unfused};
use logit_adjust::synthetic::Rng;
use logit_adjust::{
    BackwardBuffers, ClassPrior, Context, Dtype, GradOutput, HalfPath, LossBuffers, LossSpec,
    PostHocBuffers, Region, Variant,
};
use serde_json::{json, Value};
use wgpu::util::DeviceExt;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller shapes (N / 8) and fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object: the run's header and one row per measurement.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print one CSV row per measurement (with a header), every row
    /// carrying the run's build, adapter and timestamp.
    #[arg(long)]
    csv: bool,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Only the shapes with these class counts (e.g. `--classes 1000,8142`).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// These shapes, rows x classes, in place of the standard five (e.g.
    /// `--shapes 16384x8142,4096x131072`); `--quick` leaves them as given.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
}

/// `NxC`, both at least 1.
fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (n, c) = s
        .split_once('x')
        .ok_or_else(|| format!("shape {s:?}: expected rows x classes, e.g. 16384x8142"))?;
    let count = |what: &str, v: &str| match v.trim().parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(format!(
            "shape {s:?}: {what} {v:?} is not a positive integer"
        )),
    };
    Ok((count("rows", n)?, count("classes", c)?))
}

/// CIFAR (10), ImageNet (1,000), iNaturalist (8,142), LM vocabularies (32k, 256k).
const SHAPES: [(usize, usize); 5] = [
    (262_144, 10),
    (16_384, 1000),
    (8192, 8142),
    (2048, 32_768),
    (256, 262_144),
];

struct Row {
    op: &'static str,
    /// The logits' format.
    dtype: &'static str,
    /// forward, backward or full (both).
    mode: &'static str,
    n: usize,
    c: usize,
    /// Percentiles of the per-run times, ms.
    p20: f64,
    ms: f64,
    p80: f64,
    samples: usize,
    bytes: f64,
    /// The run's largest error against the f64 reference: absolute for
    /// float outputs (the gradient; the loss for forward), the number of
    /// differing predictions for post-hoc.
    max_err: f64,
    err_kind: &'static str,
    vs_copy: f64,
    vs_driver: f64,
    speedup_unfused: f64,
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

pub fn run(a: &BenchArgs) -> Result<(), String> {
    let ctx = Context::new().map_err(err)?;
    let timer = Timer::new(&ctx);
    let reps = a.reps.unwrap_or(if a.quick { 5 } else { 10 });
    let mut rng = Rng::new(42);
    let mut rows = Vec::new();
    let table = !a.json && !a.csv;
    if table {
        eprintln!(
            "bench on {} ({:?}), timing: {}, {reps} repetitions, median",
            ctx.info().name,
            ctx.info().backend,
            timer.timing().name()
        );
    }
    let (shapes, scale) = if a.shapes.is_empty() {
        (SHAPES.to_vec(), if a.quick { 8 } else { 1 })
    } else {
        (a.shapes.clone(), 1)
    };
    for (n, c) in shapes {
        if !a.classes.is_empty() && !a.classes.contains(&c) {
            continue;
        }
        let n = (n / scale).max(1);
        // The f32 logits and gradient are one buffer each: refuse a shape
        // the device cannot hold before allocating it on the host.
        let bytes = (n as u64).saturating_mul(c as u64).saturating_mul(4);
        let most = ctx.limits().max_buffer_size;
        if bytes > most {
            return Err(format!(
                "shape {n}x{c}: its {bytes} bytes of f32 logits pass the device's largest \
                 buffer ({most} bytes)"
            ));
        }
        if table {
            eprintln!("  {n} x {c} ...");
        }
        let shape = Shape::new(&ctx, &mut rng, n, c)?;
        rows.extend(shape.measure(&ctx, &timer, reps, table)?);
    }
    let when = crate::record::utc_now();
    if a.json {
        print_json(&ctx, &timer, reps, &rows, &when);
    } else if a.csv {
        let rows = json_rows(&ctx, &timer, reps, &rows, &when);
        print!("{}", crate::record::csv(&CSV_COLUMNS, &rows));
    } else {
        print_table(&ctx, &timer, &rows);
    }
    Ok(())
}

/// The bytes of `logits` rounded to a half format, padded to whole words.
fn halves(logits: &[f32], bits: impl Fn(f32) -> u16) -> Vec<u8> {
    let mut v: Vec<u16> = logits.iter().map(|&x| bits(x)).collect();
    v.resize(v.len().next_multiple_of(2), 0);
    bytemuck::cast_slice(&v).to_vec()
}

/// One shape's inputs and outputs on the device.
struct Shape {
    n: usize,
    c: usize,
    prior: ClassPrior,
    /// The inputs on the host, for the reference.
    host_logits: Vec<f32>,
    host_labels: Vec<i64>,
    loss: wgpu::Buffer,
    logits: wgpu::Buffer,
    labels: wgpu::Buffer,
    grad: wgpu::Buffer,
    lse: wgpu::Buffer,
    pred: wgpu::Buffer,
    /// The logits rounded to f16 and to bf16, and a gradient in halves.
    logits_f16: wgpu::Buffer,
    logits_bf16: wgpu::Buffer,
    grad_half: wgpu::Buffer,
}

impl Shape {
    /// Random logits in [-10, 10), random labels, a long-tailed prior.
    fn new(ctx: &Context, rng: &mut Rng, n: usize, c: usize) -> Result<Self, String> {
        let host_logits: Vec<f32> = (0..n * c)
            .map(|_| (rng.uniform() * 20.0 - 10.0) as f32)
            .collect();
        let labels: Vec<i32> = (0..n).map(|_| (rng.next_u64() % c as u64) as i32).collect();
        let counts: Vec<f64> = (0..c)
            .map(|k| (1000.0 * 100f64.powf(-(k as f64) / c as f64)).max(1.0))
            .collect();
        let device = ctx.device();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let init = |data: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: data,
                usage,
            })
        };
        let empty = |bytes: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let logits_f16 = init(&halves(&host_logits, |x| half::f16::from_f32(x).to_bits()));
        let logits_bf16 = init(&halves(&host_logits, |x| half::bf16::from_f32(x).to_bits()));
        Ok(Self {
            n,
            c,
            prior: ClassPrior::from_counts(&counts).map_err(err)?,
            logits: init(bytemuck::cast_slice(&host_logits)),
            labels: init(bytemuck::cast_slice(&labels)),
            loss: empty(16),
            host_labels: labels.iter().map(|&y| i64::from(y)).collect(),
            host_logits,
            grad: empty(n * c * 4),
            lse: empty(n * 4),
            pred: empty(n * 16 * 4),
            logits_f16,
            logits_bf16,
            grad_half: empty((n * c * 2).next_multiple_of(4)),
        })
    }

    /// Ours and the baselines, taking turns in three rounds so that a slow
    /// spell of a shared machine falls on all of them alike; each figure is
    /// the median of its rounds' medians.
    fn measure(
        &self,
        ctx: &Context,
        timer: &Timer,
        reps: usize,
        verbose: bool,
    ) -> Result<Vec<Row>, String> {
        let (n, c) = (self.n, self.c);
        let op = ctx
            .softmax_xent(&LossSpec::logit_adjusted(&self.prior, 1.0).map_err(err)?)
            .map_err(err)?;
        let (logits, labels) = (Region::whole(&self.logits), Region::whole(&self.labels));
        let fused = op
            .bind(&LossBuffers {
                grad: GradOutput::Separate(Region::whole(&self.grad)),
                lse: Some(Region::whole(&self.lse)),
                ..LossBuffers::new(logits, labels, n)
            })
            .map_err(err)?;
        let forward = op
            .bind(&LossBuffers {
                loss: Some(Region::whole(&self.loss)),
                ..LossBuffers::new(logits, labels, n)
            })
            .map_err(err)?;
        let generic = self.generic_fused(ctx, &op)?;
        let halves = self.half_runs(&op)?;
        let packed = self.packed_f16(ctx, &op)?;
        let backward = op
            .bind_backward(&BackwardBuffers::new(
                logits,
                labels,
                n,
                Region::whole(&self.lse),
                GradOutput::Separate(Region::whole(&self.grad)),
            ))
            .map_err(err)?;
        let taus: Vec<f64> = (0..16).map(|k| k as f64 * 0.125).collect();
        let (ph16, bound16) = self.posthoc_on(ctx, &taus)?;
        // A copy of N*C f32 moves the fused kernel's floor (read once,
        // write once); a copy of N*C/2 moves the forward's bytes; a read of
        // N*C is the post-hoc floor (each the faster of two layouts).
        let full = CopyBaseline::new(ctx, n * c).map_err(err)?;
        let half = CopyBaseline::new(ctx, n * c / 2).map_err(err)?;
        let mut passes: Vec<Pass> = vec![
            Box::new(|p| fused.record_in_pass(p)),
            Box::new(|p| forward.record_in_pass(p)),
            Box::new(|p| ph16.record_in_pass(p, &bound16)),
            Box::new(|p| backward.record_in_pass(p)),
            Box::new(|p| full.record_copy(p)),
            Box::new(|p| full.record_copy_wide(p)),
            Box::new(|p| full.record_read(p)),
            Box::new(|p| full.record_read_wide(p)),
            Box::new(|p| half.record_copy(p)),
            Box::new(|p| half.record_copy_wide(p)),
            Box::new(|p| halves[0].record_in_pass(p)),
            Box::new(|p| halves[1].record_in_pass(p)),
            Box::new(|p| halves[2].record_in_pass(p)),
            Box::new(|p| halves[3].record_in_pass(p)),
        ];
        if let Some(g) = &generic {
            passes.push(Box::new(|p| g.record_in_pass(p)));
        }
        let packed_at = passes.len();
        if let Some((_, b)) = &packed {
            passes.push(Box::new(|p| b.record_in_pass(p)));
        }
        let samples = sample_rounds(timer, reps, &passes, [&full, &half])?;
        let stats: Vec<Stat> = samples.iter().map(|s| Stat::of(s)).collect();
        let m: Vec<f64> = samples.into_iter().map(median).collect();
        let np = passes.len();
        drop(passes);
        let t = Times {
            fused: stats[0],
            forward: stats[1],
            posthoc: stats[2],
            backward: stats[3],
            copy: m[4].min(m[5]),
            read: m[6].min(m[7]),
            copy_half: m[8].min(m[9]),
            driver: m[np],
            driver_half: m[np + 1],
            fused_generic: generic.as_ref().map(|_| stats[14]),
            halves: [stats[10], stats[11], stats[12], stats[13]],
            f16_packed: packed.as_ref().map(|_| stats[packed_at]),
        };
        let mut errors = self.errors(
            ctx,
            &op,
            [&fused, &forward, &backward],
            &halves,
            (&ph16, &bound16),
            &taus,
        )?;
        if let Some((op, bound)) = &packed {
            errors.f16_packed = self.half_error(ctx, op, Dtype::F16, bound)?;
        }
        drop((full, half));
        let unfused = self.unfused(ctx, timer, reps.min(3), &op_posthoc1(ctx, self)?)?;
        if verbose {
            eprintln!(
                "    copy {:.3} ms, read {:.3} ms, driver copy {:.3} ms, unfused {:.3} ms",
                t.copy, t.read, t.driver, unfused.0
            );
        }
        Ok(t.rows(n, c, unfused, &errors))
    }

    /// The fused run on the f16 and the bf16 copies of the logits, the
    /// gradient in the same format, then the backward from the LSE such a
    /// run leaves, for each.
    fn half_runs(
        &self,
        op: &logit_adjust::SoftmaxXent,
    ) -> Result<[logit_adjust::BoundLoss; 4], String> {
        let bind = |dtype: Dtype, buffer: &wgpu::Buffer| {
            op.bind(&LossBuffers {
                dtype,
                grad: GradOutput::Separate(Region::whole(&self.grad_half)),
                lse: Some(Region::whole(&self.lse)),
                ..LossBuffers::new(Region::whole(buffer), Region::whole(&self.labels), self.n)
            })
            .map_err(err)
        };
        let backward = |dtype: Dtype, buffer: &wgpu::Buffer| {
            op.bind_backward(&BackwardBuffers {
                dtype,
                ..BackwardBuffers::new(
                    Region::whole(buffer),
                    Region::whole(&self.labels),
                    self.n,
                    Region::whole(&self.lse),
                    GradOutput::Separate(Region::whole(&self.grad_half)),
                )
            })
            .map_err(err)
        };
        Ok([
            bind(Dtype::F16, &self.logits_f16)?,
            bind(Dtype::Bf16, &self.logits_bf16)?,
            backward(Dtype::F16, &self.logits_f16)?,
            backward(Dtype::Bf16, &self.logits_bf16)?,
        ])
    }

    /// A post-hoc sweep over `taus` bound to the f32 logits.
    fn posthoc_on(
        &self,
        ctx: &Context,
        taus: &[f64],
    ) -> Result<(logit_adjust::PostHoc, logit_adjust::BoundPostHoc), String> {
        let ph = ctx.posthoc(&self.prior, taus).map_err(err)?;
        let bound = ph
            .bind(&PostHocBuffers {
                logits: Region::whole(&self.logits),
                dtype: logit_adjust::Dtype::F32,
                rows: self.n,
                predictions: Region::whole(&self.pred),
            })
            .map_err(err)?;
        Ok((ph, bound))
    }

    /// Where the adapter has `SHADER_F16` and runs the GPU path, the fused
    /// run on f16 logits once more with the halves packed in u32 words, as
    /// on an adapter without it (on a CPU adapter the packed path is the
    /// f16 row's own).
    fn packed_f16(
        &self,
        ctx: &Context,
        op: &logit_adjust::SoftmaxXent,
    ) -> Result<Option<(logit_adjust::SoftmaxXent, logit_adjust::BoundLoss)>, String> {
        if !ctx.capabilities().shader_f16 || ctx.info().device_type == wgpu::DeviceType::Cpu {
            return Ok(None);
        }
        let packed = ctx
            .softmax_xent(op.spec())
            .map_err(err)?
            .with_half_path(HalfPath::Packed);
        let bound = packed
            .bind(&LossBuffers {
                dtype: Dtype::F16,
                grad: GradOutput::Separate(Region::whole(&self.grad_half)),
                lse: Some(Region::whole(&self.lse)),
                ..LossBuffers::new(
                    Region::whole(&self.logits_f16),
                    Region::whole(&self.labels),
                    self.n,
                )
            })
            .map_err(err)?;
        Ok(Some((packed, bound)))
    }

    /// The fused run on `dtype` logits once more, against the reference on
    /// their values.
    fn half_error(
        &self,
        ctx: &Context,
        op: &logit_adjust::SoftmaxXent,
        dtype: Dtype,
        bound: &logit_adjust::BoundLoss,
    ) -> Result<f64, String> {
        let widened: Vec<f32> = self
            .host_logits
            .iter()
            .map(|&x| match dtype {
                Dtype::Bf16 => half::bf16::from_f32(x).to_f32(),
                _ => half::f16::from_f32(x).to_f32(),
            })
            .collect();
        crate::bench_errors::half_fused(
            ctx,
            op.spec(),
            &widened,
            &self.host_labels,
            dtype,
            &|enc| op.record(enc, bound),
            &self.grad_half,
        )
    }

    /// Each kernel run once more and compared with the reference (the
    /// half rows' on their values).
    fn errors(
        &self,
        ctx: &Context,
        op: &logit_adjust::SoftmaxXent,
        [fused, forward, backward]: [&logit_adjust::BoundLoss; 3],
        halves: &[logit_adjust::BoundLoss; 4],
        (ph16, bound16): (&logit_adjust::PostHoc, &logit_adjust::BoundPostHoc),
        taus: &[f64],
    ) -> Result<crate::bench_errors::Errors, String> {
        let mut errors = crate::bench_errors::measure(
            ctx,
            &crate::bench_errors::Run {
                spec: op.spec(),
                prior: &self.prior,
                taus,
                logits: &self.host_logits,
                labels: &self.host_labels,
                grad: &self.grad,
                loss: &self.loss,
                pred: &self.pred,
            },
            &|enc| op.record(enc, fused),
            &|enc| op.record(enc, forward),
            &|enc| op.record(enc, backward),
            &|enc| ph16.record(enc, bound16),
        )?;
        // Each backward right after its fused run, whose LSE it takes.
        for k in [0, 2, 1, 3] {
            let dtype = if k % 2 == 0 { Dtype::F16 } else { Dtype::Bf16 };
            errors.halves[k] = self.half_error(ctx, op, dtype, &halves[k])?;
        }
        Ok(errors)
    }

    /// On CPU adapters the plan picks a layout of their own; the generic
    /// layout it replaces runs beside it, so that the gain is measured in
    /// the same run.
    fn generic_fused(
        &self,
        ctx: &Context,
        op: &logit_adjust::SoftmaxXent,
    ) -> Result<Option<logit_adjust::BoundLoss>, String> {
        let n = self.n;
        if !matches!(
            op.resolved_variant(n).map_err(err)?,
            Variant::Segments | Variant::RowGroups
        ) {
            return Ok(None);
        }
        let spec = op.spec().clone();
        let bind = |v: Variant| -> Result<_, String> {
            let op = ctx.softmax_xent(&spec).map_err(err)?.with_variant(v);
            let bound = op.bind(&LossBuffers {
                grad: GradOutput::Separate(Region::whole(&self.grad)),
                lse: Some(Region::whole(&self.lse)),
                ..LossBuffers::new(Region::whole(&self.logits), Region::whole(&self.labels), n)
            });
            Ok(bound.ok())
        };
        match bind(Variant::Rows)? {
            Some(b) => Ok(Some(b)),
            None => bind(Variant::Split),
        }
    }

    /// The unfused sequences, which are 3x to 50x slower (a few
    /// repetitions do): forward+backward, forward, and one argmax pass per
    /// tau for post-hoc (16 reads of the logits).
    fn unfused(
        &self,
        ctx: &Context,
        timer: &Timer,
        reps: usize,
        one_tau: &OneTau,
    ) -> Result<(f64, f64, f64), String> {
        let post = timer
            .time_pass(reps, &|p| {
                for _ in 0..16 {
                    one_tau.0.record_in_pass(p, &one_tau.1);
                }
            })
            .map_err(err)?;
        let unfused = Unfused::new(ctx, &self.logits, &self.labels, self.n, self.c).map_err(err)?;
        let full = timer
            .time_pass(reps, &|p| unfused.record_in_pass(p))
            .map_err(err)?;
        let forward = timer
            .time_pass(reps, &|p| unfused.record_forward_in_pass(p))
            .map_err(err)?;
        Ok((full, forward, post))
    }
}

type Pass<'a> = Box<dyn Fn(&mut wgpu::ComputePass<'_>) + 'a>;

/// Every pass's per-run times and the two driver copies' medians, taking
/// turns in three rounds so that a slow spell of a shared machine falls on
/// all of them alike.
fn sample_rounds(
    timer: &Timer,
    reps: usize,
    passes: &[Pass],
    copies: [&CopyBaseline; 2],
) -> Result<Vec<Vec<f64>>, String> {
    let rounds = 3;
    let per_round = reps.div_ceil(rounds).max(1);
    let mut samples = vec![Vec::new(); passes.len() + 2];
    for _ in 0..rounds {
        for (k, pass) in passes.iter().enumerate() {
            samples[k].extend(
                timer
                    .time_pass_samples(per_round, pass.as_ref())
                    .map_err(err)?,
            );
        }
        for (k, copy) in copies.into_iter().enumerate() {
            let ms = timer
                .time_encoder(per_round, &|enc| copy.record_driver_copy(enc))
                .map_err(err)?;
            samples[passes.len() + k].push(ms);
        }
    }
    Ok(samples)
}

/// A one-tau post-hoc sweep bound to a shape's logits.
struct OneTau(logit_adjust::PostHoc, logit_adjust::BoundPostHoc);

fn op_posthoc1(ctx: &Context, s: &Shape) -> Result<OneTau, String> {
    let (ph, bound) = s.posthoc_on(ctx, &[1.0])?;
    Ok(OneTau(ph, bound))
}

/// p20, p50 and p80 of one measurement's per-run times, ms, and how many.
#[derive(Debug, Clone, Copy)]
struct Stat {
    p20: f64,
    p50: f64,
    p80: f64,
    samples: usize,
}

impl Stat {
    fn of(v: &[f64]) -> Self {
        Self {
            p20: quantile(v.to_vec(), 0.2),
            p50: quantile(v.to_vec(), 0.5),
            p80: quantile(v.to_vec(), 0.8),
            samples: v.len(),
        }
    }
}

/// Each kernel's times (percentiles) and the baselines' medians, ms, of
/// one shape.
struct Times {
    fused: Stat,
    forward: Stat,
    posthoc: Stat,
    backward: Stat,
    copy: f64,
    read: f64,
    copy_half: f64,
    driver: f64,
    driver_half: f64,
    /// CPU adapters: the fused run in the generic layout.
    fused_generic: Option<Stat>,
    /// On f16 and on bf16 logits (gradient in the same): the fused runs,
    /// then the backward runs.
    halves: [Stat; 4],
    /// The fused run on f16 logits packed in u32 words, where the adapter
    /// would otherwise read them natively.
    f16_packed: Option<Stat>,
}

impl Times {
    /// The table's rows; `unfused` is (forward+backward, forward, post-hoc).
    fn rows(
        &self,
        n: usize,
        c: usize,
        unfused: (f64, f64, f64),
        e: &crate::bench_errors::Errors,
    ) -> Vec<Row> {
        let b = (n * c * 4) as f64;
        let per_row = (n * 8) as f64;
        let (abs, mismatches) = ("abs", "mismatches");
        // (op, mode, times, bytes, copy floor, driver copy, unfused, error)
        let mut specs = vec![
            (
                "fused",
                "full",
                self.fused,
                2.0 * b + per_row,
                self.copy,
                self.driver,
                unfused.0,
                (e.fused, abs),
            ),
            (
                "forward",
                "forward",
                self.forward,
                b + per_row,
                self.copy_half,
                self.driver_half,
                unfused.1,
                (e.forward, abs),
            ),
        ];
        if let Some(t) = self.fused_generic {
            specs.push((
                "fused-gen",
                "full",
                t,
                2.0 * b + per_row,
                self.copy,
                self.driver,
                unfused.0,
                (f64::NAN, abs),
            ));
        }
        specs.extend([
            (
                "backward",
                "backward",
                self.backward,
                2.0 * b + per_row,
                self.copy,
                self.driver,
                f64::NAN,
                (e.backward, abs),
            ),
            (
                "posthoc16",
                "forward",
                self.posthoc,
                b + (n * 64) as f64,
                self.read,
                self.driver_half,
                unfused.2,
                (e.posthoc, mismatches),
            ),
        ]);
        let mut halves = vec![
            ("fused", "f16", self.halves[0], e.halves[0]),
            ("fused", "bf16", self.halves[1], e.halves[1]),
            ("backward", "f16", self.halves[2], e.halves[2]),
            ("backward", "bf16", self.halves[3], e.halves[3]),
        ];
        if let Some(t) = self.f16_packed {
            halves.insert(2, ("fused", "f16-packed", t, e.f16_packed));
        }
        let mut rows: Vec<Row> = specs
            .into_iter()
            .map(
                |(op, mode, t, bytes, floor, driver, slow, (max_err, err_kind))| Row {
                    op,
                    dtype: "f32",
                    mode,
                    n,
                    c,
                    p20: t.p20,
                    ms: t.p50,
                    p80: t.p80,
                    samples: t.samples,
                    bytes,
                    max_err,
                    err_kind,
                    vs_copy: t.p50 / floor,
                    vs_driver: t.p50 / driver,
                    speedup_unfused: slow / t.p50,
                },
            )
            .collect();
        rows.extend(
            halves
                .into_iter()
                .map(|(op, dtype, t, max_err)| self.half_row(n, c, (op, dtype), t, max_err)),
        );
        rows
    }

    /// A fused or backward run on half logits, against a copy of its own
    /// (half-size) bytes; the unfused sequence reads f32 only.
    fn half_row(
        &self,
        n: usize,
        c: usize,
        (op, dtype): (&'static str, &'static str),
        t: Stat,
        max_err: f64,
    ) -> Row {
        Row {
            op,
            dtype,
            mode: if op == "fused" { "full" } else { "backward" },
            n,
            c,
            p20: t.p20,
            ms: t.p50,
            p80: t.p80,
            samples: t.samples,
            bytes: (n * c * 4 + n * 8) as f64,
            max_err,
            err_kind: "abs",
            vs_copy: t.p50 / self.copy_half,
            vs_driver: t.p50 / self.driver_half,
            speedup_unfused: f64::NAN,
        }
    }
}

/// Every row's columns, in CSV order.
const CSV_COLUMNS: [&str; 24] = [
    "timestamp",
    "version",
    "git_commit",
    "adapter",
    "backend",
    "driver",
    "device_type",
    "timing",
    "op",
    "dtype",
    "mode",
    "n",
    "c",
    "p20_ms",
    "p50_ms",
    "p80_ms",
    "samples",
    "bytes",
    "gb_per_s",
    "max_err",
    "err_kind",
    "time_vs_shader_copy",
    "time_vs_driver_copy",
    "speedup_vs_unfused",
];

/// One JSON object per row, each carrying the run's build, adapter and
/// timestamp, so that rows of many runs can be pooled.
fn json_rows(ctx: &Context, timer: &Timer, reps: usize, rows: &[Row], when: &str) -> Vec<Value> {
    let finite = |x: f64| x.is_finite().then_some(x);
    rows.iter()
        .map(|r| {
            let fields = json!({
                "op": r.op, "dtype": r.dtype, "mode": r.mode, "n": r.n, "c": r.c,
                "p20_ms": r.p20, "p50_ms": r.ms, "p80_ms": r.p80, "samples": r.samples,
                "bytes": r.bytes as u64,
                "gb_per_s": r.bytes / (r.ms * 1e-3) / 1e9,
                "max_err": if r.err_kind == "mismatches" { json!(r.max_err as u64) } else { json!(finite(r.max_err)) }, "err_kind": r.err_kind,
                "time_vs_shader_copy": r.vs_copy, "time_vs_driver_copy": r.vs_driver,
                "speedup_vs_unfused": finite(r.speedup_unfused),
            });
            with_run(ctx, timer, reps, when, fields)
        })
        .collect()
}

/// `fields` after what every row and the header carry: the adapter, the
/// build, the timing source, the repetitions and the timestamp.
fn with_run(ctx: &Context, timer: &Timer, reps: usize, when: &str, fields: Value) -> Value {
    let mut run = json!({
        "timestamp": when,
        "version": crate::record::VERSION,
        "git_commit": crate::record::COMMIT,
        "timing": timer.timing().name(),
        "reps": reps,
    });
    if let (Value::Object(r), Value::Object(f)) = (&mut run, fields) {
        r.extend(f);
    }
    crate::record::with_adapter(ctx.info(), run)
}

fn print_json(ctx: &Context, timer: &Timer, reps: usize, rows: &[Row], when: &str) {
    let rows = json_rows(ctx, timer, reps, rows, when);
    println!(
        "{}",
        with_run(ctx, timer, reps, when, json!({ "rows": rows }))
    );
}

fn print_table(ctx: &Context, timer: &Timer, rows: &[Row]) {
    println!(
        "{:<10} {:>8} {:>7} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "op", "N", "C", "median ms", "GB/s", "vs copy", "vs driver", "x unfused"
    );
    for r in rows {
        let unfused = if r.speedup_unfused.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}x", r.speedup_unfused)
        };
        let op = match r.dtype {
            "f32" => r.op.to_string(),
            dtype => format!("{}/{dtype}", r.op),
        };
        println!(
            "{:<10} {:>8} {:>7} {:>10.3} {:>8.2} {:>9.2}x {:>9.2}x {:>10}",
            op,
            r.n,
            r.c,
            r.ms,
            r.bytes / (r.ms * 1e-3) / 1e9,
            r.vs_copy,
            r.vs_driver,
            unfused
        );
    }
    let worst = |op: &str| {
        rows.iter()
            .filter(|r| r.op == op && r.dtype == "f32")
            .map(|r| r.vs_copy)
            .fold(0.0, f64::max)
    };
    let least_speedup = rows
        .iter()
        .filter(|r| r.op == "fused" && r.dtype == "f32")
        .map(|r| r.speedup_unfused)
        .fold(f64::INFINITY, f64::min);
    // The fused run on f16 logits over the same run on f32, per shape.
    let f16_ratio = rows
        .iter()
        .filter(|r| r.op == "fused" && r.dtype == "f16")
        .filter_map(|h| {
            rows.iter()
                .find(|r| r.op == "fused" && r.dtype == "f32" && r.n == h.n && r.c == h.c)
                .map(|f| h.ms / f.ms)
        })
        .fold(0.0, f64::max);
    println!(
        "summary on {} ({:?}, {}): fused forward+backward at worst {:.2}x the shader copy's time, at least {least_speedup:.1}x faster than unfused; backward from LSE at worst {:.2}x; 16-tau post-hoc at worst {:.2}x one shader read; fused on f16 logits at worst {f16_ratio:.2}x the f32 time",
        ctx.info().name,
        ctx.info().backend,
        timer.timing().name(),
        worst("fused"),
        worst("backward"),
        worst("posthoc16"),
    );
}
