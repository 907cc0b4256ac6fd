//! `posthoc` as an evaluator from the command line: tau chosen on a
//! validation set and scored on test, shifted and estimated test priors,
//! top-k and calibration, the pictures, and the flags refused.

mod common;

#[path = "common/cli.rs"]
mod cli_common;

use cli_common::{assert_one_line_error, f32s, f64s, i64s, run, write_files, Files};
use common::Rng;
use logit_adjust::synthetic::{exponential_profile, GaussianMixture, Rng as DataRng};
use logit_adjust::{
    expected_calibration_error, reference, top_k_accuracy, ClassPrior, Select, ShotGroups,
};
use serde_json::Value;

const C: usize = 6;
const TAUS: [f64; 5] = [0.0, 0.5, 1.0, 1.5, 2.0];

struct Data {
    prior: ClassPrior,
    counts: Vec<f64>,
    val: (Vec<f32>, Vec<i64>),
    test: (Vec<f32>, Vec<i64>),
}

/// Noisy Bayes logits of a long-tailed mixture on a balanced validation
/// set and a balanced test set, as files.
fn data(f: &Files, seed: u64) -> Data {
    let mut rng = DataRng::new(seed);
    let mixture = GaussianMixture::random(C, 4, 1.2, &mut rng);
    let counts: Vec<f64> = exponential_profile(C, 800, 80.0)
        .iter()
        .map(|&n| n as f64)
        .collect();
    let prior = ClassPrior::from_counts(&counts).unwrap();
    let mut set = |per: usize| {
        let s = mixture.sample(&[per; C], &mut rng);
        let mut logits = mixture.bayes_logits(&s.features, prior.probabilities());
        for l in &mut logits {
            *l += (0.6 * rng.normal()) as f32;
        }
        (logits, s.labels)
    };
    let (val, test) = (set(50), set(120));
    write_files(
        f,
        &[
            ("vl.npy", "<f4", vec![50 * C, C], f32s(&val.0)),
            ("vy.npy", "<i8", vec![50 * C], i64s(&val.1)),
            ("tl.npy", "<f4", vec![120 * C, C], f32s(&test.0)),
            ("ty.npy", "<i8", vec![120 * C], i64s(&test.1)),
            ("n.npy", "<f8", vec![C], f64s(&counts)),
            ("p_short.npy", "<f8", vec![C - 1], f64s(&[0.2; C - 1])),
            (
                "vl_wide.npy",
                "<f4",
                vec![2, C + 1],
                f32s(&[0.0; 2 * (C + 1)]),
            ),
            ("vy2.npy", "<i8", vec![2], i64s(&[0, 1])),
        ],
    );
    Data {
        prior,
        counts,
        val,
        test,
    }
}

