//! Snapshot records against directories: records whose directory is missing, directories no
//! record owns, parents that do not exist, namespace records pointing at nothing, snapshots
//! nothing references, and active snapshots whose container is gone.
//!
//! Two databases describe snapshots: the snapshotter's own `metadata.db` (key → directory id,
//! kind, parent) and meta.db's per-namespace records (client key → snapshotter key). Where a
//! snapshot's files are is the containerd model's fact ([`ctrwatch_containerd::SnapshotLayout`]):
//! `<root>/snapshots/<id>/fs` for overlayfs, `<root>/snapshots/<id>` itself for native.

use std::collections::{BTreeMap, BTreeSet};

use super::{Context, Finding, Outcome, Severity};
use ctrwatch_containerd::Container;
use ctrwatch_containerd::fsx;
use ctrwatch_containerd::metadata::{Namespace, unpack_target};
use ctrwatch_containerd::paths::SNAPSHOTTER_DB;
use ctrwatch_containerd::{SnapshotKind, snapshot_dir, snapshot_tree, snapshots_dir};

/// Directories the overlayfs snapshotter uses while it works: `new-<n>` before a snapshot's
/// record is committed, `rm-<id>` while one is removed. Not orphans unless they are old.
fn transient_dir(name: &str) -> bool {
    name.starts_with("new-") || name.starts_with("rm-")
}

