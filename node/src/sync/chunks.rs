//! Reading automerge storage chunks from peers without handing them to automerge: the
//! chunk headers, a document chunk's actor list, how large the chunk becomes once
//! inflated, and how many values its columns declare. The frame cap bounds only the
//! compressed bytes; a 16 MiB frame of DEFLATE can expand a thousandfold, so what a chunk
//! inflates to is measured (with a cap, never fully materialised) before automerge
//! decompresses it. And a column's run-length encoding can declare 2^62 values in ten
//! bytes, which automerge visits one at a time when it checks a change (a loop no
//! `catch_unwind` ends), so the values are counted, run by run, first.

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
pub(super) const COLUMN_DEFLATE: u64 = 0b1000;

/// Most columns a document chunk may declare per section (automerge writes about 20).
const MAX_COLUMNS: u64 = 1024;

/// A column specification's low three bits: the column's type.
const COLUMN_TYPE: u64 = 0b111;
/// Column types (automerge's storage format) read otherwise than as run-length encoded
/// values: booleans are lengths of alternating runs, raw values are bytes whose count the
/// value metadata column gives, strings are run-length encoded but each value is a length
/// and its bytes.
const TYPE_BOOLEAN: u64 = 4;
const TYPE_STRING: u64 = 5;
const TYPE_VALUE: u64 = 7;

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

/// A signed LEB128 integer at `pos`.
pub(super) fn sleb128(data: &[u8], pos: &mut usize) -> Option<i64> {
    let (mut v, mut shift) = (0i64, 0u32);
    loop {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= i64::from(b & 0x7f).checked_shl(shift)?;
        shift += 7;
        if b & 0x80 == 0 {
            if shift < 64 && b & 0x40 != 0 {
                v |= -1i64 << shift;
            }
            return Some(v);
        }
        if shift > 63 {
            return None;
        }
    }
}

