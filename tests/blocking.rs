//! surge::blocking: gorilla-style connections (see docs/GORILLA.md).

use surge::blocking::{format_close_message, CloseCode};

#[test]
fn close_message_format() {
    assert_eq!(
        format_close_message(CloseCode::NORMAL, "bye"),
        b"\x03\xe8bye"
    );
    assert!(format_close_message(CloseCode::NO_STATUS, "ignored").is_empty());
}
