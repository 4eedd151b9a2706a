//! The names of the headers the layer reads and writes.

/// The request header carrying the key, by default (a gRPC caller sends it
/// as a metadata entry of that name).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header marking a replayed response (for a gRPC caller, a
/// metadata entry of that name).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
