//! Nested log-dets and the FLODANCE scaling-law fit.
