//! Hand-written SVG plot of a FLODANCE fit: the per-example log-det ℓ_k / k against k on a log axis (on a
//! plain ℓ_k axis the window's data would be squeezed flat by the extrapolated values), the fit window shaded, the fitted curve continued to the target n with its sensitivity band, the
//! extrapolated value with its interval, and optional exact points.

use super::write_atomic;
use crate::scaling::Fit;
use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 900.0;
const H: f64 = 560.0;
const LEFT: f64 = 100.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
/// At most this many nested points are drawn (evenly strided), to keep the file small.
const MAX_MARKERS: usize = 1500;

/// Maps data coordinates to SVG pixels: log10 on x, linear on y.
struct Frame {
    lx0: f64,
    lx1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x.log10() - self.lx0) / (self.lx1 - self.lx0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

/// Write the plot of `fit` to `path` (SVG, atomically). `nested` are the fitted data `(k, ℓ_k)`,
/// `target_n` the extrapolation target, `exact` any exactly computed `(n, ℓ_n)` to compare with.
pub fn plot_fit(
    path: &Path,
    nested: &[(usize, f64)],
    fit: &Fit,
    target_n: usize,
    exact: &[(usize, f64)],
) -> Result<()> {
    let svg = render(nested, fit, target_n, exact)?;
    write_atomic(path, svg.as_bytes())
}

/// The SVG document as a string.
pub fn render(
    nested: &[(usize, f64)],
    fit: &Fit,
    target_n: usize,
    exact: &[(usize, f64)],
) -> Result<String> {
    let tr = |k: f64, l: f64| l / k;
    let data: Vec<(f64, f64)> = nested
        .iter()
        .filter(|p| p.0 >= 1 && p.1.is_finite())
        .map(|&(k, l)| (k as f64, tr(k as f64, l)))
        .collect();
    let kmin = data
        .iter()
        .map(|p| p.0)
        .fold(fit.window.0, f64::min)
        .max(1.0);
    let kfar = (target_n as f64)
        .max(fit.window.1)
        .max(exact.iter().map(|p| p.0 as f64).fold(1.0, f64::max));
    // The curve is drawn from the start of the fit window (before it the model is not fitted and the
    // Laurent terms blow up) to the farthest point of interest.
    let kfit = fit.window.0.max(1.0);
    let xs: Vec<f64> = (0..=240)
        .map(|i| kfit * (kfar / kfit).powf(i as f64 / 240.0))
        .collect();
    // Leave a margin right of the farthest point so its marker is not cut off.
    let kmax = kfar * (kfar / kmin).powf(0.04);
    let curve: Vec<(f64, f64)> = xs.iter().map(|&x| (x, tr(x, fit.predict(x)))).collect();
    let band: Vec<(f64, f64, f64)> = xs
        .iter()
        .filter(|&&x| x >= fit.window.1)
        .map(|&x| {
            let (lo, hi) = fit.interval(x);
            (x, tr(x, lo), tr(x, hi))
        })
        .collect();
    let n = target_n as f64;
    let est = tr(n, fit.predict(n));
    let (lo, hi) = fit.interval(n);
    let (lo, hi) = (tr(n, lo), tr(n, hi));
    let exact_t: Vec<(f64, f64)> = exact
        .iter()
        .filter(|p| p.0 >= 1 && p.1.is_finite())
        .map(|&(k, l)| (k as f64, tr(k as f64, l)))
        .collect();
    let ys = data
        .iter()
        .map(|p| p.1)
        .chain(curve.iter().map(|p| p.1))
        .chain(band.iter().flat_map(|b| [b.1, b.2]))
        .chain(exact_t.iter().map(|p| p.1))
        .chain([est, lo, hi])
        .filter(|v| v.is_finite());
    let (ymin, ymax) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !ymin.is_finite() || !ymax.is_finite() {
        return Err(Error::Input("nothing finite to plot".into()));
    }
    let pad = if ymax > ymin {
        0.05 * (ymax - ymin)
    } else {
        1.0 + ymax.abs() * 0.05
    };
    let f = Frame {
        lx0: kmin.log10(),
        lx1: kmax.log10().max(kmin.log10() + 1e-9),
        y0: ymin - pad,
        y1: ymax + pad,
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    // Fit window.
    let (wx0, wx1) = (f.px(fit.window.0.max(kmin)), f.px(fit.window.1));
    let _ = writeln!(
        s,
        r##"<rect x="{wx0:.2}" y="{TOP}" width="{:.2}" height="{:.2}" fill="#dbe9f6"/>"##,
        (wx1 - wx0).max(1.0),
        H - TOP - BOTTOM
    );
    axes(&mut s, &f);
    // Sensitivity band beyond the window.
    if band.len() > 1 {
        let mut pts: Vec<String> = band
            .iter()
            .map(|b| format!("{:.2},{:.2}", f.px(b.0), f.py(b.2)))
            .collect();
        pts.extend(
            band.iter()
                .rev()
                .map(|b| format!("{:.2},{:.2}", f.px(b.0), f.py(b.1))),
        );
        let _ = writeln!(
            s,
            r##"<polygon points="{}" fill="#fbd7b0" stroke="none"/>"##,
            pts.join(" ")
        );
    }
    // Data.
    let stride = data.len().div_ceil(MAX_MARKERS).max(1);
    for p in data.iter().step_by(stride) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.2}" cy="{:.2}" r="2" fill="#1f4e89"/>"##,
            f.px(p.0),
            f.py(p.1)
        );
    }
    // Fitted curve.
    let pts: Vec<String> = curve
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|p| format!("{:.2},{:.2}", f.px(p.0), f.py(p.1)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#d95f02" stroke-width="2"/>"##,
        pts.join(" ")
    );
    // Estimate with its interval.
    let (ex, ey) = (f.px(n), f.py(est));
    let _ = writeln!(
        s,
        r##"<line x1="{ex:.2}" y1="{:.2}" x2="{ex:.2}" y2="{:.2}" stroke="#d95f02" stroke-width="2"/>"##,
        f.py(lo),
        f.py(hi)
    );
    for y in [f.py(lo), f.py(hi)] {
        let _ = writeln!(
            s,
            r##"<line x1="{:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#d95f02" stroke-width="2"/>"##,
            ex - 6.0,
            ex + 6.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{:.2}" y="{:.2}" width="9" height="9" fill="#d95f02"/>"##,
        ex - 4.5,
        ey - 4.5
    );
    // Exact values: a curve when there are many (the exact nested ℓ_k/k beyond n_s), a marker at the last.
    if exact_t.len() > 1 {
        let stride = exact_t.len().div_ceil(MAX_MARKERS).max(1);
        let pts: Vec<String> = exact_t
            .iter()
            .step_by(stride)
            .chain(exact_t.last())
            .map(|p| format!("{:.2},{:.2}", f.px(p.0), f.py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline class="exact" points="{}" fill="none" stroke="#1b9e77" stroke-width="2"/>"##,
            pts.join(" ")
        );
    }
    if let Some(p) = exact_t.last() {
        let (x, y) = (f.px(p.0), f.py(p.1));
        let _ = writeln!(
            s,
            r##"<path d="M{:.2},{:.2} l6,6 l-6,6 l-6,-6 z" fill="#1b9e77" stroke="black" stroke-width="0.8"/>"##,
            x,
            y - 6.0
        );
    }
    legend(&mut s, !exact_t.is_empty());
    let title = format!(
        "FLODANCE fit: window k in [{}, {}], q = {}, alpha = {}; estimate at n = {}: {} [{}, {}]",
        fmt_num(fit.window.0),
        fmt_num(fit.window.1),
        fit.q,
        fit.alpha,
        target_n,
        fmt_num(fit.predict(n)),
        fmt_num(fit.interval(n).0),
        fmt_num(fit.interval(n).1)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(&title)
    );
    s.push_str("</svg>\n");
    Ok(s)
}

fn axes(s: &mut String, f: &Frame) {
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        s,
        r#"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        x1 - x0,
        y1 - y0
    );
    let mut e = f.lx0.floor() as i32;
    while (e as f64) <= f.lx1 + 1e-9 {
        for m in 1..10 {
            let v = f64::from(m) * 10f64.powi(e);
            if v.log10() < f.lx0 - 1e-9 || v.log10() > f.lx1 + 1e-9 {
                continue;
            }
            let x = f.px(v);
            let len = if m == 1 { 7.0 } else { 3.0 };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.2}" y1="{y1}" x2="{x:.2}" y2="{:.2}" stroke="black"/>"#,
                y1 + len
            );
            if m == 1 {
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.2}" y1="{y0}" x2="{x:.2}" y2="{y1}" stroke="#e0e0e0"/>"##
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                    y1 + 22.0,
                    fmt_num(v)
                );
            }
        }
        e += 1;
    }
    for v in nice_ticks(f.y0, f.y1) {
        let y = f.py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.2}" x2="{x1}" y2="{y:.2}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            s,
            r#"<line x1="{:.2}" y1="{y:.2}" x2="{x0}" y2="{y:.2}" stroke="black"/>"#,
            x0 - 6.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"#,
            x0 - 9.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let ylabel = "ℓ_k / k  (ln|det K_k| per example)";
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">k (number of examples, log scale)</text>"#,
        (x0 + x1) / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="22" y="{0}" text-anchor="middle" transform="rotate(-90 22 {0})">{1}</text>"#,
        (y0 + y1) / 2.0,
        escape(ylabel)
    );
}

