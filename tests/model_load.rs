//! Models: forward pass against nested-loop references, the JSON spec, `.pth` vs `.safetensors`, architecture
//! recognition, the Hugging Face cache, and the `eval` subcommand (accuracy and bad input, exit code 2).
//!
//! `.pth` files are written by hand here (torch is not installed): a zip archive `archive/data.pkl` holding a
//! protocol-2 pickle of a dict of `torch._utils._rebuild_tensor_v2(...)` calls with persistent-id storages,
//! and the raw little-endian storages in `archive/data/<key>`, the layout `torch.save` uses since torch 1.6.

mod tolerance;

use tolerance::within;

use candle_core::{DType, Device, Tensor};
use ntk_pipeline::model::arch::{self, spec::Spec};
use ntk_pipeline::model::load::{load_model, save_safetensors};
use ntk_pipeline::model::weights::resolve_hf;
use ntk_pipeline::model::{BatchNorm2d, Conv2d, Init, Linear, Network, Op, ParamSource};
use ntk_pipeline::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------------------------------------------------
// Helpers: random parameters, tensors as f64 vectors, nested-loop reference layers.

/// Fresh random parameters: uniform(±1/sqrt(fan_in)) weights, BatchNorm γ / running var in [0.5, 1.5] and
/// β / running mean in [−0.2, 0.2], so every BatchNorm term matters.
struct RandomParams(ChaCha8Rng);

impl RandomParams {
    fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl ParamSource for RandomParams {
    fn tensor(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let (lo, hi) = match init {
            Init::KaimingUniform { fan_in } | Init::BiasUniform { fan_in } => {
                let b = 1.0 / (fan_in as f32).sqrt();
                (-b, b)
            }
            Init::Ones => (0.5, 1.5),
            Init::Zeros => (-0.2, 0.2),
        };
        let v: Vec<f32> = (0..n).map(|_| self.0.gen_range(lo..hi)).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max |a − b| / max |b|.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A (batch, C, H, W) activation in f64 for the reference computations.
#[derive(Clone, Debug)]
struct Act {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl Act {
    fn from(t: &Tensor) -> Act {
        let d = t.dims();
        Act {
            n: d[0],
            c: d[1],
            h: d[2],
            w: d[3],
            v: vec64(t),
        }
    }
    fn at(&self, n: usize, c: usize, y: usize, x: usize) -> f64 {
        self.v[((n * self.c + c) * self.h + y) * self.w + x]
    }
    fn map(&self, f: impl Fn(f64) -> f64) -> Act {
        Act {
            v: self.v.iter().map(|&x| f(x)).collect(),
            ..self.clone()
        }
    }
}

/// PyTorch conv2d with zero padding and groups, by definition.
fn ref_conv(
    x: &Act,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Act {
    let wd = weight.dims().to_vec();
    let (c_out, c_in_g, k) = (wd[0], wd[1], wd[2]);
    let wv = vec64(weight);
    let bv = bias.map(vec64);
    let oh = (x.h + 2 * pad - k) / stride + 1;
    let ow = (x.w + 2 * pad - k) / stride + 1;
    let c_out_g = c_out / groups;
    let mut v = vec![0.0; x.n * c_out * oh * ow];
    for n in 0..x.n {
        for co in 0..c_out {
            let g = co / c_out_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.as_ref().map_or(0.0, |b| b[co]);
                    for ci in 0..c_in_g {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                    continue;
                                }
                                let xv = x.at(n, g * c_in_g + ci, iy as usize, ix as usize);
                                s += wv[((co * c_in_g + ci) * k + ky) * k + kx] * xv;
                            }
                        }
                    }
                    v[((n * c_out + co) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    Act {
        n: x.n,
        c: c_out,
        h: oh,
        w: ow,
        v,
    }
}

/// Eval-mode BatchNorm: γ (x − μ) / sqrt(σ² + ε) + β.
fn ref_bn(x: &Act, bn: &BatchNorm2d) -> Act {
    let (g, b, m, var) = (
        vec64(&bn.weight),
        vec64(&bn.bias),
        vec64(&bn.running_mean),
        vec64(&bn.running_var),
    );
    let mut out = x.clone();
    for (i, o) in out.v.iter_mut().enumerate() {
        let c = (i / (x.h * x.w)) % x.c;
        *o = g[c] * (*o - m[c]) / (var[c] + bn.eps).sqrt() + b[c];
    }
    out
}

/// Max or average pooling over k×k windows with stride s, no padding.
fn ref_pool(x: &Act, k: usize, s: usize, max: bool) -> Act {
    let (oh, ow) = ((x.h - k) / s + 1, (x.w - k) / s + 1);
    let mut v = Vec::with_capacity(x.n * x.c * oh * ow);
    for n in 0..x.n {
        for c in 0..x.c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx)));
                    let vals: Vec<f64> = window
                        .map(|(ky, kx)| x.at(n, c, oy * s + ky, ox * s + kx))
                        .collect();
                    v.push(if max {
                        vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        vals.iter().sum::<f64>() / vals.len() as f64
                    });
                }
            }
        }
    }
    Act {
        n: x.n,
        c: x.c,
        h: oh,
        w: ow,
        v,
    }
}

