//! `GET /v1/sd/prometheus`: Prometheus HTTP service discovery (`http_sd_configs`).
//!
//! One target group per instance, so each carries its own labels:
//! `__meta_registry_service`, `__meta_registry_instance`, `__meta_registry_status`,
//! `__meta_registry_zone`, `__meta_registry_region` (when set), `__meta_registry_weight`,
//! `__meta_registry_tags` (comma-separated with a leading and trailing comma, as Consul's
//! discovery does, so `.*,canary,.*` matches a tag), and `__meta_registry_meta_<key>` for
//! each meta pair (the key with every character Prometheus does not allow in a label
//! name replaced by `_`).

use api_spec::PrometheusTargetGroup;
use axum::extract::RawQuery;
use axum::response::Response;

use super::auth::Acting;
use super::error::ApiError;
use super::query::{self, Blocking};
use super::views::indexed;
use crate::replicated::catalog::{Filter, InstanceRecord};
use crate::validate;

pub async fn prometheus(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut filter = Filter::healthy();
    let mut service = None;
    let own = ["service", "tag", "zone", "region", "status"];
    let query = query::parse(raw, Blocking::No, &own, |key, value| {
        match key {
            "service" => {
                validate::service_name(&value)?;
                service = Some(value);
            }
            "tag" => filter.tags.push(value),
            "zone" => filter.zone = Some(value),
            "region" => filter.region = Some(value),
            "status" => filter.status = super::services::status_filter(&value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let (index, groups) = app
        .instances_everywhere(
            service.as_deref(),
            &filter,
            query.consistency(),
            target_group,
        )
        .await?;
    Ok(indexed(index, groups))
}

fn target_group(service: &str, id: &str, record: &InstanceRecord) -> PrometheusTargetGroup {
    let spec = &record.spec;
    let host = if spec.address.contains(':') {
        format!("[{}]", spec.address)
    } else {
        spec.address.to_string()
    };
    let mut labels = std::collections::BTreeMap::from([
        ("__meta_registry_service".to_owned(), service.to_owned()),
        ("__meta_registry_instance".to_owned(), id.to_owned()),
        (
            "__meta_registry_status".to_owned(),
            status_name(record.status).to_owned(),
        ),
        ("__meta_registry_weight".to_owned(), spec.weight.to_string()),
        (
            "__meta_registry_tags".to_owned(),
            format!(",{},", spec.tags.join(",")),
        ),
    ]);
    if let Some(zone) = spec.zone() {
        labels.insert("__meta_registry_zone".to_owned(), zone.to_string());
    }
    if let Some(region) = spec.region() {
        labels.insert("__meta_registry_region".to_owned(), region.to_string());
    }
    for (key, value) in spec.meta.iter() {
        labels.insert(
            format!("__meta_registry_meta_{}", label_name(key)),
            value.to_string(),
        );
    }
    PrometheusTargetGroup {
        targets: vec![format!("{host}:{}", spec.port)],
        labels,
    }
}

fn status_name(status: api_spec::InstanceStatus) -> &'static str {
    match status {
        api_spec::InstanceStatus::Passing => "passing",
        api_spec::InstanceStatus::Draining => "draining",
        api_spec::InstanceStatus::Critical => "critical",
    }
}

/// `key` as a Prometheus label name's tail: `[a-zA-Z0-9_]`, anything else `_`.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::label_name;

    #[test]
    fn meta_keys_become_label_names() {
        assert_eq!(label_name("build"), "build");
        assert_eq!(label_name("git.sha-1"), "git_sha_1");
        assert_eq!(label_name("été"), "_t_");
    }
}
