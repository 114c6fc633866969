//! The chart's Grafana dashboard as tests read it: the series it queries, to compare with
//! what the binaries export.

/// Every series the chart's Grafana dashboard queries (`charts/sluice/dashboards/sluice.json`).
pub fn dashboard_series() -> std::collections::BTreeSet<String> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/sluice/dashboards/sluice.json");
    let text = std::fs::read_to_string(&file).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr" | "definition", Some(e)) => exprs.push(e.to_string()),
                        _ => stack.push(v),
                    }
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("sluice_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

/// The names of the samples in OpenMetrics texts (`sluice_x_total`, `sluice_y_bucket`, ...).
pub fn sample_names(texts: &[String]) -> std::collections::BTreeSet<String> {
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}
