#![no_main]

libfuzzer_sys::fuzz_target!(
    init: router_fuzz::seeds::write_if_asked("proto_decode"),
    |data: &[u8]| router_fuzz::proto_decode::run(data)
);
