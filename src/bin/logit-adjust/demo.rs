//! `logit-adjust demo`: what the library does, on data it makes itself.

use std::time::Instant;

use logit_adjust::{reference, ClassPrior, Context, LossSpec, Reduction};

/// A small deterministic generator, so the demo prints the same numbers each run.
struct SplitMix(u64);

impl SplitMix {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn run() -> Result<(), String> {
    let (n, c, rho) = (16_384usize, 1000usize, 100.0f64);
    println!("logit-adjust demo: {n} rows x {c} classes, exponential long tail (rho = {rho})");
    // Training counts n_c = floor(500 * rho^(-c/(C-1))), as CIFAR-LT builds them.
    let counts: Vec<f64> = (0..c)
        .map(|k| (500.0 * rho.powf(-(k as f64) / (c - 1) as f64)).floor())
        .collect();
    let prior = ClassPrior::from_counts(&counts).map_err(|e| e.to_string())?;
    let mut rng = SplitMix(2021);
    // Labels drawn from the prior (head classes dominate), logits random.
    let cdf: Vec<f64> = prior
        .probabilities()
        .iter()
        .scan(0.0, |acc, p| {
            *acc += p;
            Some(*acc)
        })
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|_| {
            let u = rng.uniform();
            cdf.partition_point(|&x| x < u).min(c - 1) as i64
        })
        .collect();
    let logits: Vec<f32> = (0..n * c)
        .map(|_| (rng.uniform() * 8.0 - 4.0) as f32)
        .collect();

    println!("opening the GPU (WGPU_BACKEND / WGPU_ADAPTER_NAME choose it) ...");
    let ctx = Context::new().map_err(|e| e.to_string())?;
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>11}",
        "loss", "GPU", "CPU f64", "|diff|", "GPU ms"
    );
    for (name, tau) in [
        ("cross-entropy (tau = 0)", 0.0),
        ("logit-adjusted (tau = 1)", 1.0),
        ("logit-adjusted (tau = 2)", 2.0),
    ] {
        let spec = LossSpec::logit_adjusted(&prior, tau)
            .map_err(|e| e.to_string())?
            .reduction(Reduction::Mean);
        let op = ctx.softmax_xent(&spec).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let gpu = op
            .forward_backward(&logits, &labels)
            .map_err(|e| e.to_string())?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let cpu =
            reference::forward_backward(&spec, &logits, &labels).map_err(|e| e.to_string())?;
        let (g, r) = (
            gpu.loss.unwrap_or(f32::NAN) as f64,
            cpu.loss.unwrap_or(f64::NAN),
        );
        let grad_err = gpu
            .grad
            .iter()
            .flatten()
            .zip(cpu.grad.iter().flatten())
            .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
        println!(
            "{name:<28} {g:>12.6} {r:>12.6} {:>10.2e} {ms:>11.1}",
            (g - r).abs().max(grad_err)
        );
    }
    println!(
        "(|diff|: the larger of the loss and the worst gradient element difference; GPU ms includes upload and read-back)"
    );
    println!(
        "adapter: {} ({:?}, {})",
        ctx.info().name,
        ctx.info().backend,
        ctx.info().driver_info
    );
    Ok(())
}
