//! Layer compression: what a new layer is written with, and reading any layer back.
//!
//! gzip is what every registry and daemon takes. zstd (level 3, two worker threads:
//! deterministic for a fixed worker count) compresses faster and smaller and inflates
//! about twice as fast; Docker before 23 cannot pull it. Uncompressed layers are for
//! local use, where bytes are cheaper than CPU.

use std::io::{self, Read, Write};

use berth_oci::media_type;

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`).
    #[default]
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
    /// None (`application/vnd.oci.image.layer.v1.tar`; the digest is the diff_id).
    Uncompressed,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
            Compression::Uncompressed => media_type::OCI_LAYER,
        }
    }

    /// The compression of a layer of `media_type` (OCI or Docker), `None` for a type
    /// that is not a layer berth can read (a foreign or encrypted layer).
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        let t = media_type.split(';').next().unwrap_or("").trim();
        if t.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if t.ends_with("zstd") {
            Some(Compression::Zstd)
        } else if t == media_type::OCI_LAYER || t == media_type::DOCKER_LAYER {
            Some(Compression::Uncompressed)
        } else {
            None
        }
    }

    /// A reader of the uncompressed tar from `r`, a layer compressed this way.
    pub fn reader<'a, R: Read + Send + 'a>(self, r: R) -> io::Result<Box<dyn Read + Send + 'a>> {
        let r = io::BufReader::with_capacity(1 << 20, r);
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Compression::Uncompressed => Box::new(r),
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" => Ok(Compression::Uncompressed),
            _ => Err(format!(
                "unknown compression {s:?}: use gzip, zstd or uncompressed"
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Uncompressed => "uncompressed",
        })
    }
}

/// A writer compressing into `W`.
pub(crate) enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    /// `gzip_level`: 0-9 for gzip (default 2, see `DiffOptions`).
    pub(crate) fn new(c: Compression, out: W, gzip_level: Option<u32>) -> io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(gzip_level.unwrap_or(2)),
            )),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, 3)?;
                e.multithread(2)?;
                Encoder::Zstd(e)
            }
            Compression::Uncompressed => Encoder::Plain(out),
        })
    }

    /// Write the trailer; returns the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// Re-encode the layer read from `r` (compressed as `from`) as `to` into `out`.
pub fn recompress(
    from: Compression,
    to: Compression,
    r: impl Read + Send,
    out: impl Write,
) -> io::Result<()> {
    let mut src = from.reader(r)?;
    let mut enc = Encoder::new(to, out, None)?;
    io::copy(&mut src, &mut enc)?;
    enc.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            let mut enc = Encoder::new(c, Vec::new(), None).unwrap();
            enc.write_all(&data).unwrap();
            let bytes = enc.finish().unwrap();
            let mut back = Vec::new();
            c.reader(bytes.as_slice())
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c}");
            assert_eq!(Compression::of_media_type(c.media_type()), Some(c));
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
            let mut other = Vec::new();
            recompress(c, Compression::Zstd, bytes.as_slice(), &mut other).unwrap();
            let mut again = Vec::new();
            Compression::Zstd
                .reader(other.as_slice())
                .unwrap()
                .read_to_end(&mut again)
                .unwrap();
            assert_eq!(again, data);
        }
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::of_media_type("application/x-unknown"), None);
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar"),
            None
        );
        assert!("lz4".parse::<Compression>().is_err());
    }
}
