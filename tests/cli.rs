//! The command-line tool end to end: files in, numbers and files out, and
//! every kind of bad input refused with one line and no output file.

mod common;

use std::path::Path;
use std::process::Command;

use common::Rng;
use logit_adjust::{reference, ClassPrior, LossSpec, Reduction};

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::*;

/// `train` with a bad test set or loss: one line, no output file.
fn train_refuses_bad_input(f: &Files, base: &dyn Fn(&str, &str) -> Vec<String>) {
    for (xt, yt, extra, expect) in [
        ("xt_wide.npy", "yt.npy", "", "shape mismatch"),
        ("xt.npy", "yt_neg.npy", "", "label out of range"),
        ("xt.npy", "yt.npy", "nonsense", "unknown loss"),
    ] {
        let mut args = base(xt, yt);
        if !extra.is_empty() {
            args.extend(["--loss".into(), extra.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run(&args);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_ne!(code, 0);
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(expect), "{stderr}");
        assert!(!f.path("out.npy").exists());
    }
}

fn json_number(json: &str, key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
}

#[test]
fn loss_matches_the_reference_on_gpu_and_cpu() {
    let f = Files::new("loss");
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (37, 53);
    let logits = rng.logits(n * c, 20.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let counts: Vec<i64> = rng.counts(c, 50.0).iter().map(|&x| x as i64).collect();
    write_npy(
        &f.path("l.npy"),
        "<f4",
        &[n, c],
        bytemuck::cast_slice(&logits),
    );
    let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    write_npy(&f.path("y.npy"), "<i4", &[n], bytemuck::cast_slice(&l32));
    write_npy(&f.path("n.npy"), "<i8", &[c], bytemuck::cast_slice(&counts));

    let prior =
        ClassPrior::from_counts(&counts.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap();
    for (tau, reduction, eps) in [
        ("1.0", "mean", "0"),
        ("2.5", "sum", "0.1"),
        ("0", "weighted-mean", "0"),
        ("1", "none", "0.05"),
    ] {
        let spec = LossSpec::logit_adjusted(&prior, tau.parse().unwrap())
            .unwrap()
            .with_reduction(reduction.parse::<Reduction>().unwrap())
            .with_label_smoothing(eps.parse().unwrap());
        let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
        for cpu in [false, true] {
            let (gl, gg) = (f.path("out_l.npy"), f.path("out_g.npy"));
            let (lp, yp, np) = (f.path("l.npy"), f.path("y.npy"), f.path("n.npy"));
            let mut args = vec![
                "loss",
                "--logits",
                lp.to_str().unwrap(),
                "--labels",
                yp.to_str().unwrap(),
                "--class-counts",
                np.to_str().unwrap(),
                "--tau",
                tau,
                "--reduction",
                reduction,
                "--label-smoothing",
                eps,
                "--out-loss",
                gl.to_str().unwrap(),
                "--out-grad",
                gg.to_str().unwrap(),
                "--json",
            ];
            if cpu {
                args.push("--cpu");
            }
            let (code, stdout, stderr) = run(&args);
            let what = format!("tau={tau} {reduction} eps={eps} cpu={cpu} seed={seed}");
            assert_eq!(code, 0, "{what}: {stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(v["n"], n);
            assert_eq!(v["c"], c);
            assert!(v["adapter"].is_string() && v["backend"].is_string());
            match want.loss {
                Some(w) => {
                    let got = json_number(&stdout, "loss");
                    assert!(
                        (got - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{what}: {got} vs {w}"
                    );
                }
                None => assert!(v["loss"].is_null(), "{what}"),
            }
            let (header, rows) = read_f32_npy(&gl);
            assert!(
                header.replace(" ", "").contains(&format!("({n},)")),
                "{header}"
            );
            for (g, w) in rows.iter().zip(&want.per_row) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{what}: row {g} vs {w}"
                );
            }
            let (header, grad) = read_f32_npy(&gg);
            assert!(
                header
                    .replace(" ", "")
                    .replace(",)", ")")
                    .contains(&format!("({n},{c})")),
                "{header}"
            );
            let wg = want.grad.as_ref().unwrap();
            let tol = 1e-6 + 1e-5 * common::max_abs(wg);
            assert_eq!(grad.len(), wg.len());
            for (g, w) in grad.iter().zip(wg) {
                assert!((*g as f64 - w).abs() <= tol, "{what}: grad {g} vs {w}");
            }
        }
    }
}

/// The files `bad_input_is_one_line_non_zero_and_writes_nothing` feeds `loss`.
fn write_bad_loss_inputs(f: &Files) {
    let (n, c) = (4, 3);
    let logits = vec![0.25f32; n * c];
    write_npy(
        &f.path("l.npy"),
        "<f4",
        &[n, c],
        bytemuck::cast_slice(&logits),
    );
    write_npy(
        &f.path("l64.npy"),
        "<f8",
        &[n, c],
        bytemuck::cast_slice(&vec![0.25f64; n * c]),
    );
    write_npy(
        &f.path("l1d.npy"),
        "<f4",
        &[n * c],
        bytemuck::cast_slice(&logits),
    );
    write_npy(
        &f.path("y.npy"),
        "<i8",
        &[n],
        bytemuck::cast_slice(&[0i64, 1, 2, 1]),
    );
    write_npy(
        &f.path("y_out.npy"),
        "<i8",
        &[n],
        bytemuck::cast_slice(&[0i64, 3, 2, 1]),
    );
    write_npy(
        &f.path("y_short.npy"),
        "<i8",
        &[3],
        bytemuck::cast_slice(&[0i64, 1, 2]),
    );
    write_npy(
        &f.path("y_float.npy"),
        "<f4",
        &[n],
        bytemuck::cast_slice(&[0f32, 1.0, 2.0, 1.0]),
    );
    write_npy(
        &f.path("n.npy"),
        "<i8",
        &[c],
        bytemuck::cast_slice(&[5i64, 3, 2]),
    );
    write_npy(
        &f.path("n_zero.npy"),
        "<i8",
        &[c],
        bytemuck::cast_slice(&[5i64, 0, 2]),
    );
    write_npy(
        &f.path("n_short.npy"),
        "<i8",
        &[2],
        bytemuck::cast_slice(&[5i64, 3]),
    );
    write_npy(
        &f.path("p_nan.npy"),
        "<f8",
        &[c],
        bytemuck::cast_slice(&[0.5f64, f64::NAN, 0.5]),
    );
    write_npy(
        &f.path("p_neg.npy"),
        "<f8",
        &[c],
        bytemuck::cast_slice(&[0.5f64, -0.1, 0.6]),
    );
    write_npy(
        &f.path("p_zero.npy"),
        "<f8",
        &[c],
        bytemuck::cast_slice(&[0.5f64, 0.0, 0.5]),
    );
    write_npy(
        &f.path("p_int.npy"),
        "<i8",
        &[c],
        bytemuck::cast_slice(&[1i64, 1, 1]),
    );
    std::fs::write(f.path("garbage.npy"), b"not an npy file").unwrap();
}

#[test]
fn bad_input_is_one_line_non_zero_and_writes_nothing() {
    let f = Files::new("bad");
    write_bad_loss_inputs(&f);
    // logits, labels, the prior's flag and file | what the error says
    let cases = [
        "l.npy y_out.npy --class-counts n.npy | label out of range",
        "l.npy y_short.npy --class-counts n.npy | shape mismatch",
        "l.npy y.npy --class-counts n_short.npy | shape mismatch",
        "l.npy y.npy --class-counts n_zero.npy | zero count",
        "l.npy y.npy --prior p_nan.npy | not finite",
        "l.npy y.npy --prior p_neg.npy | negative",
        "l.npy y.npy --prior p_zero.npy | zero probability",
        "l.npy y.npy --prior p_int.npy | expected a float vector",
        "l64.npy y.npy --class-counts n.npy | expected float32",
        "l1d.npy y.npy --class-counts n.npy | expected float32",
        "l.npy y_float.npy --class-counts n.npy | expected int32 or int64",
        "garbage.npy y.npy --class-counts n.npy | not a valid .npy",
        "missing.npy y.npy --class-counts n.npy | missing.npy",
    ];
    for case in cases {
        let (files, expect) = case.split_once(" | ").unwrap();
        let [logits, labels, flag, prior]: [&str; 4] =
            files.split(' ').collect::<Vec<_>>().try_into().unwrap();
        for cpu in [false, true] {
            let (gl, gg) = (f.path("out_l.npy"), f.path("out_g.npy"));
            let p = |x: &str| f.path(x).to_str().unwrap().to_string();
            let mut args = vec![
                "loss".to_string(),
                "--logits".into(),
                p(logits),
                "--labels".into(),
                p(labels),
                flag.into(),
                p(prior),
                "--out-loss".into(),
                p("out_l.npy"),
                "--out-grad".into(),
                p("out_g.npy"),
            ];
            if cpu {
                args.push("--cpu".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let what = format!("{logits} {labels} {prior} cpu={cpu}");
            assert_one_line_error(&args, expect, &what);
            assert!(
                !gl.exists() && !gg.exists(),
                "{what}: an output file was written"
            );
            assert!(!f.path("out_l.npy.partial").exists());
        }
    }
}

#[test]
fn info_lists_the_adapters() {
    let (code, stdout, stderr) = run(&["info", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let adapters = v["adapters"].as_array().unwrap();
    assert!(!adapters.is_empty());
    for a in adapters {
        assert!(a["name"].is_string() && a["backend"].is_string());
        assert!(
            a["limits"]["max_storage_buffer_binding_size"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
}

/// `posthoc --json`'s results equal the reference's reports exactly.
fn assert_reports(v: &serde_json::Value, reports: &[logit_adjust::Report], c: usize, what: &str) {
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), reports.len(), "{what}");
    for (r, w) in results.iter().zip(reports) {
        assert_eq!(
            r["balanced_error"].as_f64().unwrap(),
            w.balanced_error,
            "{what}"
        );
        assert_eq!(r["accuracy"].as_f64().unwrap(), w.accuracy, "{what}");
        assert_eq!(
            r["worst_class_recall"].as_f64().unwrap(),
            w.worst_class_recall,
            "{what}"
        );
        assert_eq!(r["many"].as_f64(), w.many, "{what}");
        assert_eq!(r["medium"].as_f64(), w.medium, "{what}");
        assert_eq!(r["few"].as_f64(), w.few, "{what}");
        assert_eq!(r["per_class_recall"].as_array().unwrap().len(), c);
    }
}

fn read_i64_npy(path: &Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + len]);
    assert!(header.contains("'<i8'"), "{header}");
    bytemuck::pod_collect_to_vec::<u8, i64>(&bytes[10 + len..])
}

#[test]
fn posthoc_sweep_matches_the_reference_exactly() {
    let f = Files::new("posthoc");
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (2000, 12);
    let counts: Vec<f64> = rng.counts(c, 100.0);
    let train_labels: Vec<i64> = counts
        .iter()
        .enumerate()
        .flat_map(|(k, &m)| std::iter::repeat_n(k as i64, m as usize))
        .collect();
    let mut logits = rng.logits(n * c, 4.0);
    logits[5] = f32::INFINITY;
    logits[c + 3] = f32::NEG_INFINITY;
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    write_npy(
        &f.path("l.npy"),
        "<f4",
        &[n, c],
        bytemuck::cast_slice(&logits),
    );
    write_npy(&f.path("y.npy"), "<i8", &[n], bytemuck::cast_slice(&labels));
    write_npy(&f.path("n.npy"), "<f8", &[c], bytemuck::cast_slice(&counts));
    write_npy(
        &f.path("t.npy"),
        "<i8",
        &[train_labels.len()],
        bytemuck::cast_slice(&train_labels),
    );
    let prior = ClassPrior::from_counts(&counts).unwrap();
    let taus: Vec<f64> = (0..=8).map(|k| k as f64 * 0.25).collect();
    let want_pred = reference::predict(&prior, &taus, &logits).unwrap();
    let want = reference::class_counts(&labels, c, &want_pred).unwrap();
    let reports: Vec<_> = (0..taus.len())
        .map(|t| want.report(t, Some(&counts)).unwrap())
        .collect();
    let best = logit_adjust::Select::BalancedError.best(&reports);

    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    for (source, file) in [("--class-counts", "n.npy"), ("--train-labels", "t.npy")] {
        for cpu in [false, true] {
            let mut args = vec![
                "posthoc".to_string(),
                "--logits".into(),
                p("l.npy"),
                "--labels".into(),
                p("y.npy"),
                source.into(),
                p(file),
                "--tau-range".into(),
                "0:2:0.25".into(),
                "--json".into(),
                "--out-pred".into(),
                p("pred.npy"),
            ];
            if cpu {
                args.push("--cpu".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, stdout, stderr) = run(&args);
            let what = format!("{source} cpu={cpu} seed={seed}");
            assert_eq!(code, 0, "{what}: {stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_reports(&v, &reports, c, &what);
            assert_eq!(v["best_tau"].as_f64().unwrap(), taus[best], "{what}");
            let pred = read_i64_npy(&f.path("pred.npy"));
            let want_best: Vec<i64> = want_pred.by_tau[best].iter().map(|&x| x as i64).collect();
            assert_eq!(pred, want_best, "{what}");
            std::fs::remove_file(f.path("pred.npy")).unwrap();
        }
    }
    posthoc_with_a_prior_alone(&f, &prior, c);
}

/// A prior alone: no shot groups (null), and the plain table works.
fn posthoc_with_a_prior_alone(f: &Files, prior: &ClassPrior, c: usize) {
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let probs: Vec<f64> = prior.probabilities().to_vec();
    write_npy(&f.path("p.npy"), "<f8", &[c], bytemuck::cast_slice(&probs));
    let (code, stdout, stderr) = run(&[
        "posthoc",
        "--logits",
        &p("l.npy"),
        "--labels",
        &p("y.npy"),
        "--prior",
        &p("p.npy"),
        "--taus",
        "0,1",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["results"][0]["many"].is_null() && v["results"][1]["few"].is_null());
    let (code, stdout, _) = run(&[
        "posthoc",
        "--logits",
        &p("l.npy"),
        "--labels",
        &p("y.npy"),
        "--prior",
        &p("p.npy"),
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("chosen tau: 1"), "{stdout}");
}

#[test]
fn posthoc_bad_input_is_one_line_and_writes_nothing() {
    let f = Files::new("posthoc-bad");
    let (n, c) = (3, 2);
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    write_files(
        &f,
        &[
            (
                "l.npy",
                "<f4",
                vec![n, c],
                f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            ),
            (
                "l_nan.npy",
                "<f4",
                vec![n, c],
                f32s(&[0.0, f32::NAN, 2.0, 3.0, 4.0, 5.0]),
            ),
            ("y.npy", "<i4", vec![n], i32s(&[0, 1, 1])),
            ("y_bad.npy", "<i4", vec![n], i32s(&[0, 2, 1])),
            ("y_ignored.npy", "<i4", vec![n], i32s(&[0, -100, 1])),
            ("n.npy", "<i8", vec![c], i64s(&[10, 2])),
            ("n_zero.npy", "<i8", vec![c], i64s(&[10, 0])),
        ],
    );
    // the arguments besides the logits (files are in the test folder) | the error
    let cases = [
        "--labels y_bad.npy --class-counts n.npy | label out of range",
        "--labels y_ignored.npy --class-counts n.npy | label out of range",
        "--labels y.npy --class-counts n_zero.npy | zero count",
        "--labels y.npy --class-counts n.npy --tau-range 0:100:1 | at most 64",
        "--labels y.npy --class-counts n.npy --tau-range 2:1:0.5 | start:stop:step",
        "--labels y.npy --train-labels y_bad.npy | training label out of range",
    ];
    for case in cases {
        let (extra, expect) = case.split_once(" | ").unwrap();
        let extra: Vec<String> = extra
            .split(' ')
            .map(|w| {
                if w.ends_with(".npy") {
                    p(w)
                } else {
                    w.to_string()
                }
            })
            .collect();
        for logits in ["l.npy", "l_nan.npy"] {
            let mut args = vec![
                "posthoc".to_string(),
                "--logits".into(),
                p(logits),
                "--out-pred".into(),
                p("pred.npy"),
            ];
            args.extend(extra.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, _, stderr) = run(&args);
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
                .collect();
            assert_ne!(code, 0, "{args:?}");
            assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
            let expect = if logits == "l_nan.npy"
                && !expect.contains("64")
                && !expect.contains("step")
                && !expect.contains("label")
                && !expect.contains("training")
            {
                "NaN"
            } else {
                expect
            };
            assert!(lines[0].starts_with("error: "), "{stderr}");
            assert!(
                lines[0].contains(expect) || (logits == "l_nan.npy" && lines[0].contains("NaN")),
                "{args:?}: {stderr}"
            );
            assert!(!f.path("pred.npy").exists(), "{args:?} wrote a file");
        }
    }
}

#[test]
fn train_reports_metrics_and_refuses_bad_input() {
    use logit_adjust::synthetic::{GaussianMixture, Rng as DataRng};
    let f = Files::new("train");
    let mut rng = DataRng::new(Rng::fresh().seed());
    let mixture = GaussianMixture::random(4, 3, 1.5, &mut rng);
    let train = mixture.sample(&[400, 100, 30, 8], &mut rng);
    let test = mixture.sample(&[50, 50, 50, 50], &mut rng);
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    write_npy(
        &f.path("x.npy"),
        "<f4",
        &[train.labels.len(), 3],
        bytemuck::cast_slice(&train.features),
    );
    write_npy(
        &f.path("y.npy"),
        "<i8",
        &[train.labels.len()],
        bytemuck::cast_slice(&train.labels),
    );
    write_npy(
        &f.path("xt.npy"),
        "<f4",
        &[test.labels.len(), 3],
        bytemuck::cast_slice(&test.features),
    );
    write_npy(
        &f.path("yt.npy"),
        "<i8",
        &[test.labels.len()],
        bytemuck::cast_slice(&test.labels),
    );
    write_npy(
        &f.path("xt_wide.npy"),
        "<f4",
        &[2, 4],
        bytemuck::cast_slice(&[0.0f32; 8]),
    );
    write_npy(
        &f.path("yt_neg.npy"),
        "<i8",
        &[test.labels.len()],
        bytemuck::cast_slice(&vec![-1i64; test.labels.len()]),
    );
    let base = |xt: &str, yt: &str| {
        vec![
            "train".to_string(),
            "--train-features".into(),
            p("x.npy"),
            "--train-labels".into(),
            p("y.npy"),
            "--test-features".into(),
            p(xt),
            "--test-labels".into(),
            p(yt),
            "--epochs".into(),
            "5".into(),
            "--out-logits".into(),
            p("out.npy"),
        ]
    };
    for loss in [
        "ce",
        "logit-adjusted",
        "balanced",
        "ldam",
        "equalised",
        "la-ldam",
    ] {
        let mut args = base("xt.npy", "yt.npy");
        args.extend(["--loss".into(), loss.into(), "--json".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 0, "{loss}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        for key in [
            "loss",
            "accuracy",
            "balanced_error",
            "worst_class_recall",
            "many",
            "medium",
            "few",
            "per_class_recall",
        ] {
            assert!(v.get(key).is_some(), "{loss}: {key} missing");
        }
        let be = v["balanced_error"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&be), "{loss}: {be}");
        assert_eq!(v["per_class_recall"].as_array().unwrap().len(), 4);
        assert!(
            v["few"].as_f64().is_some(),
            "a class with 8 training rows is few-shot"
        );
        let (header, logits) = read_f32_npy(&f.path("out.npy"));
        assert!(header.replace(' ', "").contains("(200,4"), "{header}");
        assert_eq!(logits.len(), 800);
        std::fs::remove_file(f.path("out.npy")).unwrap();
    }
    train_refuses_bad_input(&f, &base);
}

/// Files in `dir` other than `keep`.
fn stray_files(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Four batches `x{k}.npy`, `y{k}.npy` and a uniform prior `p.npy` (the
/// logit-adjusted loss is then plain cross-entropy); their references.
fn transaction_inputs(f: &Files, rng: &mut Rng) -> Vec<logit_adjust::LossOutput<f64>> {
    let (n, c) = (64, 50);
    write_files(
        f,
        &[(
            "p.npy",
            "<f8",
            vec![c],
            bytemuck::cast_slice(&vec![1.0 / c as f64; c]).to_vec(),
        )],
    );
    (0..4)
        .map(|k| {
            let logits = rng.logits(n * c, 5.0);
            let labels: Vec<i64> = rng.labels(n, c, 0.0, -100);
            write_files(
                f,
                &[
                    (&format!("x{k}.npy"), "<f4", vec![n, c], f32s(&logits)),
                    (&format!("y{k}.npy"), "<i8", vec![n], i64s(&labels)),
                ],
            );
            let spec = LossSpec::cross_entropy(c).with_reduction(Reduction::Mean);
            reference::forward_backward(&spec, &logits, &labels).unwrap()
        })
        .collect()
}

/// `loss` on batch `k` writing the two outputs.
fn loss_args(f: &Files, k: usize, out_loss: &str, out_grad: &str) -> Vec<String> {
    let p = |name: &str| f.path(name).to_string_lossy().into_owned();
    vec![
        "loss".into(),
        "--logits".into(),
        p(&format!("x{k}.npy")),
        "--labels".into(),
        p(&format!("y{k}.npy")),
        "--reduction".into(),
        "mean".into(),
        "--prior".into(),
        p("p.npy"),
        "--out-loss".into(),
        out_loss.into(),
        "--out-grad".into(),
        out_grad.into(),
    ]
}

/// The inputs and outputs of the transaction tests, and a stray file.
const TRANSACTION_FILES: [&str; 12] = [
    "x0.npy",
    "y0.npy",
    "x1.npy",
    "y1.npy",
    "x2.npy",
    "y2.npy",
    "x3.npy",
    "y3.npy",
    "p.npy",
    "l.npy",
    "g.npy",
    "g.npy.partial",
];

#[test]
fn parallel_writers_leave_one_complete_result() {
    let f = Files::new("parallel");
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let wants = transaction_inputs(&f, &mut rng);
    // A stray file of the user's with the name the old tool used for its
    // temporary file: never touched.
    std::fs::write(f.path("g.npy.partial"), b"mine").unwrap();
    let (l, g) = (f.path("l.npy"), f.path("g.npy"));
    let (l, g) = (l.to_string_lossy(), g.to_string_lossy());
    // Four runs at once writing the same outputs: the files hold one run's
    // complete result (the loss rows and the gradient each from one run),
    // never a mix of rows.
    let handles: Vec<_> = (0..4)
        .map(|k| {
            Command::new(BIN)
                .args(loss_args(&f, k, &l, &g))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut h in handles {
        assert!(h.wait().unwrap().success(), "seed={seed}");
    }
    let (_, rows) = read_f32_npy(&f.path("l.npy"));
    let (_, grad) = read_f32_npy(&f.path("g.npy"));
    let close = |got: &[f32], want: &[f64]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(&a, &b)| (f64::from(a) - b).abs() <= 1e-5 * b.abs().max(1.0))
    };
    let whose_rows: Vec<usize> = (0..4)
        .filter(|&k| close(&rows, &wants[k].per_row))
        .collect();
    let whose_grad: Vec<usize> = (0..4)
        .filter(|&k| close(&grad, wants[k].grad.as_ref().unwrap()))
        .collect();
    assert_eq!(
        whose_rows.len(),
        1,
        "seed={seed}: loss rows match {whose_rows:?}"
    );
    assert_eq!(
        whose_grad.len(),
        1,
        "seed={seed}: gradient matches {whose_grad:?}"
    );
    assert_eq!(std::fs::read(f.path("g.npy.partial")).unwrap(), b"mine");
    assert_eq!(
        stray_files(&f.dir, &TRANSACTION_FILES),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_or_refused_run_writes_nothing() {
    let f = Files::new("refused");
    let mut rng = Rng::fresh();
    transaction_inputs(&f, &mut rng);
    let p = |name: &str| f.path(name).to_string_lossy().into_owned();
    // The second output's folder is missing, so the first output is not
    // written either, and no temporary file is left.
    let args = loss_args(&f, 0, &p("l.npy"), &p("missing/g.npy"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run(&args);
    assert_ne!(code, 0, "{stderr}");
    assert!(!f.path("l.npy").exists(), "a failed run left an output");
    assert_eq!(
        stray_files(&f.dir, &TRANSACTION_FILES),
        Vec::<String>::new()
    );
    // An output over an input, or two outputs on one file: refused before
    // any work, inputs intact.
    let before = std::fs::read(f.path("x0.npy")).unwrap();
    for (out_loss, out_grad, expect) in [
        (p("x0.npy"), p("g.npy"), "is also an input"),
        (p("l.npy"), p("l.npy"), "name the same file"),
        (
            p("l.npy"),
            format!("{}/./y0.npy", f.dir.display()),
            "is also an input",
        ),
    ] {
        let args = loss_args(&f, 0, &out_loss, &out_grad);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, expect, &format!("{out_loss} {out_grad}"));
    }
    assert_eq!(std::fs::read(f.path("x0.npy")).unwrap(), before);
    assert!(!f.path("l.npy").exists() && !f.path("g.npy").exists());
}

#[test]
fn messages_say_what_is_true() {
    let f = Files::new("messages");
    let (n, c) = (8, 4);
    let mut rng = Rng::fresh();
    let logits = rng.logits(n * c, 2.0);
    write_files(
        &f,
        &[
            ("x.npy", "<f4", vec![n, c], f32s(&logits)),
            ("y.npy", "<i8", vec![n], i64s(&[0, 1, 2, 3, 0, 1, 2, 1])),
            (
                "y_bad.npy",
                "<i8",
                vec![n],
                i64s(&[0, 1, 2, 3, 0, 1, 2, -100]),
            ),
            (
                "y_train.npy",
                "<i8",
                vec![n],
                i64s(&[0, 1, 2, 2, 0, 1, 2, 1]),
            ),
            ("counts0.npy", "<i8", vec![c], i64s(&[5, 3, 0, 1])),
            ("counts.npy", "<i8", vec![c], i64s(&[5, 3, 2, 1])),
            ("x3d.npy", "<f4", vec![2, 2, 2], f32s(&[0.0; 8])),
        ],
    );
    let p = |x: &str| f.path(x).to_string_lossy().into_owned();
    let posthoc = |labels: &str, counts: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["posthoc", "--logits", &p("x.npy"), "--labels", &p(labels)]
            .map(String::from)
            .to_vec();
        v.extend(["--class-counts".into(), p(counts)]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |args: Vec<String>, expect: &str, absent: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run(&a);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            absent.is_empty() || !stderr.contains(absent),
            "{args:?}: {stderr}"
        );
    };
    // A tiny step: the count it gives, not "0 taus".
    check(
        posthoc("y.npy", "counts.npy", &["--tau-range", "0:1:1e-300"]),
        "gives 1.000e300 taus",
        "gives 0 taus",
    );
    // Post-hoc has no ignore index: its label error mentions none.
    check(
        posthoc("y_bad.npy", "counts.npy", &[]),
        "valid: 0..4)",
        "ignore",
    );
    // A zero count names the flag that fixes it, which post-hoc has.
    check(
        posthoc("y.npy", "counts0.npy", &[]),
        "--count-smoothing 1",
        "",
    );
    let a = posthoc("y.npy", "counts0.npy", &["--count-smoothing", "1"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(run(&a).0, 0, "--count-smoothing on post-hoc");
    // train: features are (N, D); a class only in the test set is an
    // error, not a zero prior; 0 epochs are refused.
    let train = |x: &str, y: &str, yt: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--train-features",
            &p(x),
            "--train-labels",
            &p(y),
            "--test-features",
            &p("x.npy"),
            "--test-labels",
            &p(yt),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    check(
        train("x3d.npy", "y.npy", "y.npy", &[]),
        "shape (N, D)",
        "(N, C)",
    );
    check(
        train("x.npy", "y_train.npy", "y.npy", &[]),
        "test label 3 at row 3 is a class the training labels never show",
        "",
    );
    check(
        train("x.npy", "y.npy", "y.npy", &["--epochs", "0"]),
        "at least 1 epoch",
        "NaN",
    );
}

#[test]
fn stderr_holds_only_the_tools_own_lines() {
    // Without XDG_RUNTIME_DIR, opening the adapters prints nothing on
    // stderr (no lines of the graphics stack's own).
    let out = Command::new(BIN)
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
}

/// The data of a little-endian `.npy` file whose header names `descr`.
fn read_npy_of(path: &Path, descr: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + len]).into_owned();
    assert!(
        header.contains(&format!("'{descr}'")),
        "{}: {header}",
        path.display()
    );
    bytes[10 + len..].to_vec()
}

#[test]
fn loss_reads_float16_logits_and_writes_a_float16_gradient() {
    use half::f16;
    let f = Files::new("loss-f16");
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    // Odd N x C: the last gradient word is half used.
    let (n, c) = (41, 7);
    let logits: Vec<f16> = rng
        .logits(n * c, 10.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let widened: Vec<f32> = logits.iter().map(|x| x.to_f32()).collect();
    let labels = rng.labels(n, c, 0.1, -100);
    let counts: Vec<i64> = rng.counts(c, 50.0).iter().map(|&x| x as i64).collect();
    write_npy(
        &f.path("l.npy"),
        "<f2",
        &[n, c],
        bytemuck::cast_slice(&logits),
    );
    write_npy(&f.path("y.npy"), "<i8", &[n], bytemuck::cast_slice(&labels));
    write_npy(&f.path("n.npy"), "<i8", &[c], bytemuck::cast_slice(&counts));
    let prior =
        ClassPrior::from_counts(&counts.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0)
        .unwrap()
        .with_reduction(Reduction::Mean);
    let want = reference::forward_backward(&spec, &widened, &labels).unwrap();
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    for cpu in [false, true] {
        let mut args = vec![
            "loss".to_string(),
            "--logits".into(),
            p("l.npy"),
            "--labels".into(),
            p("y.npy"),
            "--class-counts".into(),
            p("n.npy"),
            "--out-grad".into(),
            p("g.npy"),
            "--json".into(),
        ];
        if cpu {
            args.push("--cpu".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&args);
        let what = format!("cpu={cpu} seed={seed}");
        assert_eq!(code, 0, "{what}: {stderr}");
        let w = want.loss.unwrap();
        let got = json_number(&stdout, "loss");
        assert!(
            (got - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}: {got} vs {w}"
        );
        let grad: Vec<f16> = bytemuck::pod_collect_to_vec(&read_npy_of(&f.path("g.npy"), "<f2"));
        let wg = want.grad.as_ref().unwrap();
        assert_eq!(grad.len(), wg.len(), "{what}");
        for (i, (g, w)) in grad.iter().zip(wg).enumerate() {
            let rounded = f16::from_f64(*w);
            // The reference path rounds once from f64; the GPU's f32 may
            // land one unit away.
            let slack = if cpu { 0 } else { 1 };
            let d = (i32::from(g.to_bits() as i16) - i32::from(rounded.to_bits() as i16)).abs();
            let same_sign = g.is_sign_negative() == rounded.is_sign_negative() || g.to_f32() == 0.0;
            assert!(
                same_sign && d <= slack,
                "{what}: element {i}: {g} vs {w} ({rounded})"
            );
        }
        std::fs::remove_file(f.path("g.npy")).unwrap();
    }
}

#[test]
fn posthoc_reads_float16_logits_as_their_exact_values() {
    use half::f16;
    let f = Files::new("posthoc-f16");
    let mut rng = Rng::fresh();
    let (n, c) = (500, 9);
    let logits: Vec<f16> = rng
        .logits(n * c, 4.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let widened: Vec<f32> = logits.iter().map(|x| x.to_f32()).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let counts: Vec<f64> = rng.counts(c, 100.0);
    write_npy(
        &f.path("h.npy"),
        "<f2",
        &[n, c],
        bytemuck::cast_slice(&logits),
    );
    write_npy(
        &f.path("w.npy"),
        "<f4",
        &[n, c],
        bytemuck::cast_slice(&widened),
    );
    write_npy(&f.path("y.npy"), "<i8", &[n], bytemuck::cast_slice(&labels));
    write_npy(&f.path("n.npy"), "<f8", &[c], bytemuck::cast_slice(&counts));
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let out = |file: &str| {
        let args = [
            "posthoc".to_string(),
            "--logits".into(),
            p(file),
            "--labels".into(),
            p("y.npy"),
            "--class-counts".into(),
            p("n.npy"),
            "--tau-range".into(),
            "0:2:0.5".into(),
            "--json".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 0, "{file} (seed {}): {stderr}", rng.seed());
        stdout
    };
    assert_eq!(out("h.npy"), out("w.npy"), "seed {}", rng.seed());
}
