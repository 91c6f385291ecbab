//! The command line every server binary of the harness takes: `--flag value` pairs, `--port P`
//! (9001 when absent) and `--workers N` for all, and flags of its own for each. A `#[path]` module
//! of each server binary (`src/bin/*.rs`), not of the harness.

/// The port and worker count from the command line (`workers` when `--workers` is absent); every
/// other flag goes to `other(flag, value)`, which says whether it knows the flag. A flag without a
/// value, a value that does not parse, or a flag no one knows panics.
pub fn parse(workers: usize, mut other: impl FnMut(&str, &str) -> bool) -> (u16, usize) {
    let mut port = 9001u16;
    let mut workers = workers;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("flag value");
        match flag.as_str() {
            "--port" => port = value.parse().expect("port"),
            "--workers" => workers = value.parse().expect("workers"),
            flag if other(flag, &value) => {}
            flag => panic!("unknown flag {flag}"),
        }
    }
    (port, workers)
}
