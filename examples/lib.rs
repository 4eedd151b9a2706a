//! Code the example programs share: the payments API that `payments-server`
//! serves and that `demo` runs in-process, the fault-injecting proxy the
//! demo and the tests put in front of it, and the gRPC payment service that
//! `grpc-server` serves, one order of the `checkout` example, and what
//! `orders-producer` and `orders-consumer` share.

pub mod checkout;
pub mod fault_proxy;
pub mod grpc;
pub mod orders;
pub mod payments;
pub mod scenario;
