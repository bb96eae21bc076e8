//! The only place that wires data, model, NTK tiles, MEMDET, FLODANCE, estimators and reports together.
//! One file per subcommand.

pub mod budget;
pub mod compare;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod eval;
pub mod fit;
pub mod inputs;
pub mod logdet;
pub mod ntk;
pub mod ranks;
pub mod report;
pub mod run;
pub mod stats;
pub mod stats_options;
pub mod train;

use crate::cli::{Cli, Command};
use crate::progress::{Progress, Silent};
use crate::{Error, Result};

/// `--threads N` must be 1..=min(1024, 64 × the cores available): 0 would silently mean "all cores" to
/// rayon, and more threads than that only oversubscribe the machine (or exhaust its thread limit).
fn check_threads(threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = (64 * cores).min(1024);
    if threads == 0 || threads > most {
        return Err(Error::Usage(format!(
            "--threads {threads}: expected 1..={most} (this machine has {cores} cores); omit it to use all cores"
        )));
    }
    Ok(())
}

/// Tell candle the thread count once, through `RAYON_NUM_THREADS` (unless the user set it): `threads`, or
/// every core. candle's CPU matmul asks for its thread count on every call and, without that variable,
/// counts physical cores by reading /proc/cpuinfo each time (`num_cpus::get_physical`); on the f32
/// MobileNet feature pass, which runs through candle, that was three quarters of the time (35 s against
/// 8 s for 20 examples here). Call it before any thread is started: it sets a process environment variable.
pub fn fix_candle_thread_count(threads: Option<usize>) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// Run the subcommand that `cli` names, reporting progress on stderr unless `--quiet`.
pub fn execute(cli: &Cli) -> Result<()> {
    crate::signals::install();
    crate::progress::set_quiet(cli.quiet);
    crate::report::provenance::begin();
    // Under mpirun, one compute thread per core of this rank, and refusals made once for the job.
    #[cfg(feature = "mpi")]
    let threads = distributed::begin(cli)?;
    #[cfg(not(feature = "mpi"))]
    let threads = cli.threads;
    fix_candle_thread_count(threads);
    if let Some(threads) = threads {
        check_threads(threads)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| Error::Usage(format!("--threads {threads}: {e}")))?;
    }
    let reporter: Box<dyn Progress> = if cli.quiet {
        Box::new(Silent)
    } else {
        crate::progress::for_stderr()
    };
    let progress = reporter.as_ref();
    match &cli.command {
        Command::Run(args) => run::run(args, progress),
        Command::Ntk(args) => ntk::run(args, progress),
        Command::Logdet(args) => logdet::run(args, progress),
        Command::Fit(args) => fit::run(args, progress),
        Command::Compare(args) => compare::run(args, progress),
        Command::Train(args) => train::run(args, progress),
        Command::Eval(args) => eval::run(args, progress),
        Command::Report(args) => report::run(args, progress),
        Command::Stats(args) => stats::run(args, progress),
    }
}