fn legend(s: &mut String, with_exact: bool) {
    let x = LEFT + 14.0;
    let mut entries = vec![
        ("dot", "nested log-dets"),
        ("window", "fit window"),
        ("line", "fitted scaling law"),
        ("band", "refit band (2.5-97.5 %)"),
    ];
    if with_exact {
        entries.push(("diamond", "exact ℓ_n"));
    }
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="215" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#c0c0c0"/>"##,
        x - 6.0,
        TOP + 6.0,
        18.0 * entries.len() as f64 + 6.0
    );
    for (i, (kind, text)) in entries.into_iter().enumerate() {
        let y = TOP + 18.0 + 18.0 * i as f64;
        let _ = match kind {
            "dot" => writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{y:.1}" r="3" fill="#1f4e89"/>"##,
                x + 9.0
            ),
            "window" => writeln!(
                s,
                r##"<rect x="{x:.1}" y="{:.1}" width="18" height="10" fill="#dbe9f6" stroke="#9bbbd9"/>"##,
                y - 5.0
            ),
            "line" => writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d95f02" stroke-width="2"/>"##,
                x + 18.0
            ),
            "band" => writeln!(
                s,
                r##"<rect x="{x:.1}" y="{:.1}" width="18" height="10" fill="#fbd7b0"/>"##,
                y - 5.0
            ),
            _ => writeln!(
                s,
                r##"<path d="M{:.1},{:.1} l6,6 l-6,6 l-6,-6 z" fill="#1b9e77" stroke="black" stroke-width="0.8"/>"##,
                x + 9.0,
                y - 6.0
            ),
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 26.0,
            y + 4.0,
            escape(text)
        );
    }
}

