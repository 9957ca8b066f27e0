//! `-o text|json|yaml`, and the small text helpers the screens share. Formatting only.

use k8s_openapi::jiff::Timestamp;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
    Yaml,
}

/// `value` as JSON (pretty) or YAML.
pub(crate) fn structured<T: serde::Serialize>(value: &T, format: Format) -> String {
    match format {
        Format::Yaml => serde_yaml::to_string(value).unwrap_or_default(),
        _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

/// The serde name of an enum value (`UPDATE_COMPLETE`, `TrustUpdateRequired`, …).
pub(crate) fn name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// How long ago `then` (RFC 3339) was, as kubectl prints ages: `45s`, `12m`, `3h`, `5d`.
pub(crate) fn age(then: &str, now: Timestamp) -> String {
    let Ok(t) = then.parse::<Timestamp>() else { return "?".into() };
    let s = (now.as_second() - t.as_second()).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Days from `now` to `then` (RFC 3339), negative when past.
pub(crate) fn days_left(then: &str, now: Timestamp) -> Option<i64> {
    let t = then.parse::<Timestamp>().ok()?;
    Some((t.as_second() - now.as_second()).div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_days_as_kubectl_prints_them() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        assert_eq!(age("2026-12-04T11:59:15Z", now), "45s");
        assert_eq!(age("2026-12-04T11:00:00Z", now), "60m");
        assert_eq!(age("2026-12-04T06:00:00Z", now), "6h");
        assert_eq!(age("2026-11-29T12:00:00Z", now), "5d");
        assert_eq!(age("garbage", now), "?");
        assert_eq!(days_left("2026-12-14T12:00:00Z", now), Some(10));
        assert_eq!(days_left("2026-12-03T12:00:00Z", now), Some(-1));
        assert_eq!(name(&crate::api::OperationState::UpdateComplete), "UPDATE_COMPLETE");
        let yaml = structured(&serde_json::json!({"a": {"b": [1]}}), Format::Yaml);
        assert_eq!(yaml, "a:\n  b:\n  - 1\n");
    }
}
