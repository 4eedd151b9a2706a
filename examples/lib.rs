//! Code the example programs share: the payments API that `payments-server`
//! serves and that `demo` runs in-process.

pub mod payments;
