//! Wi-Fi punches against a group's access points, and GPS fixes too wide to tell inside from outside
//! (`weak_location`): both wait for a manager like an out-of-fence punch.

use super::*;

/// [`RULES`] plus a group whose Wi-Fi punches must come from two access points.
fn wifi_rules() -> String {
    format!(
        "{RULES}\n[[group]]\nid = \"office-wifi\"\ndepartments = [\"D-WIFI\"]\nshift = \"day\"\n\
         wifi = [\"AA:BB:CC:00:00:01\", \"aa-bb-cc-00-00-02\"]\n"
    )
}

fn wifi(seq: u64, who: &str, local: &str, bssid: &str) -> Punch {
    let mut p = punch(seq, who, Method::Wifi, local);
    p.attributes = vec![("bssid".into(), bssid.into()), ("ssid".into(), "plant".into())];
    p
}

#[test]
fn wifi_from_a_listed_access_point_counts_and_from_another_waits_for_a_manager() {
    let roster_text = format!("{ROSTER}E-WIFI,Wifi Worker,D-WIFI,,,,109,\n");
    let mut e = engine_with(&wifi_rules(), &roster_text);
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    // Listed (case and separators do not matter).
    let c = e.apply(Input::Punch(wifi(1, "E-WIFI", "2026-11-23T09:00", "aa:bb:cc:00:00:02")));
    assert!(punches_out(&c)[0].flags.is_empty(), "{c:?}");
    // Not listed: counts provisionally, pending a manager's decision.
    let c = e.apply(Input::Punch(wifi(2, "E-WIFI", "2026-11-23T18:00", "de:ad:be:ef:00:01")));
    assert_eq!(punches_out(&c)[0].flags, vec!["out_of_fence"]);
    let r = latest(&c).remove("gw:E-WIFI:2026-11-23:day").unwrap();
    assert_eq!(r.statuses, vec!["out_of_fence", "pending_approval"]);
    assert_eq!(r.clock_out_ms, Some(at("2026-11-23T18:00")));
    let requests = e.take_fence_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].punch_id.as_str(), requests[0].weak_location), ("gw:dev:2", false));
    // Rejected: it stops counting.
    let c = e.apply(Input::FenceDecision { punch_id: "gw:dev:2".into(), approved: false });
    let r = latest(&c).remove("gw:E-WIFI:2026-11-23:day").unwrap();
    assert_eq!((r.clock_out_ms, r.statuses.clone()), (None, vec!["out_of_fence".to_owned()]));
    // Groups without a Wi-Fi list take Wi-Fi punches as they are.
    let c = e.apply(Input::Punch(wifi(3, "E-DAY", "2026-11-23T09:00", "de:ad:be:ef:00:01")));
    assert!(punches_out(&c)[0].flags.is_empty(), "{c:?}");
}

#[test]
fn a_fix_wider_than_the_fence_is_a_weak_location() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    // Inside the 200 m circle, but only known to 2 km.
    let mut p = gps(1, "E-GEO", "2026-11-23T09:00", 31.2314, 121.4737);
    p.geo = Some(GeoPoint { lat: 31.2314, lng: 121.4737, accuracy_m: Some(2000.0) });
    let c = e.apply(Input::Punch(p));
    assert_eq!(punches_out(&c)[0].flags, vec!["weak_location"]);
    let r = latest(&c).remove("gw:E-GEO:2026-11-23:day").unwrap();
    assert_eq!(r.statuses, vec!["weak_location", "pending_approval"]);
    let requests = e.take_fence_requests();
    assert_eq!((requests.len(), requests[0].weak_location), (1, true));
    // Approved: it counts, and the record keeps saying how it was located.
    let c = e.apply(Input::FenceDecision { punch_id: "gw:dev:1".into(), approved: true });
    let r = latest(&c).remove("gw:E-GEO:2026-11-23:day").unwrap();
    assert_eq!((r.clock_in_ms, r.statuses.clone()), (Some(at("2026-11-23T09:00")), vec!["weak_location".to_owned()]));
    // A fix as accurate as the fence is wide is believed.
    let mut p = gps(2, "E-GEO", "2026-11-23T18:00", 31.2314, 121.4737);
    p.geo = Some(GeoPoint { lat: 31.2314, lng: 121.4737, accuracy_m: Some(200.0) });
    assert!(punches_out(&e.apply(Input::Punch(p)))[0].flags.is_empty());
    // Outside is out of fence whatever the accuracy.
    let mut p = gps(3, "E-POLY", "2026-11-23T09:00", 31.005, 121.02);
    p.geo = Some(GeoPoint { lat: 31.005, lng: 121.02, accuracy_m: Some(5000.0) });
    assert_eq!(punches_out(&e.apply(Input::Punch(p)))[0].flags, vec!["out_of_fence"]);
}

#[test]
fn wifi_lists_are_checked() {
    let bad = |list: &str| {
        let text = format!("{RULES}\n[[group]]\nid = \"w\"\ndepartments = [\"D-W\"]\nshift = \"day\"\nwifi = {list}\n");
        Rules::parse(Path::new("rules.toml"), &text).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let p = bad(r#"["aa:bb:cc:dd:ee"]"#);
    assert!(p[0].contains("group[w].wifi") && p[0].contains("is not a BSSID"), "{p:?}");
    let p = bad(r#"["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF"]"#);
    assert!(p[0].contains("listed twice"), "{p:?}");
    let p = bad("[]");
    assert!(p[0].contains("1 to 1000"), "{p:?}");
}

#[test]
fn a_pending_offline_claim_shows_on_its_record() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T08:00")));
    // A claim for 09:00 while nothing else was punched: the day's record says a decision is waiting.
    let c = e.apply(Input::Claims(Arc::new(vec![("E-DAY".into(), at("2026-11-23T09:00"))])));
    let r = latest(&c).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert_eq!((r.statuses.clone(), r.punch_ids.len()), (vec!["pending_approval".to_owned()], 0));
    // With punches of its own, the record keeps them and the pending claim.
    let c = e.apply(Input::Punch(punch(1, "E-DAY", Method::Face, "2026-11-23T18:00")));
    let r = latest(&c).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert!(r.statuses.contains(&"pending_approval".to_owned()), "{r:?}");
    // Decided (the claim is no longer pending; an approved claim's punch comes through the store): the status goes.
    let c = e.apply(Input::Claims(Arc::new(vec![])));
    let r = latest(&c).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert!(!r.statuses.contains(&"pending_approval".to_owned()), "{r:?}");
    // The same claims again change nothing.
    assert!(e.apply(Input::Claims(Arc::new(vec![]))).is_empty());
}
