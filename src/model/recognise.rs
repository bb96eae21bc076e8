//! Work out which architecture a set of weights belongs to from tensor names and shapes alone, so that a
//! state dict exported from pytorch-cifar loads without `--arch`; and infer width, input shape and number of
//! classes of a known architecture from its weights.

use crate::model::arch::{mlp, resnet, Block, ResNetConfig};
use std::collections::HashMap;

/// Tensor name → shape.
pub type Shapes = HashMap<String, Vec<usize>>;

/// The architecture recognised from a weight set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// Architecture name accepted by [`crate::model::arch::build`].
    pub arch: String,
    /// Base width, for the architectures that have one.
    pub width: Option<usize>,
}

/// Recognise pytorch-cifar's ResNets (any block counts, BasicBlock or Bottleneck), MobileNet, LeNet and the MLP.
pub fn recognise(shapes: &Shapes) -> Option<Recognised> {
    let has = |n: &str| shapes.contains_key(n);
    if has("conv1.weight") && has("layer1.0.conv1.weight") && has("linear.weight") {
        let block = if has("layer1.0.conv3.weight") {
            Block::Bottleneck
        } else {
            Block::Basic
        };
        let mut blocks = [0usize; 4];
        for (s, count) in blocks.iter_mut().enumerate() {
            while has(&format!("layer{}.{}.conv1.weight", s + 1, *count)) {
                *count += 1;
            }
        }
        if blocks.contains(&0) {
            return None;
        }
        let cfg = ResNetConfig { block, blocks };
        return Some(Recognised {
            arch: cfg.name(),
            width: width("resnet18", shapes),
        });
    }
    if has("conv1.weight")
        && has("layers.0.conv1.weight")
        && has("layers.12.conv2.weight")
        && has("linear.weight")
    {
        return Some(Recognised {
            arch: "mobilenet".into(),
            width: None,
        });
    }
    if has("fc1.weight") && has("fc2.weight") && has("fc3.weight") {
        if has("conv1.weight") && has("conv2.weight") {
            return Some(Recognised {
                arch: "lenet".into(),
                width: None,
            });
        }
        if shapes.len() == 6 {
            return Some(Recognised {
                arch: "mlp".into(),
                width: width("mlp", shapes),
            });
        }
    }
    None
}

/// Base width of `arch` as stored in the weights (ResNets: stem channels; mlp: hidden width).
pub fn width(arch: &str, shapes: &Shapes) -> Option<usize> {
    if ResNetConfig::parse(arch).is_some() {
        shapes.get("conv1.weight").and_then(|s| s.first().copied())
    } else if arch == "mlp" {
        shapes.get("fc1.weight").and_then(|s| s.first().copied())
    } else {
        None
    }
}

/// Number of classes: rows of the head (`linear.weight` or `fc3.weight`).
pub fn num_classes(arch: &str, shapes: &Shapes) -> Option<usize> {
    let head = if arch == "lenet" || arch == "mlp" {
        "fc3.weight"
    } else {
        "linear.weight"
    };
    shapes.get(head).and_then(|s| s.first().copied())
}

/// Input shape implied by the weights, using `hint` (the data's shape) where the weights leave it open.
///
/// ResNets and MobileNet: stem channels × 32 × 32 (SPEC §5). LeNet: channels from `conv1`, side from `fc1`'s
/// input size (16·s², side 4s + 12). MLP: the hint if its size matches `fc1`, else 1×28×28 or 3×32×32.
pub fn input_shape(arch: &str, shapes: &Shapes, hint: Option<[usize; 3]>) -> Option<[usize; 3]> {
    let conv_in = shapes.get("conv1.weight").and_then(|s| s.get(1).copied());
    if arch == "mobilenet" || ResNetConfig::parse(arch).is_some() {
        return conv_in.map(|c| [c, 32, 32]);
    }
    let fc1_in = shapes.get("fc1.weight").and_then(|s| s.get(1).copied())?;
    match arch {
        "lenet" => {
            let c = conv_in?;
            let s = (1..=fc1_in)
                .find(|s| 16 * s * s >= fc1_in)
                .filter(|s| 16 * s * s == fc1_in)?;
            Some([c, 4 * s + 12, 4 * s + 12])
        }
        "mlp" => {
            if let Some(h) = hint.filter(|h| h.iter().product::<usize>() == fc1_in) {
                return Some(h);
            }
            match fc1_in {
                784 => Some([1, 28, 28]),
                3072 => Some([3, 32, 32]),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Default widths, for messages.
pub fn default_width(arch: &str) -> Option<usize> {
    if ResNetConfig::parse(arch).is_some() {
        Some(resnet::DEFAULT_WIDTH)
    } else if arch == "mlp" {
        Some(mlp::DEFAULT_WIDTH)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(list: &[(&str, &[usize])]) -> Shapes {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn lenet_input_side_from_fc1() {
        let mut s = shapes(&[
            ("conv1.weight", &[6, 1, 5, 5]),
            ("conv2.weight", &[16, 6, 5, 5]),
            ("fc1.weight", &[120, 256]),
            ("fc2.weight", &[84, 120]),
            ("fc3.weight", &[10, 84]),
        ]);
        assert_eq!(recognise(&s).map(|r| r.arch), Some("lenet".to_string()));
        assert_eq!(input_shape("lenet", &s, None), Some([1, 28, 28]));
        s.insert("fc1.weight".into(), vec![120, 400]);
        s.insert("conv1.weight".into(), vec![6, 3, 5, 5]);
        assert_eq!(input_shape("lenet", &s, None), Some([3, 32, 32]));
        s.insert("fc1.weight".into(), vec![120, 300]);
        assert_eq!(input_shape("lenet", &s, None), None);
    }

    #[test]
    fn mlp_input_from_hint_or_common_sizes() {
        let s = shapes(&[
            ("fc1.weight", &[64, 784]),
            ("fc1.bias", &[64]),
            ("fc2.weight", &[64, 64]),
            ("fc2.bias", &[64]),
            ("fc3.weight", &[10, 64]),
            ("fc3.bias", &[10]),
        ]);
        assert_eq!(
            recognise(&s),
            Some(Recognised {
                arch: "mlp".into(),
                width: Some(64)
            })
        );
        assert_eq!(input_shape("mlp", &s, None), Some([1, 28, 28]));
        assert_eq!(input_shape("mlp", &s, Some([4, 14, 14])), Some([4, 14, 14]));
        assert_eq!(num_classes("mlp", &s), Some(10));
    }

    #[test]
    fn resnet_block_counts_give_generic_names() {
        let mut list: Vec<(String, Vec<usize>)> = vec![
            ("conv1.weight".into(), vec![16, 3, 3, 3]),
            ("linear.weight".into(), vec![7, 128]),
        ];
        for (s, n) in [(1, 1), (2, 2), (3, 1), (4, 1)] {
            for i in 0..n {
                list.push((format!("layer{s}.{i}.conv1.weight"), vec![1]));
            }
        }
        let s: Shapes = list.into_iter().collect();
        assert_eq!(
            recognise(&s),
            Some(Recognised {
                arch: "resnet-basic-1-2-1-1".into(),
                width: Some(16)
            })
        );
        assert_eq!(num_classes("resnet-basic-1-2-1-1", &s), Some(7));
        assert_eq!(
            input_shape("resnet-basic-1-2-1-1", &s, Some([1, 28, 28])),
            Some([3, 32, 32])
        );
    }
}
