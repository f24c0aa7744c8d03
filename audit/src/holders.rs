//! Why content and snapshots survive: for every blob and committed snapshot that no image
//! needs, what holds it (a lease and its expiry, a `containerd.io/gc.root` label, a container),
//! or that nothing does and the next garbage collection removes it. This is what makes
//! `ctr images rm` + `prune` stop being guesswork.
//!
//! It replays the mark phase of containerd's garbage collector (`gc/scheduler` +
//! `metadata/gc.go`) over the model, per namespace: roots are images (their target), leases
//! that have not expired (their content, snapshots, ingests and images), containers (their
//! snapshot) and objects labelled `containerd.io/gc.root`; references are the
//! `containerd.io/gc.ref.content.*` and `containerd.io/gc.ref.snapshot.<snapshotter>` labels
//! and a snapshot's parent. Each object remembers the first root that reached it, images
//! first, so the report can say *which* lease or container holds it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::SystemTime;

use super::{Context, Finding, Outcome, Severity};
use ctrwatch_containerd::metadata::{LABEL_GC_EXPIRE, LABEL_SNAPSHOT_PREFIX, Labels, Namespace};

/// `containerd.io/gc.root`: the object is a root by itself.
const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// Prefix of content references.
const LABEL_CONTENT_REF: &str = "containerd.io/gc.ref.content";

/// An object of one namespace, as the garbage collector sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Content(String),
    /// (snapshotter, the namespace's snapshot key).
    Snapshot(String, String),
}

/// What keeps an object alive.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    Image(String),
    Container(String),
    /// (lease id, expiry label value if any).
    Lease(String, Option<String>),
    /// The object itself, or the object named, carries `containerd.io/gc.root`.
    GcRoot(String),
}

impl Holder {
    fn describe(&self, ns: &str) -> String {
        match self {
            Holder::Image(n) => format!("image {ns}/{n}"),
            Holder::Container(c) => format!("container {c} (namespace {ns})"),
            Holder::Lease(id, Some(exp)) => format!("lease {id} (namespace {ns}, expires {exp})"),
            Holder::Lease(id, None) => format!("lease {id} (namespace {ns}, never expires)"),
            Holder::GcRoot(what) => format!("gc.root label on {what} (namespace {ns})"),
        }
    }

    fn fix(&self, ns: &str) -> String {
        match self {
            Holder::Image(n) => format!("ctr -n {ns} images rm {n}"),
            Holder::Container(c) => {
                format!("ctr -n {ns} containers rm {c}   (after its task is stopped)")
            }
            Holder::Lease(id, _) => format!("ctr -n {ns} leases rm {id}"),
            Holder::GcRoot(what) => {
                format!(
                    "remove the label containerd.io/gc.root from {what} (ctr -n {ns} content label / snapshots label)"
                )
            }
        }
    }
}

/// The marking of one namespace: which root first reached each object.
struct Marks {
    held: BTreeMap<Node, Holder>,
}

fn content_refs(labels: &Labels) -> impl Iterator<Item = Node> + '_ {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(LABEL_CONTENT_REF))
        .map(|(_, v)| Node::Content(v.clone()))
}

fn snapshot_refs(labels: &Labels) -> impl Iterator<Item = Node> + '_ {
    labels.iter().filter_map(|(k, v)| {
        let rest = k.strip_prefix(LABEL_SNAPSHOT_PREFIX)?;
        let snapshotter = rest.split('/').next().unwrap_or(rest);
        Some(Node::Snapshot(snapshotter.to_owned(), v.clone()))
    })
}

/// Whether a lease's `containerd.io/gc.expire` (RFC 3339) is in the past.
fn expired(labels: &Labels, now: SystemTime) -> bool {
    labels
        .get(LABEL_GC_EXPIRE)
        .and_then(|v| {
            humantime::parse_rfc3339(v)
                .or_else(|_| humantime::parse_rfc3339_weak(v))
                .ok()
        })
        .is_some_and(|t| t < now)
}

