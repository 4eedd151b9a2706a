//! A `reqwest`-based client whose retries reuse one idempotency key, kept in
//! a durable journal so that not even a crash of the caller causes a second
//! charge.
//!
//! Not built yet: this crate is a placeholder so the workspace has its final
//! shape. Its design is in the project's DESIGN.md ("Client").
