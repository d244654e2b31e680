use super::*;
use ldap3::asn1::{TagClass, PL};

fn octets(b: &[u8]) -> StructureTag {
    StructureTag { class: TagClass::Universal, id: 4, payload: PL::P(b.to_vec()) }
}

fn constructed(id: u64, class: TagClass, inner: Vec<StructureTag>) -> StructureTag {
    StructureTag { class, id, payload: PL::C(inner) }
}

fn entry_tag(dn: &str, attrs: &[(&str, &[&str])]) -> StructureTag {
    let attrs = attrs
        .iter()
        .map(|(name, values)| {
            constructed(
                16,
                TagClass::Universal,
                vec![
                    octets(name.as_bytes()),
                    constructed(17, TagClass::Universal, values.iter().map(|v| octets(v.as_bytes())).collect()),
                ],
            )
        })
        .collect();
    constructed(4, TagClass::Application, vec![octets(dn.as_bytes()), constructed(16, TagClass::Universal, attrs)])
}

const U1: &str = "9c9686ac-7d80-1041-8ab7-d99470a38c5c";
const U2: &str = "9c9688aa-7d80-1041-8ab8-d99470a38c5c";

fn raw(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
    parse_entry(entry_tag(dn, attrs)).unwrap()
}

fn person(dn: &str, uuid: &str, csn: &str, mail: &[&str]) -> RawEntry {
    raw(
        dn,
        &[
            ("objectClass", &["top", "inetOrgPerson"]),
            ("mail", mail),
            ("entryUUID", &[uuid]),
            ("entryCSN", &[csn]),
            ("modifyTimestamp", &["20250101000000Z"]),
        ],
    )
}

const CSN1: &str = "20250101000000.000001Z#000000#001#000000";
const CSN2: &str = "20250101000001.000001Z#000000#001#000000";

