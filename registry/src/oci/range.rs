//! `Range` on blob GET (RFC 9110, single byte range) and `Content-Range` on
//! chunked upload PATCH (the distribution spec's bare `<start>-<end>`).

use std::ops::RangeInclusive;

/// What a `Range` request header asks of a blob of known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// Serve these bytes with 206.
    Partial(RangeInclusive<u64>),
    /// Serve the whole blob with 200 (no header, or one we choose to ignore).
    Whole,
    /// 416: the range lies outside the blob or is malformed.
    Unsatisfiable,
}

/// Resolves a `Range` header value against a blob of `size` bytes.
///
/// Multiple ranges are answered with the whole blob, which RFC 9110 allows,
/// rather than a multipart body no registry client asks for.
pub fn resolve(header: Option<&str>, size: u64) -> ByteRange {
    let Some(value) = header else {
        return ByteRange::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Unsatisfiable;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Unsatisfiable;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match parse(last) {
            Some(n) if n > 0 && size > 0 => ByteRange::Partial(size.saturating_sub(n)..=size - 1),
            _ => ByteRange::Unsatisfiable,
        },
        // bytes=N-: from N to the end
        (false, true) => match parse(first) {
            Some(start) if start < size => ByteRange::Partial(start..=size - 1),
            _ => ByteRange::Unsatisfiable,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if start <= end && start < size => {
                ByteRange::Partial(start..=end.min(size - 1))
            }
            _ => ByteRange::Unsatisfiable,
        },
        (true, true) => ByteRange::Unsatisfiable,
    }
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (inclusive).
/// A `bytes ` or `bytes=` prefix and a `/<total>` suffix are tolerated, as
/// some clients send the RFC form. A range whose length does not fit in a
/// `u64` (`0-18446744073709551615`) is refused: its length would wrap to 0.
pub fn parse_content_range(value: &str) -> Option<RangeInclusive<u64>> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (start, end) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (start <= end && (end - start).checked_add(1).is_some()).then_some(start..=end)
}

/// The number of bytes an inclusive range covers (never wraps: ranges from
/// [`parse_content_range`] fit).
pub fn content_range_len(range: &RangeInclusive<u64>) -> u64 {
    (range.end() - range.start()).saturating_add(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_forms_clients_send() {
        assert_eq!(resolve(None, 10), ByteRange::Whole);
        assert_eq!(resolve(Some("bytes=2-5"), 10), ByteRange::Partial(2..=5));
        assert_eq!(resolve(Some("bytes=2-"), 10), ByteRange::Partial(2..=9));
        assert_eq!(resolve(Some("bytes=-3"), 10), ByteRange::Partial(7..=9));
        assert_eq!(resolve(Some("bytes=-30"), 10), ByteRange::Partial(0..=9));
    }

    #[test]
    fn clamps_an_end_past_the_blob() {
        assert_eq!(resolve(Some("bytes=2-5000"), 10), ByteRange::Partial(2..=9));
    }

    #[test]
    fn refuses_ranges_outside_or_backwards() {
        assert_eq!(resolve(Some("bytes=10-20"), 10), ByteRange::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=5-0"), 10), ByteRange::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-0"), 10), ByteRange::Unsatisfiable);
        assert_eq!(resolve(Some("items=0-1"), 10), ByteRange::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=x-1"), 10), ByteRange::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=0-0"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn multiple_ranges_get_the_whole_blob() {
        assert_eq!(resolve(Some("bytes=0-1,4-5"), 10), ByteRange::Whole);
    }

    #[test]
    fn parses_upload_content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Some(0..=1023));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some(5..=9));
        assert_eq!(parse_content_range("9-5"), None);
        assert_eq!(parse_content_range("abc"), None);
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(
            parse_content_range("1-18446744073709551615"),
            Some(1..=u64::MAX)
        );
    }
}
