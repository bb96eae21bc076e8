//! README and `--help` agree (issue 11, item 10): every long flag that any subcommand's `--help` shows is
//! documented in README.md, and every `--flag` README.md shows exists in some subcommand (or is one of the
//! listed flags of other tools, such as cargo's). A failure lists every mismatch.

use clap::CommandFactory;
use ntk_pipeline::cli::Cli;
use std::collections::BTreeSet;

/// Flags README shows that belong to other programs (cargo, tar, pip, huggingface-cli, ...).
const OTHER_TOOLS: &[&str] = &[
    // cargo
    "release",
    "locked",
    "test",
    "bench",
    "lib",
    "features",
    "all-targets",
    "check",
    // the test harness, after `cargo test --`
    "nocapture",
    "ignored",
    "include-ignored",
    "exact",
    // mpirun and Slurm's srun (README "Running on a cluster")
    "oversubscribe",
    "allow-run-as-root",
    "bind-to",
    "mca",
    "ntasks",
    "cpus-per-task",
    "export",
    // sbatch (`#SBATCH` lines of README's multi-day job example)
    "time",
    "mem",
    "signal",
    "requeue",
    "open-mode",
];

/// Flags of the optional `mpi` feature: in README, and in `--help` only when built with `--features mpi`.
const MPI_FLAGS: &[&str] = &["grid", "block-size"];

/// Every long flag of the top-level command and of each subcommand, as `--help` shows them (hidden ones
/// excluded), with the subcommands that have it.
fn help_flags() -> Vec<(String, String)> {
    let mut command = Cli::command();
    // Building adds what clap generates itself (`--help`, `--version`), as `--help` shows them.
    command.build();
    let mut flags = vec![];
    let mut visit = |name: &str, cmd: &clap::Command| {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                flags.push((name.to_string(), long.to_string()));
            }
        }
    };
    visit("ntk-pipeline", &command);
    for sub in command.get_subcommands() {
        visit(sub.get_name(), sub);
    }
    flags
}

/// Every `--flag` in `text`: two dashes after a character that is not part of a word or dash, then a
/// lower-case letter, then letters, digits and single dashes.
fn readme_flags(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let starts = bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && bytes[i + 2].is_ascii_lowercase()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < bytes.len()
            && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'-')
        {
            j += 1;
        }
        let flag = text[i + 2..j].trim_end_matches('-');
        out.insert(flag.to_string());
        i = j;
    }
    out
}

#[test]
fn every_help_flag_is_in_readme_and_every_readme_flag_exists() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented = readme_flags(&readme);
    let help = help_flags();
    let known: BTreeSet<&str> = help.iter().map(|(_, f)| f.as_str()).collect();

    let mut missing: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (sub, flag) in &help {
        if !documented.contains(flag.as_str()) {
            missing.entry(flag).or_default().push(sub);
        }
    }
    let undocumented: Vec<String> = missing
        .iter()
        .map(|(flag, subs)| format!("--{flag} ({})", subs.join(", ")))
        .collect();
    let unknown: Vec<String> = documented
        .iter()
        .filter(|f| !known.contains(f.as_str()) && !OTHER_TOOLS.contains(&f.as_str()))
        .filter(|f| cfg!(feature = "mpi") || !MPI_FLAGS.contains(&f.as_str()))
        .map(|f| format!("--{f}"))
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README.md and --help disagree.\n  in --help but not in README: {}\n  in README but in no subcommand's --help: {}",
        if undocumented.is_empty() { "none".to_string() } else { undocumented.join(", ") },
        if unknown.is_empty() { "none".to_string() } else { unknown.join(", ") },
    );
}

#[test]
fn the_flag_scanner_finds_flags_and_only_flags() {
    let found = readme_flags(
        "use `--max-mem 4GiB`, --nested [D] or --x2-y; not a-b--c, ---, |---|, −−x, --",
    );
    let expect: BTreeSet<String> = ["max-mem", "nested", "x2-y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expect);
}