fn mark(ns: &Namespace, now: SystemTime) -> Marks {
    let mut roots: Vec<(Node, Holder)> = Vec::new();
    for (name, img) in &ns.images {
        roots.push((
            Node::Content(img.target.digest.clone()),
            Holder::Image(name.clone()),
        ));
        for r in content_refs(&img.labels).chain(snapshot_refs(&img.labels)) {
            roots.push((r, Holder::Image(name.clone())));
        }
    }
    for (id, c) in &ns.containers {
        if let (Some(sn), Some(key)) = (&c.snapshotter, &c.snapshot_key) {
            roots.push((
                Node::Snapshot(sn.clone(), key.clone()),
                Holder::Container(id.clone()),
            ));
        }
        for r in content_refs(&c.labels).chain(snapshot_refs(&c.labels)) {
            roots.push((r, Holder::Container(id.clone())));
        }
    }
    for (id, l) in &ns.leases {
        if expired(&l.labels, now) {
            continue;
        }
        let h = Holder::Lease(id.clone(), l.expires().map(str::to_owned));
        for d in &l.content {
            roots.push((Node::Content(d.clone()), h.clone()));
        }
        for (sn, key) in &l.snapshots {
            roots.push((Node::Snapshot(sn.clone(), key.clone()), h.clone()));
        }
        for name in &l.images {
            if let Some(img) = ns.images.get(name) {
                roots.push((Node::Content(img.target.digest.clone()), h.clone()));
            }
        }
    }
    for (d, b) in &ns.blobs {
        if b.labels.contains_key(LABEL_GC_ROOT) {
            roots.push((Node::Content(d.clone()), Holder::GcRoot(d.clone())));
        }
    }
    for (sn, recs) in &ns.snapshots {
        for (key, rec) in recs {
            if rec.labels.contains_key(LABEL_GC_ROOT) {
                roots.push((
                    Node::Snapshot(sn.clone(), key.clone()),
                    Holder::GcRoot(format!("snapshot {sn}/{key}")),
                ));
            }
        }
    }
    // Images first, so that an object an image needs is reported as the image's.
    roots.sort_by_key(|(_, h)| !matches!(h, Holder::Image(_)));

    let mut held: BTreeMap<Node, Holder> = BTreeMap::new();
    for (root, holder) in roots {
        if held.contains_key(&root) {
            continue;
        }
        let mut queue = VecDeque::from([root]);
        while let Some(node) = queue.pop_front() {
            if held.contains_key(&node) {
                continue;
            }
            held.insert(node.clone(), holder.clone());
            match &node {
                Node::Content(d) => {
                    if let Some(b) = ns.blobs.get(d) {
                        queue.extend(content_refs(&b.labels));
                        queue.extend(snapshot_refs(&b.labels));
                    }
                }
                Node::Snapshot(sn, key) => {
                    if let Some(rec) = ns.snapshots.get(sn).and_then(|m| m.get(key)) {
                        if let Some(p) = &rec.parent {
                            queue.push_back(Node::Snapshot(sn.clone(), p.clone()));
                        }
                        queue.extend(content_refs(&rec.labels));
                    }
                }
            }
        }
    }
    Marks { held }
}

/// What holds one object across namespaces: (namespace, holder), or `None` per namespace
/// where nothing does.
type Holdings = Vec<(String, Option<Holder>)>;

