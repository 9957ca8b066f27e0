//! The re-encryption engine against a real apiserver and etcd: after the encryption provider
//! changes, every Secret is stored again under the new one (checked in etcd itself), Secrets
//! changed, created or deleted meanwhile by others are neither lost nor overwritten nor
//! recreated, a second run changes nothing, and a run resumes after a given key.

use base64::Engine as _;
use cluster_security_operator::reencrypt::{self, Settings};
use cluster_security_testbed::leaks;
use cluster_security_testbed::{create_numbered_secrets, numbered_name, numbered_value, ControlPlane, Options};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const IDENTITY: &str = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n";

fn aescbc() -> String {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - {{name: key1, secret: {key}}}\n  - identity: {{}}\n")
}

const NS: &str = "reenc";
const COUNT: usize = 300;

fn name(i: usize) -> String {
    numbered_name("s", i)
}

fn stored_as(cp: &ControlPlane, name: &str) -> String {
    let v = cp.etcd_get(&format!("/registry/secrets/{NS}/{name}")).unwrap().expect("stored");
    if v.starts_with(b"k8s:enc:aescbc:v1:key1:") {
        "aescbc".into()
    } else if v.starts_with(b"k8s\0") {
        "plain".into()
    } else {
        format!("other {:?}", &v[..v.len().min(20)])
    }
}

