//! Benches only: see `benches/peer.rs`.
