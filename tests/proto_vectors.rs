//! The sans-IO core driven with no sockets: RFC 6455 section 5.7 vectors fed whole and split at every
//! byte, each protocol violation and its close code, the close handshake, keepalive with a fake clock,
//! and a client/server pair talking through byte buffers.

use std::time::{Duration, Instant};

use surge::proto::{
    BufferPool, CloseCode, Config, Error, Event, Message, MessageKind, NoPool, Role, SendError,
    Session, State, TimeoutAction,
};

/// An owned copy of an event, to compare runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Fragment(MessageKind, Vec<u8>, bool, bool),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    Error(Error),
}

fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Message(Message::Text(s)) => Ev::Text(s.to_owned()),
        Event::Message(Message::Binary(b)) => Ev::Binary(b.to_vec()),
        Event::Fragment {
            kind,
            data,
            first,
            last,
        } => Ev::Fragment(kind, data.to_vec(), first, last),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close { code, reason } => Ev::Close(code.0, reason.to_owned()),
    }
}

/// Feeds `chunks` one after another; returns the events and the bytes the connection wrote.
fn feed(conn: &mut Session, cfg: &Config, chunks: &[&[u8]]) -> (Vec<Ev>, Vec<u8>) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        let len = buf.len();
        while pos < len {
            match conn.read(&mut buf[pos..], cfg, &mut out, &mut NoPool, None) {
                Ok((n, ev)) => {
                    assert!(n <= len - pos, "consumed more than given");
                    if let Some(ev) = ev {
                        events.push(own(ev));
                    } else {
                        assert_eq!(n, len - pos, "no event but input left over");
                    }
                    pos += n;
                }
                Err(e) => {
                    events.push(Ev::Error(e));
                    return (events, out);
                }
            }
        }
        conn.recycle(&mut NoPool);
    }
    (events, out)
}

