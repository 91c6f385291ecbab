//! The fuzz targets' checks over the committed seed corpora, as ordinary tests (CI runs no fuzzer).
//! (surge-simd runs the `mask` corpus in its own tests.)

use std::fs;
use std::path::PathBuf;

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn frame_corpus() {
    for (path, data) in corpus("frame") {
        eprintln!("{}", path.display());
        super::fuzz_check_frame(&data);
    }
}

#[test]
fn receive_corpus() {
    for (path, data) in corpus("receive") {
        eprintln!("{}", path.display());
        super::fuzz_check_receive(&data);
    }
}

#[test]
fn handshake_corpus() {
    for (path, data) in corpus("handshake") {
        eprintln!("{}", path.display());
        crate::handshake::fuzz_check_request(&data);
    }
}

#[test]
fn deflate_corpus() {
    for (path, data) in corpus("deflate") {
        eprintln!("{}", path.display());
        super::fuzz_check_deflate(&data);
    }
}

#[test]
fn timer_corpus() {
    for (path, data) in corpus("timer") {
        eprintln!("{}", path.display());
        super::fuzz_check_timer_wheel(&data);
    }
}
