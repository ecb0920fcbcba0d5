//! The agent's SIGBUS handler: a read through the mapping of an image file that shrank
//! ends the process with exit 1 and a message naming the disk and the byte, instead of a
//! crash without a word. The test runs itself again as a child process (this binary,
//! `WL_SIGBUS_CHILD` set) that maps a file, truncates it and reads past the new end.

use std::process::Command;

use replication::local::mapped::{Mapping, install_sigbus_handler};

const NAME: &str = "a_read_past_the_end_of_a_shrunken_mapped_image_names_the_disk_and_exits_1";

#[test]
fn a_read_past_the_end_of_a_shrunken_mapped_image_names_the_disk_and_exits_1() {
    let path = std::env::temp_dir().join(format!("wl-sigbus-{}.img", std::process::id()));
    if let Some(child) = std::env::var_os("WL_SIGBUS_CHILD") {
        let path = std::path::PathBuf::from(child);
        install_sigbus_handler();
        std::fs::write(&path, vec![1u8; 65536]).expect("the image");
        let file = std::fs::File::open(&path).expect("open");
        let map = Mapping::of(&file, 65536, &path.display().to_string()).expect("mapped");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open for writing")
            .set_len(0)
            .expect("truncate");
        std::hint::black_box(map.bytes(8192, 1)[0]);
        std::process::exit(3);
    }
    let out = Command::new(std::env::current_exe().expect("this test's binary"))
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env("WL_SIGBUS_CHILD", &path)
        .output()
        .expect("the child runs");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1, stderr: {stderr}");
    let expected = format!(
        "wavelift-agent: cannot read the disk {} at byte 8192: it shrank, or its storage failed, while it was replicated (SIGBUS)",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}
