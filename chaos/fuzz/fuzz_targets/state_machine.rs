#![no_main]

libfuzzer_sys::fuzz_target!(
    init: router_fuzz::seeds::write_if_asked("state_machine"),
    |data: &[u8]| router_fuzz::state_machine::run(data)
);
