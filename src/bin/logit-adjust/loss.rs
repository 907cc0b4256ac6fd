//! `logit-adjust loss`: the logit-adjusted loss and its gradient from `.npy` files.

use std::path::PathBuf;

use logit_adjust::{reference, Context, LossSpec, Reduction, Upstream};
use serde_json::json;

use crate::{inputs, npy};

/// Arguments of `loss`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("prior_source").required(true).args(["class_counts", "prior"])))]
pub struct LossArgs {
    /// Logits, float32 or float16 (N, C), C-order. float16 logits run the
    /// half-precision kernels and get a float16 gradient.
    #[arg(long)]
    logits: PathBuf,
    /// Labels, int32 or int64 (N,).
    #[arg(long)]
    labels: PathBuf,
    /// Training counts per class, integer or float (C,).
    #[arg(long)]
    class_counts: Option<PathBuf>,
    /// Additive smoothing of the counts (a zero count is an error without it).
    #[arg(long, default_value_t = 0.0, requires = "class_counts")]
    count_smoothing: f64,
    /// Class prior, float (C,); normalised to sum to one.
    #[arg(long)]
    prior: Option<PathBuf>,
    /// Scaling of log(prior); 0 is plain cross-entropy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    tau: f64,
    /// none, sum, mean or weighted-mean.
    #[arg(long, default_value = "mean")]
    reduction: String,
    /// Rows with this label get loss 0 and a zero gradient.
    #[arg(long, default_value_t = -100, allow_negative_numbers = true)]
    ignore_index: i64,
    /// PyTorch-style label smoothing eps in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Scale the adjusted logits: z = s (f + b - m [c = y]) (LDAM uses 30).
    #[arg(long, default_value_t = 1.0)]
    logit_scale: f32,
    /// Add the z-loss lambda LSE^2 to every row that is not ignored.
    #[arg(long, default_value_t = 0.0)]
    z_loss: f32,
    /// Class weights alpha, float (C,) (as PyTorch's `weight`; default 1).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// How label smoothing meets class weights: `row` (the label's weight
    /// scales the whole smoothed loss) or `pytorch` (F.cross_entropy's:
    /// the smoothing term weighted per class).
    #[arg(long, default_value = "row")]
    smoothing_convention: String,
    /// Write the per-row losses (N,) float32 here.
    #[arg(long)]
    out_loss: Option<PathBuf>,
    /// Write the gradient of the reduced loss (N, C) here, in the logits'
    /// format (float32 or float16).
    #[arg(long)]
    out_grad: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Use the f64 CPU reference instead of the GPU.
    #[arg(long)]
    cpu: bool,
}

