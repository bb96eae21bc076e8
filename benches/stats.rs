//! NTK statistics benchmark, exact against matrix-free (run by hand: `cargo bench --bench stats`).
//!
//! Part 0 (`STATS_BENCH_PASS_N`, default 16; 0 skips it): seconds of one kernel–vector product `K v` on
//! the first n images by the hand-written engine (what `stats` uses) and by candle's graph (the path it
//! replaced), interleaved, two runs each, the faster kept, and their ratio.
//! Part 1 (`STATS_BENCH_N`, default 1000): `ntk-pipeline stats --estimate all --exact --probes LIST` on the
//! first n MNIST training images: every statistic exact (one streamed pass over the tiles) and estimated by
//! each estimator at each probe count S, printed as `estimate ± standard error (|relative error|)` with the
//! products used, the estimator's seconds and its speed-up over the exact pass, all measured in the same
//! run. Part 2 (`STATS_BENCH_BIG_N`, default 10000; 0 skips it): the matrix-free trace, Frobenius norm and
//! effective rank alone (`--estimate hutchpp,one-sided-forward`), where the exact kernel would take far
//! longer to form, with standard errors and wall time.
//!
//! Environment: `STATS_BENCH_PASS_N`, `STATS_BENCH_MODEL` (default `models/resnet9-mnist.safetensors`), `STATS_BENCH_N`,
//! `STATS_BENCH_PROBES` (default `10,30,100`), `STATS_BENCH_BIG_N`, `STATS_BENCH_BIG_PROBES` (default `10`),
//! `STATS_BENCH_MAX_MEM` (default `8GiB`), `STATS_BENCH_JSON_DIR` (keep the JSON reports there). The load
//! average is printed before and after each part: the figures mean little on a busy machine.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ntk-pipeline");

