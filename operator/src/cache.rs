//! What the operator knows of the objects it writes without asking the API server: stores fed
//! by watches (informers), what its own last write of each object left there, and the job's
//! Secrets as last read (Secrets are not watched: the operator reads them only by name).
//!
//! Why: a reconcile used to read every child and apply every one of them, changed or not, about
//! twenty requests a look. At 1,000 jobs looked at every 5 s that is four times what an API
//! server on a small control plane serves (`operator-scale`, docs/performance.md). With these
//! stores a steady job's reconcile asks nothing and writes only what changed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::constants::{LABEL_JOB, LABEL_MANAGED_BY, MANAGER};

/// The stores of one controller's scope (all namespaces, or one).
pub struct Children {
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    configs: Store<PartialObjectMeta<ConfigMap>>,
    services: Store<PartialObjectMeta<Service>>,
    policies: Store<PartialObjectMeta<NetworkPolicy>>,
    budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// True once every store has listed what exists (see [`Children::ready`]).
    ready: tokio::sync::watch::Receiver<bool>,
    memory: Memory,
}

/// A store's wait for its first list, as kube returns it.
type StoreReady = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), reflector::store::WriterDropped>> + Send>,
>;

/// `store`'s wait for its first list, on a clone of the store, so that it can run on a task.
fn listed<K>(store: &Store<K>) -> StoreReady
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let store = store.clone();
    Box::pin(async move { store.wait_until_ready().await })
}

/// A channel that turns true once every one of `stores` is ready.
///
/// Why not let each reconcile wait on the stores itself: kube's `Store::wait_until_ready`
/// wakes only the last of the tasks waiting on it at once (it polls one oneshot receiver,
/// which keeps a single waker). When a new leader takes over, every job's reconcile starts
/// while the stores are still listing, and all but one of them waited forever: their jobs'
/// status froze. One task waits here instead, and a watch channel wakes every reconcile.
fn signal_ready(stores: Vec<StoreReady>) -> tokio::sync::watch::Receiver<bool> {
    let (ready, waiting) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        // A writer dropped: the process is ending, and nothing reconciles anyway.
        let _ = futures::future::join_all(stores).await;
        let _ = ready.send(true);
    });
    waiting
}

/// The label selector of every object the operator makes for a job.
fn ours() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Feeds `writer` from a watch of `K` and keeps it going (with backoff) until the process
/// ends. Managed fields are dropped: nobody here reads them, and they are most of an object.
fn keep<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    stream
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects()
}

/// Drives a store's watch on a task of its own. A watch that fails is retried; until its first
/// list succeeds no job is reconciled, so the warning names what to grant.
fn drive<K>(
    kind: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) where
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!(
                    error = %e,
                    kind,
                    "cannot watch the jobs' {kind}; retrying (the operator needs list and watch on them: see the chart's RBAC)"
                );
            }
        }
    });
}

