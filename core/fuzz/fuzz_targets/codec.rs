//! The storage decoders (`codec::decode_entry`, `codec::decode_log`, the receipts of
//! idempotent writes): the bytes of a redb file or
//! of the edge's SQLite blobs, which a crash, a bad disk or an older build may have left in any
//! state. A corrupt record must be an error, never a panic; and what decodes must encode back to
//! what it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stateline_core::codec::{decode_entry, decode_log, encode_entry, encode_log};
use stateline_core::store::{JsonText, MaybeTime};
use stateline_core::{Change, Entry};

fuzz_target!(|data: &[u8]| {
    // A stored receipt of an idempotent write: an error or a receipt, never a panic.
    let _ = stateline_core::receipts::Receipts::restore(Default::default(), [(7, data.to_vec())]);
    if let Ok(e) = decode_entry(data) {
        // Every field is kept as stored (the JSON value's bytes too): the same bytes come back.
        let mut out = Vec::new();
        encode_entry(&mut out, &e);
        assert_eq!(out, data, "an entry re-encodes to other bytes");
        // The JSON was checked without building a tree: the tree built later from the same
        // bytes must parse (a debug assertion in `Tree::get`).
        let _ = e.data();
    }
    if let Ok((seq, key, revision, prev_created, entry)) = decode_log(7, data) {
        assert_eq!(seq, 7);
        // Only `created` of the previous entry is stored.
        let prev = prev_created.map(|created| Entry {
            created,
            updated: 0,
            revision: 0,
            seq: 0,
            expires: MaybeTime::NONE,
            json: JsonText::from(&[][..]),
            tree: Default::default(),
        });
        let change = Change {
            seq,
            key: key.clone(),
            revision,
            entry: entry.clone(),
            prev,
            patch: None,
        };
        // The flag bytes are normalised (any non-zero byte reads as true), so compare decoded.
        let again = decode_log(seq, &encode_log(&change)).expect("a re-encoded record decodes");
        assert_eq!(again, (seq, key, revision, prev_created, entry));
    }
});
