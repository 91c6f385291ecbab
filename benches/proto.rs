//! Receive-path micro-benchmarks: header parsing (frames/s) and whole buffers of masked frames through
//! `proto::Session::read` (messages/s and bytes/s), as the engine drives it: one input buffer, unmasked in
//! place, events borrowed.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use surge::proto::{Config, Event, FrameHeader, HeaderRules, NoPool, Role, Session};

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn header_parse(c: &mut Criterion) {
    let rules = HeaderRules {
        role: Role::Server,
        allowed_rsv: 0,
        max_frame_size: 1 << 24,
    };
    let mut g = c.benchmark_group("header_parse");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("7bit", masked(0x81, &[0; 20])),
        ("16bit", masked(0x82, &[0; 1000])),
        ("64bit", masked(0x82, &[0; 70_000])),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| FrameHeader::parse(black_box(&frame), &rules))
        });
    }
    g.finish();
}

fn receive(c: &mut Criterion) {
    let cfg = Config::server();
    let mut g = c.benchmark_group("receive");
    for (kind, size) in [
        ("text", 20usize),
        ("binary", 20),
        ("text", 512),
        ("binary", 512),
        ("binary", 16 << 10),
    ] {
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let first = if kind == "text" { 0x81 } else { 0x82 };
        let frame = masked(first, &payload);
        let count = (256 << 10) / frame.len().max(1);
        let template: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * count)
            .collect();
        // Messages/s and bytes/s of the same loop, as two lines.
        for (unit, throughput) in [
            ("msgs", Throughput::Elements(count as u64)),
            ("bytes", Throughput::Bytes(template.len() as u64)),
        ] {
            g.throughput(throughput);
            let mut buf = template.clone();
            g.bench_with_input(
                BenchmarkId::new(format!("{kind}_{unit}"), size),
                &size,
                |b, _| {
                    let mut conn = Session::new(Role::Server, 0);
                    let mut out = Vec::new();
                    b.iter(|| {
                        // Re-masked input each round: unmasking is part of the work.
                        buf.copy_from_slice(&template);
                        let mut pos = 0;
                        let mut n_msgs = 0;
                        while pos < buf.len() {
                            let (n, ev) = conn
                                .read(&mut buf[pos..], &cfg, &mut out, &mut NoPool, None)
                                .unwrap();
                            if let Some(Event::Message(m)) = ev {
                                black_box(m);
                                n_msgs += 1;
                            }
                            pos += n;
                        }
                        assert_eq!(n_msgs, count);
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, header_parse, receive);
criterion_main!(benches);
