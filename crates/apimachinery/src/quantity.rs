//! Kubernetes resource quantities (`100m`, `1Gi`, `2`, `500Mi`, `1e3`),
//! upstream apimachinery `pkg/api/resource/quantity.go`, reduced to what
//! the scheduler and printers need: exact comparison and scaled values.

use std::cmp::Ordering;
use std::fmt;

/// Why a quantity string was rejected; messages are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string does not have the quantity shape.
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    FormatWrong,
    /// The numeric part is malformed.
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is not a known SI, binary or exponent suffix.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The value does not fit (beyond ~1.7e29 units).
    #[error("quantity is too large")]
    Overflow,
}

/// A parsed quantity, held exactly in nano-units (values finer than 1n are
/// rounded up, as upstream does). Equality and ordering compare the value,
/// so `1Gi == 1073741824` and `1000m == 1`.
#[derive(Debug, Clone)]
pub struct Quantity {
    nanos: i128,
    text: String,
}

impl Quantity {
    /// The value in nano-units (`1` = 1_000_000_000).
    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up (upstream `MilliValue`): CPU in
    /// millicores.
    pub fn as_milli(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded up (upstream `Value`): bytes for
    /// memory and storage, counts for pods.
    pub fn value(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000_000)
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }
}

/// Ceiling division (toward +infinity) for a positive divisor.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    /// The string it was parsed from (not re-canonicalised).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
    }
}

/// Multiplier of a suffix: (power of two, power of ten).
fn suffix_scale(suffix: &str) -> Result<(u32, i32), QuantityError> {
    Ok(match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            // Decimal exponent: e3, E-2, e+6.
            let rest = suffix
                .strip_prefix(['e', 'E'])
                .ok_or(QuantityError::Suffix)?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Suffix);
            }
            let exp: i32 = rest.parse().map_err(|_| QuantityError::Suffix)?;
            (0, exp)
        }
    })
}

/// Parses a resource quantity such as `100m`, `1.5Gi`, `2`, `500Mi`, `1e3`.
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    let text = s.trim();
    if text.is_empty() {
        return Err(QuantityError::FormatWrong);
    }
    let (negative, body) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    if number.is_empty() || !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(QuantityError::FormatWrong);
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') {
        return Err(QuantityError::Numeric);
    }
    let (pow2, pow10) = suffix_scale(suffix)?;

    // Mantissa as an integer; trailing fraction zeros carry no value and
    // leading zeros none either, so they cannot overflow us.
    let frac_trimmed = frac_part.trim_end_matches('0');
    let digits: String = format!("{int_part}{frac_trimmed}");
    let digits = digits.trim_start_matches('0');
    let mut mantissa: i128 = 0;
    for b in digits.bytes() {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(b - b'0')))
            .ok_or(QuantityError::Overflow)?;
    }
    mantissa = mantissa
        .checked_mul(1i128 << pow2)
        .ok_or(QuantityError::Overflow)?;

    let frac_len = i32::try_from(frac_trimmed.len()).map_err(|_| QuantityError::Overflow)?;
    let p = 9 + pow10 - frac_len;
    let nanos = if mantissa == 0 {
        0
    } else if p >= 0 {
        let scale = 10i128
            .checked_pow(p as u32)
            .ok_or(QuantityError::Overflow)?;
        mantissa.checked_mul(scale).ok_or(QuantityError::Overflow)?
    } else {
        // Finer than a nano-unit: round up (away from zero, like upstream).
        match 10i128.checked_pow((-p) as u32) {
            Some(scale) => div_ceil(mantissa, scale),
            None => 1,
        }
    };
    Ok(Quantity {
        nanos: if negative { -nanos } else { nanos },
        text: text.to_string(),
    })
}

/// How a quantity prints (upstream's `Format`): chosen by the suffix it
/// was parsed with and kept through arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Powers of ten with SI suffixes (`100m`, `2`, `1k`).
    DecimalSi,
    /// Powers of 1024 (`1Gi`, `512Mi`).
    BinarySi,
    /// Decimal exponents (`1e3`).
    DecimalExponent,
}

impl Quantity {
    /// A quantity of `nanos` nano-units printed in `format`.
    pub fn from_nanos(nanos: i128, format: Format) -> Self {
        Self {
            nanos,
            text: canonical(nanos, format),
        }
    }

    /// A whole number of units (`NewQuantity(n, DecimalSI)`).
    pub fn from_units(n: i64) -> Self {
        Self::from_nanos(i128::from(n) * 1_000_000_000, Format::DecimalSi)
    }

    /// The format the quantity was written in.
    pub fn format(&self) -> Format {
        let t = self.text.trim();
        let t = t.trim_start_matches(['+', '-']);
        let suffix = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        if suffix.ends_with('i') {
            Format::BinarySi
        } else if suffix.starts_with(['e', 'E']) {
            Format::DecimalExponent
        } else {
            Format::DecimalSi
        }
    }

    /// The canonical text upstream's `Quantity.String()` prints
    /// (`1000m` → `1`, `2048Mi` → `2Gi`, `1.5` → `1500m`).
    pub fn canonical(&self) -> String {
        canonical(self.nanos, self.format())
    }

    /// `self + other`, printed in this quantity's format unless it is zero
    /// (upstream's `Add`).
    pub fn add(&self, other: &Quantity) -> Quantity {
        let format = if self.is_zero() {
            other.format()
        } else {
            self.format()
        };
        Self::from_nanos(self.nanos + other.nanos, format)
    }

    /// `self - other` (upstream's `Sub`).
    pub fn sub(&self, other: &Quantity) -> Quantity {
        let format = if self.is_zero() {
            other.format()
        } else {
            self.format()
        };
        Self::from_nanos(self.nanos - other.nanos, format)
    }
}