/// The holders check: what keeps each unneeded blob and snapshot from garbage collection.
pub fn check(ctx: &Context) -> Outcome {
    let mut out = Outcome::default();
    let now = SystemTime::now();
    let marks: BTreeMap<&str, Marks> = ctx
        .model
        .namespaces
        .iter()
        .map(|(name, ns)| (name.as_str(), mark(ns, now)))
        .collect();

    // Blobs: every namespace that records the digest.
    let mut blobs: BTreeMap<&str, Holdings> = BTreeMap::new();
    for (ns_name, ns) in &ctx.model.namespaces {
        for d in ns.blobs.keys() {
            if !ctx.scope.has_blob(d) {
                continue;
            }
            let h = marks
                .get(ns_name.as_str())
                .and_then(|m| m.held.get(&Node::Content(d.clone())))
                .cloned();
            blobs.entry(d).or_default().push((ns_name.clone(), h));
        }
    }
    for (digest, holdings) in blobs {
        if let Some(f) = explain(ctx, Subject::Blob(digest), &holdings) {
            out.findings.push(f);
        }
    }

    // Committed snapshots: every namespace whose record points at the snapshotter key.
    for (sn_name, sn) in &ctx.model.snapshotters {
        for (bkey, b) in &sn.snapshots {
            if !ctx.scope.has_snapshot(sn_name, bkey) {
                continue;
            }
            let mut holdings: Holdings = Vec::new();
            for (ns_name, ns) in &ctx.model.namespaces {
                let Some(recs) = ns.snapshots.get(sn_name) else {
                    continue;
                };
                for (key, rec) in recs {
                    if rec.name.as_deref() != Some(bkey.as_str()) {
                        continue;
                    }
                    let h = marks
                        .get(ns_name.as_str())
                        .and_then(|m| m.held.get(&Node::Snapshot(sn_name.clone(), key.clone())))
                        .cloned();
                    holdings.push((ns_name.clone(), h));
                }
            }
            if holdings.is_empty() {
                // No record at all: snapshots.rs reports it (the metadata GC removes it).
                continue;
            }
            let subject = Subject::Snapshot {
                snapshotter: sn_name,
                id: b.id,
                key: bkey,
                committed: b.kind == ctrwatch_containerd::SnapshotKind::Committed,
            };
            if let Some(f) = explain(ctx, subject, &holdings) {
                out.findings.push(f);
            }
        }
    }
    out
}

enum Subject<'a> {
    Blob(&'a str),
    Snapshot {
        snapshotter: &'a str,
        id: u64,
        key: &'a str,
        committed: bool,
    },
}

