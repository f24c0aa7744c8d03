//! The Kubernetes manifest `deploy/daemonset.yaml` (issue 13). No cluster here: the manifest
//! is parsed, and checked against what the daemon needs: the host's PID namespace, the unit's
//! capabilities and no more (not privileged), every default root, the store, its lock
//! directory, tracefs, bpffs and BTF mounted from the host at the host's paths (the kernel
//! reports host paths), the roots read-only, and the configuration from a ConfigMap that is
//! TOML with the keys of the shipped example.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn documents() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_file("deploy/daemonset.yaml")).expect("deploy/daemonset.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("not YAML: {e}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/daemonset.yaml"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities of the unit's CapabilityBoundingSet, as Kubernetes names them (BPF...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo_file("packaging/ctrwatch.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    let mut caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    caps.sort();
    caps
}

/// A container path mounted from the host: (mount path, host path, read-only).
fn host_mounts(pod: &Value, container: &Value) -> Vec<(PathBuf, PathBuf, bool)> {
    let volumes = pod["volumes"].as_array().expect("volumes");
    container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| {
            let volume = volumes.iter().find(|v| v["name"] == m["name"])?;
            let host = volume["hostPath"]["path"].as_str()?;
            Some((
                PathBuf::from(m["mountPath"].as_str()?),
                PathBuf::from(host),
                m["readOnly"].as_bool().unwrap_or(false),
            ))
        })
        .collect()
}

#[test]
fn daemonset_has_what_the_daemon_needs() {
    let docs = documents();
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "pids and /proc must be the host's");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(strs(&c["args"]), ["run"]);

    // Privileges: the unit's capabilities, nothing else.
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "capabilities, not privileged: true");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut added = strs(&sc["capabilities"]["add"]);
    added.sort();
    assert_eq!(
        added,
        unit_capabilities(),
        "the same capabilities as the systemd unit"
    );

    // Host paths at the host's paths.
    let mounts = host_mounts(pod, c);
    for (inside, host, _) in &mounts {
        assert_eq!(
            inside, host,
            "a host path mounted elsewhere: paths in events are the host's"
        );
    }
    let mounted = |p: &Path| mounts.iter().find(|(inside, _, _)| p.starts_with(inside));
    for root in watcher::watch::DEFAULT_ROOTS {
        let (_, _, read_only) = mounted(Path::new(root))
            .unwrap_or_else(|| panic!("default root {root} is not mounted"));
        assert!(read_only, "{root} is watched, never written: read-only");
    }
    let store_dir = watcher::store::default_path()
        .parent()
        .expect("store dir")
        .to_path_buf();
    for (need, writable) in [
        (store_dir.as_path(), true),
        (Path::new(watcher::store::LOCK_DIR), true),
        (Path::new("/sys/fs/bpf"), true),
        (Path::new("/sys/kernel/tracing"), false),
        (Path::new("/sys/kernel/btf/vmlinux"), false),
        (Path::new("/etc/containerd/config.toml"), false),
        (Path::new("/etc/rancher/k3s/config.yaml"), false),
    ] {
        let (_, _, read_only) = mounted(need)
            .unwrap_or_else(|| panic!("{} is not mounted from the host", need.display()));
        if writable {
            assert!(!read_only, "{} must be writable", need.display());
        }
    }

    // The configuration from the ConfigMap, where `run` looks for it.
    let cm = of_kind(&docs, "ConfigMap");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let config_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .expect("a volume from the ConfigMap");
    let config_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the ConfigMap is mounted");
    assert_eq!(config_mount["mountPath"], "/etc/ctrwatch");
    let config = cm["data"]["ctrwatch.toml"]
        .as_str()
        .expect("ctrwatch.toml in the ConfigMap");
    // A valid configuration to the daemon's own checker (unknown keys, wrong types and
    // impossible values are errors there), with the store where the host path is mounted.
    let checked = ctrwatch_config::Config::parse("the ConfigMap's ctrwatch.toml", config)
        .unwrap_or_else(|errors| panic!("the ConfigMap's configuration is invalid: {errors:#?}"));
    let (_, _, read_only) = mounted(&checked.store.path).unwrap_or_else(|| {
        panic!(
            "the configured store {} is not on a host path",
            checked.store.path.display()
        )
    });
    assert!(!read_only, "the configured store must be writable");
    assert_eq!(ds["metadata"]["namespace"], cm["metadata"]["namespace"]);
}
