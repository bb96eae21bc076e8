//! Classical log-det estimators for comparison: SLQ, preconditioned SLQ, block diagonal, pseudo-NTK.