/// The length-prefixed byte string at `pos`.
pub(super) fn take_bytes<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(leb128(data, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let bytes = data.get(*pos..end)?;
    *pos = end;
    Some(bytes)
}

/// Pass over a length-prefixed byte string at `pos`.
fn skip_bytes(data: &[u8], pos: &mut usize) -> Option<()> {
    take_bytes(data, pos).map(|_| ())
}

/// Pass over a length-prefixed list of byte strings at `pos` (nothing kept: a list of
/// millions of empty strings costs no memory).
pub(super) fn skip_byte_strings(data: &[u8], pos: &mut usize) -> Option<()> {
    for _ in 0..leb128(data, pos)? {
        skip_bytes(data, pos)?;
    }
    Some(())
}

/// Pass over one value of a run-length encoded column of type `ty`.
fn skip_value(ty: u64, data: &[u8], pos: &mut usize) -> Option<()> {
    if ty == TYPE_STRING {
        return skip_bytes(data, pos);
    }
    // Signed and unsigned LEB128 take the same bytes.
    leb128(data, pos).map(|_| ())
}

/// The values one column of type `ty` declares, counted run by run: at most a little past
/// `cap` (counting stops once past it). `None` when the column is unreadable.
fn column_items(ty: u64, data: &[u8], cap: u64) -> Option<u64> {
    if ty == TYPE_VALUE {
        return Some(0);
    }
    let (mut pos, mut n) = (0usize, 0u64);
    while pos < data.len() && n <= cap {
        if ty == TYPE_BOOLEAN {
            n = n.saturating_add(leb128(data, &mut pos)?);
            continue;
        }
        match sleb128(data, &mut pos)? {
            // A run of nulls: its length follows.
            0 => n = n.saturating_add(leb128(data, &mut pos)?),
            // A run of one value.
            count if count > 0 => {
                n = n.saturating_add(count.unsigned_abs());
                skip_value(ty, data, &mut pos)?;
            }
            // Literal values, each written out: no more of them than the column has bytes.
            count => {
                let k = count.unsigned_abs();
                n = n.saturating_add(k);
                if n > cap {
                    break;
                }
                for _ in 0..k {
                    skip_value(ty, data, &mut pos)?;
                }
            }
        }
    }
    Some(n)
}

thread_local! {
    /// Where columns are inflated to be counted, kept from one to the next: a buffer grown
    /// afresh for each cost more than the inflating (the allocator maps new pages for each
    /// large one, and the kernel zeroes them; a township taking a 5,000-change register
    /// spent a third of its time there).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What the scratch buffer keeps between uses at most: a peer's one large column does not
/// hold its size for good.
const SCRATCH_KEPT: usize = 4 << 20;

/// `read` applied to the raw DEFLATE stream `deflated` inflated, if at most `cap` bytes.
fn with_inflated<T>(deflated: &[u8], cap: u64, read: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
    SCRATCH.with_borrow_mut(|out| {
        out.clear();
        let inflated = flate2::read::DeflateDecoder::new(deflated)
            .take(cap.saturating_add(1))
            .read_to_end(out)
            .is_ok_and(|n| n as u64 <= cap);
        let result = if inflated { read(out) } else { None };
        out.clear();
        if out.capacity() > SCRATCH_KEPT {
            out.shrink_to(SCRATCH_KEPT);
        }
        result
    })
}

/// The values the columns `cols` (whose data starts at `pos`) declare, summed, counting
/// stopping past `cap`, and the most any one column declares; a compressed column is
/// inflated to be counted (at most `inflate_cap` bytes), where the chunk may have them.
fn columns_items(
    body: &[u8],
    pos: &mut usize,
    cols: &[(u64, u64)],
    cap: u64,
    inflate_cap: Option<u64>,
) -> Option<Declared> {
    let (mut total, mut widest) = (0u64, 0u64);
    for &(spec, len) in cols {
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        let data = body.get(*pos..end)?;
        *pos = end;
        let ty = spec & COLUMN_TYPE;
        let n = if spec & COLUMN_DEFLATE != 0 {
            with_inflated(data, inflate_cap?, |d| column_items(ty, d, cap - total))?
        } else {
            column_items(ty, data, cap - total)?
        };
        total = total.saturating_add(n);
        widest = widest.max(n);
        if total > cap {
            break;
        }
    }
    Some(Declared {
        values: total,
        widest,
    })
}

/// What a chunk's columns declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Values, summed over every column (what automerge visits to read the chunk).
    pub values: u64,
    /// The most values one column declares: about the operations (or, of a document's
    /// change columns, the changes) the chunk holds, each column holding one per operation
    /// (the columns of an operation's predecessors, one per predecessor).
    pub widest: u64,
}

/// A change body's op columns (its header read and passed over), and where their data
/// starts.
fn change_columns(body: &[u8]) -> Option<(usize, Vec<(u64, u64)>)> {
    let mut pos = 0;
    let deps = usize::try_from(leb128(body, &mut pos)?).ok()?;
    pos = pos.checked_add(deps.checked_mul(32)?)?;
    skip_bytes(body, &mut pos)?; // actor
    leb128(body, &mut pos)?; // sequence number
    leb128(body, &mut pos)?; // first op
    leb128(body, &mut pos)?; // time (signed: the same bytes)
    skip_bytes(body, &mut pos)?; // message
    skip_byte_strings(body, &mut pos)?; // other actors
    let cols = columns(body, &mut pos)?;
    Some((pos, cols))
}

/// The values a change's body declares in its op columns.
fn change_items(body: &[u8], cap: u64) -> Option<Declared> {
    let (mut pos, cols) = change_columns(body)?;
    // A change's columns are never compressed one by one (the whole change is).
    columns_items(body, &mut pos, &cols, cap, None)
}

/// The raw DEFLATE stream `deflated` inflated, if at most `cap` bytes.
pub(super) fn inflated(deflated: &[u8], cap: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= cap).then_some(out)
}