fn posthoc(f: &Files, extra: &[&str]) -> Value {
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let taus = TAUS.map(|t| t.to_string()).join(",");
    let mut args: Vec<String> = [
        "posthoc",
        "--logits",
        &p("tl.npy"),
        "--labels",
        &p("ty.npy"),
    ]
    .into_iter()
    .chain(["--class-counts", &p("n.npy"), "--taus", &taus, "--json"])
    .map(String::from)
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn posthoc_chooses_tau_on_validation_and_scores_test_at_it() {
    let f = Files::new("posthoc-validation");
    let seed = Rng::fresh().seed();
    let d = data(&f, seed);
    let what = format!("seed {seed}");
    let (vl, vy) = (f.path("vl.npy"), f.path("vy.npy"));
    for (select, how) in [
        ("balanced-error", Select::BalancedError),
        ("worst-class", Select::WorstClass),
        ("accuracy", Select::Accuracy),
    ] {
        let v = posthoc(
            &f,
            &[
                "--val-logits",
                vl.to_str().unwrap(),
                "--val-labels",
                vy.to_str().unwrap(),
                "--select",
                select,
                "--top-k",
                "3",
            ],
        );
        // The reference: the sweep on validation, the choice, test at it.
        let p = reference::predict(&d.prior, &TAUS, &d.val.0).unwrap();
        let counts = reference::class_counts(&d.val.1, C, &p).unwrap();
        let val: Vec<_> = (0..TAUS.len())
            .map(|t| {
                counts
                    .report_with_groups(t, Some(&d.counts), ShotGroups::default())
                    .unwrap()
            })
            .collect();
        let chosen = how.best(&val);
        let tau = TAUS[chosen];
        assert_eq!(v["chosen_tau"].as_f64(), Some(tau), "{what}: {select}");
        assert_eq!(v["chosen_on"], "validation");
        assert_eq!(
            v["validation"]["results"].as_array().unwrap().len(),
            TAUS.len()
        );
        for (got, want) in v["validation"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&val)
        {
            assert_eq!(
                got["balanced_error"].as_f64(),
                Some(want.balanced_error),
                "{what}"
            );
        }
        let tp = reference::predict(&d.prior, &[tau], &d.test.0).unwrap();
        let tc = reference::class_counts(&d.test.1, C, &tp).unwrap();
        let test = tc.report(0, Some(&d.counts)).unwrap();
        assert_eq!(
            v["test"]["balanced_error"].as_f64(),
            Some(test.balanced_error),
            "{what}"
        );
        assert_eq!(
            v["test"]["accuracy"].as_f64(),
            Some(test.accuracy),
            "{what}"
        );
        let top = reference::top_k(&d.prior, tau, &d.test.0, 3).unwrap();
        let want_top = top_k_accuracy(&top, 3, &d.test.1).unwrap();
        assert_eq!(
            v["test"]["top_k_accuracy"],
            serde_json::json!(want_top),
            "{what}"
        );
        let z = reference::corrected(&d.prior, tau, &d.test.0).unwrap();
        let ece = expected_calibration_error(&z, &d.test.1, C, 15).unwrap();
        assert_eq!(v["test"]["ece"].as_f64(), Some(ece), "{what}");
        assert_eq!(v["test"]["top_k_accuracy"][0].as_f64(), Some(test.accuracy));
    }
    // Without a validation set the report says tau was tuned on the set itself.
    let v = posthoc(&f, &[]);
    assert!(v["chosen_on"]
        .as_str()
        .unwrap()
        .starts_with("evaluation set"));
    assert!(v["validation"].is_null());
    assert_eq!(v["results"].as_array().unwrap().len(), TAUS.len());
}

#[test]
fn posthoc_corrects_toward_a_known_or_estimated_test_prior() {
    let f = Files::new("posthoc-test-prior");
    let d = data(&f, 7);
    let shifted: Vec<f64> = (1..=C).map(|k| k as f64 / 21.0).collect();
    write_files(&f, &[("pt.npy", "<f8", vec![C], f64s(&shifted))]);
    let pt = f.path("pt.npy");
    let v = posthoc(&f, &["--test-prior", pt.to_str().unwrap()]);
    let test = ClassPrior::from_probabilities(&shifted).unwrap();
    let p = reference::predict_for_test_prior(&d.prior, Some(&test), &TAUS, &d.test.0).unwrap();
    let counts = reference::class_counts(&d.test.1, C, &p).unwrap();
    for (t, got) in v["results"].as_array().unwrap().iter().enumerate() {
        let want = counts.report(t, Some(&d.counts)).unwrap();
        assert_eq!(got["balanced_error"].as_f64(), Some(want.balanced_error));
    }
    assert_eq!(v["test_prior"]["source"], "--test-prior");
    assert_eq!(
        v["weighted_to_test_prior"],
        serde_json::json!(["prior_weighted_accuracy"])
    );
    assert!(v["test"]["prior_weighted_accuracy"].as_f64().is_some());
    // EM on a balanced test set: an estimate near uniform, its iterations given.
    let v = posthoc(&f, &["--estimate-test-prior"]);
    let est: Vec<f64> = v["test_prior"]["prior"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let cpu = reference::estimate_test_prior(&d.test.0, &d.prior, Default::default()).unwrap();
    let apart: f64 = est
        .iter()
        .zip(&cpu.prior)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / 2.0;
    assert!(
        apart <= 1e-4,
        "GPU EM {est:?} against the reference {:?}",
        cpu.prior
    );
    assert!(v["test_prior"]["iterations"].as_u64().unwrap() >= 1);
}

#[test]
fn posthoc_draws_the_sweep_and_the_classes_as_svg_and_png() {
    let f = Files::new("posthoc-plots");
    data(&f, 3);
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let v = posthoc(
        &f,
        &[
            "--plot",
            &p("sweep.svg"),
            "--plot-classes",
            &p("classes.png"),
            "--val-logits",
            &p("vl.npy"),
            "--val-labels",
            &p("vy.npy"),
        ],
    );
    let tau = v["chosen_tau"].as_f64().unwrap();
    let svg = std::fs::read_to_string(f.path("sweep.svg")).unwrap();
    for text in [
        "<svg",
        "tau (strength of the correction, dimensionless)",
        "error or recall (%)",
        "balanced error",
        "worst-class recall",
        &format!("chosen tau = {tau}"),
    ] {
        assert!(svg.contains(text), "{text:?} missing from the sweep");
    }
    // The PNG decodes to the picture's size.
    let file = std::fs::File::open(f.path("classes.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (900, 520));
    assert!(pixels.iter().any(|&b| b < 128), "the PNG is not blank");
    // The same picture as SVG says what its axes are.
    posthoc(&f, &["--plot-classes", &p("classes.svg")]);
    let svg = std::fs::read_to_string(f.path("classes.svg")).unwrap();
    for text in [
        "class rank by training count",
        "per-class recall (%)",
        "training examples (log scale)",
        "tau = 0 (uncorrected)",
    ] {
        assert!(
            svg.contains(text),
            "{text:?} missing from the classes picture"
        );
    }
}

#[test]
fn posthoc_evaluation_flags_refused() {
    let f = Files::new("posthoc-eval-flags");
    data(&f, 5);
    let p = |x: &str| f.path(x).to_str().unwrap().to_string();
    let base = [
        "posthoc",
        "--logits",
        &p("tl.npy"),
        "--labels",
        &p("ty.npy"),
    ];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--class-counts".into(),
                p("n.npy"),
                "--select".into(),
                "best".into(),
            ],
            "unknown --select",
        ),
        (
            vec![
                "--class-counts".into(),
                p("n.npy"),
                "--test-prior".into(),
                p("p_short.npy"),
            ],
            "shape mismatch",
        ),
        (
            vec![
                "--class-counts".into(),
                p("n.npy"),
                "--val-logits".into(),
                p("vl_wide.npy"),
                "--val-labels".into(),
                p("vy2.npy"),
            ],
            "validation logits have 7",
        ),
        (
            vec![
                "--prior".into(),
                p("p_short.npy"),
                "--plot-classes".into(),
                p("c.svg"),
            ],
            "--plot-classes orders the classes by training count",
        ),
        (
            vec![
                "--class-counts".into(),
                p("n.npy"),
                "--plot".into(),
                p("n.npy"),
            ],
            "is also an input",
        ),
    ];
    for (extra, expect) in cases {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        assert_one_line_error(&args, expect, &extra.join(" "));
    }
    assert!(!f.path("c.svg").exists());
    // Two test priors at once: the argument parser's refusal.
    let args: Vec<String> = base
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--class-counts".into(),
            p("n.npy"),
            "--estimate-test-prior".into(),
            "--test-prior".into(),
            p("n.npy"),
        ])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