#[test]
fn uuids_parse_and_format_round_trip_and_order_like_their_text() {
    let u = parse_uuid(U1.as_bytes()).unwrap();
    assert_eq!(format_uuid(u), U1);
    assert_eq!(parse_uuid(U1.to_uppercase().as_bytes()), Some(u));
    assert!(parse_uuid(U1.as_bytes()) < parse_uuid(U2.as_bytes()));
    for bad in [
        "",
        "9c9686ac7d8010418ab7d99470a38c5c",
        "9c9686ac-7d80-1041-8ab7-d99470a38c5g",
        "9c9686ac-7d80-1041-8ab7_d99470a38c5c",
    ] {
        assert_eq!(parse_uuid(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn prefixes_index_nest_and_bound_their_ranges() {
    let u = parse_uuid(U1.as_bytes()).unwrap();
    let root = Prefix::ROOT;
    assert_eq!(root.filter(), "(objectClass=*)");
    assert!(root.contains(u) && root.contains(0) && root.contains(u128::MAX));
    let i = root.index_of(u, 16);
    assert_eq!(i, 0x9c96);
    let bucket = root.child(i as u128, 16);
    assert_eq!(bucket.label(), "9c96");
    assert!(bucket.contains(u));
    assert_eq!(
        bucket.filter(),
        "(&(entryUUID>=9c960000-0000-0000-0000-000000000000)(entryUUID<=9c96ffff-ffff-ffff-ffff-ffffffffffff))"
    );
    // One level down: the next 8 bits.
    assert_eq!(bucket.index_of(u, 8), 0x86);
    let sub = bucket.child(0x86, 8);
    assert_eq!((sub.bits(), sub.label()), (24, "9c9686".to_string()));
    assert!(sub.contains(u) && !bucket.child(0x87, 8).contains(u));
    // The deepest prefix is one UUID.
    let mut p = root;
    while p.bits() < 128 {
        p = p.child(p.index_of(u, 8) as u128, 8);
    }
    assert!(p.contains(u) && !p.contains(u + 1) && !p.contains(u - 1));
    assert_eq!(ranges_filter(&[bucket]), bucket.filter());
    assert!(ranges_filter(&[bucket, sub]).starts_with("(|(&"));
    assert_eq!(uuids_filter(&[u]), format!("(entryUUID={U1})"));
}

#[test]
fn malformed_entries_are_rejected_without_a_panic() {
    assert_eq!(parse_entry(octets(b"x")), None);
    assert_eq!(parse_entry(constructed(4, TagClass::Application, vec![])), None);
    let no_values = constructed(
        4,
        TagClass::Application,
        vec![
            octets(b"dc=x"),
            constructed(16, TagClass::Universal, vec![constructed(16, TagClass::Universal, vec![octets(b"cn")])]),
        ],
    );
    assert_eq!(parse_entry(no_values), None);
    let e = raw("dc=x", &[("cn", &["a", "b"])]);
    assert_eq!(e.attrs, vec![(b"cn".to_vec(), vec![b"a".to_vec(), b"b".to_vec()])]);
}

#[test]
fn the_digest_ignores_order_and_name_case_but_not_values() {
    let p = AttrPolicy::default();
    let d = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@x", "b@x"]), &p);
    assert_eq!(d.uuid, parse_uuid(U1.as_bytes()));
    assert_eq!(d.csn.as_deref(), Some(CSN1));
    // Values and attributes in another order, names in another case: the same entry.
    let reordered = raw(
        "uid=a,dc=x",
        &[
            ("MODIFYTIMESTAMP", &["20250101000000Z"]),
            ("entryCSN", &[CSN1]),
            ("Mail", &["b@x", "a@x"]),
            ("entryuuid", &[U1]),
            ("objectclass", &["inetOrgPerson", "top"]),
        ],
    );
    assert_eq!(digest_entry(reordered, &p), d);
    // A changed value, DN or entryCSN changes the digest it belongs to.
    let other_value = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@x"]), &p);
    assert!(other_value.content != d.content && other_value.meta == d.meta);
    let other_dn = digest_entry(person("uid=b,dc=x", U1, CSN1, &["a@x", "b@x"]), &p);
    assert!(other_dn.content != d.content);
    let other_csn = digest_entry(person("uid=a,dc=x", U1, CSN2, &["a@x", "b@x"]), &p);
    assert!(other_csn.content == d.content && other_csn.meta != d.meta);
    // Values are length-prefixed: ["ab"] is not ["a", "b"].
    let joined = digest_entry(person("uid=a,dc=x", U1, CSN1, &["a@xb@x"]), &p);
    assert_ne!(joined.content, d.content);
}

#[test]
fn ignored_attributes_and_context_csn_do_not_count() {
    let with_ctx = raw("dc=x", &[("dc", &["x"]), ("contextCSN", &[CSN1]), ("pwdFailureTime", &["1"])]);
    let without = raw("dc=x", &[("dc", &["x"]), ("pwdFailureTime", &["2"])]);
    let p = AttrPolicy::new(&["pwdFailureTime".into()], &["pwdFailureTime".into()]);
    assert_eq!(digest_entry(with_ctx.clone(), &p).content, digest_entry(without.clone(), &p).content);
    let strict = AttrPolicy::new(&["pwdFailureTime".into()], &[]);
    assert_ne!(digest_entry(with_ctx, &strict).content, digest_entry(without, &strict).content);
    assert!(strict.request.iter().any(|r| r == "pwdFailureTime") && strict.request[0] == "*");
}

fn buckets_of(entries: Vec<RawEntry>, width: u32) -> Buckets {
    let mut b = Buckets::new(Prefix::ROOT, width);
    for e in entries {
        b.add(&digest_entry(e, &AttrPolicy::default()));
    }
    b
}

#[test]
fn bucket_digests_ignore_read_order_and_locate_the_difference() {
    let x = || person("uid=a,dc=x", U1, CSN1, &["a@x"]);
    let y = || person("uid=b,dc=x", "00000000-0000-1000-8000-000000000001", CSN1, &["b@x"]);
    let a = buckets_of(vec![x(), y()], 16);
    assert_eq!(a, buckets_of(vec![y(), x()], 16));
    assert!(differing(&a, &buckets_of(vec![y(), x()], 16)).is_empty());
    let b = buckets_of(vec![y()], 16);
    assert_eq!(differing(&a, &b), vec![BucketDiff { prefix: Prefix::ROOT.child(0x9c96, 16), count_a: 1, count_b: 0 }]);
    let modified = buckets_of(vec![person("uid=a,dc=x", U1, CSN2, &["new@x"]), y()], 16);
    let diffs = differing(&a, &modified);
    assert_eq!(diffs.len(), 1);
    assert_eq!((diffs[0].count_a, diffs[0].count_b), (1, 1));
    // An entry without a UUID is not folded in.
    let mut none = Buckets::new(Prefix::ROOT, 8);
    assert!(!none.add(&digest_entry(raw("dc=x", &[("dc", &["x"])]), &AttrPolicy::default())));
    assert!(none.buckets.iter().all(|b| *b == Bucket::default()));
}

fn diff(label: u128, a: u32, b: u32) -> BucketDiff {
    BucketDiff { prefix: Prefix::ROOT.child(label, 16), count_a: a, count_b: b }
}

#[test]
fn plans_batch_small_buckets_and_split_big_ones() {
    let mut q: VecDeque<_> = vec![diff(1, 10, 12), diff(2, 3000, 2990), diff(3, 2500, 2500), diff(4, 9000, 1)].into();
    assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![diff(1, 0, 0).prefix, diff(2, 0, 0).prefix])));
    assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![diff(3, 0, 0).prefix])));
    assert_eq!(next_plan(&mut q, 5000), Some(Plan::Split(diff(4, 0, 0).prefix)));
    assert_eq!(next_plan(&mut q, 5000), None);
    // At most MAX_RANGES_PER_SEARCH ranges per search.
    let mut q: VecDeque<_> = (0..100).map(|i| diff(i, 1, 1)).collect();
    match next_plan(&mut q, 5000) {
        Some(Plan::Leaf(batch)) => assert_eq!(batch.len(), MAX_RANGES_PER_SEARCH),
        other => panic!("{other:?}"),
    }
    // A single-UUID bucket cannot be split further: read it whatever its size.
    let mut deepest = Prefix::ROOT;
    while deepest.bits() < 128 {
        deepest = deepest.child(0, 8);
    }
    let mut q: VecDeque<_> = vec![BucketDiff { prefix: deepest, count_a: 9000, count_b: 0 }].into();
    assert_eq!(next_plan(&mut q, 5000), Some(Plan::Leaf(vec![deepest])));
}