/// y = x Wᵀ + b on (batch, features) rows.
fn ref_linear(rows: &[Vec<f64>], weight: &Tensor, bias: Option<&Tensor>) -> Vec<Vec<f64>> {
    let (o, i) = (weight.dims()[0], weight.dims()[1]);
    let w = vec64(weight);
    let b = bias.map(vec64);
    rows.iter()
        .map(|r| {
            assert_eq!(r.len(), i);
            (0..o)
                .map(|j| {
                    b.as_ref().map_or(0.0, |b| b[j])
                        + (0..i).map(|k| w[j * i + k] * r[k]).sum::<f64>()
                })
                .collect()
        })
        .collect()
}

fn flatten(x: &Act) -> Vec<Vec<f64>> {
    x.v.chunks(x.c * x.h * x.w).map(|c| c.to_vec()).collect()
}

fn conv_of(net: &Network, i: usize) -> &Conv2d {
    match &net.nodes[i].op {
        Op::Conv2d(c) => c,
        other => panic!("node {i} is {}", other.kind()),
    }
}
fn bn_of(net: &Network, i: usize) -> &BatchNorm2d {
    match &net.nodes[i].op {
        Op::BatchNorm2d(b) => b,
        other => panic!("node {i} is {}", other.kind()),
    }
}
fn linear_of(net: &Network, i: usize) -> &Linear {
    match &net.nodes[i].op {
        Op::Linear(l) => l,
        other => panic!("node {i} is {}", other.kind()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Forward passes against nested loops.

#[test]
fn forward_matches_nested_loops_with_residual_add() {
    use ntk_pipeline::model::arch::{bn_op, conv_op, linear_op};
    let mut p = RandomParams::new(1);
    let mut net = Network::new("tiny", [2, 8, 8]);
    let c1 = net.then("c1", conv_op(&mut p, "c1", 2, 3, 3, 1, 1, 1, true).unwrap());
    let b1 = net.then("b1", bn_op(&mut p, "b1", 3).unwrap());
    net.then("", Op::Relu);
    let pool = net.then(
        "",
        Op::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    let c2 = net.then(
        "c2",
        conv_op(&mut p, "c2", 3, 3, 1, 1, 0, 1, false).unwrap(),
    );
    net.push("", Op::Add, vec![c2, pool]);
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 2,
            stride: 1,
        },
    );
    let dw = net.then("dw", conv_op(&mut p, "dw", 3, 3, 3, 2, 1, 3, true).unwrap());
    net.then("", Op::Flatten);
    let fc = net.then("fc", linear_op(&mut p, "fc", 12, 4, true).unwrap());

    let x = random_input(&[2, 2, 8, 8], 7);
    let got = vec64(&net.forward(&x).unwrap());

    let a = ref_conv(
        &Act::from(&x),
        &conv_of(&net, c1).weight,
        conv_of(&net, c1).bias.as_ref(),
        1,
        1,
        1,
    );
    let a = ref_bn(&a, bn_of(&net, b1)).map(|v| v.max(0.0));
    let pooled = ref_pool(&a, 2, 2, true);
    let mut sum = ref_conv(&pooled, &conv_of(&net, c2).weight, None, 1, 0, 1);
    sum.v.iter_mut().zip(&pooled.v).for_each(|(s, p)| *s += p);
    let a = ref_pool(&sum, 2, 1, false);
    let a = ref_conv(
        &a,
        &conv_of(&net, dw).weight,
        conv_of(&net, dw).bias.as_ref(),
        2,
        1,
        3,
    );
    assert_eq!((a.c, a.h, a.w), (3, 2, 2));
    let want: Vec<f64> = ref_linear(
        &flatten(&a),
        &linear_of(&net, fc).weight,
        linear_of(&net, fc).bias.as_ref(),
    )
    .concat();
    // f32 arithmetic in the network vs f64 here: a few ulps of f32 over sums of < 100 terms.
    within(
        "f32 network vs f64 reference",
        rel_diff(&got, &want),
        1e-5, /* measured 7.4e-8 */
    );
}

const SAMPLE_SPEC: &str = r#"{
  "input": [3, 12, 12],
  "layers": [
    {"type": "conv2d", "name": "features.0", "out": 4, "kernel": 3, "stride": 1, "padding": 1, "bias": true},
    {"type": "batchnorm2d", "name": "features.1"},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel": 2},
    {"type": "conv2d", "name": "features.4", "out": 4, "kernel": 3, "stride": 2, "padding": 1, "groups": 2, "bias": false},
    {"type": "avgpool2d", "kernel": 2, "stride": 1},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.5},
    {"type": "linear", "name": "classifier.0", "out": 6},
    {"type": "tanh"},
    {"type": "linear", "name": "classifier.2", "out": 3, "bias": false}
  ]
}"#;