/// Feeds `input` whole, then split at every byte boundary (and one byte at a time); every way gives the
/// same events and the same output.
fn check_all_splits(role: Role, input: &[u8]) -> (Vec<Ev>, Vec<u8>) {
    let cfg = Config {
        role,
        ..Config::server()
    };
    let whole = feed(&mut Session::new(role, 7), &cfg, &[input]);
    for cut in 0..=input.len() {
        let split = feed(
            &mut Session::new(role, 7),
            &cfg,
            &[&input[..cut], &input[cut..]],
        );
        assert_eq!(split, whole, "split at {cut}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        feed(&mut Session::new(role, 7), &cfg, &bytes),
        whole,
        "byte by byte"
    );
    whole
}

fn close_code_of(out: &[u8]) -> Option<u16> {
    // Server output is unmasked: find the close frame (0x88).
    let mut i = 0;
    while i + 2 <= out.len() {
        let op = out[i] & 0x0F;
        let len7 = (out[i + 1] & 0x7F) as usize;
        let (len, hl) = match len7 {
            126 => (u16::from_be_bytes([out[i + 2], out[i + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(out[i + 2..i + 10].try_into().unwrap()) as usize,
                10,
            ),
            l => (l, 2),
        };
        if op == 8 {
            return if len >= 2 {
                Some(u16::from_be_bytes([out[i + hl], out[i + hl + 1]]))
            } else {
                Some(1005)
            };
        }
        i += hl + len;
    }
    None
}

fn masked(first: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[test]
fn rfc_5_7_single_frame_unmasked_text() {
    let (ev, out) = check_all_splits(Role::Client, &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(ev, vec![Ev::Text("Hello".into())]);
    assert!(out.is_empty());
}

#[test]
fn rfc_5_7_single_frame_masked_text() {
    let input = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (ev, _) = check_all_splits(Role::Server, &input);
    assert_eq!(ev, vec![Ev::Text("Hello".into())]);
}

#[test]
fn rfc_5_7_fragmented_unmasked_text() {
    let input = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let (ev, _) = check_all_splits(Role::Client, &input);
    assert_eq!(ev, vec![Ev::Text("Hello".into())]);
}

#[test]
fn rfc_5_7_ping_and_masked_pong() {
    // Unmasked ping to a client: it answers with a masked pong carrying the same data.
    let (ev, out) = check_all_splits(Role::Client, &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(ev, vec![Ev::Ping(b"Hello".to_vec())]);
    assert_eq!(out[0], 0x8A);
    assert_eq!(out[1], 0x85);
    let key = [out[2], out[3], out[4], out[5]];
    let payload: Vec<u8> = out[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(payload, b"Hello");
    // The RFC's masked pong, received by a server.
    let (ev, out) = check_all_splits(
        Role::Server,
        &[
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
    );
    assert_eq!(ev, vec![Ev::Pong(b"Hello".to_vec())]);
    assert!(out.is_empty());
}

#[test]
fn rfc_5_7_256_bytes_and_64_kib() {
    let p256: Vec<u8> = (0..256).map(|i| i as u8).collect();
    let mut input = vec![0x82, 0x7E, 0x01, 0x00];
    input.extend_from_slice(&p256);
    let (ev, _) = check_all_splits(Role::Client, &input);
    assert_eq!(ev, vec![Ev::Binary(p256)]);

    let p64k: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let mut input = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
    input.extend_from_slice(&p64k);
    let cfg = Config::client();
    let whole = feed(&mut Session::new(Role::Client, 1), &cfg, &[&input]);
    assert_eq!(whole.0, vec![Ev::Binary(p64k.clone())]);
    for cut in [1, 2, 9, 10, 11, 4096, 65545] {
        assert_eq!(
            feed(
                &mut Session::new(Role::Client, 1),
                &cfg,
                &[&input[..cut], &input[cut..]]
            ),
            whole
        );
    }
    // Masked, to a server, in uneven pieces: the mask phase is carried across reads.
    let input = masked(0x82, KEY, &p64k);
    let pieces: Vec<&[u8]> = input.chunks(1021).collect();
    let (ev, _) = feed(
        &mut Session::new(Role::Server, 1),
        &Config::server(),
        &pieces,
    );
    assert_eq!(ev, vec![Ev::Binary(p64k)]);
}

#[test]
fn several_frames_in_one_input_with_control_between_fragments() {
    let mut input = masked(0x01, KEY, b"Hel");
    input.extend(masked(0x89, KEY, b"p"));
    input.extend(masked(0x80, KEY, "lo κόσμε".as_bytes()));
    input.extend(masked(0x82, KEY, &[1, 2, 3]));
    input.extend(masked(0x88, KEY, &[0x03, 0xe8, b'b', b'y', b'e']));
    let (ev, out) = check_all_splits(Role::Server, &input);
    assert_eq!(
        ev,
        vec![
            Ev::Ping(b"p".to_vec()),
            Ev::Text("Hello κόσμε".into()),
            Ev::Binary(vec![1, 2, 3]),
            Ev::Close(1000, "bye".into()),
        ]
    );
    // The pong, then the close echo (code only).
    assert_eq!(&out[..3], &[0x8A, 0x01, b'p']);
    assert_eq!(&out[3..], &[0x88, 0x02, 0x03, 0xe8]);
}

#[test]
fn zero_copy_single_frame_borrows_the_input() {
    let mut input = masked(0x82, KEY, &[9u8; 300]);
    let range = input.as_ptr_range();
    let cfg = Config::server();
    let mut conn = Session::new(Role::Server, 0);
    let mut out = Vec::new();
    let (n, ev) = conn
        .read(&mut input, &cfg, &mut out, &mut NoPool, None)
        .unwrap();
    let Some(Event::Message(Message::Binary(b))) = ev else {
        panic!("expected a message")
    };
    assert!(range.contains(&b.as_ptr()), "payload was copied");
    assert_eq!(b, &[9u8; 300][..]);
    assert_eq!(n, input.len());
}

/// A pool that counts, to show assembly buffers come from it and go back when idle.
#[derive(Default)]
struct CountingPool {
    taken: usize,
    given: usize,
}
impl BufferPool for CountingPool {
    fn take(&mut self) -> Vec<u8> {
        self.taken += 1;
        Vec::with_capacity(64)
    }
    fn give(&mut self, _buf: Vec<u8>) {
        self.given += 1;
    }
}

#[test]
fn assembly_buffer_is_pooled_and_released_when_idle() {
    let cfg = Config::server();
    let mut conn = Session::new(Role::Server, 0);
    let mut pool = CountingPool::default();
    let mut out = Vec::new();
    let mut first = masked(0x01, KEY, b"ab");
    let (_, ev) = conn
        .read(&mut first, &cfg, &mut out, &mut pool, None)
        .unwrap();
    assert!(ev.is_none());
    conn.recycle(&mut pool);
    assert_eq!(
        (pool.taken, pool.given),
        (1, 0),
        "kept while the message is in progress"
    );
    let mut last = masked(0x80, KEY, b"cd");
    let (_, ev) = conn
        .read(&mut last, &cfg, &mut out, &mut pool, None)
        .unwrap();
    assert_eq!(ev, Some(Event::Message(Message::Text("abcd"))));
    conn.recycle(&mut pool);
    assert_eq!((pool.taken, pool.given), (1, 1));
    assert!(conn.is_idle());
}

fn fail_with(role: Role, cfg: &Config, input: &[u8]) -> (Error, Option<u16>) {
    let mut conn = Session::new(role, 0);
    let (ev, out) = feed(&mut conn, cfg, &[input]);
    let Some(Ev::Error(e)) = ev.last().cloned() else {
        panic!("no error for {input:?}: {ev:?}")
    };
    assert_eq!(conn.state(), State::Closed);
    (e, close_code_of(&out))
}

#[test]
fn each_violation_fails_with_its_close_code() {
    let s = Config::server();
    let cases: Vec<(Vec<u8>, Error, u16)> = vec![
        (masked(0xC1, KEY, b"x"), Error::ReservedBits(0b100), 1002),
        (masked(0xA1, KEY, b"x"), Error::ReservedBits(0b010), 1002),
        (masked(0x83, KEY, b""), Error::UnknownOpcode(3), 1002),
        (masked(0x8F, KEY, b""), Error::UnknownOpcode(0xF), 1002),
        (
            masked(0x89, KEY, &[0; 126]),
            Error::ControlFrameTooBig(126),
            1002,
        ),
        (masked(0x09, KEY, b""), Error::FragmentedControlFrame, 1002),
        (vec![0x81, 0x01, b'a'], Error::UnmaskedFrameFromClient, 1002),
        (
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
            Error::LengthTopBitSet,
            1002,
        ),
        (
            masked(0x80, KEY, b"x"),
            Error::ContinuationWithoutStart,
            1002,
        ),
        (
            [masked(0x01, KEY, b"a"), masked(0x81, KEY, b"b")].concat(),
            Error::DataFrameInsideFragmented,
            1002,
        ),
        (
            masked(0x81, KEY, &[0xce, 0xba, 0xff]),
            Error::InvalidUtf8,
            1007,
        ),
        (masked(0x88, KEY, &[3]), Error::ClosePayloadTooShort, 1002),
        (
            masked(0x88, KEY, &[0x03, 0xed]),
            Error::InvalidCloseCode(1005),
            1002,
        ),
        (
            masked(0x88, KEY, &[0x03, 0xe8, 0xff]),
            Error::InvalidUtf8,
            1007,
        ),
    ];
    for (input, err, code) in cases {
        assert_eq!(
            fail_with(Role::Server, &s, &input),
            (err, Some(code)),
            "{input:02x?}"
        );
    }
    // A masked frame to a client.
    let (e, _) = fail_with(Role::Client, &Config::client(), &masked(0x81, KEY, b"a"));
    assert_eq!(e, Error::MaskedFrameFromServer);
}

#[test]
fn limits_are_checked_before_allocating() {
    let cfg = Config {
        max_message_size: 1000,
        max_frame_size: 600,
        ..Config::server()
    };
    // A header announcing 1 GiB fails at once, with only the header read.
    let header = [0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
    let (e, code) = fail_with(Role::Server, &cfg, &header);
    assert_eq!(
        (e, code),
        (
            Error::FrameTooBig {
                len: 1 << 30,
                max: 600
            },
            Some(1009)
        )
    );
    // Fragments adding up past the message limit.
    let input = [
        masked(0x02, KEY, &[0; 500]),
        masked(0x00, KEY, &[0; 500]),
        masked(0x80, KEY, &[0; 1]),
    ]
    .concat();
    let (e, code) = fail_with(Role::Server, &cfg, &input);
    assert_eq!(
        (e, code),
        (
            Error::MessageTooBig {
                len: 1001,
                max: 1000
            },
            Some(1009)
        )
    );
    // Exactly at the limit is fine.
    let input = [masked(0x02, KEY, &[0; 500]), masked(0x80, KEY, &[0; 500])].concat();
    assert_eq!(
        feed(&mut Session::new(Role::Server, 0), &cfg, &[&input]).0,
        vec![Ev::Binary(vec![0; 1000])]
    );
}

#[test]
fn invalid_utf8_fails_fast_inside_a_frame_and_across_fragments() {
    let cfg = Config::server();
    // The frame announces 10 bytes; the first 3 already hold an impossible sequence.
    let frame = masked(
        0x81,
        KEY,
        &[b'a', 0xF4, 0x90, b'b', b'c', b'd', b'e', b'f', b'g', b'h'],
    );
    let mut conn = Session::new(Role::Server, 0);
    let (ev, out) = feed(&mut conn, &cfg, &[&frame[..6 + 3]]);
    assert_eq!(ev, vec![Ev::Error(Error::InvalidUtf8)]);
    assert_eq!(close_code_of(&out), Some(1007));
    // Fragment one valid, fragment two invalid: fails before fragment three is sent.
    let mut conn = Session::new(Role::Server, 0);
    let f1 = masked(0x01, KEY, "κόσμε".as_bytes());
    let f2 = masked(0x00, KEY, &[0xed, 0xa0, 0x80]);
    let (ev, _) = feed(&mut conn, &cfg, &[&f1, &f2]);
    assert_eq!(ev, vec![Ev::Error(Error::InvalidUtf8)]);
    // A code point split across fragments is fine.
    let euro = "€".as_bytes();
    let input = [
        masked(0x01, KEY, &euro[..1]),
        masked(0x00, KEY, &euro[1..2]),
        masked(0x80, KEY, &euro[2..]),
    ]
    .concat();
    assert_eq!(
        check_all_splits(Role::Server, &input).0,
        vec![Ev::Text("€".into())]
    );
    // ... but not one left incomplete at the end of the message.
    let input = [
        masked(0x01, KEY, &euro[..1]),
        masked(0x80, KEY, &euro[1..2]),
    ]
    .concat();
    assert_eq!(
        check_all_splits(Role::Server, &input).0,
        vec![Ev::Error(Error::InvalidUtf8)]
    );
}

#[test]
fn messages_before_an_error_are_delivered_first() {
    // Autobahn 3.2 / 4.1.3: a good message, a bad frame, a ping, all in one read.
    let input = [
        masked(0x81, KEY, b"Hello"),
        masked(0xA1, KEY, b"x"),
        masked(0x89, KEY, b""),
    ]
    .concat();
    let (ev, _) = check_all_splits(Role::Server, &input);
    assert_eq!(
        ev,
        vec![
            Ev::Text("Hello".into()),
            Ev::Error(Error::ReservedBits(0b010))
        ]
    );
}

#[test]
fn close_handshake_initiated_locally() {
    let cfg = Config::server();
    let now = Instant::now();
    let mut conn = Session::new(Role::Server, 0);
    let mut out = Vec::new();
    conn.close(&mut out, Some(CloseCode::NORMAL), "done", now, &cfg)
        .unwrap();
    assert_eq!(out, [0x88, 0x06, 0x03, 0xe8, b'd', b'o', b'n', b'e']);
    assert_eq!(conn.state(), State::CloseSent);
    // No more data may be sent.
    assert_eq!(
        conn.send(&mut out, MessageKind::Text, b"x", &cfg, 0),
        Err(SendError::Closed)
    );
    assert_eq!(conn.ping(&mut out, b""), Err(SendError::Closed));
    // Data from the peer is consumed and ignored; its close completes the handshake, with no echo.
    let input = [
        masked(0x81, KEY, b"late"),
        masked(0x89, KEY, b"p"),
        masked(0x88, KEY, &[0x03, 0xe8]),
    ]
    .concat();
    let before = out.len();
    let (ev, out2) = feed(&mut conn, &cfg, &[&input]);
    assert_eq!(
        ev,
        vec![Ev::Ping(b"p".to_vec()), Ev::Close(1000, String::new())]
    );
    assert!(out2.is_empty(), "no pong or close echo after our close");
    assert_eq!(out.len(), before);
    assert_eq!(conn.state(), State::Closed);
    // Anything after the close is ignored.
    assert_eq!(feed(&mut conn, &cfg, &[&masked(0x81, KEY, b"x")]).0, vec![]);
}

#[test]
fn close_timeout_ends_the_handshake() {
    let cfg = Config {
        close_timeout: Duration::from_secs(2),
        ..Config::server()
    };
    let t0 = Instant::now();
    let mut conn = Session::new(Role::Server, 0);
    let mut out = Vec::new();
    conn.close(&mut out, None, "", t0, &cfg).unwrap();
    assert_eq!(out, [0x88, 0x00]);
    assert_eq!(conn.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(1), &cfg, &mut out),
        TimeoutAction::None
    );
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(2), &cfg, &mut out),
        TimeoutAction::Closed
    );
    assert!(conn.is_closed());
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn close_codes_sent_are_checked() {
    let cfg = Config::server();
    let now = Instant::now();
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        let mut conn = Session::new(Role::Server, 0);
        let r = conn.close(&mut Vec::new(), Some(CloseCode(bad)), "", now, &cfg);
        assert_eq!(r, Err(SendError::InvalidCloseCode(bad)));
    }
    // A long reason is cut to fit 125 bytes at a character boundary.
    let mut conn = Session::new(Role::Server, 0);
    let mut out = Vec::new();
    conn.close(&mut out, Some(CloseCode(4000)), &"é".repeat(100), now, &cfg)
        .unwrap();
    assert_eq!(out[1], 124);
}

#[test]
fn auto_pong_can_be_turned_off() {
    let cfg = Config {
        auto_pong: false,
        ..Config::server()
    };
    let (ev, out) = feed(
        &mut Session::new(Role::Server, 0),
        &cfg,
        &[&masked(0x89, KEY, b"hi")],
    );
    assert_eq!(ev, vec![Ev::Ping(b"hi".to_vec())]);
    assert!(out.is_empty());
}

#[test]
fn keepalive_pings_after_silence_and_gives_up() {
    let cfg = Config {
        idle_timeout: Some(Duration::from_secs(10)),
        pong_timeout: Duration::from_secs(5),
        ..Config::server()
    };
    let t0 = Instant::now();
    let mut conn = Session::new(Role::Server, 0);
    conn.start(t0, &cfg);
    let mut out = Vec::new();
    // Activity before the deadline re-arms instead of pinging.
    feed(&mut conn, &cfg, &[&masked(0x81, KEY, b"x")]);
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(10), &cfg, &mut out),
        TimeoutAction::None
    );
    assert!(out.is_empty());
    assert_eq!(conn.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    // Silence: a ping.
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(20), &cfg, &mut out),
        TimeoutAction::PingSent
    );
    assert_eq!(out, [0x89, 0x00]);
    // A pong comes back: re-armed.
    feed(&mut conn, &cfg, &[&masked(0x8A, KEY, b"")]);
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(25), &cfg, &mut out),
        TimeoutAction::None
    );
    // Silence again: ping, then no answer: closed with 1001.
    out.clear();
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(35), &cfg, &mut out),
        TimeoutAction::PingSent
    );
    assert_eq!(
        conn.handle_timeout(t0 + Duration::from_secs(40), &cfg, &mut out),
        TimeoutAction::Closed
    );
    assert_eq!(close_code_of(&out), Some(1001));
    assert!(conn.is_closed());
}

