//! Stored values that hold several encoded items, as the outbox queue and the change log keep them: a version byte
//! (the caller's), the item count (u32 big-endian), then each item as its length (u32 big-endian) and its bytes.

/// Bytes before the first item: the version byte and the count.
pub const HEADER: usize = 5;

/// Encodes `items` as one value that starts with `version`.
pub fn encode<'a, I>(version: u8, items: I) -> Vec<u8>
where
    I: ExactSizeIterator<Item = &'a [u8]> + Clone,
{
    let mut out = Vec::with_capacity(HEADER + items.clone().map(|item| 4 + item.len()).sum::<usize>());
    out.push(version);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The item count in the header of `value`; its version byte is the caller's to check.
pub fn count(value: &[u8]) -> Result<u32, String> {
    value
        .get(1..HEADER)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| "chunk shorter than its header".to_owned())
}

/// The items of a value made by [`encode`], in order; its version byte is the caller's to check. The error says which
/// item is cut off, or how many bytes follow the last.
pub fn items(value: &[u8]) -> Result<Vec<&[u8]>, String> {
    let count = count(value)?;
    let mut rest = &value[HEADER..];
    // Each item takes at least its 4-byte length, which bounds the allocation by the value's size.
    let mut items = Vec::with_capacity((count as usize).min(rest.len() / 4));
    for i in 0..count {
        let (len, tail) =
            rest.split_first_chunk::<4>().ok_or_else(|| format!("chunk item {i} of {count}: length cut off"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let item = tail
            .get(..len)
            .ok_or_else(|| format!("chunk item {i} of {count}: {len} bytes announced, fewer present"))?;
        items.push(item);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the chunk's {count} items", rest.len()));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_values() {
        let parts: [&[u8]; 3] = [b"ab", b"", b"cde"];
        let value = encode(7, parts.into_iter());
        assert_eq!(value.len(), HEADER + 3 * 4 + 5);
        assert_eq!(value[0], 7);
        assert_eq!(count(&value), Ok(3));
        assert_eq!(items(&value).unwrap(), parts.to_vec());
        assert_eq!(items(&encode(7, std::iter::empty())).unwrap(), Vec::<&[u8]>::new());
        assert!(items(&value[..3]).unwrap_err().contains("header"));
        assert!(items(&value[..HEADER + 2]).unwrap_err().contains("cut off"));
        assert!(items(&value[..value.len() - 1]).unwrap_err().contains("fewer present"));
        assert!(items(&[value.as_slice(), &[0]].concat()).unwrap_err().contains("after"));
        let mut huge = value.clone();
        huge[1..HEADER].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(items(&huge).is_err());
    }
}
