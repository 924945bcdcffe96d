use std::path::PathBuf;

use super::*;

const SAMPLE: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
E1001,Li Wei,D-OFF,04a1b2c3,7,face-1001,1001,\n\
E1002,Wang Fang,D-OFF,04A1B2C4,,face-1002,1002,\n\
E1003,Zhang Min,D-ASM,04A1B2C5|04A1B2C6,line1-fp:12,face-1003,1003,\n\
E2001,Chen Jie,D-ASM,,,face-2001,2001,D-ASM|D-OFF\n";

#[test]
fn shipped_roster_imports() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/roster.csv");
    let roster = Roster::load(&path).unwrap_or_else(|p| panic!("{p:?}"));
    assert!(roster.len() >= 4);
    assert!(roster.manages("E2001", "D-ASM"));
}

#[test]
fn credentials_resolve() {
    let r = Roster::parse_csv(SAMPLE).unwrap();
    let who = |cred: &str, device: &str, m: Method| r.resolve(cred, device, m).map(|e| e.id.as_str());
    assert_eq!(who("04A1B2C3", "gate", Method::Card), Some("E1001"));
    assert_eq!(who("04a1b2c3", "gate", Method::Card), Some("E1001"), "card UIDs compare upper-case");
    assert_eq!(who("04A1B2C6", "gate", Method::Card), Some("E1003"));
    assert_eq!(who("fp:7", "any-module", Method::Fingerprint), Some("E1001"));
    assert_eq!(who("fp:12", "line1-fp", Method::Fingerprint), Some("E1003"));
    assert_eq!(who("fp:12", "other-fp", Method::Fingerprint), None, "page 12 is registered for line1-fp only");
    assert_eq!(who("fp:x", "line1-fp", Method::Fingerprint), None);
    assert_eq!(who("face-2001", "hall", Method::Face), Some("E2001"));
    assert_eq!(who("1002", "zk", Method::Pin), Some("E1002"));
    assert_eq!(who("FFFF", "gate", Method::Card), None);
    assert_eq!(r.resolve_employee("E1003").map(|e| e.id.as_str()), Some("E1003"));
    assert_eq!(r.resolve_employee("1003").map(|e| e.id.as_str()), Some("E1003"), "ADMS PIN");
    assert!(r.resolve_employee("E9999").is_none());
    assert!(r.manages("E2001", "D-OFF"));
    assert!(!r.manages("E1001", "D-OFF"));
    assert_eq!(r.in_department("D-ASM").count(), 2);
    assert_eq!(r.departments().into_iter().collect::<Vec<_>>(), vec!["D-ASM", "D-OFF"]);
}

#[test]
fn device_specific_page_wins_over_any_module() {
    let text = "employee,fingerprint\nA,5\nB,dev-1:5\n";
    let r = Roster::parse_csv(text).unwrap();
    assert_eq!(r.resolve("fp:5", "dev-1", Method::Fingerprint).map(|e| e.id.as_str()), Some("B"));
    assert_eq!(r.resolve("fp:5", "dev-2", Method::Fingerprint).map(|e| e.id.as_str()), Some("A"));
}

#[test]
fn columns_in_any_order_and_csv_round_trip() {
    let text = "pin,employee,department\n7,A,D1\n,\"B, the second\",D2\n";
    let r = Roster::parse_csv(text).unwrap();
    assert_eq!(r.get("B, the second").map(|e| e.department.as_str()), Some("D2"));
    let again = Roster::parse_csv(&r.to_csv()).unwrap();
    assert_eq!(again, r);
    let sample = Roster::parse_csv(SAMPLE).unwrap();
    assert_eq!(Roster::parse_csv(&sample.to_csv()).unwrap(), sample);
}