/// About six round tick values covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + 1e-9 * step && out.len() < 50 {
        out.push(if v.abs() < 1e-12 * step { 0.0 } else { v });
        v += step;
    }
    out
}

/// Compact number formatting for axis labels and titles.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        format!("{v:.4e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{fit, FitOptions};

    #[test]
    fn renders_all_elements_without_nan() {
        let mut lf = 0.0;
        let nested: Vec<(usize, f64)> = (1..=300)
            .map(|k| {
                lf += (k as f64).ln();
                (
                    k,
                    3.0 + 2.0 * k as f64 - 0.8 * lf + 0.01 * ((k * 7919) % 13) as f64,
                )
            })
            .collect();
        let f = fit(
            &nested,
            &FitOptions {
                n0: 50,
                ensemble: 10,
                ..FitOptions::default()
            },
        )
        .unwrap();
        let svg = render(&nested, &f, 5000, &[(1000, f.predict(1000.0) * 1.01)]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        for needle in [
            "<polyline",
            "<polygon",
            "fit window",
            "exact ℓ_n",
            "n = 5000",
            "log scale",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        let no_exact = render(&nested, &f, 5000, &[]).unwrap();
        assert!(!no_exact.contains("exact ℓ_n"));
    }

    #[test]
    fn ticks_and_numbers() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(fmt_num(1234.0), "1234");
        assert_eq!(fmt_num(2.5e8), "2.5000e8");
    }
}
