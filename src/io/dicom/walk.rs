//! A bounds-checked walk over a DICOM file's element headers, before dicom-rs parses it.
//!
//! dicom-rs reserves and zero-fills a value's declared length before it reads the value, so a
//! 674-byte file that declares a 4 GB element costs 4 GB of memory before it is refused. This
//! walk reads element headers only, checks every declared length against the bytes that
//! really follow (in the file, its enclosing sequence or item), and refuses what dicom-rs would
//! misread (a data set in another VR encoding than its transfer syntax says). On the way it
//! picks up the top-level SeriesInstanceUID, so a damaged file can still be named as a member
//! of its series, and the extent of the Pixel Data, so frame counts can be checked against it.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use std::io::Read;

/// Sequences nest deeper than this only in hostile files.
const MAX_DEPTH: usize = 32;
/// A deflated data set may inflate to at most this many bytes.
const MAX_INFLATED: u64 = 1 << 30;

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
const TRANSFER_SYNTAX_UID: Tag = Tag(0x0002, 0x0010);
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Where the Pixel Data of a file is and how big it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PixelExtent {
    /// Native (uncompressed) values: `len` bytes.
    Native { len: u64 },
    /// Encapsulated: `items` items (the Basic Offset Table first) holding `bytes` in all.
    Encapsulated { items: usize, bytes: u64 },
}

/// What the walk learned about a well-formed file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Walked {
    /// The file has a "DICM" file meta group.
    pub has_meta: bool,
    /// Offset of the meta group ("DICM" + 4) or of the bare data set.
    pub start: usize,
    pub transfer_syntax: Option<String>,
    pub series_uid: Option<String>,
    pub pixel_data: Option<PixelExtent>,
}

/// Why a file cannot be read, with whatever SeriesInstanceUID was read before the problem.
#[derive(Clone, Debug)]
pub(crate) struct WalkError {
    pub series_uid: Option<String>,
    pub kind: WalkErrorKind,
}

#[derive(Clone, Debug)]
pub(crate) enum WalkErrorKind {
    /// No DICOM preamble/magic and not a bare data set.
    NotDicom,
    /// A declared length runs past the end of the file (or of its enclosing value).
    Truncated(String),
    /// Structurally invalid (bad VR, delimiters out of place, nesting too deep).
    Malformed(String),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            WalkErrorKind::NotDicom => {
                write!(f, "not DICOM (no \"DICM\" magic and not a bare data set)")
            }
            WalkErrorKind::Truncated(d) => write!(f, "truncated DICOM file: {d}"),
            WalkErrorKind::Malformed(d) => write!(f, "malformed DICOM file: {d}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

const EXPLICIT_LE: Encoding = Encoding {
    explicit: true,
    big_endian: false,
};
const IMPLICIT_LE: Encoding = Encoding {
    explicit: false,
    big_endian: false,
};

/// Walk `bytes` (a whole file). `Ok` means every length is in bounds and dicom-rs may parse
/// the file without reserving more than its size.
pub(crate) fn walk(bytes: &[u8]) -> Result<Walked, WalkError> {
    let mut w = Walker {
        series_uid: None,
        pixel_data: None,
    };
    let mut out = Walked::default();
    let fail = |w: &Walker, kind| WalkError {
        series_uid: w.series_uid.clone(),
        kind,
    };
    let (start, has_meta) = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        (132, true)
    } else if bytes.len() >= 4 && &bytes[..4] == b"DICM" {
        (4, true)
    } else if bytes.len() >= 8 && looks_like_bare_dataset(bytes) {
        (0, false)
    } else {
        return Err(fail(&w, WalkErrorKind::NotDicom));
    };
    out.has_meta = has_meta;
    out.start = start;

    let mut pos = start;
    if has_meta {
        // The meta group is always explicit VR little endian. It ends where dicom-rs ends it:
        // after FileMetaInformationGroupLength (0002,0000) bytes of whole elements, whatever
        // their group; without that element, where group 2 ends.
        let mut cur = Cursor {
            bytes,
            pos,
            end: bytes.len(),
        };
        let mut group_end = None;
        if cur.remaining() >= 12 && bytes[pos..pos + 8] == [2, 0, 0, 0, b'U', b'L', 4, 0] {
            let len = u32::from_le_bytes([
                bytes[pos + 8],
                bytes[pos + 9],
                bytes[pos + 10],
                bytes[pos + 11],
            ]);
            cur.pos += 12;
            group_end = Some(cur.pos.saturating_add(len as usize));
        }
        let in_meta = |cur: &Cursor<'_>| match group_end {
            Some(end) => cur.pos < end,
            None => {
                cur.remaining() >= 4
                    && u16::from_le_bytes([bytes[cur.pos], bytes[cur.pos + 1]]) == 2
            }
        };
        while in_meta(&cur) {
            let h = cur.header(EXPLICIT_LE).map_err(|k| fail(&w, k))?;
            if h.len == UNDEFINED {
                return Err(fail(
                    &w,
                    WalkErrorKind::Malformed(format!(
                        "file meta element {} has an undefined length",
                        tag_str(h.tag)
                    )),
                ));
            }
            let value = cur.take(h.len, h.tag).map_err(|k| fail(&w, k))?;
            if h.tag == TRANSFER_SYNTAX_UID {
                out.transfer_syntax = Some(clean_str(value));
            }
        }
        pos = cur.pos;
    }