/// Strips factors of `base` (upstream's `removeInt64Factors`).
fn remove_factors(value: i128, base: i128) -> (i128, i32) {
    let negative = value < 0;
    let mut r = value.abs();
    let mut times = 0;
    while r >= base && r % base == 0 {
        times += 1;
        r /= base;
    }
    (if negative { -r } else { r }, times)
}

/// upstream's `CanonicalizeBytes` for a value of `nanos` nano-units.
fn canonical(nanos: i128, format: Format) -> String {
    if nanos == 0 {
        return "0".into();
    }
    let mut format = format;
    if format == Format::BinarySi
        && (nanos.abs() < 1024 * 1_000_000_000 || nanos % 1_000_000_000 != 0)
    {
        format = Format::DecimalSi;
    }
    if format == Format::BinarySi {
        let (amount, exp) = remove_factors(nanos / 1_000_000_000, 1024);
        let suffix = match exp {
            0 => "",
            1 => "Ki",
            2 => "Mi",
            3 => "Gi",
            4 => "Ti",
            5 => "Pi",
            _ => "Ei",
        };
        let amount = if exp > 6 {
            amount * 1024i128.pow((exp - 6) as u32)
        } else {
            amount
        };
        return format!("{amount}{suffix}");
    }
    let (mut amount, times) = remove_factors(nanos, 10);
    let mut exp = times - 9;
    match exp.rem_euclid(3) {
        1 => {
            amount *= 10;
            exp -= 1;
        }
        2 => {
            amount *= 100;
            exp -= 2;
        }
        _ => {}
    }
    let suffix = match (format, exp) {
        (Format::DecimalExponent, 0) => String::new(),
        (Format::DecimalExponent, e) => format!("e{e}"),
        (_, -9) => "n".into(),
        (_, -6) => "u".into(),
        (_, -3) => "m".into(),
        (_, 0) => String::new(),
        (_, 3) => "k".into(),
        (_, 6) => "M".into(),
        (_, 9) => "G".into(),
        (_, 12) => "T".into(),
        (_, 15) => "P".into(),
        (_, 18) => "E".into(),
        (_, e) => format!("e{e}"),
    };
    format!("{amount}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        parse_quantity(s).unwrap()
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(q("100m").as_milli(), 100);
        assert_eq!(q("2").as_milli(), 2000);
        assert_eq!(q("0.5").as_milli(), 500);
        assert_eq!(q("1.5").value(), 2);
        assert_eq!(q("250m").value(), 1);
        assert_eq!(q("1n").as_milli(), 1);
        assert_eq!(q("1u").as_nanos(), 1000);
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("500Mi").value(), 500 << 20);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("128974848").value(), 128_974_848);
        assert_eq!(q("129e6").value(), 129_000_000);
        assert_eq!(q("129M").value(), 129_000_000);
        assert_eq!(q("1k").value(), 1000);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("1Ei").value(), 1 << 60);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
    }

    #[test]
    fn exponents_and_signs() {
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("1e-3").as_milli(), 1);
        assert_eq!(q("+5").value(), 5);
        assert_eq!(q("-5").value(), -5);
        assert_eq!(q("-100m").as_milli(), -100);
        assert_eq!(q("0").value(), 0);
        assert!(q("0Gi").is_zero());
    }

    #[test]
    fn comparison_is_by_value() {
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1Ki"), q("1024"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("100m") < q("0.2"));
        assert_eq!(q("1Gi").to_string(), "1Gi");
    }

    #[test]
    fn canonical_forms() {
        let c = |s: &str| q(s).canonical();
        assert_eq!(c("1000m"), "1");
        assert_eq!(c("2000m"), "2");
        assert_eq!(c("1.5"), "1500m");
        assert_eq!(c("100m"), "100m");
        assert_eq!(c("1000"), "1k");
        assert_eq!(c("1024"), "1024");
        assert_eq!(c("2048Mi"), "2Gi");
        assert_eq!(c("1.5Gi"), "1536Mi");
        assert_eq!(c("512"), "512");
        assert_eq!(c("100Ki"), "100Ki");
        assert_eq!(c("0.5Ki"), "512");
        assert_eq!(c("1e3"), "1e3");
        assert_eq!(c("0Gi"), "0");
        assert_eq!(c("-1500m"), "-1500m");
        assert_eq!(c("10"), "10");
        assert_eq!(c("1G"), "1G");
        let sum = q("1Gi").add(&q("512Mi"));
        assert_eq!(sum.to_string(), "1536Mi");
        assert_eq!(q("0").add(&q("1Gi")).to_string(), "1Gi");
        assert_eq!(q("1").add(&q("500m")).to_string(), "1500m");
        assert_eq!(q("2").sub(&q("2")).to_string(), "0");
        assert_eq!(Quantity::from_units(3).to_string(), "3");
    }

    #[test]
    fn errors() {
        assert_eq!(parse_quantity(""), Err(QuantityError::FormatWrong));
        assert_eq!(parse_quantity("Gi"), Err(QuantityError::FormatWrong));
        assert_eq!(parse_quantity("1GB"), Err(QuantityError::Suffix));
        assert_eq!(parse_quantity("1K"), Err(QuantityError::Suffix));
        assert_eq!(parse_quantity("1.2.3"), Err(QuantityError::Numeric));
        assert_eq!(parse_quantity("1e"), Err(QuantityError::Suffix));
        assert_eq!(parse_quantity("1e400"), Err(QuantityError::Overflow));
        assert!(parse_quantity("abc").is_err());
    }
}
