//! The check that lets a write store a request body's bytes as they came (`json::canonical`):
//! whatever it accepts must be exactly what parsing the body and encoding the tree gives, at the
//! depth it says, so that no value is ever stored other than the parser would have stored it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stateline_core::json::{canonical, count_nodes, depth, encode, parse_limited, MAX_NODES};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits, so the fuzzer reaches both sides of them.
    let Some((&limits, body)) = data.split_first() else {
        return;
    };
    let max_depth = usize::from(limits % 16) + 1;
    let max_nodes = if limits >= 128 { 32 } else { MAX_NODES };
    let Some(d) = canonical(body, max_depth, max_nodes) else {
        return;
    };
    let v = parse_limited(body, max_depth, max_nodes).expect("a canonical body parses");
    assert_eq!(encode(&v), body, "a canonical body encodes to other bytes");
    assert_eq!(depth(&v), d, "canonical says another depth");
    assert!(count_nodes(body, max_nodes) <= max_nodes);
});
