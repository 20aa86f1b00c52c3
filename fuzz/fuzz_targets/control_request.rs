//! `baton_supervisor::control::parse_request` on arbitrary bytes: the
//! line any local client of baton's user may send to its control socket.
//! It must never panic; whatever it accepts is a version-1 request that
//! encodes and parses back to itself.
#![no_main]

use baton_supervisor::control::{PROTOCOL_VERSION, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        assert_eq!(req.v, PROTOCOL_VERSION);
        let line = serde_json::to_vec(&req).expect("a parsed request encodes");
        assert_eq!(parse_request(&line), Ok(req));
    }
});
