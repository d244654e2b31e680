//! The generic role-change hook: a command run with the new role (`leader` or `standby`)
//! as its last argument, e.g. to toggle slapd's `olcReadOnly`. No shell is involved (the
//! image has none): the command is split on whitespace.

use std::time::Duration;

pub struct RoleHook {
    argv: Option<Vec<String>>,
    timeout: Duration,
}

impl RoleHook {
    pub fn new(command: Option<String>, timeout: Duration) -> Self {
        let argv =
            command.map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>()).filter(|a| !a.is_empty());
        RoleHook { argv, timeout }
    }

    pub fn is_configured(&self) -> bool {
        self.argv.is_some()
    }

    /// Runs the hook for `role`; true when there is none or it exited 0 within the timeout.
    pub async fn run(&self, role: &str) -> bool {
        let Some(argv) = &self.argv else { return true };
        let started = std::time::Instant::now();
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .arg(role)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let result = match tokio::time::timeout(self.timeout, child).await {
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(status.to_string()),
        };
        match result {
            Ok(()) => {
                tracing::info!(role, hook = %argv[0], millis = started.elapsed().as_millis() as u64, "role-change hook ran");
                true
            }
            Err(e) => {
                tracing::error!(role, hook = %argv[0], error = %e, "role-change hook failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_with_the_role_as_last_argument() {
        let dir = std::env::temp_dir().join(format!("hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("role");
        let script = dir.join("hook.sh");
        std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" > {}\n", out.display())).unwrap();
        let hook = RoleHook::new(Some(format!("sh {}", script.display())), Duration::from_secs(5));
        assert!(hook.run("leader").await);
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "leader");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn reports_failure_and_timeout() {
        assert!(!RoleHook::new(Some("false".into()), Duration::from_secs(5)).run("leader").await);
        assert!(!RoleHook::new(Some("sleep 5".into()), Duration::from_millis(100)).run("leader").await);
        assert!(!RoleHook::new(Some("/nonexistent/hook".into()), Duration::from_secs(1)).run("leader").await);
        assert!(RoleHook::new(None, Duration::from_secs(1)).run("leader").await);
    }
}