#[test]
fn streamed_fragments() {
    let cfg = Config {
        stream_fragments: true,
        ..Config::server()
    };
    let input = [
        masked(0x01, KEY, b"ab"),
        masked(0x00, KEY, b""),
        masked(0x80, KEY, b"cd"),
    ]
    .concat();
    let (ev, _) = feed(&mut Session::new(Role::Server, 0), &cfg, &[&input]);
    assert_eq!(
        ev,
        vec![
            Ev::Fragment(MessageKind::Text, b"ab".to_vec(), true, false),
            Ev::Fragment(MessageKind::Text, b"cd".to_vec(), false, true),
        ]
    );
    // A whole single frame still arrives as one message.
    let (ev, _) = feed(
        &mut Session::new(Role::Server, 0),
        &cfg,
        &[&masked(0x82, KEY, b"xyz")],
    );
    assert_eq!(ev, vec![Ev::Binary(b"xyz".to_vec())]);
    // A frame split across reads arrives in pieces whose concatenation is the message.
    let frame = masked(0x82, KEY, &[5u8; 100]);
    let (ev, _) = feed(
        &mut Session::new(Role::Server, 0),
        &cfg,
        &[&frame[..50], &frame[50..]],
    );
    let mut all = Vec::new();
    for (i, e) in ev.iter().enumerate() {
        let Ev::Fragment(MessageKind::Binary, d, first, last) = e else {
            panic!("{e:?}")
        };
        assert_eq!(*first, i == 0);
        assert_eq!(*last, i == ev.len() - 1);
        all.extend_from_slice(d);
    }
    assert_eq!(all, vec![5u8; 100]);
}

