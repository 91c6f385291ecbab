//! The peer of `surge-bench fanout`, written the usual way over tokio-tungstenite: a task and an
//! unbounded channel per subscriber (`/sub`), a registry of their senders behind a mutex; each
//! binary message received on `/pub` is cloned into every subscriber's channel, and each
//! subscriber's task writes what its channel yields. `peer-tokio-tungstenite-broadcast --port P
//! --workers N`.

#[path = "../server_args.rs"]
mod server_args;
#[path = "../tokio_peer.rs"]
mod tokio_peer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Registry = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

// The handshake callback's error type is tungstenite's (an HTTP response), not ours.
#[allow(clippy::result_large_err)]
fn main() -> std::io::Result<()> {
    // A flag the harness passes to every server, meaningless here.
    let (port, workers) = server_args::parse(1, |flag, _| matches!(flag, "--backend"));
    let registry: Registry = Arc::default();
    tokio_peer::serve("0.0.0.0", port, workers, move |stream, id| {
        let registry = Arc::clone(&registry);
        async move {
            let mut path = String::new();
            let callback = |req: &Request, resp: Response| {
                path = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            if path == "/pub" {
                while let Some(Ok(msg)) = stream.next().await {
                    if msg.is_binary() {
                        let subs = registry.lock().unwrap();
                        for tx in subs.values() {
                            let _ = tx.send(msg.clone());
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
                return;
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            registry.lock().unwrap().insert(id, tx);
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
            registry.lock().unwrap().remove(&id);
            writer.abort();
        }
    })
}
