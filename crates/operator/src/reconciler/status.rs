//! The status write every kind makes: a JSON merge diff of the decided status against the stored
//! one, guarded by the resourceVersion it was decided on.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};

use super::Noted as _;
use super::{Error, Named, Reconcile};

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, and `null` for
/// removed ones, recursively. Sending the whole status this way removes what is gone exactly,
/// which server-side apply on the v1.20 apiserver did not for nested objects.
pub(crate) fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// How often a status write is re-sent when only other fields of the object changed meanwhile.
const STATUS_WRITE_ATTEMPTS: usize = 10;

/// Write `new` as the status of `obj` when it differs from the status `obj` carries. The patch
/// names the resourceVersion it was computed from, so a decision made on a stale status fails
/// with a conflict (and is retried on fresh data) instead of overwriting newer status; a
/// conflict caused only by other fields (labels, annotations, spec) is written again.
/// Returns the object as stored after the write (None when nothing needed writing).
pub(crate) async fn write_diff<K, S>(api: &Api<K>, obj: &K, new: &S) -> Result<Option<K>, Error>
where
    K: Reconcile,
    S: Serialize,
{
    let name = obj.name_any();
    let object = || Named::new(super::kind_of::<K>(), &obj.namespace().unwrap_or_default(), &name);
    let status_of = |o: &K| serde_json::to_value(o).ok().and_then(|v| v.get("status").cloned()).unwrap_or(json!({}));
    let old = status_of(obj);
    let new = serde_json::to_value(new).map_err(|source| Error::EncodeStatus { object: object(), source })?;
    let Some(diff) = merge_diff(&old, &new) else { return Ok(None) };
    let mut resource_version = obj.meta().resource_version.clone();
    for _ in 0..STATUS_WRITE_ATTEMPTS {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "status": diff});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(stored) => return Ok(Some(stored)),
            // Someone else changed the object since it was read (a label, an annotation, the
            // spec). Status has one writer, this operator: while it is still what the decision
            // was made from, the write is still right — and it may record work already done (a
            // certificate issued, a rollout started) that must not be redone. Send it again on
            // the object as it is now; a changed spec is picked up by the next reconcile.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api.get(&name).await.reading(&object())?;
                if status_of(&current) != old {
                    return Err(Error::WriteStatus { object: object(), source: Box::new(kube::Error::Api(s)) });
                }
                resource_version = current.meta().resource_version.clone();
            }
            Err(source) => return Err(Error::WriteStatus { object: object(), source: Box::new(source) }),
        }
    }
    Err(Error::StatusContention { object: object(), attempts: STATUS_WRITE_ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_removes_what_is_gone_and_skips_what_is_equal() {
        let old = json!({"a": 1, "op": {"id": "x", "target": {"tls": true}}, "list": [1, 2]});
        let new = json!({"a": 1, "list": [1], "b": "new"});
        assert_eq!(merge_diff(&old, &new), Some(json!({"op": null, "list": [1], "b": "new"})));
        assert_eq!(merge_diff(&new, &new), None);
        let nested = json!({"applied": {"tls": {"enabled": true}, "sasl": {}}});
        let nested_new = json!({"applied": {"sasl": {}}});
        assert_eq!(merge_diff(&nested, &nested_new), Some(json!({"applied": {"tls": null}})));
    }
}
