//! How podmapd is run for one measurement (clients, pods and containers, the storm), the
//! settings `--scaling` measures it in, and the rows a run measures.

use serde::Serialize;

use super::prefill::LARGE_PREFILL;
use super::{ExecArgs, TracerKind};

/// What the storm does.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Storm {
    pub(super) execs: u64,
    pub(super) workers: u32,
    /// Execs per second, all workers together; None: as fast as they go.
    pub(super) rate: Option<u32>,
}

/// How podmapd is run for one measurement, and the storm it sees.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct PodmapSetting {
    pub(super) clients: u32,
    /// Pods cached and containers mapped (0: standalone, the storm unmapped).
    pub(super) prefill: u32,
    pub(super) storm: Storm,
}

impl PodmapSetting {
    /// The setting of the tracer rows: the command line's.
    pub(super) fn of_args(args: &ExecArgs) -> Self {
        PodmapSetting {
            clients: args.clients,
            prefill: args.prefill,
            storm: Storm {
                execs: args.execs,
                workers: args.workers,
                rate: args.rate,
            },
        }
    }
}

/// The settings --scaling measures podmapd in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Scale {
    OneClient,
    TenClients,
    Rate200,
    Rate1000,
    MaxRate,
    OneContainer,
    TenThousand,
}

impl Scale {
    pub(super) const ALL: [Scale; 7] = [
        Scale::OneClient,
        Scale::TenClients,
        Scale::Rate200,
        Scale::Rate1000,
        Scale::MaxRate,
        Scale::OneContainer,
        Scale::TenThousand,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Scale::OneClient => "podmapd, 1 client",
            Scale::TenClients => "podmapd, 10 clients",
            Scale::Rate200 => "podmapd, 200 execs/s",
            Scale::Rate1000 => "podmapd, 1,000 execs/s",
            Scale::MaxRate => "podmapd, highest rate",
            Scale::OneContainer => "podmapd, 1 container",
            Scale::TenThousand => "podmapd, 10,000 containers",
        }
    }

    /// The highest rate needs one storm worker per core; when the command line already asks
    /// for that, the 1-client setting is the highest rate and this one is not run twice.
    pub(super) fn runs(self, args: &ExecArgs, cpus: u32) -> bool {
        self != Scale::MaxRate || args.workers < cpus
    }

    pub(super) fn setting(self, args: &ExecArgs, cpus: u32) -> PodmapSetting {
        let flat_out = Storm {
            execs: args.execs,
            workers: args.workers,
            rate: None,
        };
        let paced = |rate: u32| Storm {
            execs: u64::from(rate) * u64::from(args.rate_seconds),
            workers: 1,
            rate: Some(rate),
        };
        let (clients, prefill, storm) = match self {
            Scale::OneClient => (1, 0, flat_out),
            Scale::TenClients => (10, 0, flat_out),
            Scale::Rate200 => (1, 0, paced(200)),
            Scale::Rate1000 => (1, 0, paced(1000)),
            Scale::MaxRate => (
                1,
                0,
                Storm {
                    workers: cpus,
                    ..flat_out
                },
            ),
            Scale::OneContainer => (1, 1, flat_out),
            Scale::TenThousand => (1, LARGE_PREFILL, flat_out),
        };
        PodmapSetting {
            clients,
            prefill,
            storm,
        }
    }
}

/// A row of the run: a tracer as the command line sets it up, or podmapd in a scaling setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RowKey {
    Tracer(TracerKind),
    Scale(Scale),
}

impl RowKey {
    pub(super) fn label(self) -> &'static str {
        match self {
            RowKey::Tracer(t) => t.label(),
            RowKey::Scale(s) => s.label(),
        }
    }
}
