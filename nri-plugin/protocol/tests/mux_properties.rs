//! Properties of the multiplexer over an in-memory socket, with what arrives cut at random
//! points: inbound chunks reach their connection in order and whole (chunks of ids nobody opened
//! are dropped and counted), garbage after them closes the socket with a reason and never a
//! panic, and outbound ttrpc messages leave in chunks of at most 4096 bytes, each message
//! starting a chunk, in the order written.

use std::sync::atomic::Ordering;
use std::time::Duration;

use podmap_nri_protocol::mux::{Closed, ConnId, Multiplexer, MAX_CHUNK_PAYLOAD};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPEN: [ConnId; 2] = [ConnId(1), ConnId(2)];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `bytes` in pieces ending at `cuts` (fractions of the length).
async fn write_cut(
    w: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    cuts: &[f64],
) -> std::io::Result<()> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|f| (f * bytes.len() as f64) as usize)
        .collect();
    at.push(bytes.len());
    at.sort();
    let mut from = 0;
    for to in at {
        if to > from {
            w.write_all(&bytes[from..to]).await?;
            from = to;
        }
    }
    Ok(())
}

fn chunk(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut c = id.to_be_bytes().to_vec();
    c.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    c.extend_from_slice(payload);
    c
}

async fn read_all(mut s: tokio::io::DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn inbound_chunks_reach_their_connection_whole_and_in_order(
        chunks in prop::collection::vec(
            (prop::sample::select(vec![1u32, 2, 3, 7]), prop::collection::vec(any::<u8>(), 0..3000)),
            0..24,
        ),
        // Half the cases end cleanly, where every byte is checked exactly.
        garbage in prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..64)],
        cuts in prop::collection::vec(0.0f64..1.0, 0..12),
    ) {
        runtime().block_on(async {
            let (mut runtime_end, plugin_end) = tokio::io::duplex(64 * 1024);
            let mut mux = Multiplexer::new(plugin_end, &OPEN).unwrap();
            let stats = mux.stats();
            let (one, two) = (mux.take(OPEN[0]).unwrap(), mux.take(OPEN[1]).unwrap());
            let mut bytes = Vec::new();
            for (id, payload) in &chunks {
                bytes.extend(chunk(*id, payload));
            }
            bytes.extend_from_slice(&garbage);
            let readers = tokio::spawn(async move { tokio::join!(read_all(one), read_all(two)) });
            // Garbage may announce an oversized chunk: the mux then closes the socket, and the
            // rest of the write may fail. The valid chunks before it were written whole.
            let written = write_cut(&mut runtime_end, &bytes, &cuts).await;
            if garbage.is_empty() {
                written.unwrap();
            }
            drop(runtime_end);
            let closed = tokio::time::timeout(Duration::from_secs(5), mux.closed())
                .await
                .expect("the mux noticed the end");
            let (got_one, got_two) = tokio::time::timeout(Duration::from_secs(5), readers)
                .await
                .expect("both connections ended")
                .unwrap();
            let want = |id: u32| -> Vec<u8> {
                chunks.iter().filter(|(i, _)| *i == id).flat_map(|(_, p)| p.clone()).collect()
            };
            if garbage.is_empty() {
                prop_assert_eq!(&closed, &Closed::Eof);
                prop_assert_eq!(got_one, want(1));
                prop_assert_eq!(got_two, want(2));
                let dropped = chunks.iter().filter(|(i, _)| *i == 3 || *i == 7).count() as u64;
                prop_assert_eq!(stats.chunks_dropped.load(Ordering::Relaxed), dropped);
            } else {
                // Garbage may read as more chunks (or a partial one) before the end: what came
                // before it arrived intact, and the socket closed with a reason.
                prop_assert!(got_one.starts_with(&want(1)), "conn 1 lost data before the garbage");
                prop_assert!(got_two.starts_with(&want(2)), "conn 2 lost data before the garbage");
                prop_assert!(matches!(closed, Closed::Eof | Closed::Failed(_)), "{:?}", closed);
            }
            Ok(())
        })?;
    }

    #[test]
    fn outbound_messages_leave_in_small_chunks_each_starting_a_chunk(
        messages in prop::collection::vec(
            (prop::sample::select(vec![0usize, 1]), 0usize..9000, any::<u8>()),
            1..12,
        ),
        cuts in prop::collection::vec(0.0f64..1.0, 0..16),
    ) {
        runtime().block_on(async {
            let (mut runtime_end, plugin_end) = tokio::io::duplex(64 * 1024);
            let mut mux = Multiplexer::new(plugin_end, &OPEN).unwrap();
            let mut conns = [mux.take(OPEN[0]).unwrap(), mux.take(OPEN[1]).unwrap()];
            // ttrpc messages: [u32 BE data length][u32 BE stream id][type][flags][data].
            let mut per_conn: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
            for (i, (conn, len, fill)) in messages.iter().enumerate() {
                let mut m = (*len as u32).to_be_bytes().to_vec();
                m.extend_from_slice(&(i as u32 * 2 + 1).to_be_bytes());
                m.extend_from_slice(&[1, 0]);
                m.extend(std::iter::repeat_n(*fill, *len));
                per_conn[*conn].push(m);
            }
            let expected_bytes: usize = per_conn.iter().flatten().map(Vec::len).sum();
            // Each connection writes its messages as one byte stream cut anywhere.
            let streams: Vec<Vec<u8>> = per_conn.iter().map(|ms| ms.concat()).collect();
            let [c1, c2] = &mut conns;
            let writes = async {
                let (a, b) =
                    tokio::join!(write_cut(c1, &streams[0], &cuts), write_cut(c2, &streams[1], &cuts));
                a.unwrap();
                b.unwrap();
            };
            let reads = async {
                let mut seen: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
                let mut data: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
                let mut total = 0;
                while total < expected_bytes {
                    let mut header = [0u8; 8];
                    runtime_end.read_exact(&mut header).await.unwrap();
                    let id = u32::from_be_bytes(header[..4].try_into().unwrap());
                    let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
                    let mut payload = vec![0u8; len];
                    runtime_end.read_exact(&mut payload).await.unwrap();
                    let k = OPEN.iter().position(|c| c.0 == id).expect("an opened id");
                    seen[k].push(len);
                    data[k].extend(payload);
                    total += len;
                }
                (seen, data)
            };
            let ((), (seen, data)) = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(writes, reads)
            })
            .await
            .expect("every message left the mux");
            for k in 0..2 {
                // Exactly the chunks of each message cut at 4096: never more per chunk, and a
                // message never shares a chunk with the one before it.
                let want: Vec<usize> = per_conn[k]
                    .iter()
                    .flat_map(|m| m.chunks(MAX_CHUNK_PAYLOAD).map(<[u8]>::len))
                    .collect();
                prop_assert_eq!(&seen[k], &want);
                prop_assert_eq!(&data[k], &streams[k]);
            }
            Ok(())
        })?;
    }
}
