//! Waiting for conditions: poll with a timeout and, on timeout, say what was last seen.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Polls `probe` every 100 ms until it returns `Ok(value)`; after `timeout`, fails with
/// `what` and the last `Err` the probe returned (what it saw instead).
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "nothing (the first probe did not answer)".to_string();
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last = seen.to_string(),
            Err(_) => last = format!("{last} (the probe running at the deadline did not answer)"),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
