//! Hand-written SVG of extrapolation error against extrapolation ratio: one mark per (cell, method), log-log
//! axes, so every estimator's growth of error with n / n_s is seen at once.

use super::results::Cell;
use crate::{Error, Result};
use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// The methods drawn: name, colour, mark, and the cell's relative error (percent) for it.
type Method = (&'static str, &'static str, &'static str, fn(&Cell) -> f64);

const METHODS: [Method; 3] = [
    ("FLODANCE", "#d95f02", "circle", |c| {
        c.flodance_error_percent
    }),
    ("linear in k", "#7570b3", "square", |c| {
        c.linear_error_percent
    }),
    ("stopped Cholesky", "#1b9e77", "triangle", |c| {
        c.stopped_cholesky_error_percent
    }),
];

/// The SVG document: |relative error| (%) against n / n_s for every cell and method.
pub fn render(cells: &[Cell]) -> Result<String> {
    let points: Vec<(usize, f64, f64)> = cells
        .iter()
        .flat_map(|c| {
            METHODS
                .iter()
                .enumerate()
                .map(move |(m, method)| (m, c.ratio, (method.3)(c).abs()))
        })
        .filter(|p| p.1 > 0.0 && p.2 > 0.0 && p.2.is_finite())
        .collect();
    if points.is_empty() {
        return Err(Error::Input("no finite errors to plot".into()));
    }
    let span = |v: &mut dyn Iterator<Item = f64>| {
        v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x.log10()), b.max(x.log10()))
        })
    };
    let (x0, x1) = span(&mut points.iter().map(|p| p.1));
    let (y0, y1) = span(&mut points.iter().map(|p| p.2));
    let (x0, x1) = (x0.floor().min(0.0), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let px = |x: f64| LEFT + (x.log10() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.log10() - y0) / (y1 - y0) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for e in (x0 as i32)..=(x1 as i32) {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#e0e0e0"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            10f64.powi(e)
        );
    }
    for e in (y0 as i32)..=(y1 as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            10f64.powi(e)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">extrapolation ratio n / n_s</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">|relative error| of ℓ̂_n, %</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    for &(m, x, y) in &points {
        mark(
            &mut s,
            METHODS[m].2,
            METHODS[m].1,
            px(x),
            py(y),
            METHODS[m].0,
        );
    }
    for (i, method) in METHODS.iter().enumerate() {
        let y = TOP + 16.0 + 18.0 * i as f64;
        mark(&mut s, method.2, method.1, LEFT + 16.0, y, "legend");
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}">{}</text>"#,
            LEFT + 28.0,
            y + 4.0,
            method.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">Extrapolation error against ratio, {} cells</text>"#,
        W / 2.0,
        cells.len()
    );
    s.push_str("</svg>\n");
    Ok(s)
}

fn mark(s: &mut String, kind: &str, colour: &str, x: f64, y: f64, class: &str) {
    let _ = match kind {
        "circle" => writeln!(
            s,
            r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="4" fill="{colour}"/>"#
        ),
        "square" => writeln!(
            s,
            r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="8" height="8" fill="{colour}"/>"#,
            x - 4.0,
            y - 4.0
        ),
        _ => writeln!(
            s,
            r#"<path class="{class}" d="M{x:.1},{:.1} l5,9 l-10,0 z" fill="{colour}"/>"#,
            y - 5.0
        ),
    };
}