#[test]
fn spec_builds_named_layers_and_matches_nested_loops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.json");
    std::fs::write(&path, SAMPLE_SPEC).unwrap();
    let arch_name = path.to_str().unwrap();
    let net = arch::build(arch_name, None, [3, 12, 12], 3, &mut RandomParams::new(2)).unwrap();
    let names: Vec<(String, Vec<usize>)> = net
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let expect: Vec<(String, Vec<usize>)> = [
        ("features.0.weight", vec![4, 3, 3, 3]),
        ("features.0.bias", vec![4]),
        ("features.1.weight", vec![4]),
        ("features.1.bias", vec![4]),
        ("features.4.weight", vec![4, 2, 3, 3]),
        ("classifier.0.weight", vec![6, 4 * 2 * 2]),
        ("classifier.0.bias", vec![6]),
        ("classifier.2.weight", vec![3, 6]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(names, expect);
    assert_eq!(net.buffers().len(), 2);

    let x = random_input(&[3, 3, 12, 12], 8);
    let got = vec64(&net.forward(&x).unwrap());
    let (c0, b1, c4, l0, l2) = (1, 2, 5, 9, 11);
    let a = ref_conv(
        &Act::from(&x),
        &conv_of(&net, c0).weight,
        conv_of(&net, c0).bias.as_ref(),
        1,
        1,
        1,
    );
    let a = ref_pool(&ref_bn(&a, bn_of(&net, b1)).map(|v| v.max(0.0)), 2, 2, true);
    let a = ref_pool(
        &ref_conv(&a, &conv_of(&net, c4).weight, None, 2, 1, 2),
        2,
        1,
        false,
    );
    let h = ref_linear(
        &flatten(&a),
        &linear_of(&net, l0).weight,
        linear_of(&net, l0).bias.as_ref(),
    );
    let h: Vec<Vec<f64>> = h
        .into_iter()
        .map(|r| r.into_iter().map(f64::tanh).collect())
        .collect();
    let want = ref_linear(&h, &linear_of(&net, l2).weight, None).concat();
    within(
        "f32 network vs f64 reference (2)",
        rel_diff(&got, &want),
        1e-5, /* measured 9.3e-8 */
    );

    // The spec travels with the weights: loading needs no --arch.
    let weights = dir.path().join("net.safetensors");
    save_safetensors(&net, &weights, HashMap::new()).unwrap();
    let loaded = load_model(weights.to_str().unwrap(), None, None, None, None).unwrap();
    assert_eq!(
        loaded.metadata.get("arch").map(String::as_str),
        Some(format!("spec:{arch_name}").as_str())
    );
    assert_eq!(
        vec64(&loaded.network.forward(&x).unwrap()),
        vec64(&net.forward(&x).unwrap())
    );
}

#[test]
fn spec_errors_are_clear() {
    let unknown = r#"{"input": [1, 4, 4], "layers": [{"type": "flatten"}, {"type": "softmax2"}]}"#;
    let msg = Spec::parse(unknown).unwrap_err().to_string();
    assert!(
        msg.contains("softmax2") && msg.contains("conv2d") && msg.contains("adaptiveavgpool2d"),
        "{msg}"
    );
    let no_flatten = r#"{"input": [1, 4, 4], "layers": [{"type": "linear", "out": 2}]}"#;
    let err = Spec::parse(no_flatten)
        .unwrap()
        .build("x", &mut RandomParams::new(0))
        .unwrap_err();
    assert!(err.to_string().contains("flatten"), "{err}");
    let bad_field =
        r#"{"input": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernal": 3}]}"#;
    assert!(Spec::parse(bad_field)
        .unwrap_err()
        .to_string()
        .contains("kernal"));
    let adaptive = r#"{"input": [2, 6, 6], "layers": [{"type": "adaptiveavgpool2d", "output": [3, 2]}, {"type": "flatten"}]}"#;
    let net = Spec::parse(adaptive)
        .unwrap()
        .build("a", &mut RandomParams::new(0))
        .unwrap();
    assert_eq!(
        net.forward(&random_input(&[1, 2, 6, 6], 1)).unwrap().dims(),
        &[1, 12]
    );
}

// ---------------------------------------------------------------------------------------------------------
// .pth writing by hand.

/// Pickle opcodes used (protocol 2). Globals are memoised (BINPUT once, BINGET after) as CPython's pickler
/// and so torch.save do.
struct Pickle(Vec<u8>, Vec<String>);

impl Pickle {
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}\n{name}\n");
        if let Some(i) = self.1.iter().position(|k| *k == key) {
            self.0.extend_from_slice(&[b'h', i as u8]);
        } else {
            self.0.push(b'c');
            self.0.extend_from_slice(key.as_bytes());
            self.0.extend_from_slice(&[b'q', self.1.len() as u8]);
            self.1.push(key);
        }
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, i: usize) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&(i as i32).to_le_bytes());
        self
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b'(');
        v.iter().for_each(|&i| {
            self.int(i);
        });
        self.op(b't')
    }
    fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
}

