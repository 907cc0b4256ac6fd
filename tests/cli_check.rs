//! `logit-adjust check` certifies the adapters: every supported cell passes
//! on each adapter the machine offers, unsupported cells say so, a wrong
//! kernel (a test build's injected one-ulp gradient fault) makes it exit 1
//! naming the cell, and `bench --csv` and `check --csv` rows are well
//! formed. The browser harness's export is complete.

mod common;

#[path = "common/cli.rs"]
mod cli_common;

use std::process::Command;

use cli_common::{run, Files};
use serde_json::Value;

fn adapter_count() -> usize {
    common::adapters().len()
}

#[test]
fn every_supported_cell_passes_on_every_adapter() {
    let adapters = adapter_count();
    // Fixed by default, fresh in CI (LOGIT_ADJUST_FRESH_SEEDS=1).
    let seed = common::Rng::fresh().seed().to_string();
    let (code, stdout, stderr) =
        run(&["check", "--quick", "--json", "--runs", "1", "--seed", &seed]);
    assert_eq!(code, 0, "check failed (seed {seed}):\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["passed"], true);
    let listed = v["adapters"].as_array().unwrap();
    assert_eq!(listed.len(), adapters, "{}", v["adapters"]);
    let rows = v["rows"].as_array().unwrap();
    // 7 ops x 3 dtypes x 2 kernel sets x 8 shape classes per adapter.
    assert_eq!(rows.len(), adapters * 336);
    for r in rows {
        let what = r["op_params"].as_str().unwrap();
        let supported = r["supported"].as_bool().unwrap();
        // The CPU adapters' own layouts take half logits in the loss's
        // forward and fused runs; other half logits run the GPU kernels.
        let loss = r["op_name"] == "xent_forward" || r["op_name"] == "xent_fused";
        let half_on_cpu_set = r["dtype"] != "f32" && r["layout"] == "cpu" && !loss;
        let cpu_set_on_gpu = r["layout"] == "cpu" && r["device_type"] != "Cpu";
        assert_eq!(
            supported,
            !half_on_cpu_set && !cpu_set_on_gpu,
            "{what}: {r}"
        );
        if supported {
            assert_eq!(
                r["passed"], true,
                "{what} on {} (seed {seed}): {}",
                r["adapter"], r["error_message"]
            );
            assert!(
                r["max_abs_err"].as_f64().is_some_and(f64::is_finite),
                "{what}: {r}"
            );
            assert!(!r["tolerance"].as_str().unwrap().is_empty());
            if r["op_name"] != "posthoc_corrected" && r["op_name"] != "posthoc_topk" {
                assert!(
                    r["time_us"].as_f64().is_some_and(|t| t > 0.0),
                    "{what}: {r}"
                );
                assert!(
                    r["bandwidth_gb_s"].as_f64().is_some_and(|b| b > 0.0),
                    "{what}: {r}"
                );
            }
        } else {
            assert_eq!(r["passed"], false);
            assert!(
                !r["error_message"].as_str().unwrap().is_empty(),
                "{what}: unsupported without a reason"
            );
        }
    }
    for a in listed {
        assert_eq!(a["ok"], true, "{a}");
        assert!(a["passed"].as_u64().unwrap() > 0);
    }
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "release binaries never read LOGIT_ADJUST_FAULT (run `cargo test`, as CI does)"
)]
fn a_kernel_one_ulp_off_fails_check_and_names_the_cell() {
    adapter_count();
    let out = Command::new(env!("CARGO_BIN_EXE_logit-adjust"))
        .args(["check", "--quick", "--csv", "--runs", "0", "--adapter", "0"])
        .env("LOGIT_ADJUST_FAULT", "grad-ulp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let cell = "xent_fused(type=f32,layout=gpu,shape=ignored_labels)";
    assert!(
        stderr.contains(&format!("{cell} 200x50: FAIL grad[0]")),
        "{stderr}"
    );
    assert!(
        stderr.contains("must be exactly 0 (ignored row)"),
        "{stderr}"
    );
    // Only the gradient cells of ignored labels fail: elsewhere one ulp is
    // within the tolerance, by design.
    let header: Vec<&str> = stdout.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (params, passed, supported) = (col("op_params"), col("passed"), col("supported"));
    let mut failed = Vec::new();
    for line in stdout.lines().skip(1) {
        let f = split_csv(line);
        assert_eq!(f.len(), header.len(), "{line}");
        if f[supported] == "true" && f[passed] == "false" {
            failed.push(f[params].clone());
        }
    }
    failed.sort();
    failed.dedup();
    for f in &failed {
        assert!(
            f.starts_with("xent_fused(") || f.starts_with("xent_backward("),
            "{f} failed"
        );
        assert!(f.ends_with("shape=ignored_labels)"), "{f} failed");
    }
    assert!(failed.contains(&cell.to_string()), "{failed:?}");
}

/// One CSV line's fields (quoted fields may hold commas and doubled quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            _ => fields.last_mut().unwrap().push(ch),
        }
    }
    fields
}