impl Children {
    /// Starts the watches of the children in `namespace` (all when `None`). The StatefulSets'
    /// stream is returned, not driven: the controller wakes a job on its StatefulSets' changes,
    /// from the same watch.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
    ) -> (
        Self,
        impl Stream<Item = Result<StatefulSet, watcher::Error>> + Send + 'static,
    ) {
        let labelled = watcher::Config::default().labels(&ours());
        let (sets, writer) = reflector::store();
        let set_stream = keep(
            watcher(api::<StatefulSet>(client, namespace), labelled.clone()),
            writer,
        );
        let (pods, writer) = reflector::store();
        // Pods are the StatefulSets', so they carry the job's label but not the managed-by one.
        let pod_config = watcher::Config::default().labels(LABEL_JOB);
        drive(
            "Pods",
            keep(watcher(api::<Pod>(client, namespace), pod_config), writer),
        );
        macro_rules! metadata {
            ($kind:ty) => {{
                let (store, writer) = reflector::store();
                drive(
                    stringify!($kind),
                    keep(
                        // A metadata-only watch: these objects are only ever compared, never read.
                        watcher(
                            api::<PartialObjectMeta<$kind>>(client, namespace),
                            labelled.clone(),
                        ),
                        writer,
                    ),
                );
                store
            }};
        }
        let configs = metadata!(ConfigMap);
        let services = metadata!(Service);
        let policies = metadata!(NetworkPolicy);
        let budgets = metadata!(PodDisruptionBudget);
        let ready = signal_ready(vec![
            listed(&sets),
            listed(&pods),
            listed(&configs),
            listed(&services),
            listed(&policies),
            listed(&budgets),
        ]);
        let children = Self {
            sets,
            pods,
            configs,
            services,
            policies,
            budgets,
            ready,
            memory: Memory::default(),
        };
        (children, set_stream)
    }

    /// Waits until every store has listed what exists, so that a job is never judged on an
    /// empty cache (its children taken for missing, its pods for gone).
    pub async fn ready(&self) {
        // An error: the signalling task is gone, which happens only with the process's
        // runtime, when nothing reconciles anyway.
        let _ = self.ready.clone().wait_for(|ready| *ready).await;
    }

    /// The StatefulSet `name` of `ns`, as last watched.
    pub fn stateful_set(&self, ns: &str, name: &str) -> Option<std::sync::Arc<StatefulSet>> {
        self.sets.get(&ObjectRef::new(name).within(ns))
    }

    /// The job's Secret `name` as last read, if that was less than [`SECRET_KEPT`] ago.
    pub fn secret(&self, job: &JobKey, name: &str) -> Option<Arc<Secret>> {
        let kept = self.memory.lock().get(job)?.secrets.get(name).cloned()?;
        (kept.0.elapsed() < SECRET_KEPT).then_some(kept.1)
    }

    /// Whether the Secret `name` the job names (its credentials) was seen less than
    /// [`SECRET_KEPT`] ago.
    pub fn seen_secret(&self, job: &JobKey, name: &str) -> bool {
        self.memory
            .lock()
            .get(job)
            .and_then(|m| m.named.get(name))
            .is_some_and(|at| at.elapsed() < SECRET_KEPT)
    }

    /// Remembers that the Secret `name` the job names exists (only that).
    pub fn saw_secret(&self, job: &JobKey, name: &str) {
        self.memory
            .lock()
            .entry(job.clone())
            .or_default()
            .named
            .insert(name.to_string(), Instant::now());
    }

    /// Keeps the job's Secret as just read or created.
    pub fn keep_secret(&self, job: &JobKey, mut secret: Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        secret.metadata.managed_fields = None;
        self.memory
            .lock()
            .entry(job.clone())
            .or_default()
            .secrets
            .insert(name, (Instant::now(), Arc::new(secret)));
    }

    /// The pods of job `job` in `ns`, as last watched.
    pub fn pods(&self, ns: &str, job: &str) -> Vec<Pod> {
        self.pods
            .state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.labels().get(LABEL_JOB).map(String::as_str) == Some(job)
            })
            .into_iter()
            .map(|p| (*p).clone())
            .collect()
    }

    /// The metadata of the job's `K` named `name`, when the operator knows it: watched with
    /// the operator's label on it (a Secret: read lately).
    pub fn meta<K: Child>(&self, job: &JobKey, name: &str) -> Option<ObjectMeta> {
        K::cached(self, job, name)
    }

    /// Whether `object` is, as watched now, what the operator's last write of it left: the
    /// same desired form, and nobody has changed it since (its generation, or for kinds without
    /// one its resourceVersion, is the one that write returned). Then applying it again would
    /// change nothing.
    pub fn unchanged<K: Child>(&self, job: &JobKey, object: &K) -> bool {
        let name = object.meta().name.as_deref().unwrap_or_default();
        let Some(current) = self.meta::<K>(job, name) else {
            return false;
        };
        let Some(stamp) = self.memory.stamp(job, K::kind(&()).as_ref(), name) else {
            return false;
        };
        stamp.form == form(object) && Some(&stamp.version) == version(&current).as_ref()
    }

    /// Records what the operator's write of `sent` left: the object as the API server
    /// returned it.
    pub fn wrote<K: Child>(&self, job: &JobKey, sent: &K, returned: &ObjectMeta) {
        let name = sent.meta().name.clone().unwrap_or_default();
        let Some(version) = version(returned) else {
            return;
        };
        self.memory.put_stamp(
            job,
            K::kind(&()).as_ref(),
            name,
            Stamp {
                form: form(sent),
                version,
            },
        );
    }

    /// Forgets what was written and read for a job that is gone.
    pub fn forget(&self, job: &JobKey) {
        self.memory.lock().remove(job);
    }

    /// Forgets every job for which `alive` says no: a job deleted without a finalizer goes
    /// without a last reconcile, so its memory is swept instead.
    pub fn sweep(&self, alive: impl Fn(&JobKey) -> bool) {
        self.memory.lock().retain(|job, _| alive(job));
    }
}

/// A job, as the key of what was written and read for it. The uid is part of it: a job
/// deleted and created again under its name has new objects and Secrets, and nothing of the
/// old one's may answer for them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct JobKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl JobKey {
    pub fn of(job: &impl Resource) -> Self {
        Self {
            namespace: job
                .meta()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: job.meta().name.clone().unwrap_or_default(),
            uid: job.meta().uid.clone().unwrap_or_default(),
        }
    }
}

/// What one write of an object left.
#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    /// A hash of the desired object sent (this process's own: never stored elsewhere).
    form: u64,
    /// The object's generation (`g…`) or, for kinds without one, its resourceVersion (`r…`).
    version: String,
}

/// How long a Secret read is trusted: the token and the certificate never change under running
/// pods, but someone may delete one, and the operator then makes it again.
pub const SECRET_KEPT: Duration = Duration::from_secs(600);

/// What the operator remembers of one job.
#[derive(Default)]
struct JobMemory {
    /// Per (kind, name) of its objects: what the operator's last write of it left.
    stamps: HashMap<(String, String), Stamp>,
    /// Its Secrets by name, with when they were read.
    secrets: HashMap<String, (Instant, Arc<Secret>)>,
    /// When each Secret the job names (its credentials) was last seen to exist.
    named: HashMap<String, Instant>,
}

