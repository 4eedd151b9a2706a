//! A fault-injecting TCP proxy, to put a real unreliable network between a
//! client and a server on loopback.
//!
//! Each accepted connection draws its fate from a seeded generator (so a
//! run's mix of faults repeats): **reset** (closed with an RST before
//! anything is forwarded: the request never arrives), **drop the response**
//! (the request reaches the server, which handles it; the connection is then
//! reset as the response comes back, so the client never sees it: the case
//! that makes naive retries charge twice), or **healthy**, with an optional
//! random delay before the response is forwarded. Send one request per
//! connection (no pooling) for the fractions to apply per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to connections.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Fraction of connections whose response is dropped after the server handled the request.
    pub drop_response: f64,
    /// Fraction of connections reset before the request is forwarded.
    pub reset: f64,
    /// Responses of healthy connections are delayed by up to this.
    pub max_delay: Duration,
    /// Seeds the draws.
    pub seed: u64,
}

/// What the proxy did, for the demo's table and the tests.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections reset before forwarding.
    pub resets: AtomicU64,
    /// Responses dropped after the server answered.
    pub dropped: AtomicU64,
}

/// Starts a proxy to `upstream` on a free loopback port; runs until the
/// runtime stops. Returns its address and its counters.
pub async fn start(
    upstream: SocketAddr,
    faults: Faults,
) -> std::io::Result<(SocketAddr, Arc<FaultCounts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(FaultCounts::default());
    let accepted = Arc::new(AtomicU64::new(0));
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            let mut rng =
                fastrand::Rng::with_seed(faults.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let counts = Arc::clone(&shared);
            counts.connections.fetch_add(1, Ordering::Relaxed);
            let draw = rng.f64();
            let delay = faults.max_delay.mul_f64(rng.f64());
            tokio::spawn(async move {
                if draw < faults.reset {
                    counts.resets.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                } else {
                    let drop = draw < faults.reset + faults.drop_response;
                    let _ = relay(client, upstream, drop, delay, &counts).await;
                }
            });
        }
    });
    Ok((addr, counts))
}

/// Closes with an RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    drop_response: bool,
    delay: Duration,
    counts: &FaultCounts,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    let dropped = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let mut requests = vec![0u8; 16 * 1024];
        let mut responses = vec![0u8; 16 * 1024];
        let mut client_done = false;
        let mut answered = false;
        loop {
            tokio::select! {
                read = client_read.read(&mut requests), if !client_done => {
                    let n = read?;
                    if n == 0 {
                        client_done = true;
                        server_write.shutdown().await?;
                    } else {
                        server_write.write_all(&requests[..n]).await?;
                    }
                }
                read = server_read.read(&mut responses) => {
                    let n = read?;
                    if n == 0 {
                        client_write.shutdown().await?;
                        break false;
                    }
                    if !answered {
                        answered = true;
                        // The server has answered: the request was handled.
                        if drop_response {
                            break true;
                        }
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                    }
                    client_write.write_all(&responses[..n]).await?;
                }
            }
        }
    };
    if dropped {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        reset(client);
    }
    Ok(())
}
