//! UTF-8 validation throughput: `validate_utf8` vs `std::str::from_utf8`, and `Utf8Stream` fed in
//! 4 KiB pieces, on ASCII and on mixed text (ASCII with Greek, CJK and emoji).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use surge_simd::{validate_utf8, Utf8Stream};

fn text(kind: &str, len: usize) -> Vec<u8> {
    let unit = match kind {
        "ascii" => "The quick brown fox jumps over the lazy dog; 0123456789 {\"json\": true}\n",
        _ => "Hello κόσμε, 你好世界 and こんにちは 🚀🦀🎉 mixed with plain ASCII words. ",
    };
    let mut out = Vec::with_capacity(len + unit.len());
    while out.len() < len {
        out.extend_from_slice(unit.as_bytes());
    }
    // Cut back to a char boundary at or below `len`.
    let mut end = len.min(out.len());
    while std::str::from_utf8(&out[..end]).is_err() {
        end -= 1;
    }
    out.truncate(end);
    out
}

fn bench_utf8(c: &mut Criterion) {
    for kind in ["ascii", "mixed"] {
        for (len, size_name) in [(64 << 10, "64KiB"), (1 << 20, "1MiB")] {
            let data = text(kind, len);
            let mut group = c.benchmark_group(format!("utf8/{kind}/{size_name}"));
            group.throughput(Throughput::Bytes(data.len() as u64));
            group.bench_function("validate_utf8", |b| {
                b.iter(|| validate_utf8(black_box(&data)))
            });
            group.bench_function("std_from_utf8", |b| {
                b.iter(|| std::str::from_utf8(black_box(&data)).is_ok())
            });
            group.bench_function("stream_4KiB", |b| {
                b.iter(|| {
                    let mut s = Utf8Stream::new();
                    for chunk in black_box(&data).chunks(4096) {
                        s.feed(chunk).unwrap();
                    }
                    s.finish().is_ok()
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench_utf8);
criterion_main!(benches);
