//! The MSK-style operation record: PENDING → UPDATE_IN_PROGRESS → UPDATE_COMPLETE / UPDATE_FAILED,
//! and the history of the last ten. Pure functions over the status types.

use k8s_openapi::jiff::Timestamp;

use cluster_security_api::{ErrorInfo, Operation, OperationState, OperationType, OPERATION_HISTORY};

/// RFC 3339 at second precision, as every time in our status is written.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// Parse a time we wrote with [`rfc3339`].
pub(crate) fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// A new PENDING operation.
pub(crate) fn new<I>(
    id: String,
    type_: OperationType,
    generation: Option<i64>,
    source: Option<I>,
    target: I,
    now: Timestamp,
) -> Operation<I> {
    Operation {
        operation_id: id,
        operation_type: type_,
        operation_state: OperationState::Pending,
        creation_time: rfc3339(now),
        start_time: None,
        deadline_from: None,
        end_time: None,
        generation,
        source_info: source,
        target_info: Some(target),
        error_info: None,
        retry_request: None,
        verification: None,
        deadline_paused: None,
    }
}

/// Make a new operation the current one and record it in the history; returns the note of the
/// event that announces it.
pub(crate) fn open<I: Clone>(
    history: &mut Vec<Operation<I>>,
    current: &mut Option<Operation<I>>,
    op: Operation<I>,
    what: &str,
) -> String {
    let type_name =
        serde_json::to_value(op.operation_type).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let note = format!("Operation {} recorded: {type_name} of {what}.", op.operation_id);
    settle(history, current, op);
    note
}

/// Move to UPDATE_IN_PROGRESS.
pub(crate) fn start<I>(op: &mut Operation<I>, now: Timestamp) {
    op.operation_state = OperationState::UpdateInProgress;
    op.start_time = Some(rfc3339(now));
}

/// Move to UPDATE_COMPLETE.
pub(crate) fn complete<I>(op: &mut Operation<I>, now: Timestamp) {
    op.operation_state = OperationState::UpdateComplete;
    op.end_time = Some(rfc3339(now));
    // Only a rollout in progress has a deadline.
    op.deadline_paused = None;
}

/// Move to UPDATE_FAILED with the error a user can act on.
pub(crate) fn fail<I>(op: &mut Operation<I>, code: &str, message: String, now: Timestamp) {
    op.operation_state = OperationState::UpdateFailed;
    op.end_time = Some(rfc3339(now));
    op.error_info = Some(ErrorInfo { code: code.into(), message });
    op.deadline_paused = None;
}

/// Record `op` in the history (newest first, at most ten), replacing an older copy of itself.
pub(crate) fn record<I: Clone>(history: &mut Vec<Operation<I>>, op: &Operation<I>) {
    history.retain(|o| o.operation_id != op.operation_id);
    history.insert(0, op.clone());
    history.truncate(OPERATION_HISTORY);
}

/// After a reconcile moved `op` on: record it in the history, and keep it as the current
/// operation only while it has not ended.
pub(crate) fn settle<I: Clone>(history: &mut Vec<Operation<I>>, current: &mut Option<Operation<I>>, op: Operation<I>) {
    record(history, &op);
    *current = (!op.operation_state.is_terminal()).then_some(op);
}

/// The error of the newest operation when it failed for this very spec (same generation, same
/// target) and the same retry request (`retry`: the resource's retry annotation now). Such a
/// failure is not retried until the spec or the retry annotation changes, unless what was
/// missing (a Secret) has appeared since.
pub(crate) fn failed_for<I: PartialEq>(
    history: &[Operation<I>],
    generation: Option<i64>,
    desired: &I,
    retry: Option<&str>,
) -> Option<ErrorInfo> {
    let last = history.first()?;
    (last.operation_state == OperationState::UpdateFailed
        && last.generation == generation
        && last.target_info.as_ref() == Some(desired)
        && last.retry_request.as_deref() == retry)
        .then(|| last.error_info.clone().unwrap_or(ErrorInfo { code: "Failed".into(), message: String::new() }))
}

/// The resource's `clustersecurity.io/retry` annotation.
pub(crate) fn retry_request(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref()?.get(cluster_security_api::RETRY_ANNOTATION).map(String::as_str)
}

/// Seconds the rollout deadline has been running: since UPDATE_IN_PROGRESS, or since a partition
/// last held the rollout back (`deadlineFrom`).
pub(crate) fn seconds_in_progress<I>(op: &Operation<I>, now: Timestamp) -> Option<i64> {
    let started = parse_time(op.deadline_from.as_deref().or(op.start_time.as_deref())?)?;
    Some(now.as_second() - started.as_second())
}

/// Random (v4) UUID from the operating system's generator, via ring.
pub(crate) fn uuid_v4() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).expect("the system random generator works");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_history() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let mut history: Vec<Operation<u32>> = Vec::new();
        for i in 0..12u32 {
            let mut op = new(format!("id-{i}"), OperationType::UpdateSecurity, Some(1), None, i, t0);
            assert_eq!(op.operation_state, OperationState::Pending);
            record(&mut history, &op);
            start(&mut op, t0);
            complete(&mut op, Timestamp::from_second(1_800_000_060).unwrap());
            record(&mut history, &op);
        }
        assert_eq!(history.len(), OPERATION_HISTORY);
        assert_eq!(history[0].operation_id, "id-11", "newest first");
        assert_eq!(history[0].end_time.as_deref(), Some("2027-01-15T08:01:00Z"));
        assert!(history.iter().all(|o| o.operation_state == OperationState::UpdateComplete));
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let (a, b) = (uuid_v4(), uuid_v4());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
