//! The chart's rendered manifests made playable by `podman kube play` (podman 4.3, Debian
//! bookworm's), changing only what a kubelet and an API server would have resolved or what
//! this podman cannot read, each for the reason given where it is done:
//!
//! - kinds with no runtime meaning without an API server (Service, ServiceAccount,
//!   PodDisruptionBudget, HorizontalPodAutoscaler, ServiceMonitor) are left out (the test
//!   points the agent at the collector pod itself, see `chart.rs`);
//! - a DaemonSet becomes one Pod of its template (podman 4.3 plays Pods and Deployments);
//! - Secrets are materialised as the kubelet does, into files (`items`, `defaultMode`, owned
//!   by the pod's `fsGroup`) mounted as hostPath volumes, and `secretKeyRef` variables get
//!   their decoded values: podman 4.3 mounts a Secret's `data` still base64-encoded;
//! - `fieldRef: spec.nodeName` gets the node's name, as the kubelet substitutes it;
//! - `checksum/*` annotations (64 hex characters) are dropped: podman 4.3 refuses
//!   annotation values over 63 characters, a limit Kubernetes has for labels only;
//! - containers lose their `ports` list after named probe ports are resolved: podman
//!   publishes every containerPort on the host (so two replicas collide) and refuses them
//!   on the host network, where Kubernetes publishes nothing.
//!
//! Everything else (commands, arguments, environment, ConfigMap volumes, hostPath
//! volumes, emptyDirs, security contexts, probes) is played as rendered.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

/// Kinds that need an API server or a controller to mean anything.
const WITHOUT_RUNTIME: [&str; 5] = [
    "Service",
    "ServiceAccount",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
];

/// The probes a container may have.
pub const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// A rendered chart made playable; Secret files are written under `secrets_dir`.
pub struct Conversion<'a> {
    /// The node's name (what `spec.nodeName` holds).
    pub node: &'a str,
    /// Where Secret volumes are materialised.
    pub secrets_dir: &'a Path,
}

