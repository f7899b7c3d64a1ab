//! What the socket server and the metrics endpoint ask the daemon for. The report's types are
//! the API's (`podmap_proto::status`); podmapd's state implements this, tests use fakes.

use podmap_proto::containers::ContainerRow;
use podmap_proto::status::StatusReport;

/// What the server asks the daemon for. Implemented by podmapd's state; tests use fakes.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> StatusReport;
    /// The mapping table (`podmap containers`).
    fn containers(&self) -> Vec<ContainerRow>;
}
