//! The sidecar's connections to the hub (docs/API.md §9). One HTTP/2 connection carries every
//! request and stream; a second opens only when the first carries as many streams as the hub
//! allows on one connection (`sidecar.upstream_max_streams`, the hub's 1,000), since a stream
//! past that limit would wait, unanswered, for another to end. Each use of the hub takes a
//! [`Lease`] on the first connection with room and holds it as long as its stream lives.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Builds one more client: its own connection pool, so its own HTTP/2 connection.
type Make = dyn Fn() -> Result<plexus_client::Client, plexus_client::Error> + Send + Sync;

struct Conn {
    client: plexus_client::Client,
    streams: AtomicUsize,
}

pub struct Upstream {
    make: Box<Make>,
    /// The first connection, also `conns[0]`; never dropped.
    first: Arc<Conn>,
    /// A std mutex, held only to pick or add a connection, never across `.await`.
    conns: Mutex<Vec<Arc<Conn>>>,
    max_streams: usize,
}

/// One request or stream on a connection; the connection's count drops when it does.
pub struct Lease(Arc<Conn>);

impl Deref for Lease {
    type Target = plexus_client::Client;
    fn deref(&self) -> &plexus_client::Client {
        &self.0.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// The first connection's client is built at once, so a bad URL or certificate fails at
    /// start.
    pub fn new(make: Box<Make>, max_streams: usize) -> Result<Upstream, plexus_client::Error> {
        let first = Arc::new(Conn {
            client: make()?,
            streams: AtomicUsize::new(0),
        });
        Ok(Upstream {
            make,
            conns: Mutex::new(vec![first.clone()]),
            first,
            max_streams: max_streams.max(1),
        })
    }

    /// A lease on the first connection with room, or on a new one when all are full.
    pub fn lease(&self) -> Lease {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < self.max_streams)
        {
            c.streams.fetch_add(1, Ordering::Relaxed);
            return Lease(c.clone());
        }
        let conn = match (self.make)() {
            Ok(client) => Arc::new(Conn {
                client,
                streams: AtomicUsize::new(0),
            }),
            Err(e) => {
                // Built once already with the same settings; should it fail now, the stream
                // waits its turn on the least loaded connection rather than failing.
                tracing::warn!(error = %e, "cannot build another upstream connection");
                let least = conns
                    .iter()
                    .min_by_key(|c| c.streams.load(Ordering::Relaxed))
                    .cloned()
                    .unwrap_or_else(|| self.first.clone());
                least.streams.fetch_add(1, Ordering::Relaxed);
                return Lease(least);
            }
        };
        conn.streams.fetch_add(1, Ordering::Relaxed);
        conns.push(conn.clone());
        tracing::info!(
            connections = conns.len(),
            "every upstream connection carries its most streams; opened another"
        );
        Lease(conn)
    }

    /// Connections carrying at least one stream now (at least 1: the first one is kept).
    pub fn connections(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .iter()
            .filter(|c| c.streams.load(Ordering::Relaxed) > 0)
            .count()
            .max(1)
    }
}
