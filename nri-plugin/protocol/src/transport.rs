//! Hands the multiplexer's logical connections to the ttrpc crate: the served connection as a
//! listener that yields it once, the called one as a client.

use std::io;

use futures::StreamExt;
use tokio::io::DuplexStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::Client;

/// A listener whose only connection is `conn`: a ttrpc `Server` serves it like an accepted
/// socket. The listener then stays open without yielding more: ttrpc's `Server::shutdown`
/// expects its accept loop to be still running (it panics on a listener that ended).
pub fn single_connection_listener(conn: DuplexStream) -> Listener {
    Listener::new(
        futures::stream::iter([Ok::<_, io::Error>(conn)]).chain(futures::stream::pending()),
    )
}

/// A ttrpc client on the logical connection `conn`.
pub fn client(conn: DuplexStream) -> Client {
    Client::new(Socket::new(conn))
}
