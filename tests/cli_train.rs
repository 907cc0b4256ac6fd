//! `train` choosing on held-out data from the command line: the split, the
//! stopping epoch and tau chosen on validation, the curve in the JSON and
//! the picture, and the flags that only make sense together.

mod common;

#[path = "common/cli.rs"]
mod cli_common;

use cli_common::{assert_one_line_error, f32s, i64s, read_f32_npy, run, write_files, Files};
use common::Rng;
use logit_adjust::synthetic::{GaussianMixture, Rng as DataRng};
use serde_json::Value;

const COUNTS: [usize; 5] = [300, 120, 40, 12, 1];

/// A long-tailed training set (its last class has a single row), a
/// balanced test set and a validation set, as files.
fn files(f: &Files, seed: u64) {
    let mut rng = DataRng::new(seed);
    let mixture = GaussianMixture::random(5, 4, 1.0, &mut rng);
    let train = mixture.sample(&COUNTS, &mut rng);
    let test = mixture.sample(&[40; 5], &mut rng);
    let val = mixture.sample(&[20; 5], &mut rng);
    let n = train.labels.len();
    let mut bad_val = val.labels.clone();
    bad_val[3] = 5;
    write_files(
        f,
        &[
            ("x.npy", "<f4", vec![n, 4], f32s(&train.features)),
            ("y.npy", "<i8", vec![n], i64s(&train.labels)),
            ("xt.npy", "<f4", vec![200, 4], f32s(&test.features)),
            ("yt.npy", "<i8", vec![200], i64s(&test.labels)),
            ("xv.npy", "<f4", vec![100, 4], f32s(&val.features)),
            ("yv.npy", "<i8", vec![100], i64s(&val.labels)),
            ("yv_bad.npy", "<i8", vec![100], i64s(&bad_val)),
            ("xv_wide.npy", "<f4", vec![20, 5], f32s(&[0.5; 100])),
        ],
    );
}

fn base(f: &Files) -> Vec<String> {
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    [
        "train",
        "--train-features",
        &p("x.npy"),
        "--train-labels",
        &p("y.npy"),
        "--test-features",
        &p("xt.npy"),
        "--test-labels",
        &p("yt.npy"),
    ]
    .map(String::from)
    .to_vec()
}

fn train_json(args: &[String], what: &str) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{what}: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

#[test]
fn train_chooses_the_epoch_and_tau_on_a_stratified_split() {
    let f = Files::new("train-validation");
    let seed = Rng::fresh().seed();
    files(&f, seed);
    let what = format!("seed {seed}");
    let mut args = base(&f);
    let extra = "--val-fraction 0.2 --early-stop 5 --epochs 80 --taus 0.5,1,2 --json";
    args.extend(extra.split(' ').map(String::from));
    for (flag, file) in [("--plot", "curve.svg"), ("--out-split", "split.npy")] {
        args.extend([flag.to_string(), f.path(file).to_str().unwrap().into()]);
    }
    let v = train_json(&args, &what);
    // The split: every class with 2 or more rows on both sides; the class
    // with one row stays in training, and the report says so.
    let validation = &v["validation"];
    assert_eq!(
        validation["unsplit_classes"],
        serde_json::json!([4]),
        "{what}"
    );
    let held = [60, 24, 8, 2, 0];
    assert_eq!(validation["rows"], held.iter().sum::<usize>(), "{what}");
    assert_eq!(v["n_train"], COUNTS.iter().sum::<usize>() - 94, "{what}");
    let split = std::fs::read(f.path("split.npy")).unwrap();
    let rows: Vec<i64> = bytemuck::pod_collect_to_vec(&split[split.len() - 94 * 8..]);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{what}: {rows:?}");
    // One run per tau, the chosen one the lowest validation balanced error
    // (the first of equals); its curve evaluated every epoch.
    let taus = v["taus"].as_array().unwrap();
    assert_eq!(taus.len(), 3);
    let errors: Vec<f64> = taus
        .iter()
        .map(|t| t["validation_balanced_error"].as_f64().unwrap())
        .collect();
    let chosen = (0..3)
        .min_by(|&a, &b| errors[a].total_cmp(&errors[b]))
        .unwrap();
    assert_eq!(v["chosen_tau"], taus[chosen]["tau"], "{what}: {errors:?}");
    let curve = v["curve"].as_array().unwrap();
    assert_eq!(curve.len() as u64, v["epochs_run"].as_u64().unwrap());
    let kept = v["chosen_epoch"].as_u64().unwrap() as usize;
    assert_eq!(
        curve[kept - 1]["validation_balanced_error"],
        v["validation_balanced_error"],
        "{what}"
    );
    if v["stopped_early"].as_bool().unwrap() {
        assert_eq!(
            curve.len(),
            kept + 5,
            "{what}: 5 evaluations past the kept epoch"
        );
    }
    // The picture: axes with units, each tau's curve, the kept epoch marked.
    let svg = std::fs::read_to_string(f.path("curve.svg")).unwrap();
    for text in [
        "<svg",
        "epoch",
        "mean training loss (nats)",
        "validation balanced error (%)",
        "validation balanced error, tau 0.5",
        "validation balanced error, tau 2",
        &format!(
            "kept: epoch {kept}, tau {}",
            v["chosen_tau"].as_f64().unwrap()
        ),
    ] {
        assert!(svg.contains(text), "{what}: {text:?} missing from the SVG");
    }
}