/// How many values the columns of `chunk` declare in all (what automerge visits, one at a
/// time, to check and apply it), counted without expanding a run: at most a little past
/// `cap`, where counting stops; and the most one column declares. A compressed change, or
/// compressed document columns, are inflated to be read (at most `inflate_cap` bytes each,
/// which [`inflated_len`] has measured first). `None` when the chunk is unreadable.
pub fn items_declared(kind: u8, body: &[u8], cap: u64, inflate_cap: u64) -> Option<Declared> {
    match kind {
        CHUNK_CHANGE => change_items(body, cap),
        CHUNK_COMPRESSED_CHANGE => with_inflated(body, inflate_cap, |d| change_items(d, cap)),
        CHUNK_DOCUMENT => {
            let mut pos = 0;
            skip_byte_strings(body, &mut pos)?; // actors
            let heads = usize::try_from(leb128(body, &mut pos)?).ok()?;
            pos = pos.checked_add(heads.checked_mul(32)?)?;
            let mut cols = columns(body, &mut pos)?;
            cols.extend(columns(body, &mut pos)?);
            columns_items(body, &mut pos, &cols, cap, Some(inflate_cap))
        }
        _ => None,
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

/// The actor list that opens a document chunk's body, one actor at a time (nothing
/// collected: a list of millions of empty actors costs no memory before the first is
/// refused). An unreadable entry is `None`, and the list ends after it.
pub fn document_actors(body: &[u8]) -> impl Iterator<Item = Option<&[u8]>> + '_ {
    let mut pos = 0usize;
    let mut left = leb128(body, &mut pos);
    std::iter::from_fn(move || {
        match left {
            Some(0) => None,
            None => {
                // Unreadable: said once, then the end.
                left = Some(0);
                Some(None)
            }
            Some(n) => {
                left = Some(n - 1);
                let actor = take_bytes(body, &mut pos);
                if actor.is_none() {
                    left = Some(0);
                }
                Some(actor)
            }
        }
    })
}

/// The column specifications and lengths of one section of a document chunk.
pub(super) fn columns(body: &[u8], pos: &mut usize) -> Option<Vec<(u64, u64)>> {
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
            skip_byte_strings(body, &mut pos)?;
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

/// The op columns read for the objects a chunk makes: the parent object's counter (null for
/// the root) and the action (automerge's storage format: column id << 4 | type).
const OBJ_COUNTER_SPEC: u64 = 0x02;
const ACTION_SPEC: u64 = 0x42;
/// Actions that make an object: map, list, text, table. Only a map under the root is ever
/// made by an honest node.
const MAKE_MAP: u64 = 0;
const MAKES: [u64; 4] = [MAKE_MAP, 2, 4, 6];

/// The values of a run-length encoded column, nulls as `None`: unsigned integers
/// ([`Runs::new`]), signed ones ([`Runs::signed`]) or strings ([`Runs::strings`]).
pub(super) struct Runs<'a, T = u64> {
    data: &'a [u8],
    pos: usize,
    /// The current run: values left in it, and its value (`None` in a null run); `literal`
    /// runs read each value afresh.
    left: u64,
    value: Option<T>,
    literal: bool,
    read: fn(&'a [u8], &mut usize) -> Option<T>,
}

impl<'a> Runs<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Runs::with(data, leb128)
    }
}

impl<'a> Runs<'a, i64> {
    pub(super) fn signed(data: &'a [u8]) -> Self {
        Runs::with(data, sleb128)
    }
}

impl<'a> Runs<'a, &'a str> {
    pub(super) fn strings(data: &'a [u8]) -> Self {
        Runs::with(data, |d, pos| std::str::from_utf8(take_bytes(d, pos)?).ok())
    }
}

