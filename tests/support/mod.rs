//! Test support shared by the MEMDET integration tests: numpy's legacy `RandomState` (MT19937 and `rand`),
//! dense reference log-determinants with faer, and small helpers.
#![allow(dead_code)]

use faer::Mat;

/// The Mersenne Twister MT19937 exactly as numpy's legacy `RandomState` seeds and runs it.
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `RandomState(seed)` for an integer seed (numpy's `mt19937_seed`, i.e. `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next 32-bit output (tempered).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// numpy's `random_sample`: `((a >> 5)·2^26 + (b >> 6)) / 2^53`.
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

/// `numpy.random.RandomState(seed).rand(rows, cols)` (filled in C order).
pub fn numpy_rand(seed: u32, rows: usize, cols: usize) -> Mat<f64> {
    let mut rng = Mt19937::new(seed);
    let mut out = Mat::<f64>::zeros(rows, cols);
    for i in 0..rows {
        for j in 0..cols {
            out[(i, j)] = rng.next_f64();
        }
    }
    out
}

/// `R + shift·I` for a square R.
pub fn plus_identity(r: &Mat<f64>, shift: f64) -> Mat<f64> {
    let mut a = r.clone();
    for i in 0..a.nrows() {
        a[(i, i)] += shift;
    }
    a
}

/// `A + Aᵀ`.
pub fn sym_part(a: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] + a[(j, i)])
}

/// `Aᵀ A`.
pub fn gram(a: &Mat<f64>) -> Mat<f64> {
    a.transpose() * a
}

/// log|det A| and sign(det A) by faer's partially pivoted LU (an independent dense reference).
pub fn lu_logdet(a: &Mat<f64>) -> (f64, f64) {
    let lu = a.partial_piv_lu();
    let u = lu.U();
    let mut logabs = 0.0;
    let mut sign = 1.0;
    for i in 0..u.nrows() {
        logabs += u[(i, i)].abs().ln();
        sign *= u[(i, i)].signum();
    }
    // Parity of the row permutation: n minus the number of cycles.
    let (fwd, _) = lu.P().arrays();
    let mut seen = vec![false; fwd.len()];
    let mut transpositions = 0usize;
    for start in 0..fwd.len() {
        let mut len = 0usize;
        let mut i = start;
        while !seen[i] {
            seen[i] = true;
            i = fwd[i];
            len += 1;
        }
        transpositions += len.saturating_sub(1);
    }
    if transpositions % 2 == 1 {
        sign = -sign;
    }
    (logabs, sign)
}

/// log det of an SPD matrix by faer's dense Cholesky (an independent reference).
pub fn llt_logdet(a: &Mat<f64>) -> f64 {
    let l = a
        .llt(faer::Side::Lower)
        .expect("reference matrix must be SPD");
    let l = l.L();
    (0..l.nrows()).map(|i| 2.0 * l[(i, i)].ln()).sum()
}

/// A random SPD matrix of order n: G Gᵀ / n + I with G uniform in [-1, 1) from numpy's generator.
pub fn random_spd(seed: u32, n: usize) -> Mat<f64> {
    let g = numpy_rand(seed, n, n);
    let g = Mat::from_fn(n, n, |i, j| 2.0 * g[(i, j)] - 1.0);
    let mut a = &g * g.transpose();
    for i in 0..n {
        for j in 0..n {
            a[(i, j)] /= n as f64;
        }
        a[(i, i)] += 1.0;
    }
    a
}

/// Relative difference |a − b| / |b|.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Write a square f64 matrix as `.npy` (C order unless `fortran`), for CLI tests.
pub fn write_npy(path: &std::path::Path, a: &Mat<f64>, fortran: bool) {
    let n = a.nrows();
    let header = format!(
        "{{'descr': '<f8', 'fortran_order': {}, 'shape': ({}, {}), }}",
        if fortran { "True" } else { "False" },
        n,
        a.ncols()
    );
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = header.into_bytes();
    let total = 10 + h.len() + 1;
    h.resize(h.len() + (64 - total % 64) % 64, b' ');
    h.push(b'\n');
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&h);
    let (outer, inner) = if fortran {
        (a.ncols(), n)
    } else {
        (n, a.ncols())
    };
    for o in 0..outer {
        for i in 0..inner {
            let v = if fortran { a[(i, o)] } else { a[(o, i)] };
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).expect("write test .npy");
}

/// The pivots D of a dense LDLᵀ without pivoting (faer), i.e. the Schur-complement diagonal entries.
pub fn ldl_pivots(a: &Mat<f64>) -> Vec<f64> {
    let n = a.nrows();
    let mut f = a.clone();
    let par = faer::Par::Seq;
    let req = faer::linalg::cholesky::ldlt::factor::cholesky_in_place_scratch::<f64>(
        n,
        par,
        Default::default(),
    );
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    let stack = faer::dyn_stack::MemStack::new(&mut mem);
    faer::linalg::cholesky::ldlt::factor::cholesky_in_place(
        f.as_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    )
    .expect("reference LDL must not hit a zero pivot");
    (0..n).map(|i| f[(i, i)]).collect()
}
