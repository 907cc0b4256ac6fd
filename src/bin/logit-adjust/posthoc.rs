//! `logit-adjust posthoc`: post-hoc logit adjustment of saved logits, a tau
//! sweep in one GPU pass, and the long-tail metrics for every tau.

use std::path::PathBuf;

use std::path::Path;

use logit_adjust::{
    check_labels, check_logits, expected_calibration_error, top_k_accuracy, ClassPrior,
    Predictions, PriorEstimate, Report, Select, ShotGroups, ECE_BINS, MAX_TAUS, MAX_TOP_K,
};

use crate::engine::{Correction, Engine};
use crate::{inputs, npy, posthoc_report};

/// Arguments of `posthoc`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("prior_source").required(true).args(["class_counts", "train_labels", "prior"])))]
#[command(group(clap::ArgGroup::new("tau_choice").args(["tau", "taus", "tau_range"])))]
#[command(group(clap::ArgGroup::new("test_prior_source").args(["test_prior", "test_class_counts", "estimate_test_prior"])))]
pub struct PostHocArgs {
    /// Logits of a trained model on the evaluation (test) set, float32 (N, C), C-order.
    #[arg(long)]
    pub logits: PathBuf,
    /// Evaluation labels, int32 or int64 (N,), in [0, C).
    #[arg(long)]
    pub labels: PathBuf,
    /// Validation logits, float32 (V, C): the sweep runs here and chooses
    /// tau, and the evaluation set is scored at that tau only.
    #[arg(long, requires = "val_labels")]
    pub val_logits: Option<PathBuf>,
    /// Validation labels, int32 or int64 (V,).
    #[arg(long, requires = "val_logits")]
    pub val_labels: Option<PathBuf>,
    /// What chooses tau: balanced-error (lowest), worst-class (highest
    /// worst-class recall) or accuracy (highest).
    #[arg(long, default_value = "balanced-error")]
    pub select: String,
    /// Training counts per class, integer or float (C,).
    #[arg(long)]
    pub class_counts: Option<PathBuf>,
    /// Training labels, int32 or int64; counted per class on the GPU.
    #[arg(long)]
    pub train_labels: Option<PathBuf>,
    /// Additive smoothing of the training counts (a zero count is an error
    /// without it).
    #[arg(long, default_value_t = 0.0)]
    pub count_smoothing: f64,
    /// Class prior, float (C,). Without training counts the shot groups are absent.
    #[arg(long)]
    pub prior: Option<PathBuf>,
    /// The evaluation set's own class prior, float (C,): the correction
    /// becomes f - tau log pi_train + tau log pi_test (tau = 1 is the Bayes
    /// rule for it).
    #[arg(long)]
    pub test_prior: Option<PathBuf>,
    /// The evaluation set's class counts (C,), as its prior.
    #[arg(long)]
    pub test_class_counts: Option<PathBuf>,
    /// Estimate the evaluation set's prior from its logits by EM (its labels
    /// unused), then correct toward it.
    #[arg(long)]
    pub estimate_test_prior: bool,
    /// One tau (default 1.0).
    #[arg(long, allow_negative_numbers = true)]
    pub tau: Option<f64>,
    /// A comma-separated list of taus, e.g. 0,0.5,1.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub taus: Option<Vec<f64>>,
    /// start:stop:step, stop included, e.g. 0:2:0.25.
    #[arg(long, allow_negative_numbers = true)]
    pub tau_range: Option<String>,
    /// Top-k accuracy for k = 1..K at the chosen tau (K at most 8 and C).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Many-shot classes have more than this many training examples.
    #[arg(long, default_value_t = 100.0)]
    pub many: f64,
    /// Few-shot classes have fewer than this many training examples.
    #[arg(long, default_value_t = 20.0)]
    pub few: f64,
    /// Draw the sweep (balanced error, worst-class and shot-group recall
    /// against tau, the chosen tau marked): SVG, or PNG for a .png name.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Draw per-class recall from head to tail at tau = 0 and the chosen
    /// tau: SVG, or PNG for a .png name.
    #[arg(long)]
    pub plot_classes: Option<PathBuf>,
    /// Write the int64 predictions (N,) at the chosen tau here.
    #[arg(long)]
    pub out_pred: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Use the CPU reference instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
}

fn parse_range(text: &str) -> Result<Vec<f64>, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad =
        || format!("--tau-range {text:?}: expected start:stop:step with step > 0, e.g. 0:2:0.25");
    let [a, b, s] = parts.as_slice() else {
        return Err(bad());
    };
    let (a, b, s): (f64, f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
        s.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && s.is_finite() && s > 0.0 && b >= a) {
        return Err(bad());
    }
    // Counted in f64: a tiny step gives more taus than any integer type holds.
    let steps = ((b - a) / s + 1e-9).floor();
    if steps >= MAX_TAUS as f64 {
        let count = steps + 1.0;
        let count = if count < 1e15 {
            format!("{count:.0}")
        } else {
            format!("{count:.3e}")
        };
        return Err(format!(
            "--tau-range {text:?} gives {count} taus; at most {MAX_TAUS}"
        ));
    }
    let steps = steps as usize;
    // Rounded to 12 decimals, so 0:3:0.05 lists 2.55, not 2.5500000000000003.
    Ok((0..=steps)
        .map(|k| ((a + k as f64 * s) * 1e12).round() / 1e12)
        .collect())
}

