//! The IDX format of MNIST-style data (LeCun et al.), raw or gzip-compressed.
//!
//! Header: two zero bytes, a type code (`0x08` = unsigned byte, the only type these datasets
//! use), the number of dimensions, then each dimension as a big-endian `u32`; then the data.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

const UBYTE: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with `ndim` dimensions; gzip is detected by its magic.
pub fn read_idx(path: &Path, ndim: usize) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(path, &bytes, ndim)
}

/// Parses the bytes of an uncompressed IDX file (see [`read_idx`]); `path` is for messages.
pub fn parse_idx(path: &Path, bytes: &[u8], ndim: usize) -> Result<IdxArray> {
    let expected_magic = 0x0800 | ndim as u32;
    let header_len = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        let what = if bytes[0] == 0 && bytes[1] == 0 && bytes[2] != UBYTE {
            format!(
                "0x{expected_magic:08x} (IDX of unsigned bytes; type code 0x{:02x} is not supported)",
                bytes[2]
            )
        } else {
            format!("0x{expected_magic:08x} (IDX, unsigned bytes, {ndim} dimensions)")
        };
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: what,
        });
    }
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("dimensions {dims:?} overflow")))?;
    let expected = (header_len + count) as u64;
    let found = bytes.len() as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DataError::Oversized {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Encodes an IDX file of unsigned bytes (used by tests and the digits conversion check).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, UBYTE, dims.len() as u8]);
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Reads an images file (`[N, H, W]`) and a labels file (`[N]`) of the same length, checking
/// every label against `num_classes`.
pub fn read_idx_pair(
    images: &Path,
    labels: &Path,
    num_classes: usize,
) -> Result<(IdxArray, Vec<u16>)> {
    let img = read_idx(images, 3)?;
    let lab = read_idx(labels, 1)?;
    check_pair(images, labels, &img, &lab, num_classes)
}

pub(crate) fn check_pair(
    images: &Path,
    labels: &Path,
    img: &IdxArray,
    lab: &IdxArray,
    num_classes: usize,
) -> Result<(IdxArray, Vec<u16>)> {
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::format(
            labels,
            format!(
                "{} labels, but {} has {} images",
                lab.dims[0],
                images.display(),
                img.dims[0]
            ),
        ));
    }
    let labels_u16 = check_labels(labels, &lab.data, num_classes)?;
    Ok((img.clone(), labels_u16))
}

pub(crate) fn check_labels(path: &Path, raw: &[u8], num_classes: usize) -> Result<Vec<u16>> {
    raw.iter()
        .enumerate()
        .map(|(i, &l)| {
            if usize::from(l) < num_classes {
                Ok(u16::from(l))
            } else {
                Err(DataError::LabelOutOfRange {
                    path: PathBuf::from(path),
                    index: i,
                    label: u64::from(l),
                    num_classes,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let enc = encode_idx(&[2, 3, 4], &data);
        // Header by hand: 00 00 08 03, then 2, 3, 4 as big-endian u32.
        assert_eq!(
            &enc[..16],
            &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]
        );
        let raw = write(dir.path(), "a-idx3-ubyte", &enc);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&enc).unwrap();
        let gzp = write(dir.path(), "a-idx3-ubyte.gz", &gz.finish().unwrap());
        for p in [raw, gzp] {
            let arr = read_idx(&p, 3).unwrap();
            assert_eq!(arr.dims, vec![2, 3, 4]);
            assert_eq!(arr.data, data);
        }
    }

    #[test]
    fn wrong_magic_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "labels", &encode_idx(&[3], &[0, 1, 2]));
        let err = read_idx(&p, 3).unwrap_err();
        assert!(
            matches!(err, DataError::BadMagic { found: 0x801, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("labels") && msg.contains("0x00000803"),
            "{msg}"
        );
        // A float IDX (type 0x0d) is refused with the type named.
        let p = write(
            dir.path(),
            "floats",
            &[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        );
        let msg = read_idx(&p, 1).unwrap_err().to_string();
        assert!(msg.contains("type code 0x0d"), "{msg}");
    }

    #[test]
    fn truncated_and_oversized() {
        let dir = tempfile::tempdir().unwrap();
        let mut enc = encode_idx(&[2, 2, 2], &[1; 8]);
        enc.pop();
        let p = write(dir.path(), "short", &enc);
        let err = read_idx(&p, 3).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 24,
                    found: 23,
                    ..
                }
            ),
            "{err}"
        );
        let p = write(dir.path(), "header", &[0, 0, 8, 3, 0, 0]);
        assert!(matches!(
            read_idx(&p, 3).unwrap_err(),
            DataError::Truncated { expected: 16, .. }
        ));
        let mut enc = encode_idx(&[2, 2, 2], &[1; 8]);
        enc.push(0);
        let p = write(dir.path(), "long", &enc);
        assert!(matches!(
            read_idx(&p, 3).unwrap_err(),
            DataError::Oversized {
                expected: 24,
                found: 25,
                ..
            }
        ));
        let p = write(dir.path(), "bad.gz", &[0x1f, 0x8b, 1, 2, 3]);
        assert!(
            read_idx(&p, 3)
                .unwrap_err()
                .to_string()
                .contains("corrupt gzip")
        );
        let missing = dir.path().join("nope");
        assert!(matches!(
            read_idx(&missing, 3).unwrap_err(),
            DataError::Io { .. }
        ));
    }

    #[test]
    fn pair_checks_labels_and_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = write(dir.path(), "i", &encode_idx(&[3, 1, 1], &[0, 1, 2]));
        let labs = write(dir.path(), "l", &encode_idx(&[3], &[0, 9, 10]));
        let err = read_idx_pair(&imgs, &labs, 10).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 2,
                    label: 10,
                    num_classes: 10,
                    ..
                }
            ),
            "{err}"
        );
        let labs = write(dir.path(), "l2", &encode_idx(&[2], &[0, 1]));
        let msg = read_idx_pair(&imgs, &labs, 10).unwrap_err().to_string();
        assert!(
            msg.contains("2 labels") && msg.contains("3 images"),
            "{msg}"
        );
    }
}