    let declared = match out.transfer_syntax.as_deref() {
        Some("1.2.840.10008.1.2") => Some(IMPLICIT_LE),
        Some("1.2.840.10008.1.2.2") => Some(Encoding {
            explicit: true,
            big_endian: true,
        }),
        Some(_) => Some(EXPLICIT_LE),
        None => None,
    };
    let deflated = out.transfer_syntax.as_deref() == Some("1.2.840.10008.1.2.1.99");
    let inflated;
    // A deflate stream cut short: what did inflate is still walked, for the series it names.
    let mut inflate_error = None;
    let (data, data_start): (&[u8], usize) = if deflated {
        let mut buf = Vec::new();
        let mut dec = flate2::read::DeflateDecoder::new(&bytes[pos..]).take(MAX_INFLATED + 1);
        if let Err(e) = dec.read_to_end(&mut buf) {
            inflate_error = Some(e.to_string());
        }
        if buf.len() as u64 > MAX_INFLATED {
            return Err(fail(
                &w,
                WalkErrorKind::Malformed(format!(
                    "the deflated data set inflates to more than {} MiB",
                    MAX_INFLATED >> 20
                )),
            ));
        }
        inflated = buf;
        (&inflated[..], 0)
    } else {
        (bytes, pos)
    };

    // What the bytes say: an explicit VR data set has two upper-case letters after the tag.
    let looks_explicit = data.len() >= data_start + 6
        && VR::from_binary([data[data_start + 4], data[data_start + 5]]).is_some();
    let enc = match declared {
        Some(e) if data.len() > data_start && e.explicit != looks_explicit => {
            let (said, found) = if e.explicit {
                ("explicit", "implicit")
            } else {
                ("implicit", "explicit")
            };
            return Err(fail(
                &w,
                WalkErrorKind::Malformed(format!(
                    "the transfer syntax {} says {said} VR, but the data set is encoded in {found} VR",
                    out.transfer_syntax.as_deref().unwrap_or_default()
                )),
            ));
        }
        Some(e) => e,
        None if looks_explicit => EXPLICIT_LE,
        None => IMPLICIT_LE,
    };
    let mut cur = Cursor {
        bytes: data,
        pos: data_start,
        end: data.len(),
    };
    let walked = w.elements(&mut cur, enc, 0, false);
    if let Some(e) = inflate_error {
        return Err(fail(
            &w,
            WalkErrorKind::Truncated(format!("the deflated data set ends early ({e})")),
        ));
    }
    walked.map_err(|k| fail(&w, k))?;
    out.series_uid = w.series_uid;
    out.pixel_data = w.pixel_data;
    Ok(out)
}

/// Files with no preamble and no meta group start with a little-endian group 0x0008 element
/// (or 0x0002 without its "DICM").
pub(crate) fn looks_like_bare_dataset(head: &[u8]) -> bool {
    head.len() >= 4 && (head[0] == 0x08 || head[0] == 0x02) && head[1] == 0x00 && head[3] == 0x00
}

struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn u16(&self, at: usize, be: bool) -> u16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, at: usize, be: bool) -> u32 {
        let b = [
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ];
        if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), WalkErrorKind> {
        if self.remaining() < n {
            return Err(WalkErrorKind::Truncated(format!(
                "{what} at byte {} needs {n} bytes, {} left",
                self.pos,
                self.remaining()
            )));
        }
        Ok(())
    }

    fn header(&mut self, enc: Encoding) -> Result<Header, WalkErrorKind> {
        self.need(8, "an element header")?;
        let be = enc.big_endian;
        let tag = Tag(self.u16(self.pos, be), self.u16(self.pos + 2, be));
        if tag.group() == 0xFFFE || !enc.explicit {
            let len = self.u32(self.pos + 4, be);
            self.pos += 8;
            return Ok(Header { tag, vr: None, len });
        }
        let code = [self.bytes[self.pos + 4], self.bytes[self.pos + 5]];
        let vr = VR::from_binary(code).ok_or_else(|| {
            WalkErrorKind::Malformed(format!(
                "element {} at byte {} has an invalid VR {:?}",
                tag_str(tag),
                self.pos,
                String::from_utf8_lossy(&code)
            ))
        })?;
        let long = matches!(
            vr,
            VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::UC
                | VR::UN
                | VR::UR
                | VR::UT
                | VR::SV
                | VR::UV
        );
        if long {
            self.need(12, "an element header")?;
            let len = self.u32(self.pos + 8, be);
            self.pos += 12;
            Ok(Header {
                tag,
                vr: Some(vr),
                len,
            })
        } else {
            let len = u32::from(self.u16(self.pos + 6, be));
            self.pos += 8;
            Ok(Header {
                tag,
                vr: Some(vr),
                len,
            })
        }
    }

    /// A cursor over the next `len` bytes (a defined-length sequence or item), which this
    /// one skips.
    fn sub(&mut self, len: u32, tag: Tag) -> Result<Cursor<'a>, WalkErrorKind> {
        let start = self.pos;
        self.take(len, tag)?;
        Ok(Cursor {
            bytes: self.bytes,
            pos: start,
            end: self.pos,
        })
    }

    /// The next `len` bytes of a value, checked against what is left.
    fn take(&mut self, len: u32, tag: Tag) -> Result<&'a [u8], WalkErrorKind> {
        let len = len as usize;
        if len > self.remaining() {
            return Err(WalkErrorKind::Truncated(format!(
                "element {} at byte {} declares {len} bytes, only {} follow",
                tag_str(tag),
                self.pos,
                self.remaining()
            )));
        }
        let v = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(v)
    }
}

struct Walker {
    series_uid: Option<String>,
    pixel_data: Option<PixelExtent>,
}

