//! Embeds the browser client's single-file script (`wasm-client/dist/stateline.js`, made by
//! `npm run build:client`) when it has been built. A plain `cargo build` on a fresh clone must
//! still work without Node or the wasm tools, so when the file is missing nothing is embedded
//! and the server answers `/_client.js` with 503 and how to build it.

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-client");
    let script = dir.join("dist/stateline.js");
    // Watching the folder (scanned recursively) catches the script appearing, changing or going.
    println!("cargo:rerun-if-changed={}", dir.display());
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client_script.rs");
    let code = match std::fs::read(&script) {
        Ok(bytes) => {
            let copy = out.with_file_name("stateline.js");
            std::fs::write(&copy, &bytes).expect("OUT_DIR is writable");
            format!(
                "/// The built client script.\npub const SCRIPT: Option<&[u8]> = Some(include_bytes!({copy:?}));\n/// Its entity tag (FNV-1a of the bytes).\npub const ETAG: &str = \"\\\"{:016x}\\\"\";\n",
                fnv1a(&bytes)
            )
        }
        Err(_) => "/// Not built.\npub const SCRIPT: Option<&[u8]> = None;\n/// No tag.\npub const ETAG: &str = \"\";\n".to_string(),
    };
    std::fs::write(out, code).expect("OUT_DIR is writable");
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}
