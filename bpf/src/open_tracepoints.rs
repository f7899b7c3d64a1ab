//! The open rules' programs (on `sys_enter_openat`, and `sys_enter_openat2` and `sys_enter_open`
//! where the kernel has them), attached only while open rules are in force. Once anything is
//! attached to a syscall tracepoint, every syscall of every task on the node takes the kernel's
//! slow path (about 50 ns more per syscall on the development VM, docs/performance.md): a node
//! without open rules must not pay that for programs that would only return.
//!
//! The loader pins these programs under `<pin dir>/progs/` at every start (`programs::install`);
//! podmapd attaches them from there, without loading anything, when the first open rule comes
//! and detaches them when the last goes. Each link is pinned under `links/` like the others, so
//! the rules keep acting while podmapd is down, and the next start adopts it
//! (docs/decisions.md #46).

use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::TracePoint;

use crate::attach::{attach_tracepoint, Hook, Need, Prog, ProgramsError, When, PROGRAMS};
use crate::links::LINKS_DIR;
use crate::maps::Counters;
use crate::mounts;
use crate::pin_watch::{PinRepair, PinWatch};

/// Where the loader pins the programs podmapd attaches later, under the pin directory.
pub const PROGS_DIR: &str = "progs";

/// The programs that attach only while open rules are in force.
pub(crate) fn on_demand() -> impl Iterator<Item = &'static Prog> {
    PROGRAMS.iter().filter(|p| p.when == When::OpenRules)
}

/// The open rules' programs as podmapd holds them: loaded (from their pins), and attached or not.
pub struct OpenTracepoints {
    dir: PathBuf,
    /// Each with whether this kernel has its tracepoint: openat must, openat2 and open may not.
    programs: Vec<(Prog, TracePoint, bool)>,
    /// The links attached now, held and their pins kept.
    pins: PinWatch,
    attached: Vec<&'static str>,
}

impl OpenTracepoints {
    /// Opens the programs the loader pinned; of `attached` (the programs whose links the start
    /// adopted or attached), holds those that are open rules' programs.
    pub(crate) fn open(dir: &Path, attached: &[String]) -> Result<Self, ProgramsError> {
        let err = |detail: String| ProgramsError::Links {
            dir: dir.to_owned(),
            detail,
        };
        let mut programs = vec![];
        for p in on_demand() {
            let path = dir.join(PROGS_DIR).join(p.name);
            let prog = TracePoint::from_pin(&path).map_err(|e| {
                err(format!(
                    "opening the pinned program {}: {e}",
                    path.display()
                ))
            })?;
            let Hook::Tracepoint(category, point) = p.hook else {
                continue;
            };
            let exists = p.need == Need::Required || mounts::tracepoint_exists(category, point);
            programs.push((*p, prog, exists));
        }
        let mut t = OpenTracepoints {
            dir: dir.to_owned(),
            programs,
            pins: PinWatch::new(dir),
            attached: vec![],
        };
        for p in on_demand().filter(|p| attached.iter().any(|a| a == p.name)) {
            let pin = link_pin(p.name);
            t.pins
                .watch_pinned_link(pin.clone())
                .map_err(|e| err(format!("holding {pin}: {e}")))?;
            t.attached.push(p.name);
        }
        Ok(t)
    }

    /// The programs attached now, by name.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Whether every program whose tracepoint this kernel has is attached: an open rule must
    /// not be passed by the one syscall of the three left unwatched.
    pub fn complete(&self) -> bool {
        self.programs
            .iter()
            .all(|(p, _, exists)| !exists || self.attached.contains(&p.name))
    }

    /// Attaches the programs not attached yet, each pinned before it counts as attached (a link
    /// only this process held would go with it, and the rules would stay without a program):
    /// every one whose tracepoint this kernel has, which for openat is every kernel.
    pub fn attach(&mut self) -> Result<(), ProgramsError> {
        let err = |detail: String| ProgramsError::Links {
            dir: self.dir.clone(),
            detail,
        };
        for (p, prog, exists) in &mut self.programs {
            let Hook::Tracepoint(category, point) = p.hook else {
                continue;
            };
            if !*exists || self.attached.contains(&p.name) {
                continue;
            }
            let link = attach_tracepoint(prog, p.name, category, point).map_err(err)?;
            let pin = link_pin(p.name);
            let path = self.dir.join(&pin);
            // A failed pin closes aya's handle: the link detaches with it.
            let pinned = link
                .pin(&path)
                .map_err(|e| err(format!("pinning {}: {e}", path.display())))?;
            if let Err(e) = self.pins.watch_link(pin.clone(), &FdLink::from(pinned)) {
                // Not held: undone rather than left attached by its pin alone.
                let _ = std::fs::remove_file(&path);
                return Err(err(format!("holding {pin}: {e}")));
            }
            self.attached.push(p.name);
            tracing::info!(program = p.name, "attached: open rules are in force");
        }
        Ok(())
    }

    /// Detaches the programs: their pins removed and this process's handles dropped.
    pub fn detach(&mut self) -> Result<(), ProgramsError> {
        while let Some(name) = self.attached.pop() {
            let pin = link_pin(name);
            let path = self.dir.join(&pin);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.attached.push(name);
                    return Err(ProgramsError::Links {
                        dir: self.dir.clone(),
                        detail: format!("detaching {name} ({}): {e}", path.display()),
                    });
                }
            }
            self.pins.forget(&pin);
            tracing::info!(program = name, "detached: no open rule is in force");
        }
        Ok(())
    }

    /// Pins the attached links again where their pins went missing ([`PinWatch::keep`]).
    pub fn keep_pins(&mut self, counters: &Counters) -> PinRepair {
        self.pins.keep(counters)
    }
}

fn link_pin(name: &str) -> String {
    format!("{LINKS_DIR}/{name}")
}
