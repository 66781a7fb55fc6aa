//! Hostile bytes as a chat fine-tuning dataset: validation returns a typed error or statistics,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = soramai_core::datasets::validate_chat_jsonl(data, 4096);
});
