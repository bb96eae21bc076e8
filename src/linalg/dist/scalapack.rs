//! The few BLACS and ScaLAPACK routines the distributed factorisation calls (Debian's
//! `libscalapack-openmpi`, which brings BLACS and links the system BLAS/LAPACK; with `libopenblas-dev`
//! installed that is OpenBLAS). Fortran calling convention: every argument by pointer, and for
//! `CHARACTER` arguments of Fortran routines a hidden length appended at the end (gfortran ABI).
//! Each wrapper is a thin safe shell: it checks the sizes it can and returns ScaLAPACK's `info`.

use std::os::raw::{c_char, c_int};

#[link(name = "scalapack-openmpi")]
extern "C" {
    fn blacs_get_(ictxt: *const c_int, what: *const c_int, val: *mut c_int);
    fn blacs_gridinit_(
        ictxt: *mut c_int,
        layout: *const c_char,
        nprow: *const c_int,
        npcol: *const c_int,
    );
    fn blacs_gridinfo_(
        ictxt: *const c_int,
        nprow: *mut c_int,
        npcol: *mut c_int,
        myrow: *mut c_int,
        mycol: *mut c_int,
    );
    fn blacs_gridexit_(ictxt: *const c_int);
    fn numroc_(
        n: *const c_int,
        nb: *const c_int,
        iproc: *const c_int,
        isrc: *const c_int,
        nprocs: *const c_int,
    ) -> c_int;
    fn descinit_(
        desc: *mut c_int,
        m: *const c_int,
        n: *const c_int,
        mb: *const c_int,
        nb: *const c_int,
        irsrc: *const c_int,
        icsrc: *const c_int,
        ictxt: *const c_int,
        lld: *const c_int,
        info: *mut c_int,
    );
    fn pdpotrf_(
        uplo: *const c_char,
        n: *const c_int,
        a: *mut f64,
        ia: *const c_int,
        ja: *const c_int,
        desca: *const c_int,
        info: *mut c_int,
        uplo_len: usize,
    );
}

/// A BLACS process grid (row-major ranks), released on drop.
pub struct Grid {
    ctxt: c_int,
    /// Process rows P.
    pub nprow: usize,
    /// Process columns Q.
    pub npcol: usize,
    /// This process's grid row.
    pub myrow: usize,
    /// This process's grid column.
    pub mycol: usize,
}

impl Grid {
    /// Create a P × Q grid over MPI_COMM_WORLD (MPI must be initialised and have exactly P·Q ranks).
    pub fn new(nprow: usize, npcol: usize) -> Self {
        let (mut ctxt, zero) = (0 as c_int, 0 as c_int);
        let (p, q) = (nprow as c_int, npcol as c_int);
        let (mut np, mut nq, mut r, mut c) = (0, 0, 0, 0);
        // SAFETY: plain out-parameters; `what = 0` asks for the default system context (MPI_COMM_WORLD).
        unsafe {
            blacs_get_(&zero, &zero, &mut ctxt);
            blacs_gridinit_(&mut ctxt, c"R".as_ptr(), &p, &q);
            blacs_gridinfo_(&ctxt, &mut np, &mut nq, &mut r, &mut c);
        }
        Self {
            ctxt,
            nprow: np.max(0) as usize,
            npcol: nq.max(0) as usize,
            myrow: r.max(0) as usize,
            mycol: c.max(0) as usize,
        }
    }

    /// Local extent of a dimension of `n` in blocks of `nb` for grid coordinate `iproc` of `nprocs`.
    pub fn numroc(n: usize, nb: usize, iproc: usize, nprocs: usize) -> usize {
        let (n, nb, ip, src, np) = (
            n as c_int,
            nb as c_int,
            iproc as c_int,
            0 as c_int,
            nprocs as c_int,
        );
        // SAFETY: a pure function of its integer arguments.
        unsafe { numroc_(&n, &nb, &ip, &src, &np).max(0) as usize }
    }

    /// Cholesky `A = L Lᵀ` of the distributed m × m matrix whose local part (column-major, leading dimension
    /// `lld`) is `local`, in blocks of `nb`; the lower triangle is read and overwritten with L. Returns
    /// ScaLAPACK's `info`: 0 on success, k > 0 when the leading minor of order k is not positive definite,
    /// < 0 for an illegal argument.
    pub fn pdpotrf_lower(&self, m: usize, nb: usize, local: &mut [f64], lld: usize) -> i32 {
        let mut desc = [0 as c_int; 9];
        let (mm, nbb, zero, one, ld) = (
            m as c_int,
            nb as c_int,
            0 as c_int,
            1 as c_int,
            lld.max(1) as c_int,
        );
        let mut info: c_int = 0;
        let locc = Self::numroc(m, nb, self.mycol, self.npcol);
        assert!(
            local.len() >= lld * locc,
            "local array smaller than lld × local columns"
        );
        // SAFETY: `desc` has the 9 entries DESCINIT writes; `local` holds lld × locc values (checked above),
        // which is what the descriptor tells PDPOTRF it may touch on this process.
        unsafe {
            descinit_(
                desc.as_mut_ptr(),
                &mm,
                &mm,
                &nbb,
                &nbb,
                &zero,
                &zero,
                &self.ctxt,
                &ld,
                &mut info,
            );
            if info != 0 {
                return info;
            }
            pdpotrf_(
                c"L".as_ptr(),
                &mm,
                local.as_mut_ptr(),
                &one,
                &one,
                desc.as_ptr(),
                &mut info,
                1,
            );
        }
        info
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        // SAFETY: the context was created by `blacs_gridinit_` and is released once.
        unsafe { blacs_gridexit_(&self.ctxt) }
    }
}

/// The BLAS library this process has mapped (from /proc/self/maps), for the report: ScaLAPACK without
/// OpenBLAS falls back to the slow reference BLAS.
pub fn blas_in_use() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("blas"))
        .collect();
    libs.sort_unstable();
    libs.dedup();
    if libs.is_empty() {
        "unknown".into()
    } else {
        libs.join(", ")
    }
}