#[test]
fn train_with_validation_files_keeps_the_best_evaluation() {
    let f = Files::new("train-validation-files");
    files(&f, 11);
    let mut args = base(&f);
    for (flag, file) in [
        ("--val-features", "xv.npy"),
        ("--val-labels", "yv.npy"),
        ("--out-logits", "logits.npy"),
        ("--out-val-logits", "val_logits.npy"),
        ("--plot-dir", "plots"),
    ] {
        args.extend([flag.to_string(), f.path(file).to_str().unwrap().into()]);
    }
    args.extend(["--epochs", "30", "--eval-every", "4", "--json"].map(String::from));
    let v = train_json(&args, "validation files");
    let curve = v["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 30, "no --early-stop: every epoch runs");
    let evaluated: Vec<u64> = curve
        .iter()
        .filter(|e| !e["validation_balanced_error"].is_null())
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, vec![4, 8, 12, 16, 20, 24, 28, 30]);
    let kept = v["chosen_epoch"].as_u64().unwrap();
    assert!(
        kept >= 4,
        "evaluations before the warm-up (epoch 3) are not kept"
    );
    assert_eq!(v["validation"]["source"], "validation files");
    let (_, logits) = read_f32_npy(&f.path("logits.npy"));
    assert_eq!(logits.len(), 200 * 5);
    let (header, val_logits) = read_f32_npy(&f.path("val_logits.npy"));
    assert!(header.replace(' ', "").contains("(100,5"), "{header}");
    assert_eq!(val_logits.len(), 100 * 5);
    for (picture, texts) in [
        (
            "learning-curve.svg",
            &["validation balanced error (%)", "kept: epoch"][..],
        ),
        (
            "sweep.svg",
            &["the tau sweep on the validation set", "chosen tau"][..],
        ),
        (
            "classes.svg",
            &[
                "training examples (log scale)",
                "trained with --loss logit-adjusted",
            ][..],
        ),
    ] {
        let svg = std::fs::read_to_string(f.path("plots").join(picture)).unwrap();
        for text in texts {
            assert!(svg.contains(text), "{picture}: {text:?} missing");
        }
    }
    // Without a validation set: the last epoch, as before.
    let mut plain = base(&f);
    plain.extend(["--epochs", "7", "--json"].map(String::from));
    let v = train_json(&plain, "no validation");
    assert_eq!(v["chosen_epoch"], 7);
    assert!(v["validation"].is_null() && v["validation_balanced_error"].is_null());
}

