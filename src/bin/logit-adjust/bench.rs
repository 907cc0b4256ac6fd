//! `logit-adjust bench`: the kernels on the current adapter, each as a
//! ratio to a shader copy of the same bytes, the driver's buffer copy, and
//! the unfused sequence frameworks run, all measured in the same run.

use logit_adjust::bench::{median, CopyBaseline, Timer, Unfused};
use logit_adjust::synthetic::Rng;
use logit_adjust::{
    ClassPrior, Context, GradOutput, LossBuffers, LossSpec, PostHocBuffers, Region,
};
use serde_json::json;
use wgpu::util::DeviceExt;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller shapes (N / 8) and fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Only the shapes with these class counts (e.g. `--classes 1000,8142`).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
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
    n: usize,
    c: usize,
    ms: f64,
    bytes: f64,
    vs_copy: f64,
    vs_driver: f64,
    speedup_unfused: f64,
}

pub fn run(a: &BenchArgs) -> Result<(), String> {
    let e = |e: logit_adjust::Error| e.to_string();
    let ctx = Context::new().map_err(e)?;
    let timer = Timer::new(&ctx);
    let reps = a.reps.unwrap_or(if a.quick { 5 } else { 10 });
    let mut rng = Rng::new(42);
    let mut rows = Vec::new();
    if !a.json {
        eprintln!(
            "bench on {} ({:?}), timing: {}, {reps} repetitions, median",
            ctx.info().name,
            ctx.info().backend,
            timer.timing().name()
        );
    }
    for (n, c) in SHAPES {
        if !a.classes.is_empty() && !a.classes.contains(&c) {
            continue;
        }
        let n = if a.quick { (n / 8).max(1) } else { n };
        if !a.json {
            eprintln!("  {n} x {c} ...");
        }
        let elements = n * c;
        let logits: Vec<f32> = (0..elements)
            .map(|_| (rng.uniform() * 20.0 - 10.0) as f32)
            .collect();
        let labels: Vec<i32> = (0..n).map(|_| (rng.next_u64() % c as u64) as i32).collect();
        let counts: Vec<f64> = (0..c)
            .map(|k| (1000.0 * 100f64.powf(-(k as f64) / c as f64)).max(1.0))
            .collect();
        let prior = ClassPrior::from_counts(&counts).map_err(e)?;
        let device = ctx.device();
        let usage = wgpu::BufferUsages::STORAGE;
        let logits_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&logits),
            usage,
        });
        drop(logits);
        let labels_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&labels),
            usage,
        });
        let grad = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (elements * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        let pred = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (n * 16 * 4) as u64,
            usage,
            mapped_at_creation: false,
        });

        let op = ctx
            .softmax_xent(&LossSpec::logit_adjusted(&prior, 1.0).map_err(e)?)
            .map_err(e)?;
        let bind = |grad| {
            op.bind(&LossBuffers {
                grad,
                ..LossBuffers::new(Region::whole(&logits_buf), Region::whole(&labels_buf), n)
            })
        };
        let fused = bind(GradOutput::Separate(Region::whole(&grad))).map_err(e)?;
        let forward = bind(GradOutput::None).map_err(e)?;
        let taus: Vec<f64> = (0..16).map(|k| k as f64 * 0.125).collect();
        let ph16 = ctx.posthoc(&prior, &taus).map_err(e)?;
        let bound16 = ph16
            .bind(&PostHocBuffers {
                logits: &logits_buf,
                rows: n,
                predictions: &pred,
            })
            .map_err(e)?;
        let ph1 = ctx.posthoc(&prior, &[1.0]).map_err(e)?;
        let bound1 = ph1
            .bind(&PostHocBuffers {
                logits: &logits_buf,
                rows: n,
                predictions: &pred,
            })
            .map_err(e)?;

        // Baselines: a copy of N*C f32 moves the fused kernel's floor (read
        // once, write once); a copy of N*C/2 moves the forward's bytes; a read
        // of N*C is the post-hoc floor (each the faster of two layouts).
        let full = CopyBaseline::new(&ctx, elements).map_err(e)?;
        let half = CopyBaseline::new(&ctx, elements / 2).map_err(e)?;
        // Ours and the baselines take turns, a few repetitions at a time, so
        // that a slow spell of a shared machine falls on all of them alike;
        // each figure is the median of its rounds' medians.
        type Pass<'a> = Box<dyn Fn(&mut wgpu::ComputePass<'_>) + 'a>;
        let passes: Vec<Pass> = vec![
            Box::new(|p| fused.record_in_pass(p)),
            Box::new(|p| forward.record_in_pass(p)),
            Box::new(|p| ph16.record_in_pass(p, &bound16)),
            Box::new(|p| full.record_copy(p)),
            Box::new(|p| full.record_read(p)),
            Box::new(|p| full.record_read_wide(p)),
            Box::new(|p| half.record_copy(p)),
            Box::new(|p| full.record_copy_wide(p)),
            Box::new(|p| half.record_copy_wide(p)),
        ];
        let rounds = 3;
        let per_round = reps.div_ceil(rounds).max(1);
        let mut samples = vec![Vec::new(); passes.len() + 2];
        for _ in 0..rounds {
            for (k, pass) in passes.iter().enumerate() {
                samples[k].push(timer.time_pass(per_round, pass.as_ref()).map_err(e)?);
            }
            let k = passes.len();
            samples[k].push(
                timer
                    .time_encoder(per_round, &|enc| full.record_driver_copy(enc))
                    .map_err(e)?,
            );
            samples[k + 1].push(
                timer
                    .time_encoder(per_round, &|enc| half.record_driver_copy(enc))
                    .map_err(e)?,
            );
        }
        let m: Vec<f64> = samples.into_iter().map(median).collect();
        // Each floor is the faster of its two layouts.
        let (t_fused, t_forward, t_post, t_copy) = (m[0], m[1], m[2], m[3].min(m[7]));
        let (t_read, t_copy_half) = (m[4].min(m[5]), m[6].min(m[8]));
        let (t_driver, t_driver_half) = (m[9], m[10]);
        drop(passes);
        drop(full);
        drop(half);
        // The unfused sequences are 3x to 50x slower; a few repetitions do.
        let slow_reps = reps.min(3);
        // Unfused post-hoc: one argmax pass per tau, 16 reads of the logits.
        let t_post_unfused = timer
            .time_pass(slow_reps, &|p| {
                for _ in 0..16 {
                    ph1.record_in_pass(p, &bound1);
                }
            })
            .map_err(e)?;
        let unfused = Unfused::new(&ctx, &logits_buf, &labels_buf, n, c).map_err(e)?;
        let t_unfused = timer
            .time_pass(slow_reps, &|p| unfused.record_in_pass(p))
            .map_err(e)?;
        let t_unfused_fwd = timer
            .time_pass(slow_reps, &|p| unfused.record_forward_in_pass(p))
            .map_err(e)?;
        drop(unfused);

        let b = (elements * 4) as f64;
        rows.push(Row {
            op: "fused",
            n,
            c,
            ms: t_fused,
            bytes: 2.0 * b + (n * 8) as f64,
            vs_copy: t_fused / t_copy,
            vs_driver: t_fused / t_driver,
            speedup_unfused: t_unfused / t_fused,
        });
        rows.push(Row {
            op: "forward",
            n,
            c,
            ms: t_forward,
            bytes: b + (n * 8) as f64,
            vs_copy: t_forward / t_copy_half,
            vs_driver: t_forward / t_driver_half,
            speedup_unfused: t_unfused_fwd / t_forward,
        });
        rows.push(Row {
            op: "posthoc16",
            n,
            c,
            ms: t_post,
            bytes: b + (n * 64) as f64,
            vs_copy: t_post / t_read,
            vs_driver: t_post / t_driver_half,
            speedup_unfused: t_post_unfused / t_post,
        });
        if !a.json {
            eprintln!(
                "    copy {t_copy:.3} ms, read {t_read:.3} ms, driver copy {t_driver:.3} ms, unfused {t_unfused:.3} ms"
            );
        }
    }

    let fused: Vec<&Row> = rows.iter().filter(|r| r.op == "fused").collect();
    let worst_copy = fused.iter().map(|r| r.vs_copy).fold(0.0, f64::max);
    let least_speedup = fused
        .iter()
        .map(|r| r.speedup_unfused)
        .fold(f64::INFINITY, f64::min);
    let worst_post = rows
        .iter()
        .filter(|r| r.op == "posthoc16")
        .map(|r| r.vs_copy)
        .fold(0.0, f64::max);
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "op": r.op, "n": r.n, "c": r.c, "median_ms": r.ms,
                    "gb_per_s": r.bytes / (r.ms * 1e-3) / 1e9,
                    "time_vs_shader_copy": r.vs_copy, "time_vs_driver_copy": r.vs_driver,
                    "speedup_vs_unfused": r.speedup_unfused,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "adapter": ctx.info().name,
                "backend": format!("{:?}", ctx.info().backend),
                "driver": ctx.info().driver_info,
                "timing": timer.timing().name(),
                "reps": reps,
                "rows": out,
            })
        );
        return Ok(());
    }
    println!(
        "{:<10} {:>8} {:>7} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "op", "N", "C", "median ms", "GB/s", "vs copy", "vs driver", "x unfused"
    );
    for r in &rows {
        println!(
            "{:<10} {:>8} {:>7} {:>10.3} {:>8.2} {:>9.2}x {:>9.2}x {:>9.2}x",
            r.op,
            r.n,
            r.c,
            r.ms,
            r.bytes / (r.ms * 1e-3) / 1e9,
            r.vs_copy,
            r.vs_driver,
            r.speedup_unfused
        );
    }
    println!(
        "summary on {} ({:?}, {}): fused forward+backward at worst {worst_copy:.2}x the shader copy's time, at least {least_speedup:.1}x faster than unfused; 16-tau post-hoc at worst {worst_post:.2}x one shader read",
        ctx.info().name,
        ctx.info().backend,
        timer.timing().name()
    );
    Ok(())
}
