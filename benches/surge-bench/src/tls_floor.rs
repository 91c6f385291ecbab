//! `surge-bench tls-floor`: rustls's own cost of a server-side handshake on this machine, the
//! floor under `surge-bench handshake`: a rustls client and server in memory (no sockets, no
//! WebSocket), the server side's thread CPU time per handshake, full and resumed, with the very
//! configuration surge serves (`surge::tls::TlsConfig::from_pem_files` on the `--tls` test
//! certificate: rustls 0.23, *ring*, ALPN `http/1.1`, tickets). One thread, pinned to CPU 0.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::commands::thread_cpu;

#[derive(clap::Parser, Debug)]
pub struct TlsFloorArgs {
    /// Handshakes per round.
    #[arg(short = 'n', long, default_value_t = 3000)]
    count: usize,
    /// Rounds (each: full, then resumed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Moves what the client has to send into the server, which processes it.
fn pump(
    from: &mut rustls::ClientConnection,
    to: &mut rustls::ServerConnection,
) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("to a Vec");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("from a slice");
        to.process_new_packets()?;
    }
    Ok(())
}

/// One handshake (and a few application bytes each way, as an upgrade would); the server's CPU.
fn handshake(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
) -> (Duration, bool) {
    let name = ServerName::try_from("localhost").expect("a name");
    let mut client = rustls::ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut spent = Duration::ZERO;
    let t = thread_cpu();
    let mut server = rustls::ServerConnection::new(Arc::clone(server_cfg)).expect("server");
    spent += thread_cpu() - t;
    for _ in 0..8 {
        let t = thread_cpu();
        pump(&mut client, &mut server).expect("client -> server");
        spent += thread_cpu() - t; // the client's writing is in here too: a few us at most
        let t = thread_cpu();
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        spent += thread_cpu() - t;
        let mut rd = &out[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().expect("server -> client");
        }
        if !server.is_handshaking() && !client.is_handshaking() {
            break;
        }
    }
    let t = thread_cpu();
    pump(&mut client, &mut server).expect("client -> server");
    let mut got = [0u8; 64];
    let n = server.reader().read(&mut got).unwrap_or(0);
    server.writer().write_all(b"HTTP/1.1 101\r\n\r\n").unwrap();
    let mut out = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut out).unwrap();
    }
    spent += thread_cpu() - t;
    assert!(n > 0, "the request came through");
    let resumed = matches!(
        client.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(server);
    (spent, resumed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: TlsFloorArgs) -> std::io::Result<()> {
    crate::commands::pin_this_thread(0);
    let files = crate::tls::files()?;
    let server_cfg =
        Arc::clone(surge::tls::TlsConfig::from_pem_files(&files.cert, &files.key)?.rustls_config());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(&files.ca).map_err(std::io::Error::other)?;
    roots.add(ca).map_err(std::io::Error::other)?;
    let client = |resume: bool| {
        let mut c = rustls::ClientConfig::builder_with_provider(surge::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(c)
    };
    let (full_cfg, resumed_cfg) = (client(false), client(true));
    println!(
        "rustls in memory, server side only, {} handshakes per round, {} rounds, CPU 0",
        args.count, args.rounds
    );
    let (mut full, mut resumed) = (Vec::new(), Vec::new());
    for r in 0..args.rounds {
        for (label, cfg, out) in [
            ("full", &full_cfg, &mut full),
            ("resumed", &resumed_cfg, &mut resumed),
        ] {
            let _ = handshake(&server_cfg, cfg); // warm (and the first ticket)
            let mut total = Duration::ZERO;
            let mut kinds = 0;
            for _ in 0..args.count {
                let (spent, was_resumed) = handshake(&server_cfg, cfg);
                total += spent;
                kinds += usize::from(was_resumed);
            }
            let us = total.as_secs_f64() * 1e6 / args.count as f64;
            println!(
                "round {}: {label}: {us:.1} us of server CPU per handshake = {:.0}/s per core \
                 ({kinds} of {} resumed)",
                r + 1,
                1e6 / us,
                args.count
            );
            out.push(us);
        }
    }
    let (f, r) = (median(full), median(resumed));
    println!(
        "median: full {f:.1} us ({:.0}/s per core), resumed {r:.1} us ({:.0}/s per core)",
        1e6 / f,
        1e6 / r
    );
    Ok(())
}
