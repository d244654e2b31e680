//! One Kubernetes API call under a deadline, its failure naming the operation and, for the
//! common refusals, what to do about it. Each component words its own hints (whose RBAC,
//! which object), so they are passed in.

use std::future::Future;
use std::time::Duration;

/// Default upper bound of one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What to tell the operator about a refused call, by HTTP status (each starts with `; `
/// and is appended to the error; empty: nothing to add).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    pub unauthorized: &'static str,
    pub forbidden: &'static str,
    pub conflict: &'static str,
    pub invalid: &'static str,
}

/// Appended to every failure that is not an API status (connection, TLS, decoding).
pub const NETWORK_HINT: &str = "; check the network path to the API server";

impl Hints {
    /// The hint for `error`.
    pub fn for_error(&self, error: &kube::Error) -> &'static str {
        match error {
            kube::Error::Api(status) => match status.code {
                401 => self.unauthorized,
                403 => self.forbidden,
                409 => self.conflict,
                422 => self.invalid,
                _ => "",
            },
            _ => NETWORK_HINT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{op} got no answer within {timeout:?}; check that the API server is reachable, then retry")]
    Timeout { op: String, timeout: Duration },
    #[error("{op} failed: {source}{hint}")]
    Failed {
        op: String,
        hint: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ApiError {
    /// The HTTP status of a refused call (`None`: timed out or never answered).
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ApiError::Failed { source: kube::Error::Api(status), .. } => Some(status.code),
            _ => None,
        }
    }
}

/// Runs `request` (described by `op`, e.g. `reading Secret ns/x`) under `timeout`.
pub async fn call<T>(
    op: impl Into<String>,
    timeout: Duration,
    hints: &Hints,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(ApiError::Timeout { op: op.into(), timeout }),
        Ok(Err(source)) => Err(ApiError::Failed { op: op.into(), hint: hints.for_error(&source), source }),
        Ok(Ok(value)) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINTS: Hints = Hints { unauthorized: "", forbidden: "; RBAC", conflict: "; again", invalid: "" };

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("m", "r").with_code(code).boxed())
    }

    #[test]
    fn hints_follow_the_status() {
        assert_eq!(HINTS.for_error(&status(403)), "; RBAC");
        assert_eq!(HINTS.for_error(&status(409)), "; again");
        assert_eq!(HINTS.for_error(&status(500)), "");
    }

    #[tokio::test]
    async fn a_refused_call_names_the_operation_status_and_hint() {
        let err =
            call("patching Pod ns/p", API_TIMEOUT, &HINTS, async { Err::<(), _>(status(403)) }).await.unwrap_err();
        assert_eq!(err.status_code(), Some(403));
        let text = err.to_string();
        assert!(text.starts_with("patching Pod ns/p failed: ") && text.ends_with("; RBAC"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_call_that_hangs_times_out() {
        let hung = std::future::pending::<Result<(), kube::Error>>();
        let err = call("reading Secret ns/x", API_TIMEOUT, &HINTS, hung).await.expect_err("timeout");
        assert!(matches!(err, ApiError::Timeout { timeout, .. } if timeout == API_TIMEOUT));
        assert_eq!(err.status_code(), None);
        assert!(err.to_string().contains("reading Secret ns/x"));
    }
}
