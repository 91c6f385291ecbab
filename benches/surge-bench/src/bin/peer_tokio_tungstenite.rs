//! A peer for side-by-side runs: an echo server written the usual way over tokio-tungstenite (a task
//! per connection), as in the crate's own echo-server example: the data messages of the read half
//! are forwarded into the write half, which flushes only when no more input is ready, so pipelined
//! messages go out several per write. `peer-tokio-tungstenite --port P --workers N`.

#[path = "../server_args.rs"]
mod server_args;
#[path = "../tokio_peer.rs"]
mod tokio_peer;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() -> std::io::Result<()> {
    // Flags the harness passes to every server, meaningless here.
    let (port, workers) =
        server_args::parse(1, |flag, _| matches!(flag, "--busy-poll-us" | "--backend"));
    tokio_peer::serve("127.0.0.1", port, workers, |stream, _| async move {
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
    })
}
