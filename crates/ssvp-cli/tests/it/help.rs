//! The help a first run reads: `ssvp --help` lists the main job first, `detect --help` has
//! examples.

use crate::common;

use common::{ok, ssvp};

#[test]
fn help_lists_the_main_job_first_and_detect_shows_examples() {
    let out = ssvp(&["--help"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands[..4],
        ["detect", "calibrate", "serve", "demo"],
        "{text}"
    );

    for flag in ["-h", "--help"] {
        let out = ssvp(&["detect", flag]);
        ok(&out);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Examples:"), "{text}");
        let examples = text
            .lines()
            .filter(|l| l.trim_start().starts_with("ssvp detect --"))
            .count();
        assert_eq!(examples, 3, "{text}");
    }
}
