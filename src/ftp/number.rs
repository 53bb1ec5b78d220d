//! Decimal number parsing shared by the command and reply codecs.
//!
//! `str::parse` accepts a leading `+` and its errors do not distinguish "too large" from
//! "not a number"; FTP wants digits only, any count of leading zeros, and no overflow panic
//! on a digit string of any length.

/// Why a field is not an acceptable decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumberError {
    /// No digits at all.
    Empty,
    /// A byte other than `0`..=`9`.
    NotDigit,
    /// The value exceeds the allowed maximum.
    TooLarge,
}

/// Parses ASCII decimal digits (leading zeros allowed) into a value no larger than `max`.
pub(crate) fn parse_decimal(field: &[u8], max: u32) -> Result<u32, NumberError> {
    if field.is_empty() {
        return Err(NumberError::Empty);
    }
    if !field.iter().all(u8::is_ascii_digit) {
        return Err(NumberError::NotDigit);
    }
    // u64 saturates far above any u32 maximum, so an overlong string cannot wrap into range.
    let value = field.iter().fold(0u64, |acc, &digit| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    });
    u32::try_from(value)
        .ok()
        .filter(|&v| v <= max)
        .ok_or(NumberError::TooLarge)
}

/// Length of the run of ASCII digits at the start of `bytes`.
pub(crate) fn digit_run(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_decimal() {
        assert_eq!(parse_decimal(b"0010", 255), Ok(10));
    }

    #[test]
    fn huge_digit_strings_saturate_to_too_large() {
        assert_eq!(
            parse_decimal(b"99999999999999999999999999", u32::MAX),
            Err(NumberError::TooLarge)
        );
    }

    #[test]
    fn signs_and_empty_fields_are_not_numbers() {
        assert_eq!(parse_decimal(b"+1", 255), Err(NumberError::NotDigit));
        assert_eq!(parse_decimal(b"", 255), Err(NumberError::Empty));
    }

    #[test]
    fn value_equal_to_max_is_accepted() {
        assert_eq!(parse_decimal(b"65535", 65535), Ok(65535));
        assert_eq!(parse_decimal(b"65536", 65535), Err(NumberError::TooLarge));
    }
}