/// The statistics every row reports, with their column titles.
const STATS: [(&str, &str); 5] = [
    ("trace", "tr K"),
    ("frobenius", "‖K‖_F"),
    ("effective_rank", "r_eff"),
    ("alignment", "A(K, YYᵀ)"),
    ("centred_alignment", "centred A"),
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Run `stats` with `args`, writing its report to `json`; returns the report and the wall seconds.
fn stats(args: &[&str], json: &Path) -> (Value, f64) {
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .args(["--quiet", "stats"])
        .args(args)
        .args(["--json", json.to_str().expect("utf-8 path")])
        .output()
        .expect("run ntk-pipeline");
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "stats {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(json).expect("the JSON report");
    (serde_json::from_str(&text).expect("valid JSON"), wall)
}

/// `value ± se (rel %)` of statistic `name` in `stats` (relative error from `rel`, when given).
fn cell(stats: &Value, name: &str, rel: Option<&Value>) -> String {
    let s = &stats[name];
    let Some(v) = s["value"].as_f64() else {
        return "-".into();
    };
    let se = s["std_error"].as_f64().unwrap_or(0.0);
    let rel = rel
        .and_then(|r| r[name].as_f64())
        .map(|r| format!(" ({:.1} %)", 100.0 * r))
        .unwrap_or_default();
    if se == 0.0 {
        format!("{v:.8}")
    } else {
        format!("{v:.4e} ± {se:.2e}{rel}")
    }
}

fn header(extra: &str) {
    let titles: Vec<&str> = STATS.iter().map(|s| s.1).collect();
    println!("| method | S | {} | {extra} |", titles.join(" | "));
    println!(
        "|{}",
        "---|".repeat(STATS.len() + 2 + extra.split('|').count())
    );
}

fn products(e: &Value) -> String {
    format!(
        "{}/{}/{}",
        e["products"].as_u64().unwrap_or(0),
        e["reverse_products"].as_u64().unwrap_or(0),
        e["forward_products"].as_u64().unwrap_or(0)
    )
}

/// Part 0: seconds of one `K v` (full outputs, f64) on the first `n` MNIST images by each pass.
fn product_time(model: &str, n: usize) {
    use faer::Mat;
    use ntk_pipeline::data::{self, DataOptions, Split};
    use ntk_pipeline::model::load::load_model;
    use ntk_pipeline::ntk::{KernelSpec, MatvecPass, NtkOperator, Outputs, Precision, Scale};
    let dataset = data::load(
        "mnist",
        &DataOptions {
            split: Split::Train,
            data_dir: None,
            download: false,
        },
    )
    .expect("the shipped MNIST in datasets/mnist");
    let hint = Some(dataset.image_shape());
    let net = load_model(model, None, None, hint, Some(10))
        .expect("the model")
        .network;
    let idx: Vec<usize> = (0..n).collect();
    let x = dataset.images(&idx, net.input_shape).expect("images");
    let spec = KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    };
    let ops = [MatvecPass::Hand, MatvecPass::Candle].map(|pass| {
        NtkOperator::with_pass(pass, &net, x.clone(), spec, 8 << 30).expect("operator")
    });
    let v = Mat::from_fn(
        ops[0].order(),
        1,
        |r, _| if r % 2 == 0 { 1.0 } else { -1.0 },
    );
    let mut best = [f64::INFINITY; 2];
    for _ in 0..2 {
        for (op, best) in ops.iter().zip(best.iter_mut()) {
            let mut out = Mat::zeros(op.order(), 1);
            let t0 = Instant::now();
            op.kv(v.as_ref(), out.as_mut()).expect("K v");
            *best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    println!(
        "part 0: one K·v, n = {n}, p = {}: hand-written {:.2} s ({:.4} s/example), candle {:.2} s ({:.4} s/example): speed-up x{:.1}; load average after: {}",
        ops[0].num_params(),
        best[0],
        best[0] / n as f64,
        best[1],
        best[1] / n as f64,
        best[1] / best[0],
        load()
    );
}

fn main() {
    let model = env_or(
        "STATS_BENCH_MODEL",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/resnet9-mnist.safetensors"
        ),
    );
    let n = env_or("STATS_BENCH_N", "1000");
    let probes = env_or("STATS_BENCH_PROBES", "10,30,100");
    let big_n = env_or("STATS_BENCH_BIG_N", "10000");
    let big_probes = env_or("STATS_BENCH_BIG_PROBES", "10");
    let max_mem = env_or("STATS_BENCH_MAX_MEM", "8GiB");
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let dir: PathBuf = std::env::var("STATS_BENCH_JSON_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| scratch.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("the JSON directory");
    let base = ["--model", &model, "--data", "mnist", "--max-mem", &max_mem];

    println!("model {model}");
    let pass_n: usize = env_or("STATS_BENCH_PASS_N", "16").parse().unwrap_or(16);
    if pass_n > 0 {
        println!("load average before part 0: {}", load());
        product_time(&model, pass_n);
    }
    if n == "0" {
        return;
    }
    println!(
        "part 1: n = {n}, probes {probes}; load average before: {}",
        load()
    );
    let json = dir.join(format!("stats-n{n}.json"));
    let mut args = base.to_vec();
    args.extend([
        "--n",
        &n,
        "--estimate",
        "all",
        "--exact",
        "--probes",
        &probes,
    ]);
    let (doc, wall) = stats(&args, &json);
    println!("load average after: {} ({wall:.1} s wall)", load());
    header("products K·v/Jᵀz/Jw | s | speed-up vs exact");
    let exact = &doc["exact"];
    let exact_s = exact["seconds"].as_f64().unwrap_or(f64::NAN);
    let cells: Vec<String> = STATS
        .iter()
        .map(|s| cell(&exact["statistics"], s.0, None))
        .collect();
    println!(
        "| exact | - | {} | - | {exact_s:.1} | 1 |",
        cells.join(" | ")
    );
    for e in doc["estimates"].as_array().into_iter().flatten() {
        let cells: Vec<String> = STATS
            .iter()
            .map(|s| cell(&e["statistics"], s.0, Some(&e["relative_error"])))
            .collect();
        let secs = e["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {} | {secs:.1} | {:.2} |",
            e["method"].as_str().unwrap_or("?"),
            e["probes"],
            cells.join(" | "),
            products(e),
            exact_s / secs
        );
    }
    println!(
        "target products K·[1, Y]: {} in {:.1} s",
        doc["target_products"],
        doc["target_seconds"].as_f64().unwrap_or(f64::NAN)
    );

    if big_n == "0" {
        return;
    }
    println!(
        "\npart 2: n = {big_n}, matrix-free only, probes {big_probes}; load average before: {}",
        load()
    );
    let json = dir.join(format!("stats-n{big_n}-matrix-free.json"));
    let mut args = base.to_vec();
    args.extend([
        "--n",
        &big_n,
        "--estimate",
        "hutchpp,one-sided-forward",
        "--probes",
        &big_probes,
    ]);
    let (doc, wall) = stats(&args, &json);
    println!("load average after: {} ({wall:.1} s wall)", load());
    println!("| method | S | tr K | ‖K‖_F | r_eff | products K·v/Jᵀz/Jw | s |");
    println!("|---|---|---|---|---|---|---|");
    for e in doc["estimates"].as_array().into_iter().flatten() {
        let cells: Vec<String> = STATS[..3]
            .iter()
            .map(|s| cell(&e["statistics"], s.0, None))
            .collect();
        println!(
            "| {} | {} | {} | {} | {:.1} |",
            e["method"].as_str().unwrap_or("?"),
            e["probes"],
            cells.join(" | "),
            products(e),
            e["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
