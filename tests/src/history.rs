//! Operation histories recorded by the fault-injection workloads, and the checkers
//! that judge them.
