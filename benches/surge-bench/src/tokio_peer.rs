//! The tokio peers' server loop (a `#[path]` module of those binaries): a multi-threaded runtime
//! with `workers` threads, a listener on `host:port` that prints `listening on ADDR` (the line the
//! harness waits for), and one task per accepted connection (`TCP_NODELAY` set), made by `task`
//! from the stream and its number (1, 2, ...).

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

pub fn serve<F, Fut>(host: &str, port: u16, workers: usize, mut task: F) -> std::io::Result<()>
where
    F: FnMut(TcpStream, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind((host, port)).await?;
        println!("listening on {}", listener.local_addr()?);
        let mut accepted = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            accepted += 1;
            tokio::spawn(task(stream, accepted));
        }
    })
}
