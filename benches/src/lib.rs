//! Causeway benchmarks: see benches/ and load/.
