//! The settings pages' session and state decoders (SPEC B9) on arbitrary input.
//!
//! Input: any bytes. Properties: nothing panics; a value this fuzzer did not seal is never
//! accepted, whether it is the input itself (as text) or a sealed value with the input XORed
//! into it; a value sealed under the same key and label still opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::listeners::settings::seal::{
    self, LoginState, Refused, Sealer, Session, SESSION_LABEL, STATE_LABEL,
};
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let sessions = Sealer::new(SESSION_LABEL, &[[7; 32], [9; 32]]);
    let states = Sealer::new(STATE_LABEL, &[[7; 32]]);

    let text = String::from_utf8_lossy(data);
    assert!(sessions.open::<Session>(&text, now).is_err());
    assert!(states.open::<LoginState>(&text, now).is_err());

    let session = Session {
        eshop_id: 222651,
        email: String::from_utf8_lossy(data).into_owned(),
        name: "Owner".into(),
        language: "cs".into(),
        project_url: "https://shop.example/".into(),
        expires: seal::unix(now) + 60,
    };
    let sealed = sessions.seal(&session);
    assert_eq!(sessions.open::<Session>(&sealed, now), Ok(session));
    assert!(states.open::<LoginState>(&sealed, now).is_err(), "a session never opens as a state");

    // Flip bits of the sealed text wherever the input says: any change is refused.
    let mut bytes = sealed.clone().into_bytes();
    for (i, d) in data.iter().enumerate() {
        let at = i % bytes.len();
        bytes[at] ^= d;
    }
    if let Ok(altered) = String::from_utf8(bytes) {
        if altered != sealed {
            // Base64 may decode two texts to the same bytes (unused trailing bits): then it is
            // the same sealed value and may open; anything else must not.
            let same = base64_same(&altered, &sealed);
            let opened = sessions.open::<Session>(&altered, now);
            assert!(same || opened == Err(Refused::Invalid), "an altered session opened");
        }
    }
});

fn base64_same(a: &str, b: &str) -> bool {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    matches!((e.decode(a), e.decode(b)), (Ok(x), Ok(y)) if x == y)
}
