//! gzip with a fixed header, so the compressed bytes depend only on the input.
//!
//! The header carries no file name, no comment, mtime 0 and OS byte 3 (Unix,
//! what `gzip -n` writes on Linux). The deflate stream comes from flate2's
//! pure-Rust `miniz_oxide` backend at the best level; its output depends on
//! the input and the locked crate version only, never on the host CPU.

use std::io::{self, Write};

use flate2::{Compression, GzBuilder};

/// OS byte written in the header (3 = Unix).
pub const GZIP_OS_UNIX: u8 = 3;

/// Compresses `data` into a gzip member with the fixed header.
pub fn compress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(Vec::with_capacity(data.len() / 2), Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn header_is_fixed_and_round_trips() {
        let data = b"hello initramfs ".repeat(1000);
        let gz = compress(&data).unwrap();
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "gzip magic + deflate");
        assert_eq!(gz[3], 0, "no FNAME/FCOMMENT/FEXTRA flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], GZIP_OS_UNIX);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(compress(&data).unwrap(), gz, "same input, same bytes");
    }
}