/// No output over an input or over another output, before any work.
fn check_paths(a: &LossArgs) -> Result<(), String> {
    let inputs: Vec<&std::path::Path> = [
        Some(&a.logits),
        Some(&a.labels),
        a.class_counts.as_ref(),
        a.prior.as_ref(),
        a.weights.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect();
    let outputs: Vec<(&str, &std::path::Path)> =
        [("--out-loss", &a.out_loss), ("--out-grad", &a.out_grad)]
            .into_iter()
            .filter_map(|(what, p)| p.as_deref().map(|p| (what, p)))
            .collect();
    npy::check_outputs(&inputs, &outputs)?;
    Ok(())
}

/// The loss the flags describe.
fn spec_of(a: &LossArgs, prior: &logit_adjust::ClassPrior) -> Result<LossSpec, String> {
    let reduction: Reduction = a
        .reduction
        .parse()
        .map_err(|e: logit_adjust::Error| e.to_string())?;
    let convention = match a.smoothing_convention.as_str() {
        "row" => logit_adjust::Smoothing::RowWeight,
        "pytorch" => logit_adjust::Smoothing::PerClass,
        other => {
            return Err(format!(
                "--smoothing-convention must be row or pytorch, got {other:?}"
            ))
        }
    };
    let mut spec = LossSpec::logit_adjusted(prior, a.tau).map_err(|e| e.to_string())?;
    if let Some(path) = &a.weights {
        let weights: Vec<f32> = npy::read_vector(path, "class weights", true)?
            .iter()
            .map(|&w| w as f32)
            .collect();
        if weights.len() != prior.classes() {
            return Err(format!(
                "shape mismatch: {} holds {} class weights, the logits have {} classes",
                path.display(),
                weights.len(),
                prior.classes()
            ));
        }
        spec = LossSpec::custom(spec.bias().to_vec(), spec.margin().to_vec(), weights)
            .map_err(|e| e.to_string())?;
    }
    let spec = spec
        .with_smoothing_convention(convention)
        .with_reduction(reduction)
        .with_label_smoothing(a.label_smoothing)
        .with_ignore_index(a.ignore_index)
        .with_logit_scale(a.logit_scale)
        .with_z_loss(a.z_loss);
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

pub fn run(a: &LossArgs) -> Result<(), String> {
    check_paths(a)?;
    let (n, c, logits, labels) = inputs::read_batch_any(&a.logits, &a.labels)?;
    let counts = match &a.class_counts {
        Some(path) => Some(npy::read_vector(path, "class counts", true)?),
        None => None,
    };
    let prior = inputs::prior(counts.as_deref(), a.count_smoothing, a.prior.as_deref(), c)?;
    let spec = spec_of(a, &prior)?;
    let with_grad = a.out_grad.is_some();

    // The files hold the logits' format whichever path ran; the loss and
    // the per-row sum are reported in f64 from what that path computed.
    // GPU results are written as they came back, with no widened copy.
    let run = if a.cpu {
        cpu_run(&spec, logits, &labels, with_grad)?
    } else {
        gpu_run(&spec, logits, &labels, with_grad)?
    };

    // Everything computed and checked: only now write files, all of them
    // or none.
    let mut files = npy::Outputs::default();
    if let Some(path) = &a.out_loss {
        files.stage(path, &[n as u64], &run.per_row)?;
    }
    if let Some(path) = &a.out_grad {
        let shape = [n as u64, c as u64];
        match &run.grad {
            Some(Grad::F32(g)) => files.stage(path, &shape, g)?,
            Some(Grad::F16(g)) => files.stage(path, &shape, g)?,
            None => {}
        }
    }
    files.commit()?;
    let (loss, per_row_sum, adapter, backend) =
        (run.loss, run.per_row_sum, run.adapter, run.backend);

    if a.json {
        println!(
            "{}",
            json!({
                "loss": loss,
                "per_row_sum": per_row_sum,
                "reduction": a.reduction,
                "tau": a.tau,
                "label_smoothing": a.label_smoothing,
                "logit_scale": a.logit_scale,
                "z_loss": a.z_loss,
                "smoothing_convention": a.smoothing_convention,
                "n": n,
                "c": c,
                "adapter": adapter,
                "backend": backend,
            })
        );
    } else {
        match loss {
            Some(loss) => println!("loss ({}): {loss:.9}", a.reduction),
            None => println!("loss (none): {n} per-row values, sum {per_row_sum:.9}"),
        }
        println!(
            "N = {n}, C = {c}, tau = {}, on {adapter} ({backend})",
            a.tau
        );
    }
    Ok(())
}

/// A gradient in the logits' format.
enum Grad {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// What one path computed.
struct Run {
    loss: Option<f64>,
    per_row: Vec<f32>,
    per_row_sum: f64,
    grad: Option<Grad>,
    adapter: String,
    backend: String,
}

/// The f64 reference on the logits (float16 widened exactly), its
/// gradient rounded once to the logits' format.
fn cpu_run(
    spec: &LossSpec,
    logits: npy::Logits,
    labels: &[i64],
    with_grad: bool,
) -> Result<Run, String> {
    let half = matches!(logits, npy::Logits::F16(_));
    let logits = logits.widened();
    let out = if with_grad {
        reference::forward_backward(spec, &logits, labels)
    } else {
        reference::forward(spec, &logits, labels)
    }
    .map_err(|e| e.to_string())?;
    let grad = out.grad.map(|g| {
        if half {
            Grad::F16(g.into_iter().map(half::f16::from_f64).collect())
        } else {
            Grad::F32(g.into_iter().map(|x| x as f32).collect())
        }
    });
    Ok(Run {
        loss: out.loss,
        per_row_sum: out.per_row.iter().sum(),
        per_row: out.per_row.into_iter().map(|x| x as f32).collect(),
        grad,
        adapter: "cpu-reference".to_string(),
        backend: "cpu".to_string(),
    })
}

/// The GPU kernels in the logits' format.
fn gpu_run(
    spec: &LossSpec,
    logits: npy::Logits,
    labels: &[i64],
    with_grad: bool,
) -> Result<Run, String> {
    let e = |e: logit_adjust::Error| e.to_string();
    // Validate before touching the GPU, so bad input never needs a device.
    match &logits {
        npy::Logits::F32(l) => spec.check_batch(l, labels, Upstream::default()),
        npy::Logits::F16(l) => spec.check_batch(
            &l.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            labels,
            Upstream::default(),
        ),
    }
    .map_err(e)?;
    let ctx = Context::new().map_err(e)?;
    let op = ctx.softmax_xent(spec).map_err(e)?;
    let (out, grad) = match (&logits, with_grad) {
        (npy::Logits::F32(l), true) => {
            let (out, g) = op
                .forward_backward_as(l, labels, Upstream::default())
                .map_err(e)?;
            (out, Some(Grad::F32(g)))
        }
        (npy::Logits::F16(l), true) => {
            let (out, g) = op
                .forward_backward_as(l, labels, Upstream::default())
                .map_err(e)?;
            (out, Some(Grad::F16(g)))
        }
        (npy::Logits::F32(l), false) => (op.forward_as(l, labels).map_err(e)?, None),
        (npy::Logits::F16(l), false) => (op.forward_as(l, labels).map_err(e)?, None),
    };
    drop(logits);
    let info = ctx.info();
    Ok(Run {
        loss: out.loss.map(f64::from),
        per_row_sum: out.per_row.iter().map(|&x| f64::from(x)).sum(),
        per_row: out.per_row,
        grad,
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
    })
}
