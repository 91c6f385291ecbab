//! A peer for side-by-side runs: an echo server written the usual way over tokio-tungstenite (a task
//! per connection), as in the crate's own echo-server example: the data messages of the read half
//! are forwarded into the write half, which flushes only when no more input is ready, so pipelined
//! messages go out several per write. `peer-tokio-tungstenite --port P --workers N
//! [--tls-cert chain.pem --tls-key key.pem]`.
//!
//! With `--tls-cert`/`--tls-key`: TLS through tokio-rustls, with the very rustls configuration
//! surge's server uses (`surge::tls::TlsConfig::from_pem_files`: rustls 0.23, *ring*, ALPN
//! `http/1.1`, session tickets and the stateful cache), so a comparison measures the engines and
//! not two TLS setups.

#[path = "../server_args.rs"]
mod server_args;
#[path = "../tokio_peer.rs"]
mod tokio_peer;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let cfg = WebSocketConfig {
        max_message_size: Some(16 << 20),
        ..Default::default()
    };
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await else {
        return;
    };
    let (write, read) = ws.split();
    // Pings are answered and the close echoed by tungstenite itself.
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}

fn main() -> std::io::Result<()> {
    let (mut cert, mut key) = (None, None);
    // Flags the harness passes to every server, meaningless here.
    let (port, workers) = server_args::parse(1, |flag, value| match flag {
        "--busy-poll-us" | "--backend" => true,
        "--tls-cert" => {
            cert = Some(value.to_owned());
            true
        }
        "--tls-key" => {
            key = Some(value.to_owned());
            true
        }
        _ => false,
    });
    let acceptor = match (cert, key) {
        (Some(c), Some(k)) => {
            let tls = surge::tls::TlsConfig::from_pem_files(c, k)?;
            Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::clone(
                tls.rustls_config(),
            )))
        }
        (None, None) => None,
        _ => panic!("--tls-cert and --tls-key go together"),
    };
    tokio_peer::serve("127.0.0.1", port, workers, move |stream, _| {
        let acceptor = acceptor.clone();
        async move {
            match acceptor {
                None => echo(stream).await,
                Some(a) => {
                    if let Ok(tls) = a.accept(stream).await {
                        echo(tls).await
                    }
                }
            }
        }
    })
}