/// A client and a server talking through byte buffers.
#[test]
fn client_server_pair() {
    let scfg = Config {
        max_send_frame_size: 1000,
        ..Config::server()
    };
    let ccfg = Config {
        max_send_frame_size: 777,
        ..Config::client()
    };
    let mut server = Session::new(Role::Server, 0);
    let mut client = Session::new(Role::Client, 0x1234_5678_9abc_def0);
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();

    let mut wire = Vec::new();
    client
        .send(&mut wire, MessageKind::Binary, &big, &ccfg, 0)
        .unwrap();
    client
        .send(&mut wire, MessageKind::Text, "héllo".as_bytes(), &ccfg, 0)
        .unwrap();
    client.begin_message(MessageKind::Text).unwrap();
    client
        .write_fragment(&mut wire, b"piece ", true, false, 0)
        .unwrap();
    assert_eq!(
        client.send(&mut wire, MessageKind::Text, b"x", &ccfg, 0),
        Err(SendError::MessageInProgress)
    );
    client.ping(&mut wire, b"between").unwrap();
    client
        .write_fragment(&mut wire, b"by piece", false, true, 0)
        .unwrap();
    let (ev, replies) = feed(&mut server, &scfg, &[&wire]);
    assert_eq!(
        ev,
        vec![
            Ev::Binary(big.clone()),
            Ev::Text("héllo".into()),
            Ev::Ping(b"between".to_vec()),
            Ev::Text("piece by piece".into()),
        ]
    );
    // The server's pong reaches the client.
    let (ev, _) = feed(&mut client, &ccfg, &[&replies]);
    assert_eq!(ev, vec![Ev::Pong(b"between".to_vec())]);

    // Server to client, auto-fragmented at 1000 bytes.
    let mut wire = Vec::new();
    server
        .send(&mut wire, MessageKind::Binary, &big, &scfg, 0)
        .unwrap();
    assert!(wire.len() > big.len() + 10 * 2, "fragmented into frames");
    let (ev, _) = feed(&mut client, &ccfg, &[&wire]);
    assert_eq!(ev, vec![Ev::Binary(big)]);

    // The client closes; the server echoes; the client completes.
    let now = Instant::now();
    let mut wire = Vec::new();
    client
        .close(&mut wire, Some(CloseCode(4001)), "bye", now, &ccfg)
        .unwrap();
    let (ev, echo) = feed(&mut server, &scfg, &[&wire]);
    assert_eq!(ev, vec![Ev::Close(4001, "bye".into())]);
    assert!(server.is_closed());
    let (ev, _) = feed(&mut client, &ccfg, &[&echo]);
    assert_eq!(ev, vec![Ev::Close(4001, String::new())]);
    assert!(client.is_closed());
}

