#![no_main]

libfuzzer_sys::fuzz_target!(
    init: router_fuzz::seeds::write_if_asked("log_entry"),
    |data: &[u8]| router_fuzz::log_entry::run(data)
);
