//! Reading automerge storage chunks from peers without handing them to automerge: the
//! chunk headers, a document chunk's actor list, and how large the chunk becomes once
//! inflated. The frame cap bounds only the compressed bytes; a 16 MiB frame of DEFLATE can
//! expand a thousandfold, so what a chunk inflates to is measured (with a cap, never fully
//! materialised) before automerge decompresses it.

use std::io::Read;

/// The automerge storage chunk header: magic, checksum, type, LEB128 length.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// A whole document (columns, some of them DEFLATE-compressed).
pub const CHUNK_DOCUMENT: u8 = 0;
/// One change.
pub const CHUNK_CHANGE: u8 = 1;
/// One change whose body is DEFLATE-compressed.
pub const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// Bit of a column specification marking its data as DEFLATE-compressed.
const COLUMN_DEFLATE: u64 = 0b1000;

/// Most columns a document chunk may declare per section (automerge writes about 20).
const MAX_COLUMNS: u64 = 1024;

pub(crate) fn leb128(data: &[u8], pos: &mut usize) -> Option<u64> {
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// One storage chunk: its type, the whole chunk, and its body.
pub type RawChunk<'a> = (u8, &'a [u8], &'a [u8]);

/// Split a blob of concatenated automerge storage chunks, checking every header.
pub fn split_chunks(mut data: &[u8]) -> Option<Vec<RawChunk<'_>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 9 || data[..4] != CHUNK_MAGIC {
            return None;
        }
        let kind = data[8];
        let mut pos = 9;
        let len = usize::try_from(leb128(data, &mut pos)?).ok()?;
        let end = pos.checked_add(len)?;
        if end > data.len() {
            return None;
        }
        out.push((kind, &data[..end], &data[pos..end]));
        data = &data[end..];
    }
    Some(out)
}

/// Read a length-prefixed list of byte strings at `pos`.
fn byte_strings<'a>(body: &'a [u8], pos: &mut usize) -> Option<Vec<&'a [u8]>> {
    let n = leb128(body, pos)?;
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let len = usize::try_from(leb128(body, pos)?).ok()?;
        let end = pos.checked_add(len)?;
        out.push(body.get(*pos..end)?);
        *pos = end;
    }
    Some(out)
}

/// The actor list that opens a document chunk's body.
pub fn document_actors(body: &[u8]) -> Option<Vec<&[u8]>> {
    byte_strings(body, &mut 0)
}

/// The column specifications and lengths of one section of a document chunk.
fn columns(body: &[u8], pos: &mut usize) -> Option<Vec<(u64, u64)>> {
    let n = leb128(body, pos)?;
    if n > MAX_COLUMNS {
        return None;
    }
    (0..n)
        .map(|_| Some((leb128(body, pos)?, leb128(body, pos)?)))
        .collect()
}

/// Bytes a raw DEFLATE stream inflates to, reading at most `cap + 1` of them. `None` when
/// the stream is corrupt.
fn inflate_len(deflated: &[u8], cap: u64) -> Option<u64> {
    let mut sink = std::io::sink();
    let decoder = flate2::read::DeflateDecoder::new(deflated);
    std::io::copy(&mut decoder.take(cap.saturating_add(1)), &mut sink).ok()
}

/// How many bytes `chunk` occupies once every compressed part is inflated, or `None` when
/// its framing is unreadable. Stops counting past `cap` (the result is then over `cap`).
pub fn inflated_len(kind: u8, body: &[u8], cap: u64) -> Option<u64> {
    match kind {
        CHUNK_CHANGE => Some(body.len() as u64),
        CHUNK_COMPRESSED_CHANGE => inflate_len(body, cap),
        CHUNK_DOCUMENT => {
            let mut pos = 0;
            byte_strings(body, &mut pos)?;
            let heads = usize::try_from(leb128(body, &mut pos)?).ok()?;
            pos = pos.checked_add(heads.checked_mul(32)?)?;
            let mut cols = columns(body, &mut pos)?;
            cols.extend(columns(body, &mut pos)?);
            // Prefix and suffix count as they are; each column as it inflates.
            let mut total = body.len() as u64;
            for (spec, len) in cols {
                let len_usize = usize::try_from(len).ok()?;
                let end = pos.checked_add(len_usize)?;
                let data = body.get(pos..end)?;
                pos = end;
                if spec & COLUMN_DEFLATE != 0 {
                    let left = cap.saturating_sub(total);
                    total = total.saturating_add(inflate_len(data, left)?);
                    if total > cap {
                        return Some(total);
                    }
                }
            }
            Some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_deflate_bomb_is_measured_without_being_inflated() {
        let bomb = deflate(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let n = inflated_len(CHUNK_COMPRESSED_CHANGE, &bomb, 1 << 20).unwrap();
        assert_eq!(n, (1 << 20) + 1, "counting stops just past the cap");
        assert_eq!(
            inflated_len(CHUNK_COMPRESSED_CHANGE, &deflate(b"small"), 1 << 20),
            Some(5)
        );
        assert_eq!(inflated_len(CHUNK_COMPRESSED_CHANGE, b"\xff\xff", 10), None);
    }

    #[test]
    fn a_real_document_chunk_is_measured_through_its_columns() {
        let mut d = automerge::AutoCommit::new();
        use automerge::transaction::Transactable;
        for i in 0..2_000 {
            d.put(
                automerge::ROOT,
                format!("key{i}"),
                "the same long-ish value",
            )
            .unwrap();
        }
        let saved = d.save();
        let chunks = split_chunks(&saved).unwrap();
        assert_eq!(chunks[0].0, CHUNK_DOCUMENT);
        let n = inflated_len(CHUNK_DOCUMENT, chunks[0].2, u64::MAX).unwrap();
        assert!(n > saved.len() as u64, "{n} vs {}", saved.len());
        // Not under what the chunk is uncompressed: the cap on inflation relies on it.
        let plain = d.save_nocompress();
        let plain_chunks = split_chunks(&plain).unwrap();
        assert_eq!(plain_chunks[0].0, CHUNK_DOCUMENT);
        let plain_len = plain_chunks[0].2.len() as u64;
        assert!(n >= plain_len, "{n} vs {plain_len} uncompressed");
        assert!(inflated_len(CHUNK_DOCUMENT, chunks[0].2, 100).unwrap() > 100);
        // A truncated body is unreadable, not misread.
        assert_eq!(
            inflated_len(
                CHUNK_DOCUMENT,
                &chunks[0].2[..chunks[0].2.len() / 2],
                1 << 30
            ),
            None
        );
    }
}