impl Walker {
    /// Elements until the end of `cur`, or until an item delimiter when `in_undefined_item`.
    fn elements(
        &mut self,
        cur: &mut Cursor<'_>,
        enc: Encoding,
        depth: usize,
        in_undefined_item: bool,
    ) -> Result<(), WalkErrorKind> {
        if depth > MAX_DEPTH {
            return Err(WalkErrorKind::Malformed(format!(
                "sequences nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let top = depth == 0;
        loop {
            if cur.remaining() == 0 {
                if in_undefined_item {
                    return Err(WalkErrorKind::Truncated(
                        "an item of undefined length ends without its delimiter".into(),
                    ));
                }
                return Ok(());
            }
            // Trailing padding (a few zero bytes) after the last element is common.
            if top && cur.remaining() < 8 && cur.bytes[cur.pos..cur.end].iter().all(|&b| b == 0) {
                return Ok(());
            }
            let h = cur.header(enc)?;
            match h.tag {
                ITEM_END if in_undefined_item => return Ok(()),
                ITEM_END | SEQUENCE_END => {
                    // Stray delimiters are tolerated by every reader; skip them.
                    continue;
                }
                ITEM => {
                    return Err(WalkErrorKind::Malformed(format!(
                        "an item tag outside a sequence at byte {}",
                        cur.pos - 8
                    )))
                }
                _ => {}
            }
            // Nested Pixel Data (an icon image in a sequence item) may be encapsulated too;
            // only the top-level one is the image.
            if h.tag == PIXEL_DATA {
                let extent = if h.len == UNDEFINED {
                    let (items, bytes) = self.fragments(cur, enc)?;
                    PixelExtent::Encapsulated { items, bytes }
                } else {
                    cur.take(h.len, h.tag)?;
                    PixelExtent::Native {
                        len: u64::from(h.len),
                    }
                };
                if top {
                    self.pixel_data = Some(extent);
                }
                continue;
            }
            if h.vr == Some(VR::UN) && h.len == UNDEFINED {
                // An implicit VR sequence inside explicit VR data (DICOM PS3.5 6.2.2); dicom-rs
                // misreads what follows and would reserve gigabytes.
                return Err(WalkErrorKind::Malformed(format!(
                    "element {} has VR UN with an undefined length (a sequence of unknown \
                     type); such files are not supported",
                    tag_str(h.tag)
                )));
            }
            let is_sequence = match h.vr {
                Some(VR::SQ) => true,
                Some(_) => false,
                None => h.len == UNDEFINED || dictionary_says_sequence(h.tag),
            };
            if is_sequence {
                let inner = if h.vr == Some(VR::UN) {
                    IMPLICIT_LE
                } else {
                    enc
                };
                if h.len == UNDEFINED {
                    self.items(cur, inner, depth, None)?;
                } else {
                    let mut sub = cur.sub(h.len, h.tag)?;
                    self.items(&mut sub, inner, depth, Some(()))?;
                }
                continue;
            }
            if h.len == UNDEFINED {
                return Err(WalkErrorKind::Malformed(format!(
                    "element {} has an undefined length but is not a sequence",
                    tag_str(h.tag)
                )));
            }
            let value = cur.take(h.len, h.tag)?;
            if top && h.tag == SERIES_INSTANCE_UID {
                let uid = clean_str(value);
                if !uid.is_empty() {
                    self.series_uid = Some(uid);
                }
            }
        }
    }

    /// The items of a sequence: until the sequence delimiter (undefined length) or the end
    /// of `cur` (defined length, `defined` is Some).
    fn items(
        &mut self,
        cur: &mut Cursor<'_>,
        enc: Encoding,
        depth: usize,
        defined: Option<()>,
    ) -> Result<(), WalkErrorKind> {
        loop {
            if defined.is_some() && cur.remaining() == 0 {
                return Ok(());
            }
            let h = cur.header(Encoding {
                explicit: false,
                ..enc
            })?;
            match h.tag {
                SEQUENCE_END if defined.is_none() => return Ok(()),
                ITEM if h.len == UNDEFINED => self.elements(cur, enc, depth + 1, true)?,
                ITEM => {
                    let mut sub = cur.sub(h.len, h.tag)?;
                    self.elements(&mut sub, enc, depth + 1, false)?;
                }
                other => {
                    return Err(WalkErrorKind::Malformed(format!(
                        "expected an item in a sequence at byte {}, found {}",
                        cur.pos - 8,
                        tag_str(other)
                    )))
                }
            }
        }
    }

    /// Encapsulated Pixel Data: items until the sequence delimiter.
    fn fragments(
        &mut self,
        cur: &mut Cursor<'_>,
        enc: Encoding,
    ) -> Result<(usize, u64), WalkErrorKind> {
        let (mut items, mut bytes) = (0usize, 0u64);
        loop {
            let h = cur.header(Encoding {
                explicit: false,
                ..enc
            })?;
            match h.tag {
                SEQUENCE_END => return Ok((items, bytes)),
                ITEM if h.len != UNDEFINED => {
                    cur.take(h.len, PIXEL_DATA)?;
                    items += 1;
                    bytes += u64::from(h.len);
                }
                other => {
                    return Err(WalkErrorKind::Malformed(format!(
                        "encapsulated Pixel Data: expected a fragment item at byte {}, found {}{}",
                        cur.pos - 8,
                        tag_str(other),
                        if other == ITEM {
                            " of undefined length"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
    }
}

fn dictionary_says_sequence(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
}

fn clean_str(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

pub(crate) fn tag_str(t: Tag) -> String {
    format!("({:04X},{:04X})", t.group(), t.element())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(tag.0.to_le_bytes());
        v.extend(tag.1.to_le_bytes());
        v.extend(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            v.extend([0, 0]);
            v.extend((value.len() as u32).to_le_bytes());
        } else {
            v.extend((value.len() as u16).to_le_bytes());
        }
        v.extend(value);
        v
    }

    fn file(dataset: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        f.extend(el((2, 0x10), b"UI", b"1.2.840.10008.1.2.1\0"));
        f.extend(dataset);
        f
    }

    #[test]
    fn reads_series_uid_and_native_pixel_extent() {
        let mut ds = el((0x0020, 0x000E), b"UI", b"1.2.3\0");
        ds.extend(el((0x7FE0, 0x0010), b"OW", &[0u8; 8]));
        let w = walk(&file(&ds)).unwrap();
        assert_eq!(w.series_uid.as_deref(), Some("1.2.3"));
        assert_eq!(w.pixel_data, Some(PixelExtent::Native { len: 8 }));
        assert_eq!(w.transfer_syntax.as_deref(), Some("1.2.840.10008.1.2.1"));
    }

    #[test]
    fn a_length_past_the_end_is_truncation_and_keeps_the_series() {
        let mut ds = el((0x0020, 0x000E), b"UI", b"1.2.3\0");
        let mut pd = el((0x7FE0, 0x0010), b"OW", &[0u8; 8]);
        pd.truncate(pd.len() - 3);
        ds.extend(pd);
        let e = walk(&file(&ds)).unwrap_err();
        assert_eq!(e.series_uid.as_deref(), Some("1.2.3"));
        assert!(matches!(e.kind, WalkErrorKind::Truncated(_)), "{e}");
        assert!(e.to_string().contains("(7FE0,0010)"), "{e}");
    }

    #[test]
    fn a_huge_declared_length_is_refused_without_allocating() {
        let mut ds = el((0x0008, 0x0008), b"UT", b"");
        let n = ds.len();
        ds[n - 4..].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let e = walk(&file(&ds)).unwrap_err();
        assert!(matches!(e.kind, WalkErrorKind::Truncated(_)));
    }

    #[test]
    fn implicit_data_set_under_an_explicit_syntax_is_named() {
        // (0008,0008) in implicit VR: tag, 4-byte length.
        let mut ds = vec![0x08, 0x00, 0x08, 0x00];
        ds.extend(4u32.to_le_bytes());
        ds.extend(b"AB\\C");
        let e = walk(&file(&ds)).unwrap_err();
        assert!(e.to_string().contains("implicit VR"), "{e}");
    }

    #[test]
    fn nested_items_are_checked_against_their_sequence() {
        // SQ of defined length holding an item that claims more than the sequence.
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend(100u32.to_le_bytes());
        item.extend([0u8; 4]);
        let mut ds = el((0x0008, 0x1115), b"SQ", &item);
        ds.extend(el((0x0020, 0x000E), b"UI", b"9\0"));
        assert!(matches!(
            walk(&file(&ds)).unwrap_err().kind,
            WalkErrorKind::Truncated(_)
        ));
    }

    #[test]
    fn undefined_length_un_is_refused_by_name() {
        // (4453,100C) UN, undefined length, as in pydicom's UN_sequence.dcm.
        let mut ds = vec![0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0];
        ds.extend(UNDEFINED.to_le_bytes());
        ds.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let e = walk(&file(&ds)).unwrap_err();
        assert!(e.to_string().contains("(4453,100C)"), "{e}");
    }

    #[test]
    fn undefined_length_sequences_and_items_are_walked() {
        // (0008,1115) SQ, undefined length: an item of undefined length with one element.
        let mut ds = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
        ds.extend(UNDEFINED.to_le_bytes());
        ds.extend([0xFE, 0xFF, 0x00, 0xE0]);
        ds.extend(UNDEFINED.to_le_bytes());
        ds.extend(el((0x0020, 0x000E), b"UI", b"1\0"));
        ds.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        ds.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        ds.extend(el((0x0020, 0x000E), b"UI", b"4.5\0"));
        let w = walk(&file(&ds)).unwrap();
        // Only the top-level SeriesInstanceUID counts.
        assert_eq!(w.series_uid.as_deref(), Some("4.5"));
    }

    #[test]
    fn every_truncation_and_mutation_is_ok_or_err() {
        let mut ds = el((0x0020, 0x000E), b"UI", b"1.2.3\0");
        let mut item = el((0x0008, 0x1150), b"UI", b"1.2\0");
        let mut it = vec![0xFE, 0xFF, 0x00, 0xE0];
        it.extend((item.len() as u32).to_le_bytes());
        it.append(&mut item);
        ds.extend(el((0x0008, 0x1115), b"SQ", &it));
        ds.extend(el((0x7FE0, 0x0010), b"OW", &[1u8; 16]));
        let f = file(&ds);
        for n in 0..f.len() {
            let _ = walk(&f[..n]);
        }
        for i in 0..f.len() {
            for v in [0x00, 0xFF, 0x7F, 0x80] {
                let mut g = f.clone();
                g[i] = v;
                let _ = walk(&g);
            }
        }
    }
}
