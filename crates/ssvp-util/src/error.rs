//! Error messages with their causes.

/// `err` and each of its sources, joined by `": "` (what `anyhow` prints with `{:#}`), so that
/// a typed error carried across a crate boundary keeps its whole story in one line.
pub fn message_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        // A wrapper that prints its source (`#[error(transparent)]`, or "{context}: {source}")
        // would repeat it.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("loading weights")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_follow_the_message_once() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
        assert_eq!(message_chain(&e), "loading weights: no such file");
        let plain = std::io::Error::other("disk full");
        assert_eq!(message_chain(&plain), "disk full");
    }
}