/// No output over an input, nor two outputs on one file, before any work.
fn check_paths(a: &PostHocArgs) -> Result<(), String> {
    let inputs: Vec<&Path> = [
        Some(&a.logits),
        Some(&a.labels),
        a.val_logits.as_ref(),
        a.val_labels.as_ref(),
        a.class_counts.as_ref(),
        a.train_labels.as_ref(),
        a.prior.as_ref(),
        a.test_prior.as_ref(),
        a.test_class_counts.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect();
    let outputs: Vec<(&str, &Path)> = [
        ("--out-pred", &a.out_pred),
        ("--plot", &a.plot),
        ("--plot-classes", &a.plot_classes),
    ]
    .into_iter()
    .filter_map(|(what, p)| p.as_deref().map(|p| (what, p)))
    .collect();
    npy::check_outputs(&inputs, &outputs)
}

fn select(a: &PostHocArgs) -> Result<Select, String> {
    match a.select.as_str() {
        "balanced-error" => Ok(Select::BalancedError),
        "worst-class" => Ok(Select::WorstClass),
        "accuracy" => Ok(Select::Accuracy),
        other => Err(format!(
            "unknown --select {other:?}: expected balanced-error, worst-class or accuracy"
        )),
    }
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

/// The validation logits and labels, checked against the evaluation set's `c`.
/// Logits and labels of one labelled set.
type Labelled = (Vec<f32>, Vec<i64>);

fn read_validation(a: &PostHocArgs, c: usize) -> Result<Option<Labelled>, String> {
    let (Some(vl), Some(vy)) = (&a.val_logits, &a.val_labels) else {
        return Ok(None);
    };
    let (v, cv, logits) = npy::read_logits_any(vl, "validation logits")?;
    let logits = logits.widened();
    let labels = npy::read_labels(vy, "validation labels")?;
    if labels.len() != v {
        return Err(format!(
            "shape mismatch: validation logits have {v} rows but validation labels have {}",
            labels.len()
        ));
    }
    if cv != c {
        return Err(format!(
            "shape mismatch: logits have {c} classes but validation logits have {cv}"
        ));
    }
    if v == 0 {
        return Err("no validation rows: the validation logits are empty".into());
    }
    check_labels(&labels, c).map_err(|e| format!("validation {e}"))?;
    check_logits(&logits, c).map_err(|e| format!("validation {e}"))?;
    Ok(Some((logits, labels)))
}

/// Training counts from `--class-counts` or `--train-labels`.
fn train_counts(a: &PostHocArgs, engine: &Engine, c: usize) -> Result<Option<Vec<f64>>, String> {
    if let Some(path) = &a.class_counts {
        return Ok(Some(npy::read_vector(path, "class counts", true)?));
    }
    let Some(path) = &a.train_labels else {
        return Ok(None);
    };
    let t = npy::read_labels(path, "training labels")?;
    check_labels(&t, c).map_err(|e| format!("training {e}"))?;
    let hist = engine.histogram(&t, c)?;
    Ok(Some(hist.into_iter().map(|x| x as f64).collect()))
}

/// Where the test prior came from.
pub enum TestPrior {
    File(ClassPrior),
    Counts(ClassPrior),
    Estimated(ClassPrior, PriorEstimate),
}

impl TestPrior {
    pub fn prior(&self) -> &ClassPrior {
        match self {
            TestPrior::File(p) | TestPrior::Counts(p) | TestPrior::Estimated(p, _) => p,
        }
    }
}

fn test_prior(
    a: &PostHocArgs,
    engine: &Engine,
    logits: &[f32],
    train: &ClassPrior,
    c: usize,
) -> Result<Option<TestPrior>, String> {
    let check = |p: ClassPrior, what: &str| {
        if p.classes() == c {
            Ok(p)
        } else {
            Err(format!(
                "shape mismatch: logits have {c} classes but the {what} has {}",
                p.classes()
            ))
        }
    };
    if let Some(path) = &a.test_prior {
        let p = ClassPrior::from_probabilities(&npy::read_vector(path, "test prior", false)?)
            .map_err(|e| format!("test prior: {e}"))?;
        return Ok(Some(TestPrior::File(check(p, "test prior")?)));
    }
    if let Some(path) = &a.test_class_counts {
        let p = ClassPrior::from_counts(&npy::read_vector(path, "test class counts", true)?)
            .map_err(|e| format!("test class counts: {e}"))?;
        return Ok(Some(TestPrior::Counts(check(p, "test class counts")?)));
    }
    if a.estimate_test_prior {
        let e = engine.estimate_test_prior(logits, train)?;
        let p = ClassPrior::from_probabilities(&e.prior)
            .map_err(|err| format!("the EM estimate of the test prior cannot be used: {err}"))?;
        return Ok(Some(TestPrior::Estimated(p, e)));
    }
    Ok(None)
}

fn taus(a: &PostHocArgs) -> Result<Vec<f64>, String> {
    Ok(match (&a.tau, &a.taus, &a.tau_range) {
        (Some(t), _, _) => vec![*t],
        (_, Some(ts), _) => ts.clone(),
        (_, _, Some(r)) => parse_range(r)?,
        _ => vec![1.0],
    })
}

/// Reports at each of `taus` on one labelled set.
fn sweep(
    engine: &Engine,
    k: Correction,
    taus: &[f64],
    (logits, labels): (&[f32], &[i64]),
    c: usize,
    train_counts: Option<&[f64]>,
    groups: ShotGroups,
) -> Result<(Predictions, Vec<Report>), String> {
    let p = engine.predict(k, taus, logits)?;
    let counts = engine.counts(labels, c, &p)?;
    let reports = (0..taus.len())
        .map(|t| counts.report_with_groups(t, train_counts, groups))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok((p, reports))
}

pub fn run(a: &PostHocArgs) -> Result<(), String> {
    check_paths(a)?;
    let select = select(a)?;
    let taus = taus(a)?;
    let groups = ShotGroups {
        many: a.many,
        few: a.few,
    };
    let (n, c, logits, labels) = inputs::read_batch(&a.logits, &a.labels)?;
    if n == 0 {
        return Err("no evaluation rows: the logits are empty".into());
    }
    check_labels(&labels, c).map_err(err)?;
    check_logits(&logits, c).map_err(err)?;
    let validation = read_validation(a, c)?;
    let engine = Engine::new(a.cpu)?;
    let train_counts = train_counts(a, &engine, c)?;
    if a.plot_classes.is_some() && train_counts.is_none() {
        return Err("--plot-classes orders the classes by training count: pass --class-counts or --train-labels".into());
    }
    let prior = inputs::prior(
        train_counts.as_deref(),
        a.count_smoothing,
        a.prior.as_deref(),
        c,
    )?;
    let test_prior = test_prior(a, &engine, &logits, &prior, c)?;
    let k = Correction {
        train: &prior,
        test: test_prior.as_ref().map(TestPrior::prior),
    };
    let counts = train_counts.as_deref();
    let test = (logits.as_slice(), labels.as_slice());
    // The sweep chooses tau: on the validation set when there is one.
    let chooser = validation
        .as_ref()
        .map_or(test, |(l, y)| (l.as_slice(), y.as_slice()));
    let (sweep_pred, sweep_reports) = sweep(&engine, k, &taus, chooser, c, counts, groups)?;
    let chosen = select.best(&sweep_reports);
    let tau = taus[chosen];
    // The evaluation set at the chosen tau (and at tau = 0, for the
    // picture of per-class recall), computed only now.
    let (test_pred, test_reports) = match &validation {
        Some(_) => sweep(&engine, k, &[tau, 0.0], test, c, counts, groups)?,
        None => (sweep_pred.clone(), sweep_reports.clone()),
    };
    let (at_chosen, at_zero) = match &validation {
        Some(_) => (0, Some(1)),
        None => (chosen, taus.iter().position(|&t| t == 0.0)),
    };
    let top = a.top_k.clamp(1, c.min(MAX_TOP_K));
    let top_k = top_k_accuracy(&engine.top_k(k, tau, &logits, top)?, top, &labels).map_err(err)?;
    let ece = expected_calibration_error(&engine.corrected(k, tau, &logits)?, &labels, c, ECE_BINS)
        .map_err(err)?;
    let outcome = Outcome {
        taus,
        select,
        groups,
        sweep: sweep_reports,
        validation_rows: validation.as_ref().map(|(_, y)| y.len()),
        chosen,
        test: test_reports[at_chosen].clone(),
        test_at_zero: at_zero.map(|z| test_reports[z].clone()),
        top_k,
        ece,
        test_prior,
        train_counts,
        n,
        c,
        device: engine.device(),
    };
    let mut files = npy::Outputs::default();
    if let Some(path) = &a.out_pred {
        let pred: Vec<i64> = test_pred.by_tau[at_chosen]
            .iter()
            .map(|&p| p as i64)
            .collect();
        files.stage(path, &[n as u64], &pred)?;
    }
    posthoc_report::pictures(a, &outcome, &mut files)?;
    files.commit()?;
    posthoc_report::print(a, &outcome);
    Ok(())
}

/// Everything `posthoc` reports.
pub struct Outcome {
    pub taus: Vec<f64>,
    pub select: Select,
    pub groups: ShotGroups,
    /// The sweep on the set that chose tau.
    pub sweep: Vec<Report>,
    /// Rows of the validation set, when it chose.
    pub validation_rows: Option<usize>,
    pub chosen: usize,
    /// The evaluation set at the chosen tau.
    pub test: Report,
    /// ... and at tau = 0, where computed.
    pub test_at_zero: Option<Report>,
    /// Top-k accuracy, k = 1.., at the chosen tau.
    pub top_k: Vec<f64>,
    pub ece: f64,
    pub test_prior: Option<TestPrior>,
    pub train_counts: Option<Vec<f64>>,
    pub n: usize,
    pub c: usize,
    pub device: (String, String),
}
