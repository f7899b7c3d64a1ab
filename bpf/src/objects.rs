//! The eBPF objects built by build.rs, embedded in the binary.

/// The programs (exec, exit, fork, cgroup mkdir/rmdir, the open tracepoints, the LSM deny
/// programs) and every map.
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podmap.bpf.o"));

/// Only the pinned maps: what the runtime plugins load to create or reuse them.
pub static MAPS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/maps.bpf.o"));

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// Which per-CPU scratch maps each program section of the object refers to.
    fn scratch_users(obj: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
        let file = object::File::parse(obj).expect("the built object parses");
        let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for section in file.sections() {
            let name = section.name().unwrap_or_default().to_string();
            // Type and debug information name every map too; only code counts.
            if name.starts_with(".BTF") || name.starts_with(".debug") {
                continue;
            }
            for (_, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else {
                    continue;
                };
                let sym = file.symbol_by_index(index).expect("relocation symbol");
                let sym = sym.name().unwrap_or_default();
                if sym.ends_with("_scratch") {
                    users
                        .entry(sym.to_string())
                        .or_default()
                        .insert(name.clone());
                }
            }
        }
        users
    }

    /// A per-CPU scratch buffer is only safe for one program: a program that is preempted (LSM
    /// and, on recent kernels, syscall tracepoint programs run with only migration disabled) can
    /// find its half-built key or record overwritten by another program run on the same CPU in
    /// between. The kernel keeps one program from re-entering itself on a CPU, so a buffer per
    /// program is enough; a buffer used from shared code (`.text`) or by two programs is not.
    #[test]
    fn every_scratch_buffer_belongs_to_one_program() {
        let users = scratch_users(super::PROGRAMS);
        assert!(
            users.len() >= 4,
            "the object's scratch buffers were found: {users:?}"
        );
        for (map, sections) in &users {
            assert_eq!(
                sections.len(),
                1,
                "scratch buffer {map} is used by several programs: {sections:?}"
            );
            let section = sections.iter().next().unwrap();
            assert!(
                section.starts_with("tracepoint/") || section.starts_with("lsm/"),
                "scratch buffer {map} is used outside a program section: {section}"
            );
        }
    }
}
