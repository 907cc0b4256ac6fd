//! `logit-adjust check`: certify adapters. Every cell of the conformance
//! matrix (op x dtype x layout x shape class) on each adapter against the
//! f64 reference: supported or not, passed or not, the largest absolute and
//! relative error, the tolerance, the time and the bandwidth. The columns
//! follow ggml's `test-backend-ops` where they mean the same. Exit code 1
//! when any supported cell fails.

use logit_adjust::conformance::{self, Cell, Devices, Outcome};
use serde_json::{json, Value};

use crate::record;

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// `all`, an adapter's index in `logit-adjust info`, or a
    /// case-insensitive part of its name.
    #[arg(long, default_value = "all")]
    adapter: String,
    /// Print one JSON object: the adapters' summaries and one row per cell.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print one CSV row per cell (with a header).
    #[arg(long)]
    csv: bool,
    /// Smaller shapes and one timed run per cell (every shape class stays).
    #[arg(long)]
    quick: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed runs per cell (default 5; 1 with --quick; 0: no timing).
    #[arg(long)]
    runs: Option<usize>,
    /// Run nothing: write the GPU path's bound runs of the cells, planned
    /// for WebGPU's default limits, with their reference outputs, into this
    /// folder for the browser harness (tests/webgpu/), using the first
    /// selected adapter.
    #[arg(long, value_name = "DIR")]
    export_webgpu: Option<std::path::PathBuf>,
}

/// The columns of a row, in CSV order.
const COLUMNS: [&str; 27] = [
    "test_time",
    "build_commit",
    "version",
    "adapter",
    "backend",
    "driver",
    "device_type",
    "op_name",
    "op_params",
    "dtype",
    "layout",
    "shape",
    "rows",
    "classes",
    "test_mode",
    "supported",
    "passed",
    "error_message",
    "max_abs_err",
    "max_rel_err",
    "tolerance",
    "time_us",
    "bandwidth_gb_s",
    "memory_kb",
    "n_runs",
    "seed",
    "quick",
];

fn select(adapters: Vec<wgpu::Adapter>, wanted: &str) -> Result<Vec<wgpu::Adapter>, String> {
    if wanted == "all" {
        return Ok(adapters);
    }
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    if let Ok(i) = wanted.parse::<usize>() {
        return adapters.into_iter().nth(i).map(|a| vec![a]).ok_or_else(|| {
            format!(
                "--adapter {i}: there are {} adapters: {names:?}",
                names.len()
            )
        });
    }
    let lower = wanted.to_lowercase();
    let chosen: Vec<_> = adapters
        .into_iter()
        .filter(|a| a.get_info().name.to_lowercase().contains(&lower))
        .collect();
    if chosen.is_empty() {
        return Err(format!("--adapter {wanted:?} matches none of {names:?}"));
    }
    Ok(chosen)
}

fn row(info: &wgpu::AdapterInfo, cell: &Cell, o: &Outcome, a: &CheckArgs, when: &str) -> Value {
    let finite = |x: f64| x.is_finite().then_some(x);
    let fields = json!({
        "test_time": when,
        "build_commit": record::COMMIT,
        "version": record::VERSION,
        "op_name": cell.op.name(),
        "op_params": cell.label(),
        "dtype": cell.dtype.name(),
        "layout": cell.kernels.name(),
        "shape": cell.shape.name(),
        "rows": o.rows,
        "classes": o.classes,
        "test_mode": "test",
        "supported": o.supported,
        "passed": o.passed,
        "error_message": o.message,
        "max_abs_err": o.supported.then(|| finite(o.max_abs_err)).flatten(),
        "max_rel_err": o.supported.then(|| finite(o.max_rel_err)).flatten(),
        "tolerance": o.tolerance,
        "time_us": o.time_us,
        "bandwidth_gb_s": o.bandwidth_gb_s(),
        "memory_kb": o.supported.then(|| o.bytes.div_ceil(1024)),
        "n_runs": o.runs,
        "seed": a.seed,
        "quick": a.quick,
    });
    record::with_adapter(info, fields)
}

fn console_line(cell: &Cell, o: &Outcome) -> String {
    let what = format!("{} {}x{}", cell.label(), o.rows, o.classes);
    if !o.supported {
        return format!("  {what}: not supported [{}]", o.message);
    }
    let errs = format!(
        "max_abs={:.2e} max_rel={:.2e}",
        o.max_abs_err, o.max_rel_err
    );
    let speed = match (o.time_us, o.bandwidth_gb_s()) {
        (Some(t), Some(bw)) => format!("  {t:.1} us/run {bw:.2} GB/s"),
        _ => String::new(),
    };
    if o.passed {
        format!("  {what}: OK {errs}{speed}")
    } else {
        format!("  {what}: FAIL {} ({errs})", o.message)
    }
}