impl<'a, T: Clone> Runs<'a, T> {
    fn with(data: &'a [u8], read: fn(&'a [u8], &mut usize) -> Option<T>) -> Self {
        Runs {
            data,
            pos: 0,
            left: 0,
            value: None,
            literal: false,
            read,
        }
    }

    /// The next value: `Some(None)` a null; `None` at the end, `Err` when unreadable.
    #[allow(clippy::type_complexity)]
    pub(super) fn next(&mut self) -> Result<Option<Option<T>>, ()> {
        while self.left == 0 {
            if self.pos >= self.data.len() {
                return Ok(None);
            }
            match sleb128(self.data, &mut self.pos).ok_or(())? {
                0 => {
                    self.left = leb128(self.data, &mut self.pos).ok_or(())?;
                    (self.value, self.literal) = (None, false);
                }
                n if n > 0 => {
                    self.left = n.unsigned_abs();
                    self.value = Some((self.read)(self.data, &mut self.pos).ok_or(())?);
                    self.literal = false;
                }
                n => (self.left, self.literal) = (n.unsigned_abs(), true),
            }
        }
        self.left -= 1;
        if self.literal {
            return Ok(Some(Some((self.read)(self.data, &mut self.pos).ok_or(())?)));
        }
        Ok(Some(self.value.clone()))
    }

    /// The next value, a null once the column has ended (automerge reads a column shorter
    /// than the others so).
    pub(super) fn next_or_null(&mut self) -> Result<Option<T>, ()> {
        Ok(self.next()?.flatten())
    }
}

/// A delta-encoded column: signed runs of differences, each value the running sum.
pub(super) struct Deltas<'a> {
    runs: Runs<'a, i64>,
    sum: i64,
}

impl<'a> Deltas<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Deltas {
            runs: Runs::signed(data),
            sum: 0,
        }
    }

    /// The next value (a null leaves the sum): `Some(None)` a null, `None` at the end.
    pub(super) fn next(&mut self) -> Result<Option<Option<i64>>, ()> {
        match self.runs.next()? {
            Some(Some(d)) => {
                self.sum = self.sum.checked_add(d).ok_or(())?;
                Ok(Some(Some(self.sum)))
            }
            other => Ok(other),
        }
    }

    /// The next value (a null leaves the sum), a null once the column has ended.
    pub(super) fn next_or_null(&mut self) -> Result<Option<i64>, ()> {
        match self.runs.next_or_null()? {
            Some(d) => {
                self.sum = self.sum.checked_add(d).ok_or(())?;
                Ok(Some(self.sum))
            }
            None => Ok(None),
        }
    }
}

/// A boolean column: lengths of alternating runs, the first of `false`.
pub(super) struct Bools<'a> {
    data: &'a [u8],
    pos: usize,
    left: u64,
    value: bool,
}

impl<'a> Bools<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        // Flipped as the first run is read.
        Bools {
            data,
            pos: 0,
            left: 0,
            value: true,
        }
    }

    /// The next value, `false` once the column has ended.
    pub(super) fn next_or_false(&mut self) -> Result<bool, ()> {
        while self.left == 0 {
            if self.pos >= self.data.len() {
                return Ok(false);
            }
            self.left = leb128(self.data, &mut self.pos).ok_or(())?;
            self.value = !self.value;
        }
        self.left -= 1;
        Ok(self.value)
    }
}

/// Whether the ops of `cols` (data from `pos`) make an object anywhere but a map under the
/// root, reading two columns row by row. `None` when unreadable.
fn makes_nested(
    body: &[u8],
    mut pos: usize,
    cols: &[(u64, u64)],
    inflate_cap: u64,
) -> Option<bool> {
    let (mut objs, mut actions) = (None, None);
    for &(spec, len) in cols {
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        let data = body.get(pos..end)?;
        pos = end;
        let slot = match spec & !COLUMN_DEFLATE {
            OBJ_COUNTER_SPEC => &mut objs,
            ACTION_SPEC => &mut actions,
            _ => continue,
        };
        *slot = Some(if spec & COLUMN_DEFLATE != 0 {
            std::borrow::Cow::Owned(inflated(data, inflate_cap)?)
        } else {
            std::borrow::Cow::Borrowed(data)
        });
    }
    // No action column: no ops. No object column: every op is at the root.
    let Some(actions) = actions else {
        return Some(false);
    };
    let mut actions = Runs::new(&actions);
    let mut objs = objs.as_deref().map(Runs::new);
    loop {
        let Some(action) = actions.next().ok()? else {
            return Some(false);
        };
        let parent = match objs.as_mut() {
            Some(o) => o.next().ok()?.flatten(),
            None => None,
        };
        if let Some(a) = action
            && MAKES.contains(&a)
            && (a != MAKE_MAP || parent.is_some())
        {
            return Some(true);
        }
    }
}