#[test]
fn bench_takes_shapes_and_refuses_bad_ones() {
    adapter_count();
    let (code, stdout, stderr) = run(&["bench", "--shapes", "3001x7,1x1", "--csv", "--reps", "1"]);
    assert_eq!(code, 0, "{stderr}");
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let shapes: std::collections::BTreeSet<(String, String)> = lines
        .map(split_csv)
        .map(|r| (r[col("n")].clone(), r[col("c")].clone()))
        .collect();
    let want = [("1", "1"), ("3001", "7")].map(|(n, c)| (n.to_string(), c.to_string()));
    assert_eq!(shapes, want.into_iter().collect(), "{stdout}");
    for (shape, says) in [
        ("3001x0", "classes \"0\" is not a positive integer"),
        ("3001", "expected rows x classes"),
        ("x7", "rows \"\" is not a positive integer"),
        ("100000x100000", "pass the device's largest buffer"),
    ] {
        let (code, _, stderr) = run(&["bench", "--shapes", shape]);
        assert_ne!(code, 0, "{shape} accepted");
        assert!(stderr.contains(says), "{shape}: {stderr}");
        assert!(!stderr.contains("panicked"), "{shape}: {stderr}");
    }
}

#[test]
fn bench_csv_is_one_row_per_measurement() {
    adapter_count();
    let (code, stdout, stderr) = run(&[
        "bench",
        "--quick",
        "--classes",
        "10",
        "--csv",
        "--reps",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for want in [
        "timestamp",
        "git_commit",
        "version",
        "adapter",
        "driver",
        "dtype",
        "mode",
        "p20_ms",
        "p50_ms",
        "p80_ms",
        "bytes",
        "max_err",
    ] {
        assert!(header.contains(&want), "{want} missing from {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<String>> = lines.map(split_csv).collect();
    assert!(rows.len() >= 4, "{stdout}");
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{r:?}");
        let num = |name: &str| r[col(name)].parse::<f64>().unwrap();
        assert!(
            num("p20_ms") <= num("p50_ms") && num("p50_ms") <= num("p80_ms"),
            "{r:?}"
        );
        assert!(num("bytes") > 0.0);
        // Half logits only in fused and backward rows of their own.
        let dtype = r[col("dtype")].as_str();
        let op = r[col("op")].as_str();
        assert!(
            dtype == "f32"
                || (["f16", "bf16"].contains(&dtype) && ["fused", "backward"].contains(&op))
                || (dtype == "f16-packed" && op == "fused"),
            "{r:?}"
        );
        assert!(r[col("timestamp")].ends_with('Z'));
        assert!(!r[col("git_commit")].is_empty());
    }
    for (op, dtype) in [
        ("fused", "f16"),
        ("fused", "bf16"),
        ("backward", "f16"),
        ("backward", "bf16"),
    ] {
        let half = rows
            .iter()
            .find(|r| r[col("op")] == op && r[col("dtype")] == dtype)
            .unwrap_or_else(|| panic!("no {op} {dtype} row: {stdout}"));
        // The gradient in the half format: its rounding, no more.
        let err = half[col("max_err")].parse::<f64>().unwrap();
        assert!(err.is_finite() && err < 1e-3, "{half:?}");
    }
    let fused = rows
        .iter()
        .find(|r| r[col("op")] == "fused" && r[col("dtype")] == "f32")
        .unwrap();
    assert_eq!(fused[col("mode")], "full");
    assert!(
        fused[col("max_err")].parse::<f64>().unwrap() < 1e-5,
        "{fused:?}"
    );
    let post = rows.iter().find(|r| r[col("op")] == "posthoc16").unwrap();
    assert_eq!(post[col("max_err")], "0", "{post:?}");
}

#[test]
fn the_browser_export_is_complete() {
    adapter_count();
    let files = Files::new("webgpu-export");
    let dir = files.path("export");
    let (code, _, stderr) = run(&[
        "check",
        "--export-webgpu",
        dir.to_str().unwrap(),
        "--adapter",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cells = m["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 40);
    let shapes: std::collections::BTreeSet<(u64, u64)> = cells
        .iter()
        .map(|c| (c["rows"].as_u64().unwrap(), c["classes"].as_u64().unwrap()))
        .collect();
    assert!(shapes.iter().any(|&(_, c)| c == 1));
    assert!(shapes.iter().any(|&(_, c)| c == 1000));
    assert!(shapes.iter().any(|&(_, c)| c == 100_000));
    assert!(shapes.iter().any(|&(n, _)| n > 65_535));
    for c in cells {
        let blob = std::fs::metadata(dir.join(c["blob"].as_str().unwrap()))
            .unwrap()
            .len();
        for b in c["buffers"].as_array().unwrap() {
            if let Some(init) = b["init"].as_array() {
                let (at, len) = (init[0].as_u64().unwrap(), init[1].as_u64().unwrap());
                assert!(
                    at + len <= blob && len <= b["size"].as_u64().unwrap(),
                    "{}",
                    c["label"]
                );
            }
        }
        for s in c["steps"].as_array().unwrap() {
            if let Some(shader) = s["shader"].as_str() {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("shaders")
                    .join(shader);
                assert!(path.is_file(), "{shader}");
            }
        }
        assert!(!c["expects"].as_array().unwrap().is_empty());
    }
}