#[derive(Default)]
struct Memory(Mutex<HashMap<JobKey, JobMemory>>);

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobKey, JobMemory>> {
        // A panic elsewhere while the map was held leaves a map still worth reading.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stamp(&self, job: &JobKey, kind: &str, name: &str) -> Option<Stamp> {
        self.lock()
            .get(job)?
            .stamps
            .get(&(kind.to_string(), name.to_string()))
            .cloned()
    }

    fn put_stamp(&self, job: &JobKey, kind: &str, name: String, stamp: Stamp) {
        self.lock()
            .entry(job.clone())
            .or_default()
            .stamps
            .insert((kind.to_string(), name), stamp);
    }
}

fn form<K: serde::Serialize>(object: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    // Serialising a built object cannot fail; were it to, the form differs from any recorded.
    serde_json::to_string(object)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

fn version(meta: &ObjectMeta) -> Option<String> {
    match (meta.generation, &meta.resource_version) {
        (Some(g), _) => Some(format!("g{g}")),
        (None, Some(v)) => Some(format!("r{v}")),
        (None, None) => None,
    }
}

/// A kind of object the operator writes for a job, and where its store is.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn cached(children: &Children, job: &JobKey, name: &str) -> Option<ObjectMeta>;
}

// Each store holds the whole object or its metadata only (`PartialObjectMeta`): both have
// `metadata`.
macro_rules! child {
    ($kind:ty, $store:ident) => {
        impl Child for $kind {
            fn cached(children: &Children, job: &JobKey, name: &str) -> Option<ObjectMeta> {
                children
                    .$store
                    .get(&ObjectRef::new(name).within(&job.namespace))
                    .map(|o| o.metadata.clone())
            }
        }
    };
}

child!(StatefulSet, sets);

child!(ConfigMap, configs);
child!(Service, services);
child!(NetworkPolicy, policies);
child!(PodDisruptionBudget, budgets);

impl Child for Secret {
    fn cached(children: &Children, job: &JobKey, name: &str) -> Option<ObjectMeta> {
        children.secret(job, name).map(|s| s.metadata.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: Option<i64>, rv: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            generation,
            resource_version: rv.map(Into::into),
            ..Default::default()
        }
    }

    /// Many reconciles wait at once for stores still listing, as when a new leader takes over
    /// with jobs in place: every one of them must go on once the stores are listed.
    #[tokio::test]
    async fn every_waiter_goes_on_once_the_stores_are_listed() {
        let (pods, mut pods_writer) = reflector::store::<Pod>();
        let (sets, mut sets_writer) = reflector::store::<StatefulSet>();
        let ready = signal_ready(vec![listed(&pods), listed(&sets)]);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let mut ready = ready.clone();
                tokio::spawn(async move { ready.wait_for(|r| *r).await.map(|_| ()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "nothing is listed yet"
        );
        pods_writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "one store is still listing"
        );
        sets_writer.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("every waiter is woken")
                .expect("joined")
                .expect("ready");
        }
    }

    #[test]
    fn a_kind_with_a_generation_is_versioned_by_it() {
        // A StatefulSet's resourceVersion moves with every status change; its generation only
        // when its spec does.
        assert_eq!(version(&meta(Some(3), Some("981"))).as_deref(), Some("g3"));
        assert_eq!(version(&meta(None, Some("981"))).as_deref(), Some("r981"));
        assert_eq!(version(&meta(None, None)), None);
    }

    #[test]
    fn the_form_follows_every_field_of_the_object() {
        let mut a = ConfigMap::default();
        a.metadata.name = Some("wc-config".into());
        let mut b = a.clone();
        assert_eq!(form(&a), form(&b));
        b.data = Some([("job.yaml".to_string(), "x".to_string())].into());
        assert_ne!(form(&a), form(&b));
    }

    #[test]
    fn what_was_written_is_kept_per_job() {
        let memory = Memory::default();
        let key = |name: &str, uid: &str| JobKey {
            namespace: "jobs".into(),
            name: name.into(),
            uid: uid.into(),
        };
        let (wc, other) = (key("wc", "1"), key("wc-2", "2"));
        let stamp = Stamp {
            form: 7,
            version: "g1".into(),
        };
        memory.put_stamp(&wc, "ConfigMap", "wc-config".into(), stamp.clone());
        memory.put_stamp(&other, "ConfigMap", "wc-2-config".into(), stamp.clone());
        assert_eq!(
            memory.stamp(&wc, "ConfigMap", "wc-config"),
            Some(stamp.clone())
        );
        assert_eq!(memory.stamp(&wc, "Service", "wc-config"), None);
        assert_eq!(memory.stamp(&other, "ConfigMap", "wc-config"), None);
        // The same name made again is another job.
        assert_eq!(
            memory.stamp(&key("wc", "3"), "ConfigMap", "wc-config"),
            None
        );
        memory.lock().remove(&wc);
        assert_eq!(memory.stamp(&wc, "ConfigMap", "wc-config"), None);
        assert_eq!(
            memory.stamp(&other, "ConfigMap", "wc-2-config"),
            Some(stamp)
        );
    }
}
