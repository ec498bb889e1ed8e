//! The webhook verifier and body parser on arbitrary keys, bodies and signature headers.
//!
//! Input: the signature key line, the presented signature line, then the body (the rest, any
//! bytes). Properties: nothing panics; a body signed with `sign` always verifies (in either hex
//! case, with surrounding whitespace); a signature for another body or key does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::listeners::public;
use shoptet_proxy::shoptet::signature;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let key = parts.next().unwrap_or_default();
    let presented = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    if let Ok(presented) = std::str::from_utf8(presented) {
        let _ = signature::verify(key, body, presented);
    }
    let _ = public::parse_webhook_head(body);

    let good = signature::sign(key, body);
    assert_eq!(good.len(), 40);
    assert!(signature::verify(key, body, &good));
    assert!(signature::verify(key, body, &good.to_uppercase()));
    assert!(signature::verify(key, body, &format!(" {good}\t")));

    let mut other_body = body.to_vec();
    other_body.push(b'x');
    assert!(!signature::verify(key, &other_body, &good));
    let mut other_key = key.to_vec();
    other_key.push(b'k');
    // Keys longer than the SHA-1 block are hashed first, so `key` and `key + "k"` still differ.
    assert!(!signature::verify(&other_key, body, &good));
});
