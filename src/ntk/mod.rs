//! The exact empirical NTK, computed tile by tile with structured derivatives.
