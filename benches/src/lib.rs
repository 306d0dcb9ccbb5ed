//! criterion benchmarks of Confer's hot paths live in `benches/`; this library is empty.
