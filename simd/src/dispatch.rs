//! Picks the mask implementation once, at first use, and caches it.
//!
//! `SURGE_SIMD=scalar|sse2|avx2|avx512|neon` forces one (for benchmarks and for reproducing a
//! bug on a machine with a wider instruction set). A forced implementation this CPU lacks, or an
//! unknown name, falls back to the best available one with a single warning on stderr.

use std::sync::OnceLock;

use crate::MaskFn;

/// Every name `SURGE_SIMD` understands.
pub(crate) const KNOWN: [&str; 5] = ["avx512", "avx2", "sse2", "neon", "scalar"];

/// The outcome of [`choose`]: an index into the list of available implementations, and the
/// warning to print if the request could not be honoured.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) index: usize,
    pub(crate) warning: Option<String>,
}

/// Pure selection logic. `available` is ordered best first and is never empty (scalar is always
/// last). `forced` is the raw value of `SURGE_SIMD`, if set; empty means "not set".
pub(crate) fn choose(forced: Option<&str>, available: &[&str]) -> Choice {
    let best = Choice {
        index: 0,
        warning: None,
    };
    let Some(raw) = forced else { return best };
    let name = raw.trim();
    if name.is_empty() {
        return best;
    }
    if let Some(index) = available.iter().position(|a| a.eq_ignore_ascii_case(name)) {
        return Choice {
            index,
            warning: None,
        };
    }
    let why = if KNOWN.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        "is not available on this CPU"
    } else {
        "is not a known implementation (expected one of avx512, avx2, sse2, neon, scalar)"
    };
    Choice {
        index: 0,
        warning: Some(format!(
            "SURGE_SIMD={name:?} {why}; using {:?}",
            available[0]
        )),
    }
}

static SELECTED: OnceLock<(&'static str, MaskFn)> = OnceLock::new();

/// The cached choice; the first call detects the CPU and reads `SURGE_SIMD`.
#[inline]
pub(crate) fn selected() -> &'static (&'static str, MaskFn) {
    SELECTED.get_or_init(|| {
        let available = crate::mask_implementations();
        let names: Vec<&str> = available.iter().map(|(name, _)| *name).collect();
        let forced = std::env::var("SURGE_SIMD").ok();
        let choice = choose(forced.as_deref(), &names);
        if let Some(warning) = choice.warning {
            eprintln!("surge-simd: {warning}");
        }
        available[choice.index]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: [&str; 4] = ["avx512", "avx2", "sse2", "scalar"];
    const OLD_X86: [&str; 2] = ["sse2", "scalar"];

    #[test]
    fn unset_or_empty_picks_best() {
        assert_eq!(
            choose(None, &X86),
            Choice {
                index: 0,
                warning: None
            }
        );
        assert_eq!(
            choose(Some(""), &X86),
            Choice {
                index: 0,
                warning: None
            }
        );
        assert_eq!(
            choose(Some("  "), &OLD_X86),
            Choice {
                index: 0,
                warning: None
            }
        );
    }

    #[test]
    fn available_name_is_honoured() {
        for (i, name) in X86.iter().enumerate() {
            assert_eq!(
                choose(Some(name), &X86),
                Choice {
                    index: i,
                    warning: None
                }
            );
        }
        assert_eq!(choose(Some(" AVX2\n"), &X86).index, 1);
        assert_eq!(choose(Some("Scalar"), &OLD_X86).index, 1);
    }

    #[test]
    fn unavailable_falls_back_to_best_with_warning() {
        let c = choose(Some("avx512"), &OLD_X86);
        assert_eq!(c.index, 0);
        let w = c.warning.unwrap();
        assert!(w.contains("not available"), "{w}");
        assert!(w.contains("sse2"), "{w}");
        let c = choose(Some("neon"), &X86);
        assert_eq!(c.index, 0);
        assert!(c.warning.unwrap().contains("not available"));
    }

    #[test]
    fn unknown_falls_back_to_best_with_warning() {
        let c = choose(Some("avx1024"), &X86);
        assert_eq!(c.index, 0);
        assert!(c.warning.unwrap().contains("not a known implementation"));
    }

    #[test]
    fn selected_is_one_of_the_available() {
        let (name, _) = selected();
        assert!(crate::mask_implementations().iter().any(|(n, _)| n == name));
    }
}
