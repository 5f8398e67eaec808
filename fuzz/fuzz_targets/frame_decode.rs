//! Fuzzes the control-plane frame decoder: any bytes must decode to a message or a
//! typed `FrameError`, never a panic; a decoded message must re-encode and decode
//! to itself; a deployment's vertex information (an archive inside `DeployTask`)
//! must read or fail typed too. Run with `cargo fuzz run frame_decode` (nightly).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_control::protocol;

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, used)) = protocol::decode(data, 1 << 20) {
        assert!(used <= data.len());
        let again = protocol::encode(&msg).expect("a decoded message encodes");
        let (back, _) = protocol::decode(&again, 1 << 20).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
        if let protocol::Message::DeployTask(d) = msg {
            let _ = d.descriptor();
        }
    }
    if let Ok(info) = protocol::TaskInformation::from_archive(data) {
        let again = info.archive().expect("vertex information that was read archives again");
        assert_eq!(protocol::TaskInformation::from_archive(&again).expect("and reads back"), info);
    }
});
