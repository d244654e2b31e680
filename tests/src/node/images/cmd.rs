//! Running the external tools (cargo, musl-gcc, mmdebstrap, ctr) with errors that say which
//! command failed and why.
use std::process::{Command, Output, Stdio};

use super::ImageError;

/// How much of a failed command's stderr an error keeps.
const STDERR_TAIL: usize = 2000;

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

fn spawn_error(cmd: &Command, source: std::io::Error) -> ImageError {
    ImageError::Spawn { command: describe(cmd), source }
}

/// Runs to completion, capturing output; a non-zero exit is an error with the stderr tail.
pub fn output(cmd: &mut Command) -> Result<Output, ImageError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error(cmd, e))?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let start = (start..stderr.len()).find(|i| stderr.is_char_boundary(*i)).unwrap_or(stderr.len());
    Err(ImageError::Failed {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr: stderr[start..].trim().to_owned(),
    })
}

/// Runs to completion with stderr passed through (long builds show their progress).
pub fn status(cmd: &mut Command) -> Result<(), ImageError> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| spawn_error(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed {
            command: describe(cmd),
            status: status.to_string(),
            stderr: "(passed through above)".into(),
        })
    }
}

/// Whether `program` is an executable on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
