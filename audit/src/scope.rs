//! Resolving `--image`, `--snapshot`, `--content-only` and `--layers-only` into a [`Scope`].

use std::collections::BTreeSet;

use super::{AuditError, Options, Scope};
use ctrwatch_containerd::Model;
use ctrwatch_containerd::metadata::parse_backend_key;

pub(super) fn resolve(model: &Model, opts: &Options) -> Result<Scope, AuditError> {
    let everything = opts.images.is_empty() && opts.snapshots.is_empty();
    let mut scope = Scope {
        everything,
        blobs: None,
        snapshots: None,
        content: !opts.layers_only,
        layers: !opts.content_only,
        metadata: !opts.content_only && !opts.layers_only,
    };
    if everything {
        return Ok(scope);
    }
    let mut blobs = BTreeSet::new();
    let mut chains = BTreeSet::new();
    let images = model.images();
    for wanted in &opts.images {
        let mut found = false;
        for img in images.iter().filter(|i| &i.name == wanted) {
            found = true;
            blobs.insert(img.target.digest.clone());
            for m in &img.manifests {
                blobs.insert(m.digest.clone());
                blobs.extend(m.config.clone());
                for l in &m.layers {
                    blobs.extend(l.digest.clone());
                    chains.extend(l.chain_id.clone());
                }
            }
        }
        if !found {
            return Err(AuditError::NoSuchImage(wanted.clone()));
        }
    }
    let mut snapshots = BTreeSet::new();
    for (name, sn) in &model.snapshotters {
        for (key, b) in &sn.snapshots {
            // Snapshotter keys are `<namespace>/<seq>/<client key>`; a layer's client key is
            // its chainID.
            let client_key = parse_backend_key(key).map_or(key.as_str(), |(_, _, k)| k);
            if chains.contains(client_key) {
                snapshots.insert((name.clone(), key.clone()));
            }
            if opts
                .snapshots
                .iter()
                .any(|w| w == key || w == client_key || *w == b.id.to_string())
            {
                snapshots.insert((name.clone(), key.clone()));
                if let Some(info) = model.snapshot_by_key(name, key) {
                    blobs.extend(info.layer_digests.iter().cloned());
                    blobs.extend(info.layer_digest.clone());
                }
            }
        }
    }
    for wanted in &opts.snapshots {
        let known = model.snapshotters.values().any(|sn| {
            sn.snapshots.iter().any(|(key, b)| {
                key == wanted
                    || parse_backend_key(key).is_some_and(|(_, _, k)| k == wanted)
                    || b.id.to_string() == *wanted
            })
        });
        if !known {
            return Err(AuditError::NoSuchSnapshot(wanted.clone()));
        }
    }
    scope.blobs = Some(blobs);
    scope.snapshots = Some(snapshots);
    Ok(scope)
}
