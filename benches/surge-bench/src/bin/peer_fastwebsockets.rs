//! A peer for side-by-side runs: an echo server over fastwebsockets (Deno's WebSocket crate) with a
//! hyper 1 upgrade, as in the crate's own echo example (a task per connection, messages reassembled
//! by `FragmentCollector`). `peer-fastwebsockets --port P --workers N`.

#[path = "../server_args.rs"]
mod server_args;
#[path = "../tokio_peer.rs"]
mod tokio_peer;

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn upgrade(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = tokio::task::unconstrained(echo(fut)).await;
    });
    Ok(response)
}

fn main() -> std::io::Result<()> {
    // Flags the harness passes to every server, meaningless here.
    let (port, workers) =
        server_args::parse(1, |flag, _| matches!(flag, "--busy-poll-us" | "--backend"));
    tokio_peer::serve("127.0.0.1", port, workers, |stream, _| async move {
        let io = TokioIo::new(stream);
        let _ = http1::Builder::new()
            .serve_connection(io, service_fn(upgrade))
            .with_upgrades()
            .await;
    })
}
