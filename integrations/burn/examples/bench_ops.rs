//! burn's own cross-entropy forward+backward beside ours as a burn op, on
//! the same adapter, in one run: the time from the forward's call to the
//! logits' gradient being ready (`device.sync()`), median of interleaved
//! runs.
//!
//! ```sh
//! cargo run --release --example bench_ops [-- --runs 15 --csv --check]
//! ```
//!
//! `--check` exits 1 unless ours is at least 3x faster at every shape.

use std::process::ExitCode;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use logit_adjust::synthetic::Rng;
use logit_adjust::LossSpec;
use logit_adjust_burn::LogitAdjustedLoss;

const SHAPES: [(usize, usize); 2] = [(2048, 1000), (256, 32768)];

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Interleaved runs of burn's loss (`[0]`) and ours (`[1]`) on `x` and `y`,
/// after two warm-up runs of each; milliseconds, sorted.
fn measure(
    device: &Device,
    x: Tensor<2>,
    y: Tensor<1, Int>,
    runs: usize,
) -> Result<[Vec<f64>; 2], logit_adjust_burn::Error> {
    let c = x.dims()[1];
    let ours = LogitAdjustedLoss::new(device, &LossSpec::cross_entropy(c))?;
    let theirs = CrossEntropyLossConfig::new().init(device);
    let step = |which: usize| -> Result<f64, logit_adjust_burn::Error> {
        let logits = x.clone().require_grad();
        let t = Instant::now();
        let loss = if which == 0 {
            theirs.forward(logits.clone(), y.clone())
        } else {
            ours.forward(logits.clone(), y.clone())?
        };
        let grads = loss.backward();
        let g = logits.grad(&grads);
        device.sync().map_err(|e| {
            logit_adjust_burn::Error::Unsupported(format!("the device failed: {e:?}"))
        })?;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        drop(g);
        Ok(elapsed)
    };
    for which in [0, 1, 0, 1] {
        step(which)?; // warm-up: pipelines, autotune, pools
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for which in [0, 1] {
            times[which].push(step(which)?);
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    Ok(times)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let csv = argv.iter().any(|a| a == "--csv");
    let check = argv.iter().any(|a| a == "--check");
    let runs: usize = argv
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| argv.get(i + 1))
        .map_or(Ok(15), |v| v.parse())
        .unwrap_or(15)
        .max(3);
    let api = match std::env::var("WGPU_BACKEND").as_deref() {
        Ok("gl") => WgpuBackend::Gl,
        Ok("vulkan") => WgpuBackend::Vulkan,
        _ => WgpuBackend::Auto,
    };
    let device = match logit_adjust_burn::init(Device::wgpu_options().graphics_api(api)) {
        Ok(d) => d.autodiff(),
        Err(e) => {
            eprintln!("bench_ops: {e}");
            return ExitCode::from(2);
        }
    };
    let adapter = logit_adjust_burn::context(&device)
        .map(|c| c.info().name.clone())
        .unwrap_or_default();
    let fused = if cfg!(feature = "fusion") {
        "on"
    } else {
        "off"
    };
    if csv {
        println!("adapter,fusion,rows,classes,impl,runs,p20_ms,p50_ms,p80_ms,speedup");
    } else {
        println!("{adapter}, burn fusion {fused}, {runs} runs each, interleaved");
        println!(
            "{:>6} {:>7}  {:<40} {:>9} {:>9} {:>9} {:>8}",
            "rows", "classes", "forward+backward", "p20 ms", "p50 ms", "p80 ms", "speedup"
        );
    }
    let mut ok = true;
    let mut rng = Rng::new(5);
    for (n, c) in SHAPES {
        let logits: Vec<f32> = (0..n * c).map(|_| (4.0 * rng.normal()) as f32).collect();
        let labels: Vec<i32> = (0..n).map(|_| (rng.next_u64() % c as u64) as i32).collect();
        let x = Tensor::<2>::from_data(TensorData::new(logits, [n, c]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
        let times = match measure(&device, x, y, runs) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bench_ops: {e}");
                return ExitCode::from(2);
            }
        };
        let speedup = quantile(&times[0], 0.5) / quantile(&times[1], 0.5);
        for (which, name) in ["burn CrossEntropyLoss", "logit-adjust as a burn op"]
            .iter()
            .enumerate()
        {
            let t = &times[which];
            let s = if which == 1 {
                format!("{speedup:.2}")
            } else {
                String::new()
            };
            if csv {
                println!(
                    "{adapter},{fused},{n},{c},{name},{runs},{:.3},{:.3},{:.3},{s}",
                    quantile(t, 0.2),
                    quantile(t, 0.5),
                    quantile(t, 0.8)
                );
            } else {
                println!(
                    "{n:>6} {c:>7}  {name:<40} {:>9.2} {:>9.2} {:>9.2} {s:>8}",
                    quantile(t, 0.2),
                    quantile(t, 0.5),
                    quantile(t, 0.8)
                );
            }
        }
        if check && speedup < 3.0 {
            eprintln!("check failed: {n} x {c}: ours is {speedup:.2}x burn's, the bar is 3x");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
