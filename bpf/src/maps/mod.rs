//! Typed handles on the pinned maps shared by podmapd and the runtime plugins, one per concern:
//! the container records (`RecordMaps`), the policy maps (`PolicyMaps`) and the shared counters
//! (`Counters`, counted through `&self` from any thread). No other crate touches raw keys and
//! values: this is the API runtime plugins write container records through.
//!
//! Whichever process comes first creates the pins (from the maps-only object, so the plugins
//! load no program); the others reuse them. A process opens the bundle (`SharedMaps`) or, when it
//! only counts, the counters alone.

// Crate-visible so the pin watcher can name them without going through this module, which
// itself holds a watcher.
mod batch;
pub(crate) mod counters;
pub(crate) mod pins;
mod policy;
mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::Map;
use aya::Ebpf;

use crate::pin_watch::{PinRepair, PinWatch};

pub use counters::{histogram_percentile, Counters};
pub(crate) use pins::load_pinned;
pub use pins::{
    MapsError, CONTAINERS_MAP, COUNTERS_MAP, EXEC_RULES_MAP, MEMBERS_MAP, META_MAP, OPEN_RULES_MAP,
    POLICY_STATE_MAP,
};
pub use policy::{
    KernelAction, MatchedRules, PathRule, PolicyMaps, RuleRef, RuleTable, RulesError,
};
pub use records::{
    boot_ns, grace_over, of_boot_clock, ExpiryWatch, MetaError, Record, RecordFlags, RecordMaps,
    Writer,
};

/// Every pinned map, opened: the records, the policy maps and the counters they count in.
pub struct SharedMaps {
    dir: PathBuf,
    pub records: RecordMaps,
    pub policy: PolicyMaps,
    pub counters: Arc<Counters>,
    /// The pins of these very maps, put back when they go missing ([`SharedMaps::keep_pins`]).
    pins: PinWatch,
}

impl SharedMaps {
    /// Opens the pinned maps under `dir`, creating them (and mounting bpffs) when missing.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        pins::ensure_pins(dir)?;
        let mut opened = pins::open_pins(dir)?.ok_or(MapsError::Missing {
            name: CONTAINERS_MAP,
        })?;
        Self::from_source(|name| opened.remove(name), dir)
    }

    /// Takes the shared maps out of a loaded object (the daemon's programs object).
    pub fn from_ebpf(ebpf: &mut Ebpf, dir: &Path) -> Result<Self, MapsError> {
        Self::from_source(|name| ebpf.take_map(name), dir)
    }

    fn from_source(
        mut source: impl FnMut(&'static str) -> Option<Map>,
        dir: &Path,
    ) -> Result<Self, MapsError> {
        let mut pins = PinWatch::new(dir);
        let mut take = |name: &'static str| {
            let map = source(name).ok_or(MapsError::Missing { name })?;
            pins.watch_map(name, &map)?;
            Ok::<_, MapsError>(map)
        };
        let counters = Arc::new(Counters::take(take(COUNTERS_MAP)?, dir)?);
        let records = RecordMaps::take(
            take(CONTAINERS_MAP)?,
            take(META_MAP)?,
            counters.clone(),
            dir,
        )?;
        let policy = PolicyMaps::take(&mut take, counters.clone(), dir)?;
        Ok(SharedMaps {
            dir: dir.to_owned(),
            records,
            policy,
            counters,
            pins,
        })
    }

    /// Pins these maps again where their pins went missing (someone removed the pin
    /// directory), so the next process to open the pins finds the maps the programs read
    /// instead of creating empty ones; counted and logged ([`PinWatch::keep`]). One `stat` per
    /// map when nothing changed.
    pub fn keep_pins(&mut self) -> PinRepair {
        self.pins.keep(&self.counters)
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