fn state(csn: &str, content: u128) -> Option<EntryState> {
    Some(EntryState { dn: "uid=a,dc=x".into(), csn: Some(csn.into()), content, meta: content })
}

fn ctx(a: &str, b: &str) -> RoundCtx {
    let c = |s: &str| ContextCsn::parse(&[s]);
    RoundCtx { a_before: c(a), a_after: c(a), b_before: c(b), b_after: c(b) }
}

#[test]
fn judgement_retries_what_is_in_flight_and_holds_only_what_both_servers_passed() {
    let missing_on_b = Observation { a: state(CSN1, 1), b: None };
    // B has not processed A's change yet: lagging, not divergence.
    assert_eq!(judge(&missing_on_b, &ctx(CSN1, ""), &missing_on_b, &ctx(CSN1, "")), Judgement::Lagging);
    // B's contextCSN covers A's, entry still missing: holds.
    assert_eq!(judge(&missing_on_b, &ctx(CSN1, CSN1), &missing_on_b, &ctx(CSN1, CSN1)), Judgement::Holds);
    // The previous round's A is what B must cover (A moved on meanwhile: still lagging).
    assert_eq!(judge(&missing_on_b, &ctx(CSN2, CSN1), &missing_on_b, &ctx(CSN2, CSN1)), Judgement::Lagging);
    // Replication arrived: agrees.
    let arrived = Observation { a: state(CSN1, 1), b: state(CSN1, 1) };
    assert_eq!(judge(&missing_on_b, &ctx(CSN1, ""), &arrived, &ctx(CSN1, CSN1)), Judgement::Agrees);
    // The entry changed on A: moving, whatever the contextCSNs say.
    let changed = Observation { a: state(CSN2, 2), b: None };
    assert_eq!(judge(&missing_on_b, &ctx(CSN1, CSN2), &changed, &ctx(CSN2, CSN2)), Judgement::Moving);
    // Both absent agrees.
    assert!(Observation { a: None, b: None }.agrees());
}

