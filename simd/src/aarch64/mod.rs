//! aarch64 implementations.

pub(crate) mod neon;