#[test]
fn client_masks_with_changing_keys() {
    let cfg = Config::client();
    let mut client = Session::new(Role::Client, 99);
    let mut a = Vec::new();
    let mut b = Vec::new();
    client
        .send(&mut a, MessageKind::Binary, &[0; 8], &cfg, 0)
        .unwrap();
    client
        .send(&mut b, MessageKind::Binary, &[0; 8], &cfg, 0)
        .unwrap();
    assert_eq!(a[1], 0x88);
    assert_ne!(a[2..6], b[2..6], "a fresh key per frame");
    // Zero payload XOR key = key repeated.
    assert_eq!(a[6..10], a[2..6]);
}

#[test]
fn control_frame_split_inside_an_assembled_message_shares_the_buffer() {
    // A ping split across reads while a fragmented message is being assembled: both live in the
    // one assembly buffer, and neither corrupts the other, however the input is split.
    let ping: Vec<u8> = (0..100u8).collect();
    let input = [
        masked(0x01, KEY, "first half, ".as_bytes()),
        masked(0x89, KEY, &ping),
        masked(0x8A, KEY, b"pong data"),
        masked(0x80, KEY, "second half".as_bytes()),
        masked(0x89, KEY, b"after"),
    ]
    .concat();
    let (ev, _) = check_all_splits(Role::Server, &input);
    assert_eq!(
        ev,
        vec![
            Ev::Ping(ping),
            Ev::Pong(b"pong data".to_vec()),
            Ev::Text("first half, second half".into()),
            Ev::Ping(b"after".to_vec()),
        ]
    );
}