#[test]
fn differences_say_which_side_holds_what() {
    let u = parse_uuid(U1.as_bytes()).unwrap();
    let d = Difference::new(u, &Observation { a: state(CSN1, 1), b: None }, None);
    assert_eq!((d.kind, d.dn.as_str(), d.entry_csn_a.as_deref()), (DiffKind::MissingOnB, "uid=a,dc=x", Some(CSN1)));
    assert!(d.describe().starts_with("missing on B  uid=a,dc=x"));
    let d = Difference::new(u, &Observation { a: None, b: state(CSN1, 1) }, None);
    assert_eq!(d.kind, DiffKind::MissingOnA);
    let mut b = state(CSN2, 1);
    if let Some(b) = &mut b {
        b.meta = 7;
    }
    let d = Difference::new(u, &Observation { a: state(CSN1, 1), b }, Some("moving"));
    assert_eq!(d.kind, DiffKind::Differs);
    assert!(d.metadata_only);
    assert!(d.describe().contains(&format!("entryCSN A {CSN1} vs B {CSN2} (attributes equal)")), "{}", d.describe());
}

#[test]
fn the_verdict_never_says_in_sync_with_open_questions() {
    assert_eq!(Verdict::decide(0, 0, 0), Verdict::InSync);
    assert_eq!(Verdict::decide(1, 5, 0), Verdict::Diverged);
    assert_eq!(Verdict::decide(0, 1, 0), Verdict::Unsettled);
    assert_eq!(Verdict::decide(0, 0, 3), Verdict::Unsettled);
    assert_eq!([Verdict::InSync, Verdict::Diverged, Verdict::Unsettled].map(Verdict::exit_code), [0, 1, 3]);
}

fn report(verdict: Verdict, differences: Vec<Difference>) -> Report {
    let side = |url: &str| SideReport { url: url.into(), entries: 3, context_csn: vec![CSN1.into()] };
    Report {
        verdict,
        base: "dc=x".into(),
        a: side("ldap://a:389"),
        b: side("ldap://b:389"),
        context_csn_equal: true,
        differences,
        differences_not_listed: 0,
        unsettled: vec![],
        unexamined_buckets: 0,
        notes: vec![],
        stats: Stats::default(),
    }
}

#[test]
fn reports_render_for_humans_and_scripts() {
    let text = report(Verdict::InSync, vec![]).render();
    assert!(text.contains("verdict: in sync") && text.contains("A ldap://a:389: 3 entries"), "{text}");
    let u = parse_uuid(U1.as_bytes()).unwrap();
    let missing = Difference::new(u, &Observation { a: state(CSN1, 1), b: None }, None);
    let r = report(Verdict::Diverged, vec![missing]);
    let text = r.render();
    assert!(text.contains("DIVERGED: 1 entry differs although both servers show the same contextCSN"), "{text}");
    assert!(text.contains("missing on B  uid=a,dc=x"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "diverged");
    assert_eq!(json["differences"][0]["kind"], "missing_on_b");
    assert_eq!(json["differences"][0]["entry_uuid"], U1);
    assert_eq!(json["differences"][0]["dn"], "uid=a,dc=x");
}

#[test]
fn config_checks_the_servers_and_the_limits() {
    let creds = Credentials::default();
    let c = AuditConfig::new("ldap://a:389?base=dc=x", "ldapi://%2Frun%2Fldapi?base=DC=X", &creds).unwrap();
    assert_eq!((c.a.bind.clone(), c.b.bind.clone()), (Bind::Anonymous, Bind::SaslExternal));
    assert!(c.validate().is_ok());
    assert!(AuditConfig::new("ldap://a:389?base=dc=x", "ldap://b:389?base=dc=y", &creds).is_err());
    assert!(AuditConfig::new("ldap://a:389", "ldap://b:389?base=dc=x", &creds).unwrap_err().contains("server A"));
    assert!(AuditConfig { bucket_bits: 10, ..c.clone() }.validate().is_err());
    assert!(AuditConfig { settle_rounds: 1, ..c.clone() }.validate().is_err());
    assert_eq!(c.backoff(1), Duration::from_millis(100));
    assert_eq!(c.backoff(3), Duration::from_millis(400));
    assert_eq!(c.backoff(40), Duration::from_millis(1600));
}