#[test]
fn train_flags_that_need_each_other_are_refused() {
    let f = Files::new("train-validation-flags");
    files(&f, 5);
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--early-stop".into(), "5".into()],
            "--early-stop needs a validation set",
        ),
        (
            vec!["--taus".into(), "1,2".into()],
            "--taus needs a validation set",
        ),
        (
            vec!["--val-fraction", "0.2", "--taus", "1,2", "--loss", "ce"]
                .into_iter()
                .map(String::from)
                .collect(),
            "--taus needs a loss with a tau",
        ),
        (
            vec!["--val-fraction".into(), "1.5".into()],
            "--val-fraction must be in (0, 1)",
        ),
        (
            vec!["--drw-epoch", "2", "--drw-beta", "1"]
                .into_iter()
                .map(String::from)
                .collect(),
            "--drw-epoch: invalid argument: beta must be in [0, 1)",
        ),
        (
            vec!["--drw-epoch".into(), "0".into()],
            "the re-weighting epoch counts from 1",
        ),
        (
            vec![
                "--val-features".into(),
                p("xv.npy"),
                "--val-labels".into(),
                p("yv_bad.npy"),
            ],
            "label out of range: validation label 5 at row 3",
        ),
        (
            vec![
                "--val-features".into(),
                p("xv_wide.npy"),
                "--val-labels".into(),
                p("yv.npy"),
            ],
            "shape mismatch",
        ),
        (
            vec![
                "--val-fraction".into(),
                "0.2".into(),
                "--plot".into(),
                p("y.npy"),
            ],
            "is also an input",
        ),
    ];
    for (extra, expect) in cases {
        let mut args = base(&f);
        args.extend(extra.iter().cloned());
        args.extend(["--epochs".into(), "2".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, expect, &extra.join(" "));
    }
    // What the argument parser refuses, in its own words.
    for (extra, expect) in [
        (
            vec!["--out-split".to_string(), p("s.npy")],
            "--val-fraction",
        ),
        (vec!["--eval-every".into(), "0".into()], "at least 1"),
        (
            vec![
                "--val-fraction".into(),
                "0.2".into(),
                "--val-features".into(),
                p("xv.npy"),
                "--val-labels".into(),
                p("yv.npy"),
            ],
            "cannot be used with",
        ),
    ] {
        let mut args = base(&f);
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run(&args);
        assert_ne!(code, 0, "{extra:?}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{extra:?}: {stderr}"
        );
    }
    assert!(!f.path("s.npy").exists());
}

#[test]
fn train_re_weights_from_the_drw_epoch() {
    // LDAM-DRW from the command line: a switch after the last epoch is no
    // switch at all (the same seed gives the same bits), one at epoch 2 of
    // 3 changes the model.
    let f = Files::new("train-drw");
    files(&f, 9);
    let logits_of = |extra: &[&str], out: &str| {
        let mut args = base(&f);
        let path = f.path(out).to_str().unwrap().to_string();
        args.extend(
            [
                "--loss",
                "ldam",
                "--epochs",
                "3",
                "--json",
                "--out-logits",
                &path,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        train_json(&args, &extra.join(" "));
        read_f32_npy(&f.path(out)).1
    };
    let plain = logits_of(&[], "plain.npy");
    let late = logits_of(&["--drw-epoch", "4"], "late.npy");
    let drw = logits_of(&["--drw-epoch", "2"], "drw.npy");
    assert_eq!(plain, late);
    assert_ne!(plain, drw);
}

#[test]
fn train_on_half_logits_reports_the_format_and_refuses_an_unknown_one() {
    let f = Files::new("train-halves");
    let seed = Rng::fresh().seed();
    files(&f, seed);
    let mut runs = Vec::new();
    for format in ["f32", "f16", "bf16"] {
        let mut args = base(&f);
        args.extend(["--logits", format, "--epochs", "20", "--json"].map(String::from));
        let v = train_json(&args, &format!("--logits {format} (seed {seed})"));
        assert_eq!(v["logits"], format, "seed {seed}");
        runs.push(v["balanced_error"].as_f64().unwrap());
    }
    // The same data and shuffles: halves move the logits by a rounding,
    // not the model (a test error step is 1/40 of one class's recall).
    for (k, format) in ["f16", "bf16"].iter().enumerate() {
        assert!(
            (runs[k + 1] - runs[0]).abs() <= 0.05,
            "{format}: balanced error {} vs f32 {} (seed {seed})",
            runs[k + 1],
            runs[0]
        );
    }
    let mut args = base(&f);
    args.extend(["--logits", "f64"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // An argument error: clap's usage hint follows the line naming it.
    let (code, _, stderr) = run(&args);
    assert_eq!(code, 2, "--logits f64: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("\"f64\" is not a logits format"),
        "--logits f64: {stderr}"
    );
}
