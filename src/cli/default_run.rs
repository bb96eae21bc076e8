//! `run` as the default subcommand: where it goes on a command line that names none.

use super::Cli;
use clap::Parser;

/// Parse `args`, inserting `run` when no subcommand is named (so `ntk-pipeline --model M --data D` works).
///
/// Only the first word after the global options (`--threads N`, `--quiet`) may name a subcommand; every
/// later word is an argument, so `--split train` or `--json run` are values, never subcommands. A first
/// word that is an option (other than a lone `--help`/`--version`) means `run`; a first word that is
/// neither an option nor a subcommand is left to clap, which reports it as an unknown subcommand.
pub fn parse_with_default_run<I: IntoIterator<Item = std::ffi::OsString>>(
    args: I,
) -> Result<Cli, clap::Error> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if let Some(at) = default_run_position(&args) {
        args.insert(at, "run".into());
    }
    Cli::try_parse_from(args)
}

/// Where `run` goes when the command line names no subcommand, or `None` when it names one (or asks for
/// the top-level help or version, or is empty).
fn default_run_position(args: &[std::ffi::OsString]) -> Option<usize> {
    use clap::CommandFactory;
    let command = Cli::command();
    let globals: Vec<(String, bool)> = command
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| {
            let long = a.get_long()?;
            Some((format!("--{long}"), a.get_action().takes_values()))
        })
        .collect();
    let mut i = 1;
    while let Some(word) = args.get(i).map(|a| a.to_string_lossy()) {
        let global = globals
            .iter()
            .find(|(long, _)| word == long.as_str() || word.starts_with(&format!("{long}=")));
        match global {
            Some((long, true)) if word == long.as_str() => i += 2,
            Some(_) => i += 1,
            None => break,
        }
    }
    let first = args.get(i)?.to_string_lossy();
    let names_subcommand = command
        .get_subcommands()
        .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first))
        || first == "help";
    let top_level = matches!(first.as_ref(), "-h" | "--help" | "-V" | "--version");
    let stray_word = !first.starts_with('-');
    (!names_subcommand && !top_level && !stray_word).then_some(i.min(args.len()))
}
