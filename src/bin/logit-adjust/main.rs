//! `logit-adjust`: the command-line tool over the library.

mod bench;
mod demo;
mod info;
mod inputs;
mod loss;
mod npy;
mod posthoc;
mod train;
mod tune;

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
    Demo,
    /// Time the kernels against a shader copy, the driver's copy and the
    /// unfused sequence, on the current adapter.
    Bench(bench::BenchArgs),
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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
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
