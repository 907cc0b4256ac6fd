//! `logit-adjust tune`: time every layout of the fused loss and the post-hoc
//! argmax on the current adapter and cache the fastest per `C`.

use logit_adjust::tuning::cache_path;
use logit_adjust::Context;

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// About 256k logits per measurement instead of 2M, 3 repetitions.
    #[arg(long)]
    quick: bool,
    /// Timed repetitions per measurement (the median is kept).
    #[arg(long)]
    reps: Option<usize>,
    /// Measure and print, but do not write the cache.
    #[arg(long)]
    dry_run: bool,
    /// Delete this adapter's cache (back to the built-in defaults) and exit.
    #[arg(long)]
    reset: bool,
}

pub fn run(a: &TuneArgs) -> Result<(), String> {
    let e = |e: logit_adjust::Error| e.to_string();
    let ctx = Context::new().map_err(e)?;
    let path = cache_path(ctx.info());
    if a.reset {
        if let Some(p) = path.filter(|p| p.exists()) {
            std::fs::remove_file(&p).map_err(|err| format!("{}: {err}", p.display()))?;
            eprintln!("removed {}", p.display());
        }
        return Ok(());
    }
    let (elements, reps) = if a.quick { (1 << 18, 3) } else { (1 << 21, 5) };
    let reps = a.reps.unwrap_or(reps);
    eprintln!(
        "tuning on {} ({:?}), {reps} repetitions of about {elements} logits each",
        ctx.info().name,
        ctx.info().backend
    );
    let tuning = logit_adjust::diagnostics::measure_tuning(&ctx, elements, reps, &mut |line| {
        eprintln!("  {line}")
    })
    .map_err(e)?;
    print!("{}", tuning.to_text(ctx.info()));
    if !a.dry_run {
        let saved = tuning.save(ctx.info()).map_err(e)?;
        eprintln!("saved {}", saved.display());
    }
    Ok(())
}