#[tokio::test]
async fn rewrites_every_secret_without_losing_concurrent_changes() {
    let cp = ControlPlane::start(Options { encryption_config: Some(IDENTITY.into()) }).unwrap();
    let client = cp.client().await.unwrap();
    create_numbered_secrets(&client, NS, "s", COUNT).await.unwrap();
    assert_eq!(stored_as(&cp, &name(0)), "plain");

    // Switch to aescbc: nothing is rewritten by itself.
    cp.set_encryption_config(&aescbc()).unwrap();
    cp.restart_apiserver().unwrap();
    let client = cp.client().await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    assert_eq!(stored_as(&cp, &name(1)), "plain");

    // Others write while the engine runs: update 0..20, delete 20..30, create 10 new.
    let writer = {
        let secrets = secrets.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let patch = json!({"stringData": {"v": format!("updated-{i}")}});
                secrets.patch(&name(i), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
            for i in 20..30 {
                secrets.delete(&name(i), &DeleteParams::default()).await.unwrap();
            }
            for i in COUNT..COUNT + 10 {
                let s = Secret {
                    metadata: ObjectMeta { name: Some(name(i)), ..Default::default() },
                    string_data: Some([("v".to_string(), "new".to_string())].into()),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        })
    };
    let mut pages = 0;
    let settings = Settings { concurrency: 8, page_size: 50, attempts: 5, adaptive: true };
    let p = reencrypt::run(&client, settings, Default::default(), |_| pages += 1).await.unwrap();
    writer.await.unwrap();
    assert_eq!(p.failed, 0, "{p:?}");
    assert_eq!(p.total, p.rewritten + p.unchanged + p.gone + p.failed);
    assert!(p.rewritten >= (COUNT - 30) as u64, "{p:?}");
    assert!(pages >= COUNT / 50, "progress reported per page: {pages}");

    for i in (0..COUNT + 10).filter(|i| !(20..30).contains(i)) {
        assert_eq!(stored_as(&cp, &name(i)), "aescbc", "{}", name(i));
    }
    for i in 0..20 {
        let s = secrets.get(&name(i)).await.unwrap();
        assert_eq!(s.data.unwrap()["v"].0, format!("updated-{i}").into_bytes(), "concurrent update kept");
    }
    for i in 20..30 {
        assert!(secrets.get_opt(&name(i)).await.unwrap().is_none(), "deleted Secret not recreated");
    }
    assert_eq!(secrets.get(&name(100)).await.unwrap().data.unwrap()["v"].0, numbered_value(100).into_bytes());

    // A second run finds nothing to do. Its progress at about half is a resume point as the
    // controller would have saved it.
    let mut half = None;
    let again = reencrypt::run(&client, settings, Default::default(), |p| {
        if half.is_none() && p.total >= (COUNT / 2) as u64 {
            half = Some(p.clone());
        }
    })
    .await
    .unwrap();
    let half = half.expect("progress reported past half");
    assert_eq!((again.rewritten, again.failed), (0, 0), "{again:?}");
    assert_eq!(again.unchanged, again.total);
    // Counting (names only, paged) agrees while nobody writes.
    assert_eq!(reencrypt::count(&client, 7).await.unwrap(), again.total);

    // Resuming after a key handles only what comes after it.
    let after = format!("{NS}/{}", name(COUNT - 5));
    let tail = reencrypt::run(
        &client,
        settings,
        reencrypt::Progress { resume_after: Some(after), ..Default::default() },
        |_| {},
    )
    .await
    .unwrap();
    // s-00296..s-00299 and the ten created; Secrets of namespaces sorting after "reenc" come too.
    assert!(tail.total >= 4 + 10 && tail.total < 100, "{tail:?}");
    assert_eq!(tail.unchanged, tail.total, "{tail:?}");

    resuming_lists_from_the_resume_points_page(&cp, &client, settings, &half).await;
    // No operator runs here (nor our CRDs): the audit reads the Events only.
    leaks::assert_none(&cp, &[]).await;
}

/// A resumed run lists from the page holding its resume point (the next page when the point is
/// the last on its page) — not from the first Secret, which would make the API server read and
/// decrypt every name before it — and still handles every Secret after the point exactly once:
/// with the continuation saved, after etcd compacted it away (the API server hands back one from
/// the same key), and with one it refuses.
async fn resuming_lists_from_the_resume_points_page(
    cp: &ControlPlane,
    client: &kube::Client,
    settings: Settings,
    half: &reencrypt::Progress,
) {
    let page = u64::from(settings.page_size);
    let after = half.resume_after.clone().expect("a resume point");
    assert!(half.resume_continue.is_some(), "past the first page, its continuation is kept: {half:?}");
    // Secrets at or before the resume point, and after it, as they are now.
    let split = || async {
        let all = Api::<Secret>::all(client.clone()).list_metadata(&Default::default()).await.unwrap();
        let keys: Vec<String> =
            all.items.iter().map(|m| format!("{}/{}", m.namespace().unwrap(), m.name_any())).collect();
        let after_it = keys.iter().filter(|k| k.as_str() > after.as_str()).count() as u64;
        (keys.len() as u64 - after_it, after_it)
    };
    let resume = |from: Option<String>| {
        let start = reencrypt::Progress { resume_continue: from, ..half.clone() };
        reencrypt::run(client, settings, start, |_| {})
    };
    let exact = |p: &reencrypt::Progress, after_it: u64, how: &str| {
        let handled = p.total - half.total;
        assert_eq!(handled, after_it, "{how}: every Secret after the point handled once, none twice ({p:?})");
        assert_eq!(p.unchanged - half.unchanged, handled, "{how}: {p:?}");
    };

    let (up_to_it, after_it) = split().await;
    let saved = resume(half.resume_continue.clone()).await.unwrap();
    exact(&saved, after_it, "from the saved continuation");
    assert!(saved.listed_again < page, "listed again: less than its page ({saved:?})");

    let from_first = resume(None).await.unwrap();
    exact(&from_first, after_it, "without a continuation");
    assert_eq!(from_first.listed_again, up_to_it, "from the first Secret: all up to {after}");

    // One more write, then compaction past the continuation's revision: it has expired.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let s =
        Secret { metadata: ObjectMeta { name: Some(name(COUNT + 10)), ..Default::default() }, ..Default::default() };
    secrets.create(&PostParams::default(), &s).await.unwrap();
    cp.compact_etcd().unwrap();
    let lp = kube::api::ListParams::default().limit(1).continue_token(half.resume_continue.as_deref().unwrap());
    let expired = Api::<Secret>::all(client.clone()).list_metadata(&lp).await.unwrap_err();
    assert!(matches!(&expired, kube::Error::Api(s) if s.code == 410), "expired: {expired:?}");
    let (up_to_it, after_it) = split().await;
    let compacted = resume(half.resume_continue.clone()).await.unwrap();
    exact(&compacted, after_it, "after compaction");
    assert!(compacted.listed_again < page, "listed on from the same key ({compacted:?})");

    let refused = resume(Some("bm90LWEtdG9rZW4".into())).await.unwrap();
    exact(&refused, after_it, "with a continuation the server refuses");
    assert_eq!(refused.listed_again, up_to_it, "from the first Secret");
}
