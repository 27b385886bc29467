//! A linearizability checker for single-value registers.
