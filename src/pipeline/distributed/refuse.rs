//! What the distributed path does not do, refused before any work with one message that says why and what
//! to do instead (README "Running on a cluster" lists the same). Everything not refused here is run
//! distributed: `logdet` (`--matrix` with `--triangle`, `--scale-by`, `--shift`, `--nested`; `--model` with
//! every kernel and data option and `--feature-mem`) and `run` (the sample K_{n_s}, `--exact-n`, the fit
//! options, `--json`, `--plot`).

use crate::cli::{CheckpointArgs, Command, MemArgs};
use crate::linalg::Assume;
use crate::{Error, Result};

/// How to run what the distributed path refuses.
const SINGLE: &str = "run it single-process (without mpirun, or with mpirun -np 1 and no --grid)";

/// `Ok` when `command` can run distributed as given, else the usage error to report.
pub fn check(command: &Command) -> Result<()> {
    let refusal = match command {
        Command::Logdet(args) => {
            if args.assume != Assume::Spd {
                Some(format!(
                    "--assume {}: the distributed factorisation is ScaLAPACK's Cholesky (pdpotrf), which needs a \
                     positive definite matrix; ScaLAPACK has no symmetric-indefinite (Bunch–Kaufman) \
                     factorisation, so an indefinite matrix cannot be factored distributed: {SINGLE}, where \
                     --assume sym uses MEMDET's pivoted LDLᵀ",
                    args.assume.name()
                ))
            } else if args.scratch_cap.is_some() {
                Some(format!(
                    "--scratch-cap tests MEMDET's scratch store, which the distributed factorisation does not \
                     use: {SINGLE}"
                ))
            } else {
                memdet_only(&args.mem, &args.ckpt)
            }
        }
        Command::Run(args) => memdet_only(&args.mem, &args.ckpt),
        other => Some(format!(
            "`{}` is not distributed (only `logdet` and `run` are): under mpirun every rank would run it \
             alone and write the same files; {SINGLE}",
            name(other)
        )),
    };
    match refusal {
        Some(why) => Err(Error::Usage(format!(
            "under MPI with more than one rank: {why}"
        ))),
        None => Ok(()),
    }
}

/// The MEMDET options that have no meaning for ScaLAPACK's in-memory factorisation.
fn memdet_only(mem: &MemArgs, ckpt: &CheckpointArgs) -> Option<String> {
    if ckpt.checkpoint.is_some() || ckpt.resume {
        Some(format!(
            "--checkpoint/--resume save MEMDET's factor tiles after every block column; ScaLAPACK's \
             pdpotrf holds the factor in the ranks' memory and cannot be checkpointed, so a distributed run \
             that is stopped starts again from the beginning: drop --checkpoint, or {SINGLE}"
        ))
    } else if mem.num_blocks.is_some() {
        Some(
            "--num-blocks sets MEMDET's block plan; the distributed layout is set by --block-size and \
             --grid instead: drop --num-blocks"
                .into(),
        )
    } else if mem.scratch_dir.is_some() {
        Some(
            "--scratch-dir is for MEMDET's on-disk scratch; the distributed factorisation keeps each \
             rank's share of the matrix in memory (--max-mem per rank) and writes no scratch: drop \
             --scratch-dir"
                .into(),
        )
    } else {
        None
    }
}

/// The subcommand's name on the command line.
fn name(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "run",
        Command::Ntk(_) => "ntk",
        Command::Logdet(_) => "logdet",
        Command::Fit(_) => "fit",
        Command::Compare(_) => "compare",
        Command::Train(_) => "train",
        Command::Eval(_) => "eval",
        Command::Report(_) => "report",
        Command::Stats(_) => "stats",
    }
}
