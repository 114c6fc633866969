//! Name resolution for pods: one hosts file per namespace, bind-mounted over `/etc/hosts` in
//! every pod's mount namespace and rewritten in place as endpoints change.
//!
//! Names come from EndpointSlices: a Service resolves to the addresses of its ready endpoints
//! (all of them: there are no virtual IPs and no load balancing here), and a StatefulSet pod
//! to its own address as `<pod>.<service>`. Short names are relative to the pod's namespace, as
//! with cluster DNS search paths.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::discovery::v1::EndpointSlice;

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

    /// Rewrites every namespace's file from the current EndpointSlices (in place, so existing
    /// bind mounts see the new content).
    pub fn update<'a>(
        &mut self,
        slices: impl Iterator<Item = &'a EndpointSlice>,
    ) -> std::io::Result<()> {
        let mut entries = BTreeSet::new();
        for slice in slices {
            let Some(namespace) = slice.metadata.namespace.clone() else {
                continue;
            };
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .cloned()
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                for ip in &endpoint.addresses {
                    if let Some(host) = &endpoint.hostname {
                        entries.insert(Entry {
                            ip: ip.clone(),
                            namespace: namespace.clone(),
                            name: format!("{host}.{service}"),
                        });
                    }
                    if ready {
                        entries.insert(Entry {
                            ip: ip.clone(),
                            namespace: namespace.clone(),
                            name: service.clone(),
                        });
                    }
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
