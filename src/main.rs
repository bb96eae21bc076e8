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
    if let Err(err) = pipeline::execute(&cli) {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}
