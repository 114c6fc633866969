//! Name resolution for pods: one hosts file per namespace, bind-mounted over `/etc/hosts` in
//! every pod's mount namespace and rewritten in place as endpoints change.
//!
//! Names come from Services and pods, matched here as the endpoints controller would (the API
//! server refuses EndpointSlices with loopback addresses, so there are none): a Service
//! resolves to the addresses of the ready pods its selector picks (all of them: no virtual IPs,
//! no load balancing), and a pod with `hostname` and `subdomain` (StatefulSet pods) to its own
//! address as `<hostname>.<subdomain>`. Short names are relative to the pod's namespace, as
//! with cluster DNS search paths.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Service};

const DOMAIN: &str = "svc.cluster.local";

/// One address and its names, with namespace-relative aliases.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    ip: String,
    namespace: String,
    /// `<service>` or `<pod>.<service>`.
    name: String,
}

/// Renders the hosts file of `namespace`.
fn render(entries: &BTreeSet<Entry>, namespace: &str) -> String {
    let mut out = String::from(
        "# Written by the sluice e2e node agent.\n127.0.0.1 localhost\n::1 localhost\n",
    );
    for e in entries {
        let full = format!("{}.{}.{DOMAIN}", e.name, e.namespace);
        let svc = format!("{}.{}.svc", e.name, e.namespace);
        let ns = format!("{}.{}", e.name, e.namespace);
        if e.namespace == namespace {
            out.push_str(&format!("{} {full} {svc} {ns} {}\n", e.ip, e.name));
        } else {
            out.push_str(&format!("{} {full} {svc} {ns}\n", e.ip));
        }
    }
    out
}

/// The hosts files of all namespaces.
pub struct Hosts {
    dir: PathBuf,
    written: BTreeMap<String, String>,
}

impl Hosts {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            written: BTreeMap::new(),
        })
    }

    /// The file for `namespace`, created if missing (pods bind-mount it at start).
    pub fn file(&mut self, namespace: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join(namespace);
        if !path.exists() {
            std::fs::write(&path, render(&BTreeSet::new(), namespace))?;
        }
        Ok(path)
    }

    /// Rewrites every namespace's file from the current Services and pods (in place, so
    /// existing bind mounts see the new content).
    pub fn update(
        &mut self,
        services: &[std::sync::Arc<Service>],
        pods: &[std::sync::Arc<Pod>],
    ) -> std::io::Result<()> {
        let mut entries = BTreeSet::new();
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let ip_of = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|_| p.metadata.deletion_timestamp.is_none())
        };
        for pod in pods {
            let (Some(ns), Some(ip)) = (pod.metadata.namespace.clone(), ip_of(pod)) else {
                continue;
            };
            let spec = pod.spec.as_ref();
            if let (Some(host), Some(sub)) = (
                spec.and_then(|s| s.hostname.clone()),
                spec.and_then(|s| s.subdomain.clone()),
            ) {
                entries.insert(Entry {
                    ip,
                    namespace: ns,
                    name: format!("{host}.{sub}"),
                });
            }
        }
        for svc in services {
            let (Some(ns), Some(name)) =
                (svc.metadata.namespace.clone(), svc.metadata.name.clone())
            else {
                continue;
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else {
                continue;
            };
            let not_ready_too = spec.publish_not_ready_addresses.unwrap_or(false);
            for pod in pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let selected = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
                if let (true, Some(ip)) = (selected && (not_ready_too || ready(pod)), ip_of(pod)) {
                    entries.insert(Entry {
                        ip,
                        namespace: ns.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        let namespaces: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        for ns in namespaces {
            let text = render(&entries, &ns);
            if self.written.get(&ns) != Some(&text) {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(self.dir.join(&ns))?;
                f.write_all(text.as_bytes())?;
                self.written.insert(ns, text);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_only_in_their_namespace() {
        let mut set = BTreeSet::new();
        set.insert(Entry {
            ip: "127.1.0.2".into(),
            namespace: "a".into(),
            name: "web-0.web".into(),
        });
        let a = render(&set, "a");
        let b = render(&set, "b");
        assert!(
            a.contains(
                "127.1.0.2 web-0.web.a.svc.cluster.local web-0.web.a.svc web-0.web.a web-0.web\n"
            ),
            "{a}"
        );
        assert!(
            b.contains("127.1.0.2 web-0.web.a.svc.cluster.local web-0.web.a.svc web-0.web.a\n"),
            "{b}"
        );
    }
}
