//! The NRI connection multiplexer: two logical ttrpc connections over one socket.
//!
//! Every chunk on the socket is `[u32 BE conn id][u32 BE payload length][payload]`. Each logical
//! connection is a byte stream that may span chunks; chunks for ids nobody opened are dropped.
//! What this side sends obeys the runtime's reader (containerd 1.7, nri v0.6.1): no chunk carries
//! more than [`MAX_CHUNK_PAYLOAD`] bytes, and every ttrpc message starts on a chunk boundary. To
//! keep the second rule whatever the ttrpc library's write pattern, the outbound path reads whole
//! ttrpc messages (10-byte header, then the data it announces) before chunking them.
//!
//! Each logical connection is handed out as one end of an in-memory duplex stream, which the
//! ttrpc crate takes as a `Socket` (see [`crate::transport`]). The mux is symmetric: the plugin and
//! a (test) runtime use it alike.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 8;
/// The largest payload this side ever puts in one chunk: containerd 1.7 drops a plugin that
/// sends more (its reader fails with ENOMEM).
pub const MAX_CHUNK_PAYLOAD: usize = 4096;
/// The largest chunk payload accepted from the peer. The runtime may send big chunks (one ttrpc
/// message per write); a ttrpc message is at most 4 MiB of data plus its header.
pub const MAX_INBOUND_PAYLOAD: usize = TTRPC_HEADER_LEN + TTRPC_MAX_DATA;
/// Bytes of a ttrpc message header: `[u32 BE data length][u32 BE stream id][u8 type][u8 flags]`.
pub const TTRPC_HEADER_LEN: usize = 10;
/// ttrpc's limit on a message's data.
pub const TTRPC_MAX_DATA: usize = 4 << 20;
/// Buffer of each in-memory logical connection.
const DUPLEX_BUFFER: usize = 64 * 1024;

/// A logical connection's id on the multiplexed socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

impl ConnId {
    /// The runtime calls the plugin's `Plugin` service here.
    pub const PLUGIN_SERVICE: ConnId = ConnId(1);
    /// The plugin calls the runtime's `Runtime` service here.
    pub const RUNTIME_SERVICE: ConnId = ConnId(2);
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("conn id 0 is reserved")]
    ReservedId,
    #[error("conn id {0} opened twice")]
    DuplicateId(ConnId),
    #[error("peer sent a {len}-byte chunk on conn {conn}, over the {max}-byte limit")]
    ChunkTooLarge {
        conn: ConnId,
        len: usize,
        max: usize,
    },
    #[error("conn {conn}: ttrpc message of {len} data bytes is over the {max}-byte limit")]
    MessageTooLarge {
        conn: ConnId,
        len: usize,
        max: usize,
    },
    #[error("multiplexed socket: {0}")]
    Io(#[from] io::Error),
}

/// Why the multiplexed socket stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed the socket.
    Eof,
    /// Reading or writing failed, or the peer broke the framing.
    Failed(String),
    /// This side dropped the multiplexer.
    Dropped,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Eof => f.write_str("peer closed the connection"),
            Closed::Failed(e) => write!(f, "connection failed: {e}"),
            Closed::Dropped => f.write_str("closed locally"),
        }
    }
}

/// Counts of what the mux saw, for tests and logs.
#[derive(Debug, Default)]
pub struct MuxStats {
    pub chunks_in: AtomicU64,
    /// The largest chunk payload received.
    pub max_chunk_in: AtomicU64,
    pub chunks_out: AtomicU64,
    /// Chunks for conn ids nobody opened (dropped).
    pub chunks_dropped: AtomicU64,
    pub messages_out: AtomicU64,
}

