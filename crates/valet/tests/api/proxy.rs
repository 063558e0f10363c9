//! A loopback TCP proxy that a test can cut and restore, to make a real PostgreSQL server
//! unreachable for one Valet instance without stopping it for the other tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from a loopback port to `upstream` while it is open.
pub struct TcpProxy {
    pub address: SocketAddr,
    open: Arc<AtomicBool>,
    /// Each cut bumps this, which closes every forwarded connection.
    generation: watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts forwarding from a free port on 127.0.0.1 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let accept_open = open.clone();
        let accept_generation = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accept_open.load(Ordering::Acquire) {
                    // Dropping the socket closes it: the store looks unreachable.
                    continue;
                }
                let cut = accept_generation.subscribe();
                tokio::spawn(forward(client, upstream, cut));
            }
        });
        Self {
            address,
            open,
            generation,
        }
    }

    /// Closes every forwarded connection and turns new ones away.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}
