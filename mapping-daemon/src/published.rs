//! An event ready for the wire: encoded once, shared by every client that gets it.

use std::sync::Arc;

use podmap_proto::Event;

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
            // Sized for a typical event, so encoding does not reallocate on the way.
            let mut line = Vec::with_capacity(1024);
            // Serializing an `Event` cannot fail: it has only string-keyed maps, and its one
            // custom serializer (`Shared`'s) writes JSON that serde_json itself made.
            serde_json::to_writer(&mut line, &self.event)
                .expect("an Event always serializes to JSON");
            line.push(b'\n');
            line
        })
    }
}
