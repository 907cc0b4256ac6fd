//! `logit-adjust`: the command-line tool over the library.

mod bench;
mod bench_errors;
mod check;
mod demo;
mod engine;
mod info;
mod inputs;
mod loss;
mod npy;
mod plot;
mod posthoc;
mod posthoc_report;
mod record;
mod train;
mod train_report;
mod tune;
mod webgpu_export;

use clap::{Parser, Subcommand};

/// GPU kernels for long-tail learning by logit adjustment (Menon et al., ICLR 2021).
#[derive(Debug, Parser)]
#[command(name = "logit-adjust", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The paper end to end on built-in synthetic long-tailed data, trained
    /// on the GPU (the default when no command is given).
    Demo(demo::DemoArgs),
    /// Time the kernels against a shader copy, the driver's copy and the
    /// unfused sequence, on the current adapter.
    Bench(bench::BenchArgs),
    /// Certify adapters: every kernel x dtype x shape class against the f64
    /// reference, with errors, tolerances and timings (exit code 1 when a
    /// supported cell fails).
    Check(check::CheckArgs),
    /// List every adapter wgpu sees and what the kernels can use on it.
    Info {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Logit-adjusted softmax cross-entropy (and gradient) from .npy files.
    Loss(loss::LossArgs),
    /// Post-hoc logit adjustment of saved logits: a tau sweep in one GPU
    /// pass, with balanced error, worst-class and many/medium/few recall.
    Posthoc(posthoc::PostHocArgs),
    /// Train a linear classifier on saved features on the GPU with any loss
    /// of the family, then report the long-tail metrics on a test set.
    Train(train::TrainArgs),
    /// Time every kernel layout on this adapter and cache the fastest per
    /// class count (used by every later run on the same adapter and driver).
    Tune(tune::TuneArgs),
}

/// Without `XDG_RUNTIME_DIR`, libwayland (loaded by the graphics stack when
/// a device opens) prints two "XDG_RUNTIME_DIR is invalid" lines of its own
/// on stderr, before any of ours. A private, empty runtime folder (this
/// user's, mode 0700) keeps stderr to the tool's own messages; nothing is
/// ever placed in it.
#[cfg(unix)]
fn quiet_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::Path;
    let valid = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).is_dir());
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    if valid {
        return;
    }
    let dir = std::env::temp_dir().join(format!("logit-adjust-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Only a folder of this user's that no one else can write.
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if ours {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(unix))]
fn quiet_runtime_dir() {}

fn main() {
    let cli = Cli::parse();
    quiet_runtime_dir();
    let result = match cli
        .command
        .unwrap_or(Command::Demo(demo::DemoArgs::default()))
    {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Check(args) => match check::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Info { json } => info::run(json),
        Command::Loss(args) => loss::run(&args),
        Command::Posthoc(args) => posthoc::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Tune(args) => tune::run(&args),
    };
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
