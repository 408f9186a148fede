#![no_main]

libfuzzer_sys::fuzz_target!(
    init: router_fuzz::seeds::write_if_asked("config"),
    |data: &[u8]| router_fuzz::config::run(data)
);
