//! Where the plugin's logs go: stderr, or a file (a pre-launched plugin's stderr is not
//! captured by the runtime). The target can change once the runtime's configuration names
//! another file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

enum Target {
    Stderr,
    File(File),
}

/// A retargetable log destination.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<Target>>);

impl Default for LogSink {
    fn default() -> Self {
        LogSink(Arc::new(Mutex::new(Target::Stderr)))
    }
}

impl LogSink {
    /// Appends to `path` from now on, creating its directory.
    pub fn set_file(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Target::File(f);
        Ok(())
    }

    /// Installs the global subscriber writing here; the level comes from PODMAP_LOG
    /// (default info).
    pub fn install(&self) {
        let filter =
            EnvFilter::try_from_env("PODMAP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(self.clone())
            .try_init();
    }
}

pub struct LogWriter(Arc<Mutex<Target>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Stderr => io::stderr().write(buf),
            Target::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Stderr => io::stderr().flush(),
            Target::File(f) => f.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}
