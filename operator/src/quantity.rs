//! Kubernetes quantities (`10Gi`, `500M`, `1.5Gi`) as bytes, for the
//! fields that size things the registry enforces (quotas, the mirror's
//! size cap). k8s-openapi keeps a `Quantity` as its string only.

/// Bytes in a Kubernetes quantity (`10Gi`, `500M`, `1.5Gi`, `1000`),
/// rounded up to a whole byte; `None` if it is not one (the CRD's pattern
/// and rules refuse those first). Past 2^64 bytes: the largest count.
pub fn bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let total = whole
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add((fraction * multiplier).div_ceil(scale)));
    Some(total.map_or(u64::MAX, |t| u64::try_from(t).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_bytes_rounded_up() {
        assert_eq!(bytes("10Gi"), Some(10 << 30));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("1.5Ki"), Some(1536));
        assert_eq!(bytes("0.1"), Some(1));
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("0"), Some(0));
        assert_eq!(bytes("16Ei"), Some(u64::MAX));
        for bad in ["", "Gi", "10Gb", "-1Gi", "1.2.3", "100m", "1e3"] {
            assert_eq!(bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_read_as_kubernetes_writes_them() {
        assert_eq!(bytes("20Gi"), Some(20 << 30));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("2k"), Some(2000));
        assert_eq!(bytes("1048576"), Some(1 << 20));
        assert_eq!(bytes("9999Ei"), Some(u64::MAX));
        for bad in ["1Xi", "1 Gi"] {
            assert_eq!(bytes(bad), None, "{bad}");
        }
    }
}
