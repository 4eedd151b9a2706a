//! Code the example programs share: the payments API that `payments-server`
//! serves and that `demo` runs in-process, and the fault-injecting proxy the
//! demo and the tests put in front of it.

pub mod fault_proxy;
pub mod payments;
pub mod scenario;