/// Appends one ttrpc message, cut into chunks of at most [`MAX_CHUNK_PAYLOAD`] bytes, to `out`.
/// The first chunk starts with the message's first byte.
pub fn encode_chunks(conn: ConnId, message: &[u8], out: &mut Vec<u8>) {
    for part in message.chunks(MAX_CHUNK_PAYLOAD) {
        out.extend_from_slice(&conn.0.to_be_bytes());
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
}

/// The data length a ttrpc message header announces.
pub fn ttrpc_data_len(header: &[u8; TTRPC_HEADER_LEN]) -> usize {
    u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize
}

/// One socket carrying several logical connections. Dropping it stops its tasks and closes the
/// logical connections (their peers see end of stream).
pub struct Multiplexer {
    conns: HashMap<ConnId, DuplexStream>,
    closed: watch::Receiver<Option<Closed>>,
    stats: Arc<MuxStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Multiplexer {
    /// Starts multiplexing `socket` for the logical connections `ids` (each must be non-zero and
    /// given once). Must be called within a tokio runtime.
    pub fn new<S>(socket: S, ids: &[ConnId]) -> Result<Self, MuxError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut user_ends = HashMap::new();
        let mut inbound = HashMap::new();
        let mut outbound = Vec::new();
        for &id in ids {
            if id.0 == 0 {
                return Err(MuxError::ReservedId);
            }
            if user_ends.contains_key(&id) {
                return Err(MuxError::DuplicateId(id));
            }
            let (user, mux_end) = tokio::io::duplex(DUPLEX_BUFFER);
            let (rd, wr) = tokio::io::split(mux_end);
            user_ends.insert(id, user);
            inbound.insert(id, wr);
            outbound.push((id, rd));
        }

        let stats = Arc::new(MuxStats::default());
        let (closed_tx, closed) = watch::channel(None);
        let closed_tx = Arc::new(closed_tx);
        let (sock_rd, sock_wr) = tokio::io::split(socket);
        // Whole encoded messages (every chunk of one message) go to the single writer in one
        // piece, so two connections' messages never interleave mid-message.
        let (frames_tx, frames_rx) = mpsc::channel::<Vec<u8>>(64);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(read_socket(
            sock_rd,
            inbound,
            stats.clone(),
            closed_tx.clone(),
        )));
        tasks.push(tokio::spawn(write_socket(
            sock_wr,
            frames_rx,
            closed_tx.clone(),
        )));
        for (id, rd) in outbound {
            tasks.push(tokio::spawn(frame_outbound(
                id,
                rd,
                frames_tx.clone(),
                stats.clone(),
                closed_tx.clone(),
            )));
        }
        Ok(Multiplexer {
            conns: user_ends,
            closed,
            stats,
            tasks,
        })
    }

    /// Takes the stream of logical connection `id` (once).
    pub fn take(&mut self, id: ConnId) -> Option<DuplexStream> {
        self.conns.remove(&id)
    }

    pub fn stats(&self) -> Arc<MuxStats> {
        self.stats.clone()
    }

    /// Resolves when the socket stops (peer closed it, or I/O or framing failed).
    pub async fn closed(&self) -> Closed {
        self.closed_watch().wait().await
    }

    /// Whether the socket already stopped.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// A handle that resolves when the socket stops, usable after the mux moved elsewhere.
    pub fn closed_watch(&self) -> ClosedWatch {
        ClosedWatch(self.closed.clone())
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves when a multiplexer's socket stops.
#[derive(Clone)]
pub struct ClosedWatch(watch::Receiver<Option<Closed>>);

impl ClosedWatch {
    pub async fn wait(&mut self) -> Closed {
        let seen = match self.0.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        seen.unwrap_or(Closed::Dropped)
    }
}

fn close(tx: &watch::Sender<Option<Closed>>, why: Closed) {
    tx.send_if_modified(|cur| {
        if cur.is_none() {
            *cur = Some(why);
            true
        } else {
            false
        }
    });
}

/// Socket to logical connections: routes each chunk's payload to its connection's stream.
async fn read_socket<R: AsyncRead>(
    sock: ReadHalf<R>,
    mut conns: HashMap<ConnId, WriteHalf<DuplexStream>>,
    stats: Arc<MuxStats>,
    closed: Arc<watch::Sender<Option<Closed>>>,
) {
    let why = route_chunks(sock, &mut conns, &stats).await;
    tracing::debug!(reason = %why, "mux reader stopped");
    close(&closed, why);
    // The ttrpc ends see end of stream: pending calls fail instead of hanging.
    for (_, mut w) in conns {
        let _ = w.shutdown().await;
    }
}

async fn route_chunks<R: AsyncRead>(
    mut sock: ReadHalf<R>,
    conns: &mut HashMap<ConnId, WriteHalf<DuplexStream>>,
    stats: &MuxStats,
) -> Closed {
    let mut header = [0u8; CHUNK_HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        match sock.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Closed::Eof,
            Err(e) => return Closed::Failed(MuxError::Io(e).to_string()),
        }
        let conn = ConnId(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_INBOUND_PAYLOAD {
            let e = MuxError::ChunkTooLarge {
                conn,
                len,
                max: MAX_INBOUND_PAYLOAD,
            };
            return Closed::Failed(e.to_string());
        }
        payload.resize(len, 0);
        if let Err(e) = sock.read_exact(&mut payload).await {
            return Closed::Failed(MuxError::Io(e).to_string());
        }
        stats.chunks_in.fetch_add(1, Ordering::Relaxed);
        stats.max_chunk_in.fetch_max(len as u64, Ordering::Relaxed);
        match conns.get_mut(&conn) {
            Some(w) => {
                if let Err(e) = w.write_all(&payload).await {
                    // The ttrpc end went away; the other connection may still be in use.
                    tracing::debug!(%conn, error = %e, "logical connection closed locally");
                    conns.remove(&conn);
                }
            }
            None => {
                stats.chunks_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%conn, len, "dropping a chunk for an unknown connection");
            }
        }
    }
}

/// Logical connection to socket: reads whole ttrpc messages and hands them on as chunks.
async fn frame_outbound(
    conn: ConnId,
    mut rd: ReadHalf<DuplexStream>,
    frames: mpsc::Sender<Vec<u8>>,
    stats: Arc<MuxStats>,
    closed: Arc<watch::Sender<Option<Closed>>>,
) {
    let mut msg = Vec::new();
    loop {
        let mut header = [0u8; TTRPC_HEADER_LEN];
        if rd.read_exact(&mut header).await.is_err() {
            // The ttrpc end closed this connection: nothing more to send on it.
            return;
        }
        let len = ttrpc_data_len(&header);
        if len > TTRPC_MAX_DATA {
            // ttrpc never writes this; the stream is out of step and cannot be resynchronised.
            let e = MuxError::MessageTooLarge {
                conn,
                len,
                max: TTRPC_MAX_DATA,
            };
            tracing::error!(error = %e, "closing the multiplexed socket");
            close(&closed, Closed::Failed(e.to_string()));
            return;
        }
        msg.clear();
        msg.extend_from_slice(&header);
        msg.resize(TTRPC_HEADER_LEN + len, 0);
        if rd.read_exact(&mut msg[TTRPC_HEADER_LEN..]).await.is_err() {
            return;
        }
        let mut out = Vec::with_capacity(msg.len() + CHUNK_HEADER_LEN * (1 + len / 4096));
        encode_chunks(conn, &msg, &mut out);
        stats.messages_out.fetch_add(1, Ordering::Relaxed);
        stats.chunks_out.fetch_add(
            msg.len().div_ceil(MAX_CHUNK_PAYLOAD) as u64,
            Ordering::Relaxed,
        );
        if frames.send(out).await.is_err() {
            return;
        }
    }
}

/// The single writer of the socket.
async fn write_socket<W: AsyncWrite>(
    mut sock: WriteHalf<W>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    closed: Arc<watch::Sender<Option<Closed>>>,
) {
    while let Some(buf) = frames.recv().await {
        let res = async {
            sock.write_all(&buf).await?;
            sock.flush().await
        }
        .await;
        if let Err(e) = res {
            close(&closed, Closed::Failed(MuxError::Io(e).to_string()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::duplex;

    const T: Duration = Duration::from_secs(5);

    /// A ttrpc message of `data_len` data bytes (content = a byte pattern).
    fn ttrpc_message(stream_id: u32, data_len: usize) -> Vec<u8> {
        let mut m = Vec::with_capacity(TTRPC_HEADER_LEN + data_len);
        m.extend_from_slice(&(data_len as u32).to_be_bytes());
        m.extend_from_slice(&stream_id.to_be_bytes());
        m.extend_from_slice(&[1, 0]);
        m.extend((0..data_len).map(|i| (i % 251) as u8));
        m
    }

    /// Reads every chunk from `raw` until `want` payload bytes arrived on any connection.
    async fn read_chunks(
        raw: &mut (impl AsyncRead + Unpin),
        want: usize,
    ) -> Vec<(ConnId, Vec<u8>)> {
        let mut got = 0;
        let mut chunks = vec![];
        while got < want {
            let mut h = [0u8; CHUNK_HEADER_LEN];
            tokio::time::timeout(T, raw.read_exact(&mut h))
                .await
                .expect("chunk in time")
                .unwrap();
            let conn = ConnId(u32::from_be_bytes(h[..4].try_into().unwrap()));
            let len = u32::from_be_bytes(h[4..].try_into().unwrap()) as usize;
            let mut p = vec![0; len];
            raw.read_exact(&mut p).await.unwrap();
            got += len;
            chunks.push((conn, p));
        }
        chunks
    }

    fn chunk(conn: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = conn.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn encode_cuts_at_4096_and_starts_each_message_on_a_boundary() {
        for (len, want) in [
            (0usize, vec![]),
            (1, vec![1]),
            (4096, vec![4096]),
            (4097, vec![4096, 1]),
            (9107, vec![4096, 4096, 915]),
        ] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = vec![];
            encode_chunks(ConnId(2), &msg, &mut out);
            let mut lens = vec![];
            let mut rest = &out[..];
            let mut joined = vec![];
            while !rest.is_empty() {
                assert_eq!(&rest[..4], &2u32.to_be_bytes());
                let l = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
                assert!(l <= MAX_CHUNK_PAYLOAD);
                joined.extend_from_slice(&rest[8..8 + l]);
                lens.push(l);
                rest = &rest[8 + l..];
            }
            assert_eq!(lens, want, "message of {len} bytes");
            assert_eq!(joined, msg);
        }
    }

    #[tokio::test]
    async fn outbound_messages_are_chunked_and_never_share_a_chunk() {
        let (sock, mut raw) = duplex(1 << 20);
        let mut mux = Multiplexer::new(sock, &[ConnId(1), ConnId(2)]).unwrap();
        let mut c2 = mux.take(ConnId(2)).unwrap();
        // A 9000-byte message, then a small one, written in one go: the small one must start
        // a chunk of its own.
        let big = ttrpc_message(1, 9000 - TTRPC_HEADER_LEN);
        let small = ttrpc_message(3, 5);
        let mut both = big.clone();
        both.extend_from_slice(&small);
        c2.write_all(&both).await.unwrap();
        let chunks = read_chunks(&mut raw, both.len()).await;
        let lens: Vec<usize> = chunks.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(lens, vec![4096, 4096, 808, small.len()]);
        assert!(chunks.iter().all(|(c, _)| *c == ConnId(2)));
        assert_eq!(chunks[3].1, small);
        let joined: Vec<u8> = chunks[..3].iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(joined, big);
    }

    #[tokio::test]
    async fn outbound_message_written_piecemeal_still_starts_a_chunk() {
        let (sock, mut raw) = duplex(1 << 20);
        let mut mux = Multiplexer::new(sock, &[ConnId(1)]).unwrap();
        let mut c1 = mux.take(ConnId(1)).unwrap();
        let msg = ttrpc_message(5, 100);
        // Header in two writes, then the data byte by byte for a while.
        c1.write_all(&msg[..3]).await.unwrap();
        c1.write_all(&msg[3..TTRPC_HEADER_LEN]).await.unwrap();
        for b in &msg[TTRPC_HEADER_LEN..] {
            c1.write_all(&[*b]).await.unwrap();
        }
        let chunks = read_chunks(&mut raw, msg.len()).await;
        assert_eq!(chunks, vec![(ConnId(1), msg)]);
    }

    #[tokio::test]
    async fn inbound_streams_are_reassembled_across_chunks_of_any_size() {
        let (sock, mut raw) = duplex(1 << 20);
        let mut mux = Multiplexer::new(sock, &[ConnId(1), ConnId(2)]).unwrap();
        let mut c1 = mux.take(ConnId(1)).unwrap();
        let mut c2 = mux.take(ConnId(2)).unwrap();
        // As containerd was seen to send: 4096 then 9107 bytes, interleaved with the other
        // connection, a message split mid-header.
        let msg = ttrpc_message(1, 4096 + 9107 - TTRPC_HEADER_LEN);
        let other = ttrpc_message(7, 20);
        let mut wire = chunk(1, &msg[..4096]);
        wire.extend(chunk(2, &other[..4]));
        wire.extend(chunk(1, &msg[4096..]));
        wire.extend(chunk(2, &other[4..]));
        raw.write_all(&wire).await.unwrap();
        let mut got = vec![0; msg.len()];
        tokio::time::timeout(T, c1.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
        let mut got = vec![0; other.len()];
        tokio::time::timeout(T, c2.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, other);
        assert_eq!(mux.stats().chunks_in.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn chunks_for_unknown_connections_are_dropped() {
        let (sock, mut raw) = duplex(1 << 20);
        let mut mux = Multiplexer::new(sock, &[ConnId(1)]).unwrap();
        let mut c1 = mux.take(ConnId(1)).unwrap();
        let mut wire = chunk(0, b"reserved");
        wire.extend(chunk(9, b"unknown"));
        wire.extend(chunk(1, b"hello"));
        raw.write_all(&wire).await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(T, c1.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(mux.stats().chunks_dropped.load(Ordering::Relaxed), 2);
        assert!(!mux.is_closed());
    }

    #[tokio::test]
    async fn peer_close_ends_the_logical_streams() {
        let (sock, raw) = duplex(1 << 20);
        let mut mux = Multiplexer::new(sock, &[ConnId(1), ConnId(2)]).unwrap();
        let mut c2 = mux.take(ConnId(2)).unwrap();
        drop(raw);
        assert_eq!(
            tokio::time::timeout(T, mux.closed()).await.unwrap(),
            Closed::Eof
        );
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(T, c2.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "end of stream");
    }

    #[tokio::test]
    async fn oversized_inbound_chunk_fails_the_socket() {
        let (sock, mut raw) = duplex(1 << 20);
        let mux = Multiplexer::new(sock, &[ConnId(1)]).unwrap();
        let mut h = 1u32.to_be_bytes().to_vec();
        h.extend_from_slice(&u32::MAX.to_be_bytes());
        raw.write_all(&h).await.unwrap();
        let why = tokio::time::timeout(T, mux.closed()).await.unwrap();
        assert!(
            matches!(why, Closed::Failed(ref e) if e.contains("over the")),
            "{why:?}"
        );
    }

    #[test]
    fn ids_are_checked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = duplex(64);
            assert!(matches!(
                Multiplexer::new(a, &[ConnId(0)]),
                Err(MuxError::ReservedId)
            ));
            let (a, _b) = duplex(64);
            assert!(matches!(
                Multiplexer::new(a, &[ConnId(1), ConnId(1)]),
                Err(MuxError::DuplicateId(ConnId(1)))
            ));
        });
    }
}