/// The snapshots check: records against directories (see the module docs).
pub fn check(ctx: &Context) -> Outcome {
    let mut out = Outcome::default();
    let model = &ctx.model;
    for (sn_name, sn) in &model.snapshotters {
        if let Some(err) = &sn.error {
            out.findings.push(
                Finding::new(
                    Severity::Critical,
                    "snapshotter-metadata-unreadable",
                    format!("the {sn_name} snapshotter's metadata.db cannot be read: {err}"),
                )
                .path(sn.root.join(SNAPSHOTTER_DB).display().to_string())
                .fix("containerd cannot use this snapshotter's snapshots; restore metadata.db from a backup, or stop containerd, move the snapshotter directory aside and pull the images again"),
            );
            continue;
        }
        let snap_dir = snapshots_dir(&sn.root);
        // Directories on disk, by id.
        let mut dirs: BTreeSet<u64> = BTreeSet::new();
        let mut others: Vec<String> = Vec::new();
        let anchor = model.layout.anchor_for(&sn.root);
        if let Ok(entries) = fsx::list_beneath(anchor, &snap_dir) {
            for (name, _) in entries {
                let name = String::from_utf8_lossy(&name).into_owned();
                match name.parse::<u64>() {
                    Ok(id) => {
                        dirs.insert(id);
                    }
                    Err(_) if transient_dir(&name) => {}
                    Err(_) => others.push(name),
                }
            }
        }
        // meta.db records pointing at each snapshotter key: (namespace, client key).
        let mut refs: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for (ns_name, ns) in &model.namespaces {
            for (key, rec) in ns.snapshots.get(sn_name).into_iter().flatten() {
                match rec.name.as_deref() {
                    Some(bkey) if sn.snapshots.contains_key(bkey) => {
                        refs.entry(bkey).or_default().push((ns_name, key));
                    }
                    _ if ctx.scope.everything => {
                        let container = container_using(ns, sn_name, key).map(|c| c.id.clone());
                        let mut f = Finding::new(
                            Severity::Error,
                            "snapshot-record-dangling",
                            format!(
                                "namespace {ns_name} has snapshot {key:?} but the {sn_name} snapshotter does not know it{}",
                                container
                                    .as_deref()
                                    .map(|c| format!(" (container {c} uses it and cannot start)"))
                                    .unwrap_or_default()
                            ),
                        )
                        .namespace(ns_name)
                        .snapshot_key(key)
                        .fact("snapshotter key", rec.name.clone().unwrap_or_else(|| "(none)".into()));
                        if let Some(c) = &container {
                            f.severity = Some(Severity::Critical);
                            f = f.fix(format!(
                                "ctr -n {ns_name} containers rm {c}   (recreate the container)"
                            ));
                        }
                        f = f.fix(format!(
                            "ctr -n {ns_name} snapshots --snapshotter {sn_name} rm {key}"
                        ));
                        out.findings.push(f);
                    }
                    _ => {}
                }
            }
        }

        for (bkey, b) in &sn.snapshots {
            if !ctx.scope.has_snapshot(sn_name, bkey) {
                continue;
            }
            out.stats.snapshots += 1;
            let info = model.snapshot_by_key(sn_name, bkey);
            let images = info.as_ref().map(|i| i.images.clone()).unwrap_or_default();
            let ns_of = info.as_ref().and_then(|i| i.namespaces.first().cloned());
            let client_key = info.as_ref().and_then(|i| i.names.first().cloned());
            let qualified: Vec<String> = match &ns_of {
                Some(ns) => images.iter().map(|n| format!("{ns}/{n}")).collect(),
                None => images.clone(),
            };
            let dir = snapshot_dir(&sn.root, b.id);
            let base = |sev, class, msg: String| {
                let mut f = Finding::new(sev, class, msg)
                    .snapshot(sn_name, b.id)
                    .snapshot_key(client_key.clone().unwrap_or_else(|| bkey.clone()))
                    .path(dir.display().to_string())
                    .images(qualified.clone());
                if let Some(ns) = &ns_of {
                    f = f.namespace(ns);
                }
                if let Some(l) = info.as_ref().and_then(|i| i.layer_digest.clone()) {
                    f = f.layer(l);
                }
                f
            };

            // The directory, and the tree below it where the layout has one there (overlay's
            // `fs/`; a native snapshot's directory is its tree).
            let below = snapshot_tree(&sn.root, sn_name, b.id).filter(|t| *t != dir);
            let missing = if !dirs.contains(&b.id) {
                Some("its directory")
            } else if below
                .as_ref()
                .is_some_and(|t| !fsx::lstat_beneath(anchor, t).is_ok_and(|m| m.is_dir()))
            {
                Some("its fs/ directory")
            } else {
                None
            };
            if let Some(what) = missing {
                let used =
                    !images.is_empty() || info.as_ref().is_some_and(|i| i.container_id.is_some());
                let sev = if used {
                    Severity::Critical
                } else {
                    Severity::Error
                };
                let mut f = base(
                    sev,
                    "snapshot-dir-missing",
                    format!(
                        "snapshot {sn_name}/{} ({}) is recorded but {what} is missing: containers using it fail to mount",
                        b.id,
                        b.kind_label()
                    ),
                );
                f = remediate_layer(
                    f,
                    ns_of.as_deref(),
                    &images,
                    info.as_ref().and_then(|i| i.container_id.as_deref()),
                );
                out.findings.push(f);
            }

            // The parent.
            if let Some(p) = &b.parent
                && !sn.snapshots.contains_key(p)
            {
                out.findings.push(
                    base(
                        Severity::Critical,
                        "snapshot-parent-missing",
                        format!("snapshot {sn_name}/{} names parent {p:?}, which the snapshotter does not have: its lower layers cannot be mounted", b.id),
                    )
                    .fact("parent", p.clone()),
                );
            }

            // Nothing in meta.db points at it: the metadata GC removes it.
            if ctx.scope.everything && !refs.contains_key(bkey.as_str()) {
                out.findings.push(
                    base(
                        Severity::Warning,
                        "snapshot-unreferenced",
                        format!("snapshot {sn_name}/{} has no record in any namespace: the next garbage collection removes it", b.id),
                    )
                    .fix("nothing to do if containerd runs garbage collection (after any image or container removal); with containerd stopped it stays"),
                );
            }

            // Active snapshots whose container is gone.
            if b.kind == SnapshotKind::Active && ctx.scope.everything {
                for (ns, key) in refs.get(bkey.as_str()).into_iter().flatten() {
                    let Some(namespace) = model.namespaces.get(*ns) else {
                        continue;
                    };
                    let used = container_using(namespace, sn_name, key).is_some();
                    let leased = namespace
                        .leases
                        .values()
                        .any(|l| l.snapshots.iter().any(|(s, k)| s == sn_name && k == key));
                    if used {
                        continue;
                    }
                    let unpacking = unpack_target(key).is_some();
                    let (sev, class, msg) = if unpacking {
                        (
                            Severity::Warning,
                            "snapshot-unpack-leftover",
                            format!(
                                "active snapshot {key:?} in {ns} is an unpack in progress or an interrupted one{}",
                                if leased {
                                    " (a lease holds it: in progress)"
                                } else {
                                    ""
                                }
                            ),
                        )
                    } else {
                        (
                            Severity::Error,
                            "snapshot-active-orphan",
                            format!(
                                "active snapshot {key:?} in {ns} belongs to no container{}",
                                if leased { " (a lease holds it)" } else { "" }
                            ),
                        )
                    };
                    if unpacking && leased {
                        continue;
                    }
                    out.findings
                        .push(base(sev, class, msg).namespace(*ns).snapshot_key(*key).fix(
                            format!("ctr -n {ns} snapshots --snapshotter {sn_name} rm {key}"),
                        ));
                }
            }
        }

        // Directories no snapshot owns.
        if ctx.scope.everything {
            for id in dirs.iter().filter(|id| !sn.by_id.contains_key(id)) {
                let dir = snapshot_dir(&sn.root, *id);
                out.findings.push(
                    Finding::new(
                        Severity::Error,
                        "snapshot-dir-orphan",
                        format!("directory {} belongs to no snapshot of the {sn_name} snapshotter: wasted space, and nothing will ever use it", dir.display()),
                    )
                    .snapshot(sn_name, *id)
                    .path(dir.display().to_string())
                    .fix(format!("containerd's overlayfs snapshotter removes such directories at its cleanup after a garbage collection that removed a snapshot; or, with containerd stopped: rm -rf {}", dir.display())),
                );
            }
            for name in others {
                out.findings.push(
                    Finding::new(
                        Severity::Warning,
                        "snapshot-dir-unexpected",
                        format!(
                            "{}/{name} is not a snapshot directory name the snapshotter uses",
                            snap_dir.display()
                        ),
                    )
                    .path(snap_dir.join(&name).display().to_string()),
                );
            }
        }
    }
    out
}

