//! Runtime metadata that makes containerd (or its CRI plugin) fail at start or lose pods:
//! containers whose snapshot record is gone, CRI containers and sandboxes without the metadata
//! extension CRI recovers them from (containerd 2 refuses to start with
//! `failed to get metadata for stored sandbox`, the k3s case), containers whose image is gone.

use super::{Context, Finding, Outcome, Severity};
use ctrwatch_containerd::metadata::LABEL_CRI_KIND;

/// The extension containerd 2's CRI reads from a sandbox record (`podsandbox.MetadataKey`).
const SANDBOX_METADATA: &str = "metadata";
/// The extensions containerd 1.x's CRI reads from its sandbox (pause) and app containers.
const CRI_SANDBOX_METADATA: &str = "io.cri-containerd.sandbox.metadata";
const CRI_CONTAINER_METADATA: &str = "io.cri-containerd.container.metadata";

/// The runtime check: container and sandbox records containerd or CRI cannot start from.
pub fn check(ctx: &Context) -> Outcome {
    let mut out = Outcome::default();
    if !ctx.scope.everything {
        return out;
    }
    for (ns_name, ns) in &ctx.model.namespaces {
        for (id, sb) in &ns.sandboxes {
            if !sb.extensions.iter().any(|e| e == SANDBOX_METADATA) {
                out.findings.push(
                    Finding::new(
                        Severity::Critical,
                        "sandbox-metadata-missing",
                        format!(
                            "sandbox {id} in {ns_name} has no {SANDBOX_METADATA:?} extension: containerd 2 refuses to start (\"failed to get metadata for stored sandbox\")"
                        ),
                    )
                    .namespace(ns_name)
                    .fact("extensions", if sb.extensions.is_empty() { "(none)".to_owned() } else { sb.extensions.join(", ") })
                    .fix(format!("ctr -n {ns_name} sandboxes rm {id}   (containerd 2's ctr; the pod is recreated by the kubelet)"))
                    .fix("if containerd does not start, remove the record offline: stop containerd, back up io.containerd.metadata.v1.bolt/meta.db, delete bucket v1/NS/sandboxes/ID with a bbolt tool (e.g. `bbolt` CLI), start containerd".replace("NS", ns_name).replace("ID", id)),
                );
            }
        }
        for (id, c) in &ns.containers {
            let kind = c.labels.get(LABEL_CRI_KIND).map(String::as_str);
            let wanted = match kind {
                Some("sandbox") => Some(CRI_SANDBOX_METADATA),
                Some("container") => Some(CRI_CONTAINER_METADATA),
                _ => None,
            };
            if let Some(ext) = wanted
                && !c.extensions.iter().any(|e| e == ext)
            {
                out.findings.push(
                    Finding::new(
                        Severity::Error,
                        "cri-metadata-missing",
                        format!(
                            "CRI {} {id} in {ns_name} has no {ext:?} extension: the CRI plugin cannot recover it at start and the kubelet loses track of it",
                            kind.unwrap_or_default()
                        ),
                    )
                    .namespace(ns_name)
                    .fix(format!("ctr -n {ns_name} tasks kill {id}; ctr -n {ns_name} containers rm {id}   (the kubelet recreates the pod)")),
                );
            }
            if let (Some(sn), Some(key)) = (&c.snapshotter, &c.snapshot_key)
                && !ns.snapshots.get(sn).is_some_and(|m| m.contains_key(key))
            {
                out.findings.push(
                    Finding::new(
                        Severity::Critical,
                        "container-snapshot-missing",
                        format!(
                            "container {id} in {ns_name} uses snapshot {key:?} ({sn}), which does not exist: it cannot start"
                        ),
                    )
                    .namespace(ns_name)
                    .snapshot_key(key)
                    .images(c.image.iter().map(|i| format!("{ns_name}/{i}")))
                    .fix(format!("ctr -n {ns_name} containers rm {id}   and create it again (or let the kubelet do it)")),
                );
            }
            if let Some(image) = &c.image
                && !image.is_empty()
                && !ns.images.contains_key(image)
            {
                out.findings.push(
                    Finding::new(
                        Severity::Warning,
                        "container-image-missing",
                        format!(
                            "container {id} in {ns_name} was created from image {image}, which is no longer in {ns_name}: it still runs from its snapshot, but cannot be recreated without a pull"
                        ),
                    )
                    .namespace(ns_name)
                    .images([format!("{ns_name}/{image}")])
                    .fix(format!("ctr -n {ns_name} images pull {image}")),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrwatch_containerd::Model;
    use ctrwatch_containerd::metadata::{Namespace, Sandbox};

    /// containerd 2 keeps sandboxes in their own bucket; a CRI sandbox without its `metadata`
    /// extension stops containerd at start. (The tests' containerd is 1.6, which has no
    /// sandbox store: this case is built by hand.)
    #[test]
    fn sandbox_without_metadata_is_critical() {
        let mut ns = Namespace::default();
        for (id, exts) in [("good", vec!["metadata".to_owned()]), ("bad", vec![])] {
            ns.sandboxes.insert(
                id.to_owned(),
                Sandbox {
                    id: id.to_owned(),
                    extensions: exts,
                    ..Sandbox::default()
                },
            );
        }
        let mut model = Model::default();
        model.namespaces.insert("k8s.io".to_owned(), ns);
        let ctx = Context::for_model(model);
        let out = check(&ctx);
        assert_eq!(out.findings.len(), 1, "{:?}", out.findings);
        let f = &out.findings[0];
        assert_eq!(f.class, "sandbox-metadata-missing");
        assert_eq!(f.severity(), Severity::Critical);
        assert!(f.message.contains("bad"), "{}", f.message);
        assert_eq!(f.namespace.as_deref(), Some("k8s.io"));
    }
}
