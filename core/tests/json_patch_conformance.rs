//! RFC 6902 conformance: every record of the public json-patch-tests data (vendored in
//! `core/tests/data/json-patch-tests/`, with its licence and origin) must pass through the
//! core's patch function: records with `expected` apply and give it, records with `error` fail and
//! leave the document unchanged.

use std::path::PathBuf;

use serde_json::Value;
use stateline_core::json;

fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("JSON_PATCH_TESTS") {
        return d.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/json-patch-tests")
}

fn run(file: &str) -> (usize, usize) {
    let path = data_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (set JSON_PATCH_TESTS to the folder holding tests.json)",
            path.display()
        )
    });
    let records: Vec<Value> = serde_json::from_str(&text).expect("conformance file is JSON");
    let (mut applied, mut refused) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        if r.get("disabled").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let comment = r.get("comment").and_then(Value::as_str).unwrap_or("");
        let doc = r["doc"].clone();
        let result = json::parse_patch(r["patch"].clone()).and_then(|p| json::json_patch(&doc, &p));
        if let Some(expected) = r.get("expected") {
            assert_eq!(
                result.as_ref(),
                Ok(expected),
                "{file} #{i} ({comment}) should apply"
            );
            applied += 1;
        } else if r.get("error").is_some() {
            assert!(
                result.is_err(),
                "{file} #{i} ({comment}) should fail, gave {result:?}"
            );
            refused += 1;
        }
    }
    (applied, refused)
}

#[test]
fn tests_json() {
    let (a, e) = run("tests.json");
    assert!(a >= 60 && e >= 25, "ran {a} apply and {e} error cases");
}

#[test]
fn spec_tests_json() {
    let (a, e) = run("spec_tests.json");
    assert!(a >= 10 && e >= 3, "ran {a} apply and {e} error cases");
}