/// The container of `ns` whose snapshot is `key` of `snapshotter`, if any.
fn container_using<'a>(ns: &'a Namespace, snapshotter: &str, key: &str) -> Option<&'a Container> {
    ns.containers.values().find(|c| {
        c.snapshotter.as_deref() == Some(snapshotter) && c.snapshot_key.as_deref() == Some(key)
    })
}

/// The fix for a damaged or missing layer snapshot: remove what uses it, collect, pull again.
pub fn remediate_layer(
    mut f: Finding,
    ns: Option<&str>,
    images: &[String],
    container: Option<&str>,
) -> Finding {
    let ns = ns.unwrap_or("NAMESPACE");
    if let Some(c) = container {
        f = f.fix(format!(
            "ctr -n {ns} tasks kill {c}; ctr -n {ns} containers rm {c}   (the container's writable layer is lost)"
        ));
    }
    for img in images {
        f = f.fix(format!("ctr -n {ns} images rm {img}"));
    }
    if !images.is_empty() {
        f = f.fix(format!(
            "garbage-collect so the snapshot goes: ctr -n {ns} leases create --id ctrwatch-gc && ctr -n {ns} leases delete --sync ctrwatch-gc"
        ));
        for img in images {
            f = f.fix(format!(
                "ctr -n {ns} images pull {img}   (or crictl pull {img} on a Kubernetes node)"
            ));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrwatch_containerd::metadata::{BackendSnapshot, SnapshotterState};
    use ctrwatch_containerd::{Model, RootLayout};

    /// The check over a hand-built model: one committed snapshot `id` of `snapshotter`
    /// (with `parent`; no namespace records it) over a real directory in which the directory
    /// `present` (below the snapshotter's root) exists.
    fn check_one_committed(
        snapshotter: &str,
        id: u64,
        parent: Option<&str>,
        present: &str,
    ) -> Outcome {
        let root = std::env::temp_dir().join(format!(
            "ctrwatch-audit-{snapshotter}-{id}-{}",
            std::process::id()
        ));
        let sn_root = root.join(format!("io.containerd.snapshotter.v1.{snapshotter}"));
        std::fs::create_dir_all(sn_root.join(present)).expect("mkdir");
        let key = format!("default/{id}/sha256:s{id}");
        let mut state = SnapshotterState {
            name: snapshotter.into(),
            root: sn_root,
            ..SnapshotterState::default()
        };
        state.by_id.insert(id, key.clone());
        state.snapshots.insert(
            key.clone(),
            BackendSnapshot {
                key,
                id,
                kind: SnapshotKind::Committed,
                kind_byte: Some(3),
                parent: parent.map(str::to_owned),
                labels: Default::default(),
                size: None,
                inodes: None,
                created_at: None,
            },
        );
        let mut model = Model::default();
        model.layout = RootLayout::new(&root);
        model.snapshotters.insert(snapshotter.into(), state);
        let out = check(&Context::for_model(model));
        let _ = std::fs::remove_dir_all(&root);
        out
    }

    /// A snapshot whose parent the snapshotter does not have (its database lost the record):
    /// containerd 1.6 cannot produce it on demand, so the model is built by hand over a real
    /// directory.
    #[test]
    fn parent_missing_is_critical() {
        let out = check_one_committed(
            "overlayfs",
            2,
            Some("default/1/sha256:gone"),
            "snapshots/2/fs",
        );
        let classes: Vec<&str> = out.findings.iter().map(|f| f.class).collect();
        // No namespace records it either: the metadata GC would remove it.
        assert_eq!(
            classes,
            vec!["snapshot-parent-missing", "snapshot-unreferenced"],
            "{:?}",
            out.findings
        );
        let f = &out.findings[0];
        assert_eq!(f.severity(), Severity::Critical);
        assert_eq!(f.snapshot.as_deref(), Some("overlayfs/2"));
        assert!(
            f.facts
                .iter()
                .any(|(k, v)| k == "parent" && v.contains("gone"))
        );
    }

    /// The native snapshotter keeps a snapshot's tree in `snapshots/<id>` itself, with no
    /// `fs/` below it: a complete native snapshot is not reported missing (it was, for every
    /// native snapshot, when this check took every snapshotter for overlayfs).
    #[test]
    fn native_snapshot_without_fs_dir_is_present() {
        let out = check_one_committed("native", 3, None, "snapshots/3/etc");
        let classes: Vec<&str> = out.findings.iter().map(|f| f.class).collect();
        assert_eq!(classes, vec!["snapshot-unreferenced"], "{:?}", out.findings);
    }
}
