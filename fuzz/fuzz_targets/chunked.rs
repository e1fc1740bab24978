//! A chunked body, as hostile as it likes, split at a point the input chooses: never a panic,
//! and the same data, trailers, bytes used and verdict whole as split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::upstream::framing::{ChunkedDecoder, Decoded};

/// (data, trailer count, bytes used) or the error, from `body` given in two pieces.
fn decode(body: &[u8], cut: usize) -> Result<(Vec<u8>, usize, usize), String> {
    let mut d = ChunkedDecoder::new();
    let (mut data, mut used, mut pending) = (Vec::new(), 0, Vec::new());
    for piece in [&body[..cut], &body[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            let (n, got) = d.decode(&pending).map_err(|e| e.to_string())?;
            assert!(n <= pending.len());
            used += n;
            match got {
                Decoded::Data(b) => data.extend_from_slice(b),
                Decoded::More => {
                    pending.drain(..n);
                    break;
                }
                Decoded::End(t) => return Ok((data, t.len(), used)),
            }
            pending.drain(..n);
        }
    }
    Err("incomplete".into())
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, body)) = data.split_first() else { return };
    let cut = usize::from(c) % (body.len() + 1);
    let whole = decode(body, body.len());
    let split = decode(body, cut);
    assert_eq!(whole.is_ok(), split.is_ok(), "{whole:?} vs {split:?}");
    if let (Ok(w), Ok(s)) = (&whole, &split) {
        assert_eq!(w, s);
    }
});
