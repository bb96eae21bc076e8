//! Size checks of a JSON sequential spec, made before any tensor is allocated: every layer's parameter count
//! and output size in checked 64-bit arithmetic, against limits that an NTK run could hold. Without them a
//! spec with a 10¹²-output linear layer aborted the process (SIGABRT) in the allocator.

use super::spec::{LayerSpec, Spec};
use crate::model::layers::Op;
use crate::{Error, Result};

/// Most parameters a spec may have: 2³¹ ≈ 2.1·10⁹, i.e. 8.6 GB in f32 and 17 GB in the f64 copy that the
/// NTK runs on, beyond any network this tool can form a kernel of.
pub const MAX_PARAMS: u64 = 1 << 31;

/// Most values one layer may output per example: 2²⁸ ≈ 2.7·10⁸ (1 GiB in f32, per example).
pub const MAX_ACTIVATIONS: u64 = 1 << 28;

/// Check `spec`'s sizes layer by layer. Shape errors that [`Spec::build`] reports precisely (a window larger
/// than its input, a linear layer on an image) end the walk without an error here.
pub fn check_sizes(spec: &Spec) -> Result<()> {
    let too_big = |i: usize, what: String| {
        Error::Model(format!(
            "layer {i}: {what}; a spec may have at most {MAX_PARAMS} parameters and {MAX_ACTIVATIONS} \
             outputs per layer and example; check the sizes in the spec"
        ))
    };
    let mul = |a: u64, b: u64| a.saturating_mul(b);
    let [c0, h0, w0] = spec.input.map(|v| v as u64);
    let input = mul(mul(c0, h0), w0);
    if input > MAX_ACTIVATIONS {
        return Err(too_big(
            0,
            format!("the input {:?} has {input} values", spec.input),
        ));
    }
    let mut image = Some([c0, h0, w0]);
    let mut flat = 0u64;
    let mut params = 0u64;
    let window = |n: u64, k: u64, s: u64, p: u64| -> Option<u64> {
        let padded = n.checked_add(p.checked_mul(2)?)?;
        (padded >= k && s > 0).then(|| (padded - k) / s + 1)
    };
    for (i, layer) in spec.layers.iter().enumerate() {
        let (layer_params, out) = match (layer, image) {
            (
                LayerSpec::Conv2d {
                    out,
                    kernel,
                    stride,
                    padding,
                    groups,
                    bias,
                    ..
                },
                Some([c, h, w]),
            ) => {
                let (o, k, s, p) = (*out as u64, *kernel as u64, *stride as u64, *padding as u64);
                let (Some(oh), Some(ow)) = (window(h, k, s, p), window(w, k, s, p)) else {
                    return Ok(());
                };
                let weights = mul(mul(o, c / (*groups as u64).max(1)), mul(k, k));
                image = Some([o, oh, ow]);
                (
                    weights.saturating_add(if *bias { o } else { 0 }),
                    mul(mul(o, oh), ow),
                )
            }
            (LayerSpec::Linear { out, bias, .. }, None) => {
                let o = *out as u64;
                let weights = mul(o, flat);
                flat = o;
                (weights.saturating_add(if *bias { o } else { 0 }), o)
            }
            (LayerSpec::BatchNorm2d { .. }, Some([c, h, w])) => (mul(4, c), mul(mul(c, h), w)),
            (LayerSpec::Plain(Op::Flatten), Some([c, h, w])) => {
                image = None;
                flat = mul(mul(c, h), w);
                (0, flat)
            }
            (
                LayerSpec::MaxPool2d { kernel, stride } | LayerSpec::AvgPool2d { kernel, stride },
                Some([c, h, w]),
            ) => {
                let (k, s) = (*kernel as u64, *stride as u64);
                let (Some(oh), Some(ow)) = (window(h, k, s, 0), window(w, k, s, 0)) else {
                    return Ok(());
                };
                image = Some([c, oh, ow]);
                (0, mul(mul(c, oh), ow))
            }
            (LayerSpec::AdaptiveAvgPool2d { output }, Some([c, _, _])) => {
                let [a, b] = output.map(|v| v as u64);
                image = Some([c, a, b]);
                (0, mul(mul(c, a), b))
            }
            (LayerSpec::Plain(_), Some([c, h, w])) => (0, mul(mul(c, h), w)),
            (LayerSpec::Plain(_), None) => (0, flat),
            // A layer on the wrong kind of input: `Spec::build` says so.
            _ => return Ok(()),
        };
        params = params.saturating_add(layer_params);
        if layer_params > MAX_PARAMS || params > MAX_PARAMS {
            return Err(too_big(
                i,
                format!(
                    "the network would have {params} parameters ({layer_params} in this layer)"
                ),
            ));
        }
        if out > MAX_ACTIVATIONS {
            return Err(too_big(i, format!("it outputs {out} values per example")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeededParams;

    #[test]
    fn a_trillion_output_layer_is_refused_before_allocating() {
        let text = r#"{"input": [1, 4, 4], "layers": [{"type": "flatten"},
            {"type": "linear", "name": "fc", "out": 1000000000000}]}"#;
        let spec = Spec::parse(text).unwrap();
        let err = spec.build("huge", &mut SeededParams::new(0)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("layer 1") && msg.contains("17000000000000 parameters"),
            "{msg}"
        );
        // Overflowing products are refused too, not wrapped.
        let text = r#"{"input": [3, 8, 8], "layers": [{"type": "conv2d", "name": "c", "out": 4611686018427387904,
            "kernel": 3, "padding": 1}, {"type": "flatten"}, {"type": "linear", "name": "fc", "out": 2}]}"#;
        let err = Spec::parse(text).unwrap().check_sizes().unwrap_err();
        assert!(err.to_string().contains("layer 0"), "{err}");
        // (16·10¹² weights + 10¹² biases.) A plain small spec passes.
        let ok = r#"{"input": [1, 4, 4], "layers": [{"type": "flatten"}, {"type": "linear", "name": "fc", "out": 3}]}"#;
        assert!(Spec::parse(ok).unwrap().check_sizes().is_ok());
    }
}