impl Conversion<'_> {
    /// Converts `manifests` (the chart's render, plus Secrets the operator created) into
    /// what podman plays: the ConfigMaps, then the Deployments and Pods.
    pub fn convert(&self, manifests: &[Value]) -> Result<Vec<Value>> {
        let secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>> = manifests
            .iter()
            .filter(|m| m["kind"] == "Secret")
            .map(secret_data)
            .collect::<Result<_>>()?;
        let mut config_maps = Vec::new();
        let mut workloads = Vec::new();
        for m in manifests {
            let kind = m["kind"].as_str().unwrap_or_default();
            match kind {
                "ConfigMap" => config_maps.push(m.clone()),
                "Secret" => {}
                "Deployment" => {
                    let mut d = m.clone();
                    let name = name_of(m).to_string();
                    self.pod_spec(&name, &mut d["spec"]["template"], &secrets)?;
                    workloads.push(d);
                }
                "DaemonSet" => {
                    let name = name_of(m).to_string();
                    let mut template = m["spec"]["template"].clone();
                    self.pod_spec(&name, &mut template, &secrets)?;
                    let mut metadata = template["metadata"].clone();
                    metadata["name"] = json!(name);
                    metadata["namespace"] = m["metadata"]["namespace"].clone();
                    workloads.push(json!({
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": metadata,
                        "spec": template["spec"],
                    }));
                }
                k if WITHOUT_RUNTIME.contains(&k) => {}
                other => bail!(
                    "the chart renders a {other} ({}), which this conversion does not know: decide how podman plays it",
                    name_of(m)
                ),
            }
        }
        config_maps.extend(workloads);
        Ok(config_maps)
    }

    /// Resolves a pod template in place (see the module docs).
    fn pod_spec(
        &self,
        workload: &str,
        template: &mut Value,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Result<()> {
        if let Some(a) = template
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.retain(|k, _| !k.starts_with("checksum/"));
        }
        let spec = &mut template["spec"];
        let fs_group = spec["securityContext"]["fsGroup"]
            .as_u64()
            .map(|g| g as u32);
        if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            for volume in volumes {
                let Some(secret) = volume.get("secret").cloned() else {
                    if volume.get("projected").is_some() {
                        bail!(
                            "{workload}: projected volumes are not converted (podman 4.3 has none); use a values case without them"
                        );
                    }
                    continue;
                };
                let dir = self
                    .secrets_dir
                    .join(workload)
                    .join(volume["name"].as_str().unwrap_or("secret"));
                materialise(&secret, secrets, &dir, fs_group)
                    .with_context(|| format!("{workload}: volume {}", volume["name"]))?;
                *volume = json!({
                    "name": volume["name"],
                    "hostPath": { "path": dir.display().to_string(), "type": "Directory" },
                });
            }
        }
        let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
            bail!("{workload} has no containers");
        };
        for container in containers {
            if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
                for var in env.iter_mut() {
                    self.resolve(var, secrets)
                        .with_context(|| format!("{workload}: variable {}", var["name"]))?;
                }
                env.retain(|v| !v.is_null());
            }
            if let Some(ports) = container.as_object_mut().and_then(|c| c.remove("ports")) {
                let named: BTreeMap<&str, &Value> = ports
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p["name"].as_str()?, &p["containerPort"])))
                    .collect();
                for probe in PROBES {
                    for action in ["httpGet", "tcpSocket"] {
                        let port = container
                            .get_mut(probe)
                            .and_then(|p| p.get_mut(action))
                            .and_then(|a| a.get_mut("port"));
                        if let Some(port) = port
                            && let Some(number) = port.as_str().and_then(|n| named.get(n))
                        {
                            *port = (*number).clone();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One environment variable: `spec.nodeName` and Secret keys resolved; an optional key
    /// that is absent becomes null (removed).
    fn resolve(
        &self,
        var: &mut Value,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Result<()> {
        let from = var["valueFrom"].clone();
        if from.is_null() {
            return Ok(());
        }
        let name = var["name"].clone();
        if from["fieldRef"]["fieldPath"] == "spec.nodeName" {
            *var = json!({ "name": name, "value": self.node });
        } else if let Some(key_ref) = from.get("secretKeyRef") {
            let secret = key_ref["name"].as_str().unwrap_or_default();
            let key = key_ref["key"].as_str().unwrap_or_default();
            match secrets.get(secret).and_then(|s| s.get(key)) {
                Some(value) => {
                    *var = json!({ "name": name, "value": String::from_utf8_lossy(value) });
                }
                None if key_ref["optional"] == true => *var = Value::Null,
                None => bail!("Secret {secret} has no key {key}"),
            }
        } else {
            bail!("valueFrom {from} is not converted");
        }
        Ok(())
    }
}

/// The name of a manifest.
pub fn name_of(m: &Value) -> &str {
    m["metadata"]["name"].as_str().unwrap_or_default()
}

/// A Secret's name and decoded keys (`data` is base64, `stringData` plain).
fn secret_data(m: &Value) -> Result<(String, BTreeMap<String, Vec<u8>>)> {
    let mut keys = BTreeMap::new();
    for (k, v) in m["data"].as_object().into_iter().flatten() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .with_context(|| format!("Secret {}: key {k} is not base64", name_of(m)))?;
        keys.insert(k.clone(), decoded);
    }
    for (k, v) in m["stringData"].as_object().into_iter().flatten() {
        keys.insert(
            k.clone(),
            v.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    Ok((name_of(m).to_string(), keys))
}

/// Writes a Secret volume's files into `dir` as the kubelet would.
fn materialise(
    volume: &Value,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    dir: &Path,
    fs_group: Option<u32>,
) -> Result<()> {
    let name = volume["secretName"].as_str().unwrap_or_default();
    let mode = volume["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let Some(keys) = secrets.get(name) else {
        bail!("Secret {name} does not exist: create it as the chart's README says");
    };
    let files: Vec<(String, PathBuf)> = match volume["items"].as_array() {
        Some(items) => items
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or_default().to_string(),
                    dir.join(i["path"].as_str().unwrap_or_default()),
                )
            })
            .collect(),
        None => keys.keys().map(|k| (k.clone(), dir.join(k))).collect(),
    };
    std::fs::create_dir_all(dir)?;
    for (key, path) in files {
        let Some(content) = keys.get(&key) else {
            bail!("Secret {name} has no key {key}");
        };
        std::fs::write(&path, content)?;
        chown(&path, Some(0), fs_group)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portolan_testkit::TempState;

    fn daemonset() -> Value {
        json!({
            "kind": "DaemonSet",
            "metadata": { "name": "a", "namespace": "n" },
            "spec": { "template": {
                "metadata": { "annotations": { "checksum/config": "0".repeat(64), "keep": "me" } },
                "spec": {
                    "hostNetwork": true,
                    "securityContext": { "fsGroup": 7 },
                    "containers": [{
                        "name": "c",
                        "env": [
                            { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                            { "name": "USER", "valueFrom": { "secretKeyRef": { "name": "s", "key": "user" } } },
                            { "name": "GONE", "valueFrom": { "secretKeyRef": { "name": "s", "key": "no", "optional": true } } },
                        ],
                        "ports": [{ "name": "metrics", "containerPort": 9100 }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "metrics" } },
                        "volumeMounts": [{ "name": "tls", "mountPath": "/tls" }],
                    }],
                    "volumes": [{ "name": "tls", "secret": { "secretName": "s", "defaultMode": 0o440, "items": [{ "key": "user", "path": "u.txt" }] } }],
                },
            } },
        })
    }

    fn secret() -> Value {
        json!({ "kind": "Secret", "metadata": { "name": "s" }, "data": { "user": "ZGVmYXVsdA==" } })
    }

    #[test]
    fn a_daemonset_becomes_its_pod_with_what_the_kubelet_resolves() -> Result<()> {
        let state = TempState::new("kube-convert")?;
        let dir = &state;
        let conversion = Conversion {
            node: "node-1",
            secrets_dir: dir.path(),
        };
        let played = conversion.convert(&[
            daemonset(),
            secret(),
            json!({ "kind": "Service", "metadata": { "name": "x" } }),
        ])?;
        assert_eq!(played.len(), 1, "{played:?}");
        let pod = &played[0];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "a");
        assert_eq!(pod["metadata"]["annotations"], json!({ "keep": "me" }));
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            c["env"],
            json!([{ "name": "NODE", "value": "node-1" }, { "name": "USER", "value": "default" }])
        );
        assert!(c.get("ports").is_none());
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 9100);
        let file = dir.path().join("a/tls/u.txt");
        assert_eq!(
            pod["spec"]["volumes"][0]["hostPath"]["path"],
            dir.path().join("a/tls").display().to_string()
        );
        assert_eq!(std::fs::read_to_string(&file)?, "default");
        let meta = std::fs::metadata(&file)?;
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o440, 7));
        Ok(())
    }

    #[test]
    fn what_cannot_be_converted_is_an_error_that_names_it() {
        let state = TempState::new("kube-convert").expect("a temporary directory");
        let dir = &state;
        let conversion = Conversion {
            node: "n",
            secrets_dir: dir.path(),
        };
        let unknown = json!({ "kind": "StatefulSet", "metadata": { "name": "db" } });
        let e = conversion
            .convert(&[unknown])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            e.as_deref().is_some_and(|e| e.contains("StatefulSet (db)")),
            "{e:?}"
        );
        // A required Secret key that does not exist.
        let mut d = daemonset();
        d["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["key"] =
            json!("missing");
        let e = conversion
            .convert(&[d, secret()])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("Secret s has no key missing")),
            "{e:?}"
        );
    }
}
