//! `--precision f64` is f64 end to end (issue 11, item 5): the pipeline's kernel of a network whose inputs
//! are normalised in f64 equals an independent f64 computation, the brute-force oracle on inputs normalised
//! here from the raw bytes with the exact (f64) CIFAR constants, to 1e-12; inputs rounded to f32 do not.

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use ntk_pipeline::data::{Dataset, Normalization};
use ntk_pipeline::linalg::TileSource;
use ntk_pipeline::model::load::LoadedModel;
use ntk_pipeline::model::{Conv2d, Linear, Network, Op};
use ntk_pipeline::ntk::{brute, KernelSpec, NtkTiles, Outputs, Precision, Scale};
use ntk_pipeline::pipeline::inputs::Prepared;

const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f64; 3] = [0.2023, 0.1994, 0.2010];

fn param(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let len: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
    let v: Vec<f64> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// conv 3→4 (3×3), tanh, flatten, linear → 3 logits, on 3×5×5 images.
fn network() -> Network {
    let mut net = Network::new("tiny", [3, 5, 5]);
    net.then(
        "c1",
        Op::Conv2d(Conv2d {
            weight: param(&[4, 3, 3, 3], 1, 0.3),
            bias: Some(param(&[4], 2, 0.1)),
            stride: 1,
            padding: 1,
            groups: 1,
        }),
    );
    net.then("", Op::Tanh);
    net.then("", Op::Flatten);
    net.then(
        "fc",
        Op::Linear(Linear {
            weight: param(&[3, 100], 3, 0.1),
            bias: Some(param(&[3], 4, 0.1)),
        }),
    );
    net
}

fn dense(source: &dyn TileSource) -> Mat<f64> {
    let m = source.dim();
    let mut k = Mat::zeros(m, m);
    source.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

fn max_rel_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            diff = diff.max((a[(i, j)] - b[(i, j)]).abs());
            scale = scale.max(b[(i, j)].abs());
        }
    }
    diff / scale
}

#[test]
fn f64_kernel_uses_f64_normalised_inputs() {
    let (n, shape) = (4usize, [3usize, 5, 5]);
    let per: usize = shape.iter().product();
    let raw: Vec<u8> = (0..n * per).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let norm = Normalization {
        mean: MEAN.to_vec(),
        std: STD.to_vec(),
    };
    let dataset = Dataset::new("bytes", shape, raw.clone(), vec![0; n], 3, norm).unwrap();
    let prepared = Prepared {
        model: LoadedModel {
            network: network(),
            source: "tiny".into(),
            metadata: Default::default(),
        },
        dataset,
        order: (0..n).collect(),
        model_sha256: String::new(),
        data_sha256: String::new(),
    };
    let spec = KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    };
    let got = dense(&prepared.tiles_for(n, spec, 1 << 30).unwrap());
    // Independent f64 inputs: (x/255 − mean_c) / std_c from the raw bytes, CHW per image.
    let x: Vec<f64> = raw
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let c = (i % per) / (shape[1] * shape[2]);
            (b as f64 / 255.0 - MEAN[c]) / STD[c]
        })
        .collect();
    let x = Tensor::from_vec(x, (n, shape[0], shape[1], shape[2]), &Device::Cpu).unwrap();
    let want = brute::kernel(&prepared.model.network, &x, &spec).unwrap();
    let err = max_rel_diff(&got, &want);
    assert!(
        err <= 1e-12,
        "f64 kernel differs from the f64 oracle by {err:e}"
    );
    // The same kernel from f32-rounded inputs is visibly different, so the check above has teeth.
    let x32 = prepared.inputs(n).unwrap();
    let k32 = dense(&NtkTiles::new(&prepared.model.network, x32, spec, 1 << 30).unwrap());
    let err32 = max_rel_diff(&k32, &want);
    assert!(err32 > 1e-10, "f32-rounded inputs agree to {err32:e}?");
}
