//! What several examples share: a `#[path]` module of each, not an example itself.

use surge::proto::DeflateMode;

/// The `--deflate` flag's value: `off`, `no-context` or `context` (context takeover with 15-bit
/// windows).
pub fn deflate_mode(s: &str) -> Option<DeflateMode> {
    Some(match s {
        "off" => DeflateMode::Disabled,
        "no-context" => DeflateMode::NoContextTakeover,
        "context" => DeflateMode::ContextTakeover {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        },
        _ => return None,
    })
}
