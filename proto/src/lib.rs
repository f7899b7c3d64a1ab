//! podmap's API: everything a client of podmapd's socket sees, and nothing else. The events it
//! streams, the one request line it accepts, the status report and the mapping table's rows.
//!
//! This crate owns the JSON shape users and programs see (docs/interfaces.md), so a third-party
//! client can depend on it alone. It knows nothing of eBPF, runtimes or Kubernetes clients.

pub mod caps;
pub mod containers;
pub mod event;
pub mod request;
pub mod shared;
pub mod status;
pub mod time;

pub use event::SCHEMA_VERSION;
pub use event::{
    Attribution, ContainerInfo, Event, EventType, ExitInfo, PodInfo, PolicyInfo, Process,
    ProcessFlag,
};
pub use request::{EventFilter, Request, RequestError, MAX_REQUEST_LINE};
pub use shared::Shared;

/// JSON Schemas (draft 2020-12) of what podmapd's socket sends, generated from these types and
/// committed under proto/schema/ (proto/tests/schema.rs checks they agree; run it with
/// `PODMAP_BLESS=1` to rewrite them).
pub mod schema {
    use schemars::{schema_for, JsonSchema};
    use serde_json::Value;

    /// Generates one schema.
    pub type Generator = fn() -> Value;

    /// Each committed schema: its file name under proto/schema/ and how to generate it.
    pub const FILES: [(&str, Generator); 3] = [
        ("event.schema.json", event),
        ("status.schema.json", status),
        ("containers.schema.json", containers),
    ];

    fn generate<T: JsonSchema>() -> Value {
        schema_for!(T).to_value()
    }

    /// One event line of an events stream.
    pub fn event() -> Value {
        generate::<crate::event::Event>()
    }

    /// The reply to `{"status": {}}`.
    pub fn status() -> Value {
        generate::<crate::status::StatusReport>()
    }

    /// The reply to `{"containers": {}}`: the mapping table's rows.
    pub fn containers() -> Value {
        generate::<Vec<crate::containers::ContainerRow>>()
    }

    /// A schema as committed: pretty-printed with a final newline.
    pub fn to_file_text(schema: &Value) -> String {
        let mut text = serde_json::to_string_pretty(schema).expect("a JSON value serializes");
        text.push('\n');
        text
    }
}
