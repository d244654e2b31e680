//! The duration syntax of flags, environment variables and annotations: `8`, `8s`, `1.5s`,
//! `500ms` (and `off` where a duration is optional).

use std::time::Duration;

/// A duration, or `off`.
pub fn parse_optional_duration(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "off" {
        Ok(None)
    } else {
        parse_duration(s).map(Some)
    }
}

/// `8`, `8s`, `1.5s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{s:?} is not a duration (e.g. 8, 8s, 500ms)"))?;
    if !value.is_finite() || value <= 0.0 || value > 3600.0 {
        return Err(format!("{s:?} must be more than 0 and at most an hour"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
