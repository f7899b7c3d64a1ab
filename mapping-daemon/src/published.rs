//! An event ready for the wire: encoded once, shared by every client that gets it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use podmap_proto::Event;

/// The length of the last line encoded, the next one's first guess.
static LAST_LINE: AtomicUsize = AtomicUsize::new(1024);

/// An event ready for the wire: serialized at most once, when the first client gets it, and
/// shared by every client that receives it.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    line: std::sync::OnceLock<Vec<u8>>,
}

impl Published {
    pub fn new(event: Event) -> Arc<Published> {
        Arc::new(Published {
            event,
            line: std::sync::OnceLock::new(),
        })
    }

    /// The event's JSON followed by `'\n'`.
    pub fn line(&self) -> &[u8] {
        self.line.get_or_init(|| {
            // Sized for the last line and a little more, so encoding a typical event does not
            // grow the buffer on the way (a root process's capability names alone make a line
            // longer than any fixed guess for the rest).
            let hint = LAST_LINE.load(Ordering::Relaxed).clamp(512, 16 * 1024);
            let mut line = Vec::with_capacity(hint + hint / 8);
            // Serializing an `Event` cannot fail: it has only string-keyed maps, and its one
            // custom serializer (`Shared`'s) writes JSON that serde_json itself made.
            serde_json::to_writer(&mut line, &self.event)
                .expect("an Event always serializes to JSON");
            line.push(b'\n');
            LAST_LINE.store(line.len(), Ordering::Relaxed);
            line
        })
    }
}
