//! The app's response head, as hostile as it likes: never a panic, never more taken than given,
//! and a head that parses takes the same bytes whatever follows it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::upstream::framing::{parse_head, Framing};

fuzz_target!(|data: &[u8]| {
    let head_request = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(Some((head, n))) = parse_head(data, head_request) {
        assert!(n <= data.len());
        // the same head followed by anything parses the same
        let mut more = data[..n].to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let (again, m) = parse_head(&more, head_request).unwrap().unwrap();
        assert_eq!((again.status, again.framing, m), (head.status, head.framing, n));
        if head_request || head.status.as_u16() == 204 || head.status.as_u16() == 304 {
            assert_eq!(head.framing, Framing::Empty);
        }
        if head.framing == Framing::UntilClose {
            assert!(!head.reusable);
        }
    }
});
