//! Reading `ldap-elector status -o json` in tests.

use serde_json::Value;

/// The pods the first write Service routes to (ready endpoints), as `status -o json` shows them.
pub fn routed_pods(status: &Value) -> Vec<&str> {
    status["services"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["ready"] == true)
        .filter_map(|e| e["pod"].as_str())
        .collect()
}
