//! Pods on lost nodes. A StatefulSet does not replace a pod whose node stopped answering
//! until the node object is deleted: the pod might still run there, and two pods of one name
//! must never run. Sluice's checkpoint refuses every master but the newest (epochs, see the
//! runtime's checkpoint), so the operator can afford to force-delete a job's pods on a node
//! that has been NotReady longer than `spec.master.nodeLossTimeout`: their StatefulSets start
//! them elsewhere, and whatever still runs on the lost node cannot commit.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;

/// `spec.master.nodeLossTimeout` when the spec says nothing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod to force-delete.
#[derive(Debug, PartialEq, Eq)]
pub struct Lost {
    pub pod: String,
    pub node: String,
    /// How long the node has been NotReady.
    pub for_: Duration,
}

/// What to do about the nodes of a job's pods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Pods on nodes NotReady past the timeout.
    pub lost: Vec<Lost>,
    /// The soonest a NotReady node reaches the timeout: when to look again.
    pub recheck: Option<Duration>,
}

/// How long `node` has been NotReady at `now` (`None`: Ready, or no Ready condition yet).
pub fn not_ready_for(node: &Node, now: Timestamp) -> Option<Duration> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0;
    let elapsed = now.duration_since(since);
    Some(Duration::try_from(elapsed).unwrap_or_default())
}

/// The pods among `pods` to force-delete, with the `nodes` they are bound to, at `now`.
pub fn judge(
    pods: &[Pod],
    nodes: &BTreeMap<String, Node>,
    now: Timestamp,
    timeout: Duration,
) -> Verdict {
    let mut verdict = Verdict::default();
    if timeout.is_zero() {
        return verdict;
    }
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(for_) = nodes.get(node).and_then(|n| not_ready_for(n, now)) else {
            continue;
        };
        if for_ >= timeout {
            verdict.lost.push(Lost {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                node: node.to_string(),
                for_,
            });
        } else {
            let left = timeout - for_;
            verdict.recheck = Some(verdict.recheck.map_or(left, |r| r.min(left)));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(ready: &str, since: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}
        }))
        .expect("node")
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": []}}),
        )
        .expect("pod")
    }

    #[test]
    fn pods_on_nodes_not_ready_past_the_timeout_go() {
        let now: Timestamp = "2026-12-01T12:01:00Z".parse().expect("time");
        let nodes = BTreeMap::from([
            ("lost".to_string(), node("Unknown", "2026-12-01T12:00:00Z")),
            ("slow".to_string(), node("False", "2026-12-01T12:00:50Z")),
            ("fine".to_string(), node("True", "2026-12-01T11:00:00Z")),
        ]);
        let pods = [
            pod("wc-master-0", "lost"),
            pod("wc-worker-0", "slow"),
            pod("wc-worker-1", "fine"),
            pod("wc-worker-2", "gone"),
        ];
        let v = judge(&pods, &nodes, now, Duration::from_secs(30));
        assert_eq!(
            v.lost,
            [Lost {
                pod: "wc-master-0".into(),
                node: "lost".into(),
                for_: Duration::from_secs(60)
            }]
        );
        assert_eq!(
            v.recheck,
            Some(Duration::from_secs(20)),
            "the slow node's turn"
        );
        assert_eq!(
            judge(&pods, &nodes, now, Duration::ZERO),
            Verdict::default(),
            "0s: never"
        );
    }
}
