//! Unmasking throughput: each implementation, the dispatched one, and `copy_from_slice` of the
//! same size as the reference line, at 64-byte-aligned starts (offset 0) and at offset 14 (a
//! payload after a 14-byte frame header).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use surge_simd::{apply_mask, mask_implementations};

const SIZES: [(usize, &str); 4] = [
    (16, "16B"),
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A buffer with room for `len` bytes at `offset` past a 64-byte boundary; returns the buffer
/// and the start index.
fn aligned_buf(len: usize, offset: usize) -> (Vec<u8>, usize) {
    let buf: Vec<u8> = (0..len + offset + 64).map(|i| (i * 31) as u8).collect();
    let base = buf.as_ptr().align_offset(64);
    (buf, base + offset)
}

fn bench_mask(c: &mut Criterion) {
    let mut impls = mask_implementations();
    impls.push(("dispatched", apply_mask));
    for (len, size_name) in SIZES {
        for offset in [0usize, 14] {
            let mut group = c.benchmark_group(format!("mask/{size_name}/offset{offset}"));
            group.throughput(Throughput::Bytes(len as u64));
            for &(name, f) in &impls {
                let (mut buf, start) = aligned_buf(len, offset);
                group.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| f(black_box(&mut buf[start..start + len]), KEY, 0))
                });
            }
            let (src, src_start) = aligned_buf(len, offset);
            let (mut dst, dst_start) = aligned_buf(len, offset);
            group.bench_function(BenchmarkId::from_parameter("copy_from_slice"), |b| {
                b.iter(|| {
                    black_box(&mut dst[dst_start..dst_start + len])
                        .copy_from_slice(black_box(&src[src_start..src_start + len]))
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench_mask);
criterion_main!(benches);
