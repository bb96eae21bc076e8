//! The `ntk-pipeline` binary: parse the command line, run the library, print errors, map them to exit codes.

use ntk_pipeline::{cli, pipeline};

fn main() {
    let cli = match cli::parse_with_default_run(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    let result = pipeline::execute(&cli);
    if let Err(err) = &result {
        if !matches!(err, ntk_pipeline::Error::Reported(_)) {
            // One write, so that the line is not interleaved with other output (e.g. mpirun's own).
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(format!("error: {err}\n").as_bytes());
        }
    }
    // Under MPI every rank waits here until all have printed, so that no early exit makes mpirun kill a
    // rank that is still reporting.
    #[cfg(feature = "mpi")]
    ntk_pipeline::linalg::dist::finalize();
    if let Err(err) = result {
        std::process::exit(err.exit_code());
    }
}
