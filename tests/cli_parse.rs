//! The command line (issue 11, items 6 and 9): `run` is the default subcommand and only the first word may
//! name a subcommand; one model/data argument group (with `--download`) everywhere a model or data is
//! loaded; option values are enums whose choices `--help` lists.

use clap::CommandFactory;
use ntk_pipeline::cli::{parse_with_default_run, Cli, Command as Sub, CompareMethod, SampleOrder};
use ntk_pipeline::data::Split;
use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
use ntk_pipeline::ntk::{Outputs, Scale};
use std::collections::HashMap;
use std::process::Command;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    parse_with_default_run(
        std::iter::once("ntk-pipeline")
            .chain(args.iter().copied())
            .map(Into::into),
    )
}

#[test]
fn words_after_the_first_are_values_not_subcommands() {
    // Each of these holds a subcommand's name as a value; today's parser took it for the subcommand.
    let cases: &[&[&str]] = &[
        &["--model", "m", "--data", "mnist", "--split", "train"],
        &["--model", "m", "--data", "mnist", "--plot", "fit"],
        &["--model", "m", "--data", "mnist", "--json", "run"],
        &["--model", "eval", "--data", "compare"],
        &[
            "--threads",
            "2",
            "--model",
            "m",
            "--data",
            "mnist",
            "--split",
            "test",
        ],
        &["--quiet", "--model", "m", "--data", "ntk"],
    ];
    for args in cases {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Sub::Run(run) = cli.command else {
            panic!("{args:?} should mean `run`")
        };
        assert!(
            run.md.model.is_some() && run.md.data.name.is_some(),
            "{args:?}"
        );
    }
    let cli = parse(&[
        "--model", "m", "--data", "mnist", "--split", "train", "--json", "run",
    ])
    .unwrap();
    let Sub::Run(run) = cli.command else { panic!() };
    assert_eq!(run.md.split, Split::Train);
    assert_eq!(run.json.as_deref(), Some(std::path::Path::new("run")));
}

#[test]
fn a_named_subcommand_is_used_after_global_options() {
    let cli = parse(&["--threads", "2", "--quiet", "logdet", "--matrix", "K.npy"]).unwrap();
    assert!(matches!(cli.command, Sub::Logdet(_)));
    assert_eq!(cli.threads, Some(2));
    let cli = parse(&["--threads=1", "fit", "--logdets", "run", "--target-n", "9"]).unwrap();
    assert!(matches!(cli.command, Sub::Fit(_)));
    assert!(matches!(
        parse(&["eval", "--model", "m", "--data", "train"])
            .unwrap()
            .command,
        Sub::Eval(_)
    ));
    // An unknown first word is reported as such, not swallowed by `run`.
    let err = parse(&["rn", "--model", "m", "--data", "mnist"]).unwrap_err();
    assert!(err.to_string().contains("unrecognized subcommand"), "{err}");
}

#[test]
fn every_model_or_data_subcommand_shares_one_argument_group() {
    let shared = [
        "model", "arch", "width", "data", "data-dir", "download", "split", "order", "seed",
    ];
    let command = Cli::command();
    for name in ["run", "ntk", "logdet", "compare", "eval"] {
        let sub = command.find_subcommand(name).unwrap();
        let longs: Vec<&str> = sub.get_arguments().filter_map(|a| a.get_long()).collect();
        for flag in shared {
            assert!(longs.contains(&flag), "`{name}` lacks --{flag}");
        }
    }
    let train = command.find_subcommand("train").unwrap();
    for flag in ["data", "data-dir", "download"] {
        assert!(
            train.get_arguments().any(|a| a.get_long() == Some(flag)),
            "`train` lacks --{flag}"
        );
    }
    // `logdet --model` and `train` take --download (they did not).
    let cli = parse(&[
        "logdet",
        "--model",
        "m",
        "--data",
        "cifar10",
        "--download",
        "--n",
        "5",
    ])
    .unwrap();
    let Sub::Logdet(l) = cli.command else {
        panic!()
    };
    assert!(l.md.data.download);
    let cli = parse(&[
        "train",
        "--arch",
        "lenet",
        "--data",
        "cifar10",
        "--download",
        "--out",
        "x",
    ])
    .unwrap();
    let Sub::Train(t) = cli.command else { panic!() };
    assert!(t.data.download);
}

