//! The NATS broker, over [`async_nats`].
//!
//! - One client connection per node, `no_echo` (the server does not send a node its own
//!   publications back), retrying the first connect, reconnecting forever with the cluster's
//!   backoff; async-nats restores the subscriptions on reconnect.
//! - One NATS subscription per topic with local subscribers, on [`subject`]`(prefix, topic)`,
//!   each read by a task of the cluster thread that hands envelopes to [`Inbound::deliver`].
//! - A publish while the client is not connected is not handed to it (async-nats would buffer it
//!   without bound of time): it is counted as lost and logged ([`Link::lost`]).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::{BoxFuture, Broker, Inbound, Link, Op};

/// NATS through async-nats; chosen by a `nats://` URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nats;

/// The subject of `topic`: `{prefix}.{topic}` with every byte that NATS gives a meaning to in a
/// subject (`.`, `*`, `>`, whitespace, controls, `%` itself) and every non-ASCII byte written as
/// `%XX`, so that any topic is one subject token and distinct topics never share a subject.
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len());
    s.push_str(prefix);
    s.push('.');
    if topic.is_empty() {
        // An empty token is not a valid subject; a lone `%` is no escape of any topic.
        s.push('%');
        return s;
    }
    for &b in topic.as_bytes() {
        match b {
            b'.' | b'*' | b'>' | b'%' => push_escaped(&mut s, b),
            0x21..=0x7e => s.push(b as char),
            _ => push_escaped(&mut s, b),
        }
    }
    s
}

fn push_escaped(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    s.push('%');
    s.push(HEX[usize::from(b >> 4)] as char);
    s.push(HEX[usize::from(b & 15)] as char);
}

impl Broker for Nats {
    fn run(self: Box<Self>, link: Link) -> BoxFuture {
        Box::pin(session(link))
    }
}

async fn session(mut link: Link) {
    let cfg = link.config().clone();
    let (state_tx, mut state_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let backoff_cfg = cfg.clone();
    let options = async_nats::ConnectOptions::new()
        .name("surge-cluster")
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(std::time::Duration::from_secs(2))
        .reconnect_delay_callback(move |attempts| backoff_cfg.backoff(attempts))
        .event_callback(move |event| {
            let state = state_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let _ = state.send(true);
                    }
                    async_nats::Event::Disconnected => {
                        let _ = state.send(false);
                    }
                    other => eprintln!("surge-cluster: nats: {other}"),
                }
            }
        });
    let client = match options.connect(cfg.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed URL or options get here (the connect itself is retried).
            eprintln!("surge-cluster: cannot use {}: {e}", cfg.url);
            return;
        }
    };
    let mut subs: HashMap<Arc<str>, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        while let Ok(up) = state_rx.try_recv() {
            link.set_connected(up);
        }
        let op = tokio::select! {
            biased;
            Some(up) = state_rx.recv() => {
                link.set_connected(up);
                continue;
            }
            op = link.next() => op,
        };
        let Some(op) = op else { break };
        match op {
            Op::Subscribe(topic) => {
                let subj = subject(&cfg.prefix, &topic);
                match client.subscribe(subj).await {
                    Ok(sub) => {
                        let task = tokio::spawn(read(sub, Arc::clone(&topic), link.inbound()));
                        if let Some(old) = subs.insert(topic, task) {
                            old.abort();
                        }
                    }
                    Err(e) => eprintln!("surge-cluster: nats subscribe to {topic:?} failed: {e}"),
                }
            }
            Op::Unsubscribe(topic) => {
                // Dropping the subscriber (when its task ends) sends UNSUB.
                if let Some(task) = subs.remove(&topic) {
                    task.abort();
                }
            }
            Op::Publish(o) => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    link.lost(1, &"the NATS server is not connected");
                    continue;
                }
                let subj = subject(&cfg.prefix, &o.topic);
                match client.publish(subj, o.envelope).await {
                    Ok(()) => link.sent(1),
                    Err(e) => link.lost(1, &e),
                }
            }
        }
    }
    for (_, task) in subs.drain() {
        task.abort();
    }
    // What was handed to the client goes out before the session ends (bounded by the
    // cluster's shutdown timeout).
    let _ = client.flush().await;
}

async fn read(mut sub: async_nats::Subscriber, topic: Arc<str>, inbound: Inbound) {
    while let Some(m) = sub.next().await {
        inbound.deliver(&topic, &m.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_are_one_token_and_distinct() {
        assert_eq!(subject("surge", "room/1"), "surge.room/1");
        assert_eq!(subject("surge", "a.b"), "surge.a%2Eb");
        assert_eq!(subject("surge", "a%2Eb"), "surge.a%252Eb");
        assert_eq!(subject("s", "x y*>"), "s.x%20y%2A%3E");
        assert_eq!(subject("s", "é"), "s.%C3%A9");
        assert_eq!(subject("s", ""), "s.%");
        assert_eq!(subject("s", "\0"), "s.%00");
    }
}