#[test]
fn bad_lines_are_named_and_nothing_is_accepted() {
    let cases: &[(&str, &str)] = &[
        ("", "line 1: (header): the file is empty"),
        ("name,department\nx,y\n", "line 1: employee: missing"),
        ("employee,colour\nA,red\n", "line 1: colour: unknown column"),
        ("employee,employee\nA,A\n", "line 1: employee: the column is named twice"),
        ("employee,card\nA,04A1\nB\n", "line 3: (row): has 1 fields, the header has 2"),
        ("employee,card\nA,04A1\n,0000\n", "line 3: employee: the employee id is empty"),
        ("employee,card\nA,04A1\nB,04ZZ\n", "line 3: card: `04ZZ` is not a card UID"),
        ("employee,card\nA,04a1\nB,04A1\n", "line 3: card: card `04A1` is already used by A (line 2)"),
        ("employee\nA\nB\nA\n", "line 4: employee: employee `A` is listed twice (first on line 2)"),
        ("employee,fingerprint\nA,dev 1:3\n", "line 2: fingerprint: `dev 1:3`: device id"),
        ("employee,fingerprint\nA,70000\n", "line 2: fingerprint: `70000` is not a fingerprint page"),
        ("employee,fingerprint\nA,d1:3\nB,d1:3\n", "line 3: fingerprint: fingerprint `d1:3` is already used by A"),
        ("employee,pin\nA,12-3\n", "line 2: pin: `12-3` is not a PIN"),
        ("employee,face\nA,f1\nB,f1\n", "line 3: face: face id `f1` is already used by A (line 2)"),
        ("employee,name\nA,\"open\n", "line 2: (csv): a quoted field is not closed"),
        ("employee,name\nA,x\"y\n", "line 2: (csv): a quoted field is not closed, or a quote stands inside"),
        ("employee,name\nA,\"x\u{7}\"\n", "line 2: name: the name contains control characters"),
    ];
    for (text, want) in cases {
        let got = match Roster::parse_csv(text) {
            Ok(_) => "ok".to_owned(),
            Err(problems) => problems[0].to_string(),
        };
        assert!(got.starts_with(want), "csv:\n{text}\n  got:    {got}\n  wanted: {want}");
    }
    // Every bad line is reported, in line order.
    let problems = Roster::parse_csv("employee,card\nA,zz\nB,04A1\nC,yy\n").unwrap_err();
    assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), vec![2, 4]);
}

#[test]
fn store_replaces_atomically_and_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let store = RosterStore::open(&db).unwrap();
    assert!(store.load().unwrap().is_empty());
    let r = Roster::parse_csv(SAMPLE).unwrap();
    assert!(store.replace(&r).unwrap());
    assert!(!store.replace(&r).unwrap(), "same roster: no change");
    assert_eq!(store.load().unwrap(), r);
    let smaller = Roster::parse_csv("employee,card\nE1001,04A1B2C3\n").unwrap();
    assert!(store.replace(&smaller).unwrap());
    assert_eq!(store.load().unwrap(), smaller);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.csv");
    std::fs::write(&path, "employee,card\nA,nothex\n").unwrap();
    let problems = Roster::load(&path).unwrap_err();
    assert_eq!(
        problems[0].to_string(),
        format!("{}:2: card: `nothex` is not a card UID (4 to 32 hex digits)", path.display())
    );
    let missing = Roster::load(&dir.path().join("nope.csv")).unwrap_err();
    assert!(missing[0].message.starts_with("cannot read"));
}

proptest::proptest! {
    #[test]
    fn import_never_panics(text in "\\PC{0,400}") {
        let _ = Roster::parse_csv(&text);
    }

    #[test]
    fn structured_import_never_panics_and_round_trips(rows in proptest::collection::vec("[A-Za-z0-9:|, \"-]{0,30}", 0..6)) {
        let text = format!("employee,name,card,fingerprint,pin\n{}", rows.join("\n"));
        if let Ok(roster) = Roster::parse_csv(&text) {
            proptest::prop_assert_eq!(Roster::parse_csv(&roster.to_csv()).ok(), Some(roster));
        }
    }
}