/// One adapter's tally.
struct Tally {
    passed: usize,
    failed: Vec<String>,
    unsupported: usize,
}

/// Every cell on one adapter: its rows, its summary, whether all passed.
fn check_adapter(
    a: &CheckArgs,
    adapter: wgpu::Adapter,
    k: usize,
    total: usize,
    runs: usize,
    when: &str,
) -> (Vec<Value>, Value, bool) {
    let console = !a.json && !a.csv;
    let mut rows = Vec::new();
    let mut devices = Devices::new(adapter);
    let info = devices.info().clone();
    let header = format!(
        "Adapter {}/{total}: {} ({:?}, {:?}, driver {} {})",
        k + 1,
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info
    );
    if console {
        println!("{header}");
    } else {
        eprintln!("{header}");
    }
    let mut tally = Tally {
        passed: 0,
        failed: Vec::new(),
        unsupported: 0,
    };
    for cell in conformance::matrix() {
        let outcome = if !devices.runs(cell.kernels) {
            Outcome::unsupported(&cell, a.quick, "CPU layouts run on CPU adapters only")
        } else {
            match devices.context(cell.kernels, cell.shape.small_binding()) {
                Ok(ctx) => conformance::run(&ctx, &cell, a.quick, a.seed, runs),
                Err(e) => Outcome {
                    supported: true,
                    message: format!("opening the device: {e}"),
                    ..Outcome::unsupported(&cell, a.quick, "")
                },
            }
        };
        if console {
            println!("{}", console_line(&cell, &outcome));
        } else if outcome.supported && !outcome.passed {
            eprintln!("{}", console_line(&cell, &outcome));
        }
        match (outcome.supported, outcome.passed) {
            (false, _) => tally.unsupported += 1,
            (true, true) => tally.passed += 1,
            (true, false) => tally.failed.push(cell.label()),
        }
        rows.push(row(&info, &cell, &outcome, a, when));
    }
    let supported = tally.passed + tally.failed.len();
    let ok = tally.failed.is_empty();
    let line = format!(
        "  {}/{supported} supported cells passed, {} not supported (seed {}): {}",
        tally.passed,
        tally.unsupported,
        a.seed,
        if ok { "OK" } else { "FAIL" }
    );
    if console {
        println!("{line}");
        for f in &tally.failed {
            println!("  failed: {f}");
        }
    } else {
        eprintln!("{line}");
    }
    let summary = record::with_adapter(
        &info,
        json!({
            "cells": supported + tally.unsupported,
            "passed": tally.passed,
            "failed": tally.failed,
            "unsupported": tally.unsupported,
            "ok": ok,
        }),
    );
    (rows, summary, ok)
}

pub fn run(a: &CheckArgs) -> Result<bool, String> {
    let adapters = logit_adjust::adapters_from_env();
    if adapters.is_empty() {
        return Err(format!(
            "no GPU adapter found (WGPU_BACKEND={}); for Vulkan install mesa-vulkan-drivers and libvulkan1",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "unset".into())
        ));
    }
    let adapters = select(adapters, &a.adapter)?;
    if let Some(dir) = &a.export_webgpu {
        let first = adapters.into_iter().next().ok_or("no adapter selected")?;
        crate::webgpu_export::export(first, dir, a.seed)?;
        return Ok(true);
    }
    let runs = a.runs.unwrap_or(if a.quick { 1 } else { 5 });
    let when = record::utc_now();
    let total = adapters.len();
    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    let mut all_passed = true;
    for (k, adapter) in adapters.into_iter().enumerate() {
        let (adapter_rows, summary, ok) = check_adapter(a, adapter, k, total, runs, &when);
        rows.extend(adapter_rows);
        summaries.push(summary);
        all_passed &= ok;
    }
    if a.json {
        println!(
            "{}",
            json!({
                "version": record::VERSION,
                "build_commit": record::COMMIT,
                "test_time": when,
                "seed": a.seed,
                "quick": a.quick,
                "passed": all_passed,
                "adapters": summaries,
                "rows": rows,
            })
        );
    } else if a.csv {
        print!("{}", record::csv(&COLUMNS, &rows));
    } else {
        let ok = summaries.iter().filter(|s| s["ok"] == true).count();
        println!("{ok}/{total} adapters passed");
    }
    Ok(all_passed)
}