#[test]
fn option_values_are_enums_whose_choices_help_lists() {
    let command = Cli::command();
    let expect: &[(&str, &str, &[&str])] = &[
        (
            "run",
            "outputs",
            &["full", "centered", "sum", "trace", "logit:K"],
        ),
        ("run", "scale", &["sqrt-p", "none", "p"]),
        ("run", "precision", &["f64", "f32", "f32-f64acc"]),
        ("run", "split", &["train", "test"]),
        ("run", "order", &["dataset", "random"]),
        ("logdet", "assume", &["spd", "sym"]),
        ("logdet", "triangle", &["upper", "lower"]),
        (
            "compare",
            "methods",
            &[
                "exact",
                "flodance",
                "slq",
                "slq-large",
                "slq-matvec",
                "pslq",
                "block-diag",
                "pseudo-ntk",
                "f32",
                "f32-f64acc",
                "linear",
                "stopped-cholesky",
            ],
        ),
    ];
    for (sub, flag, values) in expect {
        let arg = command
            .find_subcommand(sub)
            .unwrap()
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .unwrap_or_else(|| panic!("{sub} --{flag}"));
        let listed: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(&listed, values, "{sub} --{flag}");
    }
    let cli = parse(&[
        "--model",
        "m",
        "--data",
        "d",
        "--outputs",
        "logit:3",
        "--scale",
        "none",
    ])
    .unwrap();
    let Sub::Run(run) = cli.command else { panic!() };
    assert_eq!(run.kernel.outputs, Outputs::Logit(3));
    assert_eq!(run.kernel.scale, Scale::None);
    assert_eq!(run.md.order, SampleOrder::Dataset);
    for bad in [
        ["--outputs", "logit:x"],
        ["--outputs", "all"],
        ["--scale", "sqrtp"],
        ["--order", "shuffled"],
    ] {
        let err = parse(&["--model", "m", "--data", "d", bad[0], bad[1]]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}");
        assert!(
            err.to_string().contains("possible values"),
            "{bad:?}: {err}"
        );
    }
    let cli = parse(&[
        "compare",
        "--model",
        "m",
        "--data",
        "d",
        "--n",
        "9",
        "--methods",
        "exact,slq-large",
    ])
    .unwrap();
    let Sub::Compare(c) = cli.command else {
        panic!()
    };
    assert_eq!(
        c.methods,
        vec![CompareMethod::Exact, CompareMethod::SlqLarge]
    );
    let cli = parse(&["compare", "--model", "m", "--data", "d", "--n", "9"]).unwrap();
    let Sub::Compare(c) = cli.command else {
        panic!()
    };
    assert_eq!(c.methods.len(), 9, "the documented default list");
}

#[test]
fn the_default_subcommand_runs_with_a_split_and_subcommand_named_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(5)).unwrap();
    let model = dir.path().join("lenet.safetensors");
    let meta = HashMap::from([("arch".to_string(), "lenet".to_string())]);
    save_safetensors(&net, &model, meta).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
        .current_dir(dir.path())
        .arg("--model")
        .arg(&model)
        .args([
            "--data",
            "mnist",
            "--split",
            "train",
            "--n-sample",
            "12",
            "--burn-in",
            "2",
        ])
        .args([
            "--ensemble",
            "4",
            "--quiet",
            "--json",
            "run",
            "--plot",
            "fit",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run")).unwrap()).unwrap();
    assert_eq!(report["kernel"]["split"], "train");
    assert_eq!(report["nested"].as_array().unwrap().len(), 12);
    assert!(std::fs::read_to_string(dir.path().join("fit"))
        .unwrap()
        .starts_with("<svg"));
}
