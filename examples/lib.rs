//! Code the example programs share: the payments API that `payments-server`
//! serves and that `demo` runs in-process, the fault-injecting proxy the
//! demo and the tests put in front of it, and the gRPC payment service that
//! `grpc-server` serves, and one order of the `checkout` example.

pub mod checkout;
pub mod fault_proxy;
pub mod grpc;
pub mod payments;
pub mod scenario;
