//! The few questions the subcommands ask about MPI ranks, answered in every build: without the `mpi`
//! feature, or when no distributed command is running, there is one process and these are trivial.

use crate::Result;

/// In a distributed job, agree on `local` across ranks (a collective, at the same point on every rank):
/// if any rank failed, every rank fails, the lowest failing rank with its own error (printed) and the
/// others with [`crate::Error::Reported`]. Outside one, `local` itself.
pub fn agreed<T>(local: Result<T>) -> Result<T> {
    #[cfg(feature = "mpi")]
    if crate::linalg::dist::is_active() {
        return crate::linalg::dist::agree(&crate::linalg::dist::world()?, local);
    }
    local
}

/// True on every rank but 0 of a distributed job (they compute, rank 0 alone prints and writes).
pub fn is_follower() -> bool {
    #[cfg(feature = "mpi")]
    {
        crate::linalg::dist::is_follower()
    }
    #[cfg(not(feature = "mpi"))]
    {
        false
    }
}