/// A stored tensor: name, shape, values, storage type (`FloatStorage`, `DoubleStorage`, `LongStorage`).
struct PthTensor {
    name: String,
    shape: Vec<usize>,
    values: Vec<f64>,
    storage: &'static str,
}

/// Write a torch-1.6+ style `.pth`; the state dict is nested under `nest` in a checkpoint dict if given.
fn write_pth(path: &Path, tensors: &[PthTensor], nest: Option<&str>) {
    let mut p = Pickle(vec![0x80, 2], vec![]);
    if let Some(key) = nest {
        p.op(b'}').op(b'(').str("epoch").int(7).str(key);
    }
    p.ordered_dict().op(b'(');
    for (k, t) in tensors.iter().enumerate() {
        let numel: usize = t.shape.iter().product();
        let mut strides = vec![1; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * t.shape[d + 1];
        }
        p.str(&t.name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(');
        p.op(b'(')
            .str("storage")
            .global("torch", t.storage)
            .str(&k.to_string())
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q');
        p.int(0)
            .ints(&t.shape)
            .ints(&strides)
            .op(0x89)
            .ordered_dict()
            .op(b't')
            .op(b'R');
    }
    p.op(b'u');
    if nest.is_some() {
        p.op(b'u');
    }
    p.op(b'.');

    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&p.0).unwrap();
    for (k, t) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{k}"), opts).unwrap();
        let bytes: Vec<u8> = match t.storage {
            "FloatStorage" => t
                .values
                .iter()
                .flat_map(|v| (*v as f32).to_le_bytes())
                .collect(),
            "DoubleStorage" => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            "LongStorage" => t
                .values
                .iter()
                .flat_map(|v| (*v as i64).to_le_bytes())
                .collect(),
            other => panic!("storage {other}"),
        };
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// The network's parameters and buffers as `.pth` tensors named `{prefix}{name}`, plus BatchNorm counters.
fn pth_tensors(net: &Network, prefix: &str, storage: &'static str) -> Vec<PthTensor> {
    let mut out: Vec<PthTensor> = net
        .parameters()
        .into_iter()
        .chain(net.buffers())
        .map(|(n, t)| PthTensor {
            name: format!("{prefix}{n}"),
            shape: t.dims().to_vec(),
            values: vec64(t),
            storage,
        })
        .collect();
    let counters: Vec<String> = net
        .buffers()
        .iter()
        .filter(|(n, _)| n.ends_with("running_mean"))
        .map(|(n, _)| n.replace("running_mean", "num_batches_tracked"))
        .collect();
    for n in counters {
        out.push(PthTensor {
            name: format!("{prefix}{n}"),
            shape: vec![],
            values: vec![3.0],
            storage: "LongStorage",
        });
    }
    out
}

/// Safetensors of the network without any metadata (as exported by other code bases).
fn save_plain_safetensors(net: &Network, path: &Path) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = net
        .parameters()
        .into_iter()
        .chain(net.buffers())
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                n,
                t.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = data.iter().map(|(n, s, b)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn pth_and_safetensors_give_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // LeNet on 1×28×28 (f32 storage, nested under "state_dict", DataParallel prefix) and a narrow ResNet9
    // with BatchNorm buffers (f64 storage, nested under "net").
    let cases = [
        (
            "lenet",
            None,
            [1, 28, 28],
            "state_dict",
            "FloatStorage",
            "module.",
        ),
        ("resnet9", Some(8), [3, 32, 32], "net", "DoubleStorage", ""),
    ];
    for (arch_name, width, input, nest, storage, prefix) in cases {
        let net = arch::build(arch_name, width, input, 10, &mut RandomParams::new(3)).unwrap();
        let st = dir.path().join(format!("{arch_name}.safetensors"));
        let pth = dir.path().join(format!("{arch_name}.pth"));
        save_safetensors(&net, &st, HashMap::new()).unwrap();
        write_pth(&pth, &pth_tensors(&net, prefix, storage), Some(nest));
        let from_st = load_model(st.to_str().unwrap(), None, None, None, None).unwrap();
        let from_pth = load_model(pth.to_str().unwrap(), None, None, None, None).unwrap();
        assert_eq!(from_pth.network.arch, arch_name, "recognised from names");
        assert_eq!(from_pth.network.input_shape, input);
        assert_eq!(from_pth.network.num_params(), net.num_params());
        let x = random_input(&[3, input[0], input[1], input[2]], 9);
        let a = vec64(&from_st.network.forward(&x).unwrap());
        let b = vec64(&from_pth.network.forward(&x).unwrap());
        // Same f32 values (f64 storage round-trips f32 exactly), same code: bitwise equal outputs.
        assert_eq!(a, b, "{arch_name}");
        assert_eq!(a, vec64(&net.forward(&x).unwrap()), "{arch_name}");
        // The memory-lean forward (drops activations after last use) equals the cached one.
        let cached = net.forward_cached(&x).unwrap();
        assert_eq!(a, vec64(cached.last().unwrap()), "{arch_name}");
    }
    // A flat (un-nested) state dict loads too.
    let net = arch::build("mlp", Some(16), [1, 28, 28], 10, &mut RandomParams::new(4)).unwrap();
    let pth = dir.path().join("mlp.pth");
    write_pth(&pth, &pth_tensors(&net, "", "FloatStorage"), None);
    let loaded = load_model(pth.to_str().unwrap(), None, None, None, None).unwrap();
    assert_eq!(
        (loaded.network.arch.as_str(), loaded.network.num_params()),
        ("mlp", net.num_params())
    );

    // f16 and bf16 safetensors (no metadata) load as f32 with the stored (rounded) values.
    for dtype in [DType::F16, DType::BF16] {
        let low = net.to_dtype(dtype).unwrap();
        let tensors: HashMap<String, Tensor> = low
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect();
        let path = dir.path().join(format!("mlp-{dtype:?}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let loaded = load_model(path.to_str().unwrap(), None, None, None, None).unwrap();
        assert_eq!(loaded.network.dtype(), DType::F32);
        let rounded = low.to_dtype(DType::F32).unwrap();
        let x = random_input(&[2, 1, 28, 28], 11);
        let got = vec64(&loaded.network.forward(&x).unwrap());
        assert_eq!(got, vec64(&rounded.forward(&x).unwrap()), "{dtype:?}");
        assert_ne!(
            got,
            vec64(&net.forward(&x).unwrap()),
            "{dtype:?} rounding should show"
        );
    }
}

#[test]
fn architectures_are_recognised_from_tensor_names() {
    let dir = tempfile::tempdir().unwrap();
    for (arch_name, params) in [
        ("resnet18", 11_173_962),
        ("resnet50", 23_520_842),
        ("mobilenet", 3_217_226),
    ] {
        let net = arch::build(arch_name, None, [3, 32, 32], 10, &mut RandomParams::new(5)).unwrap();
        assert_eq!(net.num_params(), params, "{arch_name}");
        let path = dir.path().join(format!("{arch_name}.safetensors"));
        save_plain_safetensors(&net, &path);
        let loaded =
            load_model(path.to_str().unwrap(), None, None, Some([1, 28, 28]), None).unwrap();
        assert_eq!(loaded.network.arch, arch_name);
        assert_eq!(loaded.network.input_shape, [3, 32, 32]);
        assert_eq!(loaded.network.num_params(), params);
        let x = random_input(&[2, 3, 32, 32], 10);
        assert_eq!(
            vec64(&loaded.network.forward(&x).unwrap()),
            vec64(&net.forward(&x).unwrap()),
            "{arch_name}"
        );
        std::fs::remove_file(&path).unwrap();
    }
    // A non-standard ResNet (width 16, [1, 2, 1, 1], 5 classes) gets a generic name and its own width.
    let net = arch::build(
        "resnet-basic-1-2-1-1",
        Some(16),
        [3, 32, 32],
        5,
        &mut RandomParams::new(6),
    )
    .unwrap();
    let path = dir.path().join("odd.safetensors");
    save_plain_safetensors(&net, &path);
    let loaded = load_model(path.to_str().unwrap(), None, None, None, None).unwrap();
    assert_eq!(loaded.network.arch, "resnet-basic-1-2-1-1");
    assert_eq!(loaded.network.num_outputs().unwrap(), 5);
    assert_eq!(loaded.network.num_params(), net.num_params());
}

#[test]
fn mismatched_weights_list_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let net = arch::build(
        "resnet9",
        Some(8),
        [3, 32, 32],
        10,
        &mut RandomParams::new(7),
    )
    .unwrap();
    let mut tensors = pth_tensors(&net, "", "FloatStorage");
    tensors.retain(|t| t.name != "layer2.0.bn1.running_var");
    for t in tensors
        .iter_mut()
        .filter(|t| t.name == "layer3.0.conv1.weight")
    {
        t.shape = vec![32, 16, 3, 1];
        t.values.truncate(32 * 16 * 3);
    }
    tensors.push(PthTensor {
        name: "extra.weight".into(),
        shape: vec![2],
        values: vec![0.0; 2],
        storage: "FloatStorage",
    });
    let pth = dir.path().join("broken.pth");
    write_pth(&pth, &tensors, None);
    let err = load_model(pth.to_str().unwrap(), None, None, None, None).unwrap_err();
    assert!(matches!(err, Error::Model(_)));
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    for needle in [
        "`resnet9`",
        "width 8",
        "layer2.0.bn1.running_var [16]",
        "layer3.0.conv1.weight: expected [32, 16, 3, 3], found [32, 16, 3, 1]",
        "extra.weight [2]",
    ] {
        assert!(msg.contains(needle), "missing `{needle}` in:\n{msg}");
    }
    // Forcing another architecture names it in the message.
    let msg = load_model(pth.to_str().unwrap(), Some("resnet18"), Some(8), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`resnet18` (from --arch") && msg.contains("layer1.1.conv1.weight"),
        "{msg}"
    );
    let msg = load_model(pth.to_str().unwrap(), Some("resnet7"), None, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown architecture `resnet7`") && msg.contains("mobilenet"),
        "{msg}"
    );
}

#[test]
fn hugging_face_cache_layout_resolves_offline() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--someorg--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/0123abc")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abc").unwrap();
    std::fs::write(repo.join("snapshots/0123abc/pytorch_model.bin"), b"x").unwrap();
    std::fs::write(repo.join("snapshots/0123abc/other.safetensors"), b"x").unwrap();
    let found = |m: &str| resolve_hf(m, hub.path()).unwrap();
    assert!(found("someorg/tiny")
        .unwrap()
        .ends_with("snapshots/0123abc/pytorch_model.bin"));
    assert!(found("someorg/tiny/other.safetensors")
        .unwrap()
        .ends_with("snapshots/0123abc/other.safetensors"));
    let msg = found("someorg/missing").unwrap_err().to_string();
    assert!(
        msg.contains("someorg/missing") && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(resolve_hf("plainname", hub.path()).is_none());
}

// ---------------------------------------------------------------------------------------------------------
// The `eval` subcommand end to end.

/// Write an IDX test split of 28×28 images; image i is black except pixel `hot[i]` (0..10).
fn write_idx(dir: &Path, hot: &[usize], labels: &[u8]) {
    write_idx_split(dir, "t10k", hot, labels);
}

/// IDX image and label files of one split (`t10k` or `train`) with one hot pixel per image.
fn write_idx_split(dir: &Path, split: &str, hot: &[usize], labels: &[u8]) {
    let n = hot.len();
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    for &h in hot {
        let mut pix = vec![0u8; 28 * 28];
        pix[h] = 255;
        img.extend_from_slice(&pix);
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend_from_slice(labels);
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
}

/// A spec network flatten → linear whose logit k is pixel k: it predicts the index of the hot pixel.
fn write_pixel_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let spec = dir.join("pixel.json");
    std::fs::write(
        &spec,
        r#"{"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "linear", "name": "head", "out": 10}]}"#,
    )
    .unwrap();
    let mut w = vec![0f32; 10 * 784];
    (0..10).for_each(|k| w[k * 784 + k] = 1.0);
    let mut net = Network::new(format!("spec:{}", spec.display()), [1, 28, 28]);
    net.then("", Op::Flatten);
    let weight = Tensor::from_vec(w, (10, 784), &Device::Cpu).unwrap();
    let bias = Tensor::zeros(10, DType::F32, &Device::Cpu).unwrap();
    net.then(
        "head",
        Op::Linear(Linear {
            weight,
            bias: Some(bias),
        }),
    );
    let weights = dir.join("pixel.safetensors");
    save_safetensors(&net, &weights, HashMap::new()).unwrap();
    (spec, weights)
}

fn cli(args: &[&str], envs: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"));
    cmd.args(args).arg("--quiet");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eval_reports_accuracy_and_per_class_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    std::fs::create_dir(&data).unwrap();
    // 23 images: hot pixel i % 10; the label agrees for i < 15 and is off by one after.
    let hot: Vec<usize> = (0..23).map(|i| i % 10).collect();
    let labels: Vec<u8> = hot
        .iter()
        .enumerate()
        .map(|(i, &h)| if i < 15 { h } else { (h + 1) % 10 } as u8)
        .collect();
    write_idx(&data, &hot, &labels);
    let (_, weights) = write_pixel_model(dir.path());
    let json = dir.path().join("eval.json");
    let (code, stdout, stderr) = cli(
        &[
            "eval",
            "--model",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--split",
            "test",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["n"], 23);
    assert_eq!(report["correct"], 15);
    assert_eq!(report["accuracy"].as_f64(), Some(15.0 / 23.0));
    for k in 0..10 {
        let count = labels.iter().filter(|&&l| l as usize == k).count();
        let correct = (0..23)
            .filter(|&i| labels[i] as usize == k && hot[i] == k)
            .count();
        assert_eq!(report["per_class"][k]["count"], count, "class {k}");
        assert_eq!(report["per_class"][k]["correct"], correct, "class {k}");
    }
    assert!(stdout.contains("accuracy 65.22% (15/23)"), "{stdout}");
    assert!(
        report.get("train_accuracy").is_none(),
        "no training split here"
    );

    // With a training split too, eval reports its eval-mode accuracy besides: 12 images, 3 mislabelled.
    let train_hot: Vec<usize> = (0..12).map(|i| (i * 3) % 10).collect();
    let train_labels: Vec<u8> = train_hot
        .iter()
        .enumerate()
        .map(|(i, &h)| if i % 4 == 1 { (h + 5) % 10 } else { h } as u8)
        .collect();
    write_idx_split(&data, "train", &train_hot, &train_labels);
    let (code, stdout, stderr) = cli(
        &[
            "eval",
            "--model",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--split",
            "test",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["correct"], 15);
    assert_eq!(report["train_accuracy"]["n"], 12);
    assert_eq!(report["train_accuracy"]["correct"], 9);
    assert!(
        stdout.contains("training accuracy (eval mode, first 12 training examples): 75.00% (9/12)"),
        "{stdout}"
    );

    // --limit: the first 10 are all right.
    let (code, stdout, _) = cli(
        &[
            "eval",
            "--model",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--split",
            "test",
            "--limit",
            "10",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("(10/10)"), "{stdout}");

    // The same weights through a hand-made Hugging Face cache.
    let hub = dir.path().join("hub");
    let snap = hub.join("models--me--pixel/snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(hub.join("models--me--pixel/refs")).unwrap();
    std::fs::write(hub.join("models--me--pixel/refs/main"), "abc").unwrap();
    std::fs::copy(&weights, snap.join("model.safetensors")).unwrap();
    let (code, stdout, stderr) = cli(
        &[
            "eval",
            "--model",
            "me/pixel",
            "--data",
            data.to_str().unwrap(),
            "--split",
            "test",
        ],
        &[("HF_HUB_CACHE", &hub)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(15/23)"), "{stdout}");
}

#[test]
fn eval_bad_input_exits_2_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    std::fs::create_dir(&data).unwrap();
    write_idx(&data, &[1, 2, 3], &[1, 2, 3]);
    let (spec, weights) = write_pixel_model(dir.path());
    let d = data.to_str().unwrap();
    let run = |model: &str, arch: Option<&str>| {
        let mut args = vec!["eval", "--model", model, "--data", d, "--split", "test"];
        if let Some(a) = arch {
            args.extend(["--arch", a]);
        }
        cli(&args, &[])
    };

    // Weights missing a tensor, and weights with a wrong shape.
    let mut net = Network::new("spec", [1, 28, 28]);
    net.then("", Op::Flatten);
    let w = Tensor::zeros((10, 784), DType::F32, &Device::Cpu).unwrap();
    net.then(
        "head",
        Op::Linear(Linear {
            weight: w,
            bias: None,
        }),
    );
    let nobias = dir.path().join("nobias.safetensors");
    save_safetensors(&net, &nobias, HashMap::new()).unwrap();
    let (code, _, stderr) = run(nobias.to_str().unwrap(), Some(spec.to_str().unwrap()));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("missing tensors") && stderr.contains("head.bias [10]"),
        "{stderr}"
    );

    let wide = dir.path().join("wide.json");
    std::fs::write(
        &wide,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("\"out\": 10", "\"out\": 12"),
    )
    .unwrap();
    let (code, _, stderr) = run(weights.to_str().unwrap(), Some(wide.to_str().unwrap()));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("head.weight: expected [12, 784], found [10, 784]"),
        "{stderr}"
    );

    // Unknown layer type in a spec; unknown architecture name; missing model file.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "softmax"}]}"#,
    )
    .unwrap();
    let (code, _, stderr) = run(weights.to_str().unwrap(), Some(bad.to_str().unwrap()));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown type \"softmax\"") && stderr.contains("known types: conv2d"),
        "{stderr}"
    );
    let (code, _, stderr) = run(weights.to_str().unwrap(), Some("resnet7"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown architecture `resnet7`"),
        "{stderr}"
    );
    let (code, _, stderr) = run(dir.path().join("nope.safetensors").to_str().unwrap(), None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nope.safetensors"), "{stderr}");
    // A file that is neither safetensors nor a zip.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let (code, _, stderr) = run(junk.to_str().unwrap(), None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("junk.pth"), "{stderr}");
    // A legacy (pre-1.6) torch.save file starts with a bare pickle.
    let legacy_magic = [
        0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    std::fs::write(&junk, legacy_magic).unwrap();
    let (code, _, stderr) = run(junk.to_str().unwrap(), None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("legacy"), "{stderr}");
    // A zip checkpoint without a state dict in it.
    let empty = dir.path().join("empty.pth");
    write_pth(&empty, &[], Some("optimizer"));
    let (code, _, stderr) = run(empty.to_str().unwrap(), None);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no tensors found") && stderr.contains("state_dict"),
        "{stderr}"
    );
}