/// An info finding for an object no image holds, naming what does; `None` when an image
/// holds it (the normal case) or, for active snapshots, when a container holds it.
fn explain(ctx: &Context, subject: Subject<'_>, holdings: &Holdings) -> Option<Finding> {
    if holdings
        .iter()
        .any(|(_, h)| matches!(h, Some(Holder::Image(_))))
    {
        return None;
    }
    if let Subject::Snapshot {
        committed: false, ..
    } = subject
        && holdings
            .iter()
            .any(|(_, h)| matches!(h, Some(Holder::Container(_))))
    {
        // A container's own writable snapshot: what it is for.
        return None;
    }
    let held: Vec<String> = holdings
        .iter()
        .filter_map(|(ns, h)| h.as_ref().map(|h| h.describe(ns)))
        .collect();
    let unheld: Vec<&str> = holdings
        .iter()
        .filter(|(_, h)| h.is_none())
        .map(|(ns, _)| ns.as_str())
        .collect();
    let (class, what) = match &subject {
        Subject::Blob(d) => ("content-retained", format!("blob {d}")),
        Subject::Snapshot {
            snapshotter, id, ..
        } => ("snapshot-retained", format!("snapshot {snapshotter}/{id}")),
    };
    let message = if held.is_empty() {
        format!(
            "{what} is needed by no image and held by nothing: the next garbage collection removes it"
        )
    } else {
        format!(
            "{what} is needed by no image but survives garbage collection: held by {}",
            held.join(", ")
        )
    };
    let mut f = Finding::new(Severity::Info, class, message);
    for (ns, h) in holdings {
        f = match h {
            Some(h) => f
                .fact(format!("held in {ns} by"), h.describe(ns))
                .fix(h.fix(ns)),
            None => f.fact(
                format!("held in {ns} by"),
                "nothing (collected at the next GC)",
            ),
        };
    }
    if held.is_empty() && !unheld.is_empty() {
        f = f.fix(
            "a garbage collection removes it: it runs after any deletion; to force one, \
             `ctr -n NS leases create` then `ctr -n NS leases delete --sync ID`"
                .replace("NS", unheld[0]),
        );
    }
    match subject {
        Subject::Blob(d) => {
            let path = ctx
                .content_dir()
                .join("blobs")
                .join(d.replace(':', "/"))
                .display()
                .to_string();
            let layer = ctx
                .model
                .blob(d)
                .is_some_and(|b| b.role == Some(ctrwatch_containerd::BlobRole::Layer));
            f = f.blob(d).path(path);
            if layer {
                f = f.layer(d);
            }
        }
        Subject::Snapshot {
            snapshotter,
            id,
            key,
            ..
        } => {
            let chain = key.rsplit('/').next().unwrap_or(key);
            f = f
                .snapshot(snapshotter, id)
                .snapshot_key(chain)
                .path(
                    ctrwatch_containerd::snapshot_dir(
                        &ctx.model.layout.snapshotter_root(snapshotter),
                        id,
                    )
                    .display()
                    .to_string(),
                )
                .images(ctx.images_of_chain(chain));
        }
    }
    let namespaces: BTreeSet<&str> = holdings.iter().map(|(ns, _)| ns.as_str()).collect();
    if namespaces.len() == 1
        && let Some(ns) = namespaces.into_iter().next()
    {
        f = f.namespace(ns);
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrwatch_containerd::Model;
    use ctrwatch_containerd::metadata::{Blob, Descriptor, Image, Lease};

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// An image keeps its target and what the target's labels reference; an unexpired lease
    /// keeps its content; an expired lease keeps nothing; an unreferenced blob is collected.
    #[test]
    fn explains_what_holds_each_blob() {
        let mut ns = Namespace::default();
        let (target, child, leased, expired_leased, loose) = (
            digest('a'),
            digest('b'),
            digest('c'),
            digest('d'),
            digest('e'),
        );
        ns.images.insert(
            "img:1".into(),
            Image {
                name: "img:1".into(),
                target: Descriptor {
                    digest: target.clone(),
                    ..Descriptor::default()
                },
                ..Image::default()
            },
        );
        for d in [&target, &child, &leased, &expired_leased, &loose] {
            let l = if *d == target {
                labels(&[("containerd.io/gc.ref.content.m.0", child.as_str())])
            } else {
                Labels::new()
            };
            ns.blobs.insert(
                d.clone(),
                Blob {
                    digest: d.clone(),
                    labels: l,
                    ..Blob::default()
                },
            );
        }
        ns.leases.insert(
            "live".into(),
            Lease {
                id: "live".into(),
                labels: labels(&[(LABEL_GC_EXPIRE, "2999-01-01T00:00:00Z")]),
                content: vec![leased.clone()],
                ..Lease::default()
            },
        );
        ns.leases.insert(
            "old".into(),
            Lease {
                id: "old".into(),
                labels: labels(&[(LABEL_GC_EXPIRE, "2001-01-01T00:00:00Z")]),
                content: vec![expired_leased.clone()],
                ..Lease::default()
            },
        );
        let mut model = Model::default();
        model.namespaces.insert("default".into(), ns);
        let ctx = Context::for_model(model);
        let out = check(&ctx);
        let by_blob: BTreeMap<String, &Finding> = out
            .findings
            .iter()
            .filter_map(|f| Some((f.blob.clone()?, f)))
            .collect();
        assert!(!by_blob.contains_key(&target), "the image needs it");
        assert!(!by_blob.contains_key(&child), "reached through the label");
        let live = by_blob.get(&leased).expect("leased blob explained");
        assert!(live.message.contains("lease live"), "{}", live.message);
        assert!(live.message.contains("2999-01-01"), "{}", live.message);
        assert!(
            live.remediation
                .iter()
                .any(|s| s.contains("leases rm live"))
        );
        for d in [&expired_leased, &loose] {
            let f = by_blob.get(d).expect("explained");
            assert!(f.message.contains("held by nothing"), "{}", f.message);
            assert_eq!(f.severity(), Severity::Info);
        }
        assert_eq!(out.findings.len(), 3, "{:?}", out.findings);
    }
}