/// Whether `chunk` makes an object other than a map directly under the root, read from its
/// columns (a compressed change, or a document's compressed columns, inflated to at most
/// `inflate_cap` bytes): every object of an honest document is such a map, and automerge
/// reads objects recursively, so a deep chain of them would overflow the stack of whatever
/// reads the record. `None` when the chunk is unreadable.
pub fn makes_nested_objects(kind: u8, body: &[u8], inflate_cap: u64) -> Option<bool> {
    let change = |body: &[u8]| {
        let (pos, cols) = change_columns(body)?;
        makes_nested(body, pos, &cols, inflate_cap)
    };
    match kind {
        CHUNK_CHANGE => change(body),
        CHUNK_COMPRESSED_CHANGE => with_inflated(body, inflate_cap, change),
        CHUNK_DOCUMENT => {
            let mut pos = 0;
            skip_byte_strings(body, &mut pos)?; // actors
            let heads = usize::try_from(leb128(body, &mut pos)?).ok()?;
            pos = pos.checked_add(heads.checked_mul(32)?)?;
            let change_cols = columns(body, &mut pos)?;
            let op_cols = columns(body, &mut pos)?;
            // The change columns' data first, then the ops'.
            for &(_, len) in &change_cols {
                pos = pos.checked_add(usize::try_from(len).ok()?)?;
            }
            makes_nested(body, pos, &op_cols, inflate_cap)
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

    /// Runs of every kind are counted without being expanded: a run of one value, literal
    /// values, a run of nulls, booleans' alternating runs; raw values count none.
    #[test]
    fn values_are_counted_run_by_run() {
        // 2^62 of one integer in ten bytes.
        let mut col = vec![
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0xc0, 0x00, 0x01,
        ];
        assert_eq!(column_items(2, &col, 1 << 20), Some(1 << 62));
        // Three literals, then five nulls.
        col = vec![0x7d, 1, 2, 3, 0, 5];
        assert_eq!(column_items(2, &col, 100), Some(8));
        // Strings: two of "ab", then one literal "c".
        col = vec![2, 2, b'a', b'b', 0x7f, 1, b'c'];
        assert_eq!(column_items(TYPE_STRING, &col, 100), Some(3));
        // Booleans: 2 false, 3 true.
        assert_eq!(column_items(TYPE_BOOLEAN, &[2, 3], 100), Some(5));
        assert_eq!(column_items(TYPE_VALUE, &[1, 2, 3], 100), Some(0));
        // Literals counted before they are read: far more than the bytes hold, over the cap.
        assert!(column_items(2, &[0x80, 0x80, 0x80, 0x80, 0x70], 100).unwrap() > 100);
        // Cut short: unreadable.
        assert_eq!(column_items(2, &[0x7d, 1], 100), None);
        assert_eq!(column_items(TYPE_STRING, &[1, 5, b'a'], 100), None);
    }

    /// A real change and a real document are counted: at least a value per operation in
    /// each of several columns, and no more than a few dozen.
    #[test]
    fn real_chunks_declare_their_operations() {
        use automerge::transaction::Transactable;
        let mut d = automerge::AutoCommit::new();
        for i in 0..500 {
            d.put(automerge::ROOT, format!("key{i}"), i).unwrap();
        }
        d.commit();
        let change = d.get_last_local_change().unwrap().clone();
        let raw = change.raw_bytes();
        let (kind, _, body) = split_chunks(raw).unwrap()[0];
        assert_eq!(kind, CHUNK_CHANGE);
        let declared = items_declared(kind, body, u64::MAX, 1 << 20).unwrap();
        let n = declared.values;
        assert!((5 * 500..=30 * 500).contains(&n), "{n}");
        assert_eq!(
            declared.widest, 500,
            "a value per operation in the widest column"
        );
        let mut change = change;
        let compressed = change.bytes().into_owned();
        let (kind, _, body) = split_chunks(&compressed).unwrap()[0];
        assert_eq!(kind, CHUNK_COMPRESSED_CHANGE);
        assert_eq!(
            items_declared(kind, body, u64::MAX, 1 << 20),
            Some(declared)
        );
        let saved = d.save();
        let (kind, _, body) = split_chunks(&saved).unwrap()[0];
        assert_eq!(kind, CHUNK_DOCUMENT);
        let m = items_declared(kind, body, u64::MAX, 1 << 20).unwrap();
        assert!(
            m.values >= n / 2,
            "{m:?} for the document, {n} for its change"
        );
        assert_eq!(m.widest, 500);
        // Counting stops past the cap.
        assert!(items_declared(kind, body, 10, 1 << 20).unwrap().values > 10);
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

    /// The objects a chunk makes, read from its columns: maps under the root pass; a map
    /// inside one, or any other kind of object, does not, in a change (compressed or not)
    /// or a document (its columns compressed or not), even once deleted.
    #[test]
    fn objects_made_below_the_root_maps_are_found_in_the_columns() {
        use automerge::transaction::Transactable;
        use automerge::{Automerge, AutomergeError, ObjType, ROOT};
        let nested = |chunk: &[u8]| {
            let [(kind, _, body)] = split_chunks(chunk).unwrap()[..] else {
                panic!("one chunk");
            };
            makes_nested_objects(kind, body, 64 << 20).unwrap()
        };
        // Records, many (the document's columns then compressed, a change compressed).
        let mut d = Automerge::new();
        d.transact::<_, _, AutomergeError>(|tx| {
            for i in 0..2_000 {
                let r = tx.put_object(ROOT, format!("r{i}"), ObjType::Map)?;
                tx.put(&r, "name", format!("Member {i} of a long register"))?;
                tx.put(&r, "birthYear", 1950 + i % 50)?;
            }
            Ok(())
        })
        .unwrap();
        let mut change = d.get_last_local_change().unwrap();
        assert!(!nested(change.raw_bytes()));
        let compressed = change.bytes().to_vec();
        assert_eq!(
            split_chunks(&compressed).unwrap()[0].0,
            CHUNK_COMPRESSED_CHANGE
        );
        assert!(!nested(&compressed));
        let saved = d.save();
        assert!(!nested(&saved));
        for (ty, deep) in [
            (ObjType::Map, true),
            (ObjType::Map, false),
            (ObjType::Text, false),
            (ObjType::List, false),
        ] {
            let mut e = d.fork();
            e.transact::<_, _, AutomergeError>(|tx| {
                let rec = tx.put_object(ROOT, "r1", ObjType::Map)?;
                let mut obj = tx.put_object(&rec, "name", ty)?;
                if deep {
                    for _ in 0..100 {
                        obj = tx.put_object(&obj, "deeper", ObjType::Map)?;
                    }
                }
                Ok(())
            })
            .unwrap();
            let mut change = e.get_last_local_change().unwrap();
            assert!(nested(change.raw_bytes()), "{ty:?}, deep {deep}: change");
            assert!(nested(&change.bytes()), "{ty:?}, deep {deep}: compressed");
            assert!(nested(&e.save()), "{ty:?}, deep {deep}: document");
            // Deleted, it stays in the document's history.
            e.transact::<_, _, AutomergeError>(|tx| tx.delete(ROOT, "r1"))
                .unwrap();
            assert!(nested(&e.save()), "{ty:?}, deep {deep}: deleted");
        }
        // Another kind of object at the root.
        let mut e = d.fork();
        e.transact::<_, _, AutomergeError>(|tx| {
            tx.put_object(ROOT, "list", ObjType::List).map(drop)
        })
        .unwrap();
        assert!(nested(e.get_last_local_change().unwrap().raw_bytes()));
        // A document of no ops, and one of scalars only.
        assert!(!nested(&Automerge::new().save()));
        let mut e = Automerge::new();
        e.transact::<_, _, AutomergeError>(|tx| tx.put(ROOT, "name", "Unit"))
            .unwrap();
        assert!(!nested(&e.save()));
        assert!(!nested(e.get_last_local_change().unwrap().raw_bytes()));
    }
}
