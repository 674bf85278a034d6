//! The page file: `page.html` with the stylesheet, the index JSON and the viewer script put
//! in, then one `<script type="application/octet-stream">` element per case holding its
//! gzip stream in base64. The data come after the script, so the browser shows the index
//! before it has parsed the images of a large run; a case's block is decoded only when the
//! case is opened. Nothing is fetched: the file works offline and from any folder.

use std::io::{Read, Seek, Write};

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("viewer.css");
const SCRIPT: &str = include_str!("viewer.js");

/// Standard base64 (RFC 4648, with padding), what `atob` and `Uint8Array.fromBase64` read.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| ALPHABET[((n >> shift) & 63) as usize] as char;
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Text that can stand inside an HTML element or a `<script>` without ending it: `<`, `>`
/// and `&` become JSON's `\u003c`, `\u003e`, `\u0026` (valid only inside JSON strings, where
/// JSON text has them).
pub fn json_for_script(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Text for an HTML element's content.
pub fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Write one case's data element; returns the number of base64 characters.
pub fn write_block(out: &mut impl Write, id: &str, gzip: &[u8]) -> std::io::Result<usize> {
    let text = base64(gzip);
    write!(
        out,
        "<script type=\"application/octet-stream\" id=\"{id}\">"
    )?;
    out.write_all(text.as_bytes())?;
    out.write_all(b"</script>\n")?;
    Ok(text.len())
}

/// The template's parts around its markers, in order.
fn parts() -> [&'static str; 5] {
    let mut rest = TEMPLATE;
    let mut out = [""; 5];
    for (i, marker) in ["{{STYLE}}", "{{INDEX}}", "{{SCRIPT}}", "{{DATA}}"]
        .iter()
        .enumerate()
    {
        let (before, after) = rest
            .split_once(marker)
            .expect("page.html has every marker once, in order");
        out[i] = before;
        rest = after;
    }
    out[4] = rest;
    out
}

/// The whole page: the template with `title`, the stylesheet, `index_json`, the script and
/// the data elements copied from `blocks` (read from its start).
pub fn write_page<F: Read + Seek>(
    out: &mut impl Write,
    title: &str,
    index_json: &str,
    blocks: &mut F,
) -> std::io::Result<()> {
    let [head, before_index, before_script, before_data, tail] = parts();
    let title = escape_text(title);
    out.write_all(head.replace("{{TITLE}}", &title).as_bytes())?;
    out.write_all(STYLE.as_bytes())?;
    out.write_all(before_index.replace("{{TITLE}}", &title).as_bytes())?;
    out.write_all(json_for_script(index_json).as_bytes())?;
    out.write_all(before_script.as_bytes())?;
    out.write_all(SCRIPT.as_bytes())?;
    out.write_all(before_data.as_bytes())?;
    blocks.seek(std::io::SeekFrom::Start(0))?;
    std::io::copy(blocks, out)?;
    out.write_all(tail.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn the_page_cannot_be_ended_by_its_data() {
        let json = serde_json::json!({"case": "</script><b>&"}).to_string();
        let safe = json_for_script(&json);
        assert!(!safe.contains('<') && !safe.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["case"], "</script><b>&");

        let mut blocks = std::io::Cursor::new(Vec::new());
        write_block(&mut blocks, "case-data-0", b"\x1f\x8b").unwrap();
        let mut page = Vec::new();
        write_page(&mut page, "a <title>", &safe, &mut blocks).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains("<title>a &lt;title&gt;</title>"));
        assert!(page.contains("id=\"case-data-0\">H4s=</script>"));
        // The index precedes the script, which precedes the data.
        let at = |s: &str| page.find(s).unwrap();
        assert!(
            at("id=\"review-index\"") < at("sdsegReview") && at("sdsegReview") < at("case-data-0")
        );
        assert_eq!(
            page.matches("</script>").count(),
            page.matches("<script").count()
        );
    }
}
