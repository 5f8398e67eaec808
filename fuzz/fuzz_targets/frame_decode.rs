//! Fuzzes the control-plane frame decoder: any bytes must decode to a message or a
//! typed `FrameError`, never a panic; a decoded message must re-encode and decode
//! to itself; a deployment's vertex information (an archive inside `DeployTask`)
//! must read or fail typed too (`protocol::check_decoder`). Run with
//! `cargo +nightly fuzz run frame_decode fuzz/seeds/frame_decode` (nightly); CI
//! builds this crate on stable and runs the check over the seeds as a test.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_control::protocol;

fuzz_target!(|data: &[u8]| protocol::check_decoder(data));
