//! The client-message decoders never panic: whatever bytes a client sends
//! are framed and decoded exactly as the proxy does (startup packet,
//! CancelRequest, then tagged messages; Query, Parse, Bind, Describe,
//! Close and SASL bodies decoded, a Query's statement shape taken), and
//! either decode or fail with an error.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rowgate::frontend::{autoprep, messages, startup};
use rowgate::wire;

fuzz_target!(|data: &[u8]| {
    // The first, untagged message: a StartupMessage body or a cancel key.
    let _ = startup::parse_startup(data, 0);
    let _ = messages::cancel(data);

    // Then tagged messages, framed with a small cap so that the length
    // checks are reached too.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::try_frame(&mut buf, 4096) {
        let body = frame.body();
        match frame.tag() {
            b'Q' => {
                if let Ok(Ok(sql)) = messages::query(body) {
                    // The shape of every simple-query statement is taken.
                    if let Some(shape) = autoprep::shape(sql) {
                        assert_eq!(shape.values.len(), autoprep::param_types(&shape).len());
                    }
                }
            }
            b'P' => {
                if let Ok(parse) = messages::parse(body) {
                    assert!(parse.types.len() >= 2);
                }
            }
            b'p' => {
                let _ = messages::sasl_initial(body);
            }
            b'B' => {
                let _ = messages::bind(body);
            }
            b'D' | b'C' => {
                let _ = messages::target(body);
            }
            _ => {}
        }
    }
});
