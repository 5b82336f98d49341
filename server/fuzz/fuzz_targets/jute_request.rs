//! Any bytes, under any opcode, must decode to a request or an error — never a panic, never
//! an allocation beyond what the frame could hold. The first two bytes pick the opcode.
#![no_main]

use baton_server::zk::proto::{decode_request, ConnectRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [a, b, rest @ ..] = data {
        let op = i16::from_be_bytes([*a, *b]) as i32;
        let _ = decode_request(op, rest);
    }
    let _ = ConnectRequest::decode(data);
});
